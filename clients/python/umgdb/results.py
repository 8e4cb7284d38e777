"""Typed results of the umgdb client (docs/protocol.md, "Operations").

Each ``from_wire`` reads the fields the protocol documents; keys a newer server
adds are kept in ``extra`` (the protocol says clients ignore unknown keys: here
they are ignored but not lost).
"""

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, NamedTuple, Optional, Tuple


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


def _gps(v):
    """[lat, lon] on the wire -> (lat, lon), or None."""
    return None if v is None else (float(v[0]), float(v[1]))


class _Wire:
    """from_wire for the dataclasses below: each field from the answer map's key
    of the same name (None when absent), through _CONVERT[name] if there is one;
    the keys no field names go to ``extra``. ``local`` gives fields that do not
    come from the server."""

    _CONVERT = {}

    @classmethod
    def from_wire(cls, d, **local):
        if d is None:
            return None
        if not isinstance(d, dict):
            raise ValueError("expected a map in the server's answer, got %r" % type(d).__name__)
        known = [f.name for f in fields(cls) if f.name != "extra" and f.name not in local]
        k = {name: d.get(name) for name in known}
        for name, convert in cls._CONVERT.items():
            k[name] = convert(k[name])
        extra = {key: v for key, v in d.items() if key not in k}
        return cls(**k, **local, extra=extra)


@dataclass
class ServerInfo(_Wire):
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


@dataclass
class Heatmap(_Wire):
    """Where in a photo the text matches: ``grid`` x ``grid`` cosines, row-major,
    the whole grid lying over ``extent`` in original pixels (beyond the photo on
    the padded sides)."""

    grid: int
    values: List[float]
    extent: Box
    extra: Dict[str, Any] = field(default_factory=dict)

    _CONVERT = {"values": lambda v: list(v or []), "extent": Box.from_wire}

    def rows(self):
        """The values as ``grid`` rows of ``grid`` values."""
        g = self.grid
        return [self.values[r * g:(r + 1) * g] for r in range(g)]

    def cell_box(self, row, col):
        """The part of the photo (original pixels) that cell (row, col) covers."""
        cw, ch = self.extent.w / self.grid, self.extent.h / self.grid
        return Box(self.extent.x + col * cw, self.extent.y + row * ch, cw, ch)


@dataclass
class Hit(_Wire):
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
    width: Optional[int] = None       # the photo's size (after EXIF orientation): the frame of box
    height: Optional[int] = None
    taken_at: Optional[str] = None    # capture metadata from EXIF, None when unknown (as Image)
    camera: Optional[str] = None
    gps: Optional[Tuple[float, float]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    _CONVERT = {"box": Box.from_wire, "heatmap": Heatmap.from_wire, "gps": _gps}


    @property
    def name(self):
        """The stored path: the ``name`` given with the bytes at ingest, or the path."""
        return self.path


@dataclass
class Region(_Wire):
    """A stored region of an image (``get``)."""

    region_id: int
    box: Box
    method: str
    score: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    _CONVERT = {"box": Box.from_wire}


@dataclass
class Image(_Wire):
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
    taken_at: Optional[str] = None    # ISO 8601 from EXIF DateTimeOriginal (+ its offset when known)
    camera: Optional[str] = None      # EXIF make and model
    gps: Optional[Tuple[float, float]] = None   # (lat, lon) in degrees
    extra: Dict[str, Any] = field(default_factory=dict)

    _CONVERT = {"tags": lambda v: list(v or []), "regions": lambda v: [Region.from_wire(r) for r in v or []],
                "gps": _gps}


    @property
    def name(self):
        return self.path


@dataclass
class IngestResult(_Wire):
    """The answer to ``ingest``. ``duplicate``: this content was already stored
    at this path, nothing was done; ``replaced``: another content at this path was
    replaced (its old image id is gone)."""

    image_id: int
    regions: int
    duplicate: bool
    replaced: bool = False
    path: Optional[str] = None   # the stored path this client sent (name, or the path): local
    extra: Dict[str, Any] = field(default_factory=dict)

    _CONVERT = {"replaced": bool}   # the server sends it only when true


@dataclass
class DeleteResult(_Wire):
    image_id: int
    deleted: bool
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Stats(_Wire):
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
