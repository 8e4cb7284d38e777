"""Typed results of the umgdb client (docs/protocol.md, "Operations").

Each ``from_wire`` reads the fields the protocol documents; keys a newer server
adds are kept in ``extra`` (the protocol says clients ignore unknown keys: here
they are ignored but not lost).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional


class Box(NamedTuple):
    """``[x, y, w, h]`` in original-image pixels (after EXIF orientation)."""

    x: float
    y: float
    w: float
    h: float

    @classmethod
    def from_wire(cls, v):
        if v is None:
            return None
        x, y, w, h = v
        return cls(float(x), float(y), float(w), float(h))


def _split(d, known):
    """(the known fields of a result map, the rest)."""
    if not isinstance(d, dict):
        raise ValueError("expected a map in the server's answer, got %r" % type(d).__name__)
    return {k: d.get(k) for k in known}, {k: v for k, v in d.items() if k not in known}


@dataclass
class ServerInfo:
    """The answer to ``hello`` / ``ping``."""

    protocol: int
    server: str
    model: str
    dim: int
    grid: int
    region_mode: str
    precision: str
    auth_required: bool
    extra: Dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("protocol", "server", "model", "dim", "grid", "region_mode", "precision", "auth_required")

    @classmethod
    def from_wire(cls, d):
        k, extra = _split(d, cls._KNOWN)
        return cls(extra=extra, **k)


@dataclass
class Heatmap:
    """Where in a photo the text matches: ``grid`` x ``grid`` cosines, row-major,
    the whole grid lying over ``extent`` in original pixels (beyond the photo on
    the padded sides)."""

    grid: int
    values: List[float]
    extent: Box

    def rows(self):
        """The values as ``grid`` rows of ``grid`` values."""
        g = self.grid
        return [self.values[r * g:(r + 1) * g] for r in range(g)]

    def cell_box(self, row, col):
        """The part of the photo (original pixels) that cell (row, col) covers."""
        cw, ch = self.extent.w / self.grid, self.extent.h / self.grid
        return Box(self.extent.x + col * cw, self.extent.y + row * ch, cw, ch)

    @classmethod
    def from_wire(cls, d):
        if d is None:
            return None
        return cls(grid=d["grid"], values=list(d["values"]), extent=Box.from_wire(d["extent"]))


@dataclass
class Hit:
    """One answer of ``query`` / ``query_image``, best first.

    ``box`` and ``region_id``: granularity ``"region"``; ``refined``: region
    queries with ``refine="pixel"``; ``heatmap``: granularity ``"pixel"``."""

    image_id: int
    path: str
    score: float
    box: Optional[Box] = None
    region_id: Optional[int] = None
    refined: Optional[float] = None
    heatmap: Optional[Heatmap] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("image_id", "path", "score", "box", "region_id", "refined", "heatmap")

    @property
    def name(self):
        """The stored path: the ``name`` given with the bytes at ingest, or the path."""
        return self.path

    @classmethod
    def from_wire(cls, d):
        k, extra = _split(d, cls._KNOWN)
        k["box"] = Box.from_wire(k["box"])
        k["heatmap"] = Heatmap.from_wire(k["heatmap"])
        return cls(extra=extra, **k)


@dataclass
class Region:
    """A stored region of an image (``get``)."""

    region_id: int
    box: Box
    method: str
    score: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("region_id", "box", "method", "score")

    @classmethod
    def from_wire(cls, d):
        k, extra = _split(d, cls._KNOWN)
        k["box"] = Box.from_wire(k["box"])
        return cls(extra=extra, **k)


@dataclass
class Image:
    """A stored image record with its regions (``get``)."""

    image_id: int
    path: str
    width: int
    height: int
    bytes: int
    sha256: str
    mtime: int
    ingest_time: int
    tags: List[str]
    regions: List[Region]
    extra: Dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("image_id", "path", "width", "height", "bytes", "sha256", "mtime", "ingest_time", "tags", "regions")

    @property
    def name(self):
        return self.path

    @classmethod
    def from_wire(cls, d):
        k, extra = _split(d, cls._KNOWN)
        k["tags"] = list(k["tags"] or [])
        k["regions"] = [Region.from_wire(r) for r in (k["regions"] or [])]
        return cls(extra=extra, **k)


@dataclass
class IngestResult:
    """The answer to ``ingest``. ``duplicate``: this content was already stored
    at this path, nothing was done; ``replaced``: another content at this path was
    replaced (its old image id is gone)."""

    image_id: int
    regions: int
    duplicate: bool
    replaced: bool = False
    path: Optional[str] = None   # the stored path this client sent (name, or the path)
    extra: Dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("image_id", "regions", "duplicate", "replaced")

    @classmethod
    def from_wire(cls, d, path=None):
        k, extra = _split(d, cls._KNOWN)
        k["replaced"] = bool(k["replaced"])
        return cls(path=path, extra=extra, **k)


@dataclass
class DeleteResult:
    image_id: int
    deleted: bool
    extra: Dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("image_id", "deleted")

    @classmethod
    def from_wire(cls, d):
        k, extra = _split(d, cls._KNOWN)
        return cls(extra=extra, **k)


@dataclass
class Stats:
    """The answer to ``stats``; the nested maps (``index``, ``queues``, ``ingest``,
    ``text_queries``, ``checkpoints``) as the server sends them
    (docs/protocol.md, "stats")."""

    images: int
    regions: int
    index: Dict[str, Any]
    memory_bytes: int
    db_map_bytes: int
    db_used_bytes: int
    uptime_s: float
    model: str
    dim: int
    region_mode: str
    precision: str
    queues: Dict[str, Any]
    ingest: Dict[str, Any]
    text_queries: Dict[str, Any]
    checkpoints: Dict[str, Any]
    extra: Dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("images", "regions", "index", "memory_bytes", "db_map_bytes", "db_used_bytes", "uptime_s",
              "model", "dim", "region_mode", "precision", "queues", "ingest", "text_queries", "checkpoints")

    @classmethod
    def from_wire(cls, d):
        k, extra = _split(d, cls._KNOWN)
        return cls(extra=extra, **k)


@dataclass
class FileResult:
    """One file of ``ingest_folder``: ``status`` is ``"ingested"``, ``"unchanged"``
    (same path and content already stored), or ``"failed"`` (``error`` says why)."""

    path: str
    status: str
    result: Optional[IngestResult] = None
    error: Optional[Exception] = None


@dataclass
class FolderReport:
    """What ``ingest_folder`` did: one :class:`FileResult` per photo, in the order
    of the walk, and the files it did not send (``skipped``: not a JPEG/PNG name,
    or hidden)."""

    files: List[FileResult]
    skipped: List[str]

    def _count(self, status):
        return sum(1 for f in self.files if f.status == status)

    @property
    def ingested(self):
        return self._count("ingested")

    @property
    def unchanged(self):
        return self._count("unchanged")

    @property
    def failed(self):
        return [f for f in self.files if f.status == "failed"]
