"""The umgdb client: one connection to ``umgdb serve`` (docs/python.md)."""

import datetime
import os

from . import _wire
from .errors import ServerError, TooLargeError, UmgdbError
from .results import (DeleteResult, FileResult, FolderReport, Hit, Image, IngestResult, ServerInfo,
                      Stats)

__all__ = ["Client", "IMAGE_EXTENSIONS"]

CLIENT_NAME = "umgdb-python/0.1.0"
# What `umgdb ingest` sends from a folder (cli/cli_util.c): JPEG and PNG by name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png")
# Room in a frame for an ingest request's other fields around the photo's bytes
# (as cli/cmd_ingest.c): files larger than max_frame minus this are refused unread.
_FRAME_OVERHEAD = 64 << 10
# The server's per-connection cap of requests in flight (docs/server.md, "Limits and
# backpressure"): a larger window only makes the server pause reading.
MAX_WINDOW = 64


def _read_photo(path, max_frame):
    """The bytes of a local file, refused before reading when it cannot fit a frame."""
    size = os.stat(path).st_size
    limit = max_frame - _FRAME_OVERHEAD
    if size > limit:
        raise TooLargeError("%s: %d bytes, over the %d bytes a request can carry (max_frame %d)"
                            % (path, size, limit, max_frame), code="too_large")
    with open(path, "rb") as f:
        return f.read()


def _ingest_args(source, name, tags, server_path, max_frame):
    """(request arguments, stored path) of one ingest."""
    args = {}
    if isinstance(source, (bytes, bytearray, memoryview)):
        if server_path:
            raise ValueError("server_path=True needs a path, not bytes")
        if not name:
            raise ValueError("ingest of bytes needs name= (stored as the image's path)")
        args["data"] = bytes(source)
        args["name"] = name
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if server_path:
            if name is not None:
                raise ValueError("name= goes with bytes, not with server_path=True (the path is the name)")
            args["path"] = os.path.abspath(path)
        else:
            args["data"] = _read_photo(path, max_frame)
            # The resolved absolute path, as `umgdb ingest` names photos: the same
            # file sent again is recognised as unchanged (duplicate).
            args["name"] = name if name is not None else os.path.realpath(path)
    else:
        raise TypeError("ingest wants a path (str or os.PathLike) or bytes, not %s" % type(source).__name__)
    if tags is not None:
        if isinstance(tags, str):
            raise TypeError("tags must be a list of strings, not one string")
        args["tags"] = list(tags)
    return args, args.get("path", args.get("name"))


def _image_ref(ref, what):
    """{"image_id": n} or {"path": p} for get/delete."""
    if isinstance(ref, bool) or not isinstance(ref, (int, str, os.PathLike)):
        raise TypeError("%s wants an image id (int) or a stored path (str), not %s" % (what, type(ref).__name__))
    if isinstance(ref, int):
        return {"image_id": ref}
    return {"path": os.fspath(ref)}


# The query filters of the protocol (docs/protocol.md, "query"), each also a
# named argument of query() and query_image().
FILTER_KEYS = ("path_prefix", "tags", "min_score", "taken_after", "taken_before", "camera", "near")


def _when(value, key):
    """taken_after / taken_before as the protocol's ISO 8601 text: a str as given;
    a date as YYYY-MM-DD (its midnight); a datetime to the second, with its UTC
    offset when it has one (an instant) and without (a clock time, compared with
    each photo's own clock: docs/protocol.md, "Capture filters")."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.datetime):
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
        off = value.utcoffset()
        if off is not None:
            minutes = int(off.total_seconds()) // 60
            sign = "-" if minutes < 0 else "+"
            text += "%s%02d:%02d" % (sign, abs(minutes) // 60, abs(minutes) % 60)
        return text
    if isinstance(value, datetime.date):
        return value.isoformat()
    raise TypeError("%s wants a str, datetime.date or datetime.datetime, not %s" % (key, type(value).__name__))


def _near(value):
    """near as the protocol's map: a (lat, lon, km) sequence or a dict with those keys."""
    if isinstance(value, dict):
        if set(value) != {"lat", "lon", "km"}:
            raise ValueError("near wants the keys lat, lon and km, got %s" % sorted(value))
        lat, lon, km = value["lat"], value["lon"], value["km"]
    else:
        try:
            lat, lon, km = value
        except (TypeError, ValueError):
            raise ValueError("near wants (lat, lon, km) or {'lat', 'lon', 'km'}, not %r" % (value,)) from None
    return {"lat": float(lat), "lon": float(lon), "km": float(km)}


def _filters(filters, named):
    """The filters map: the filters dict merged with the named filter arguments
    (a key given both ways is refused rather than silently picked)."""
    out = dict(filters) if filters else {}
    for key, value in named.items():
        if value is None:
            continue
        if key in out:
            raise ValueError("filter %r given twice (as filters[%r] and as %s=)" % (key, key, key))
        out[key] = value
    if out.get("tags") is not None:
        if isinstance(out["tags"], str):
            raise TypeError("tags must be a list of strings, not one string")
        out["tags"] = list(out["tags"])
    for key in ("taken_after", "taken_before"):
        if out.get(key) is not None:
            out[key] = _when(out[key], key)
    if out.get("near") is not None:
        out["near"] = _near(out["near"])
    if out.get("min_score") is not None:
        out["min_score"] = float(out["min_score"])
    return out


def _search_args(granularity, k, filters, offset, refine, per_photo, named_filters):
    args = {}
    if granularity is not None:
        args["granularity"] = granularity
    if k is not None:
        args["k"] = k
    merged = _filters(filters, named_filters)
    if merged:
        args["filters"] = merged
    if offset is not None:
        args["offset"] = offset
    if per_photo is not None:
        args["per_photo"] = per_photo
    if refine is not None:
        args["refine"] = refine
    return args


def _walk_photos(folder, recursive):
    """(photo paths, skipped paths) under folder in sorted order; names starting
    with '.' are skipped, like `umgdb ingest`."""
    photos, skipped = [], []
    for root, dirs, files in os.walk(folder):
        hidden = [d for d in dirs if d.startswith(".")]
        skipped += [os.path.join(root, d) for d in sorted(hidden)]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for f in sorted(files):
            p = os.path.join(root, f)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p):
                photos.append(p)
            else:
                skipped.append(p)
    return photos, skipped


class Client:
    """A connection to ``umgdb serve``.

        with umgdb.Client("127.0.0.1:7431") as db:      # or "unix:/run/umgdb.sock"
            db.ingest("cat.jpg", tags=["pets"])
            for hit in db.query("a cat on a sofa", k=5):
                print(hit.score, hit.path)

    addr: ``"HOST:PORT"``, ``"[v6]:PORT"``, ``"PORT"``, ``"unix:PATH"``; None is
    ``$UMGDB_SERVER`` or 127.0.0.1:7431. token: the server's auth token, if it
    requires one. timeout: seconds to wait for each answer (None = forever; the
    connection stays usable after a timeout). max_frame: the largest request or
    answer (bytes after the length prefix): the server's ``--max-frame``.

    The constructor connects and sends ``hello`` (with the token); ``server_info``
    holds the answer. One client is one connection, for one thread at a time.
    """

    def __init__(self, addr=None, token=None, *, timeout=60.0, connect_timeout=5.0,
                 max_frame=_wire.DEFAULT_MAX_FRAME, client_name=CLIENT_NAME):
        if addr is None:
            addr = os.environ.get("UMGDB_SERVER") or _wire.DEFAULT_ADDRESS
        self.addr = addr
        self.timeout = timeout
        self._conn = _wire.Connection(addr, connect_timeout, max_frame)
        try:
            hello = {}
            if client_name is not None:
                hello["client"] = client_name
            if token is not None:
                hello["token"] = token
            self.server_info = ServerInfo.from_wire(self._call("hello", hello))
        except BaseException:
            self._conn.close()
            raise

    # ---- lifetime ----------------------------------------------------------

    def close(self):
        """Close the connection (idempotent). Later calls raise UmgdbConnectionError."""
        self._conn.close()

    @property
    def closed(self):
        """True once closed, or once the connection broke."""
        return self._conn.closed

    @property
    def in_flight(self):
        """Requests sent whose answers have not been taken yet (ingest_folder's pipeline)."""
        return self._conn.in_flight

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "umgdb.Client(%r%s)" % (self.addr, ", closed" if self.closed else "")

    # ---- one request -------------------------------------------------------

    def _call(self, op, args, timeout=None):
        rid = self._conn.queue(op, args)
        ans = self._conn.wait(rid, self.timeout if timeout is None else timeout)
        return _wire.result_or_raise(ans, rid)

    # ---- operations (docs/protocol.md, "Operations") ------------------------

    def ping(self):
        """The server's description (as ``hello``): a ServerInfo."""
        return ServerInfo.from_wire(self._call("ping", {}))

    def ingest(self, source, *, name=None, tags=None, server_path=False, timeout=None):
        """Store a photo; returns an IngestResult.

        source: bytes (an encoded JPEG or PNG; ``name`` required, stored as its
        path), or a local file path whose bytes this client reads and sends (stored
        under ``name``, default the resolved absolute path). With
        ``server_path=True`` the server reads the path itself: it must lie under
        one of the server's ``--allow-root`` directories (else AuthError
        ``forbidden``). tags: up to 64 strings."""
        args, stored = _ingest_args(source, name, tags, server_path, self._conn.max_frame)
        return IngestResult.from_wire(self._call("ingest", args, timeout), path=stored)

    def query(self, text, *, granularity="image", k=10, filters=None, offset=None, refine=None, per_photo=None,
              path_prefix=None, tags=None, min_score=None, taken_after=None, taken_before=None, camera=None,
              near=None, timeout=None):
        """Search by text; returns a list of Hit, best first.

        granularity: ``"image"`` (photos), ``"region"`` (boxes inside photos: each
        hit has ``box`` and ``region_id``) or ``"pixel"`` (photos with a
        ``heatmap``). k: 1..1000. offset: 0..10000, the hits after the first
        ``offset`` (paging: 0, k, 2k, ...). per_photo: region queries, the most
        boxes one photo gives (server default 1). refine: ``"pixel"`` re-ranks a
        region query's boxes by the text's heatmap.

        Filters (all given must pass), as named arguments or in ``filters`` (a
        dict with the same keys): path_prefix (str), tags (list of str, a hit
        carries all), min_score (float), taken_after (inclusive) / taken_before
        (exclusive): an ISO 8601 str, a ``datetime.date`` or a
        ``datetime.datetime`` (aware: an instant; naive: each photo's clock
        time), camera (a case-insensitive substring of the camera's name), near
        ``(lat, lon, km)``."""
        args = {"text": text}
        args.update(_search_args(granularity, k, filters, offset, refine, per_photo, dict(
            path_prefix=path_prefix, tags=tags, min_score=min_score, taken_after=taken_after,
            taken_before=taken_before, camera=camera, near=near)))
        return self._hits(self._call("query", args, timeout))

    def query_image(self, image, *, box=None, granularity="image", k=10, filters=None, offset=None,
                    per_photo=None, path_prefix=None, tags=None, min_score=None, taken_after=None,
                    taken_before=None, camera=None, near=None, timeout=None):
        """Find similar photos or regions; returns a list of Hit, best first.

        image: a stored image id (int; it is left out of its own hits unless a box
        is given), bytes of a JPEG/PNG, or a local file path (read here, sent as
        bytes). box: ``(x, y, w, h)`` in the image's pixels, to search with that
        part only. Other arguments (paging, per_photo, filters) as ``query``."""
        if isinstance(image, bool):
            raise TypeError("query_image wants an image id, bytes or a path, not a bool")
        if isinstance(image, int):
            args = {"image_id": image}
        elif isinstance(image, (bytes, bytearray, memoryview)):
            args = {"data": bytes(image)}
        elif isinstance(image, (str, os.PathLike)):
            args = {"data": _read_photo(os.fspath(image), self._conn.max_frame)}
        else:
            raise TypeError("query_image wants an image id, bytes or a path, not %s" % type(image).__name__)
        if box is not None:
            args["box"] = [float(v) for v in box]
        args.update(_search_args(granularity, k, filters, offset, None, per_photo, dict(
            path_prefix=path_prefix, tags=tags, min_score=min_score, taken_after=taken_after,
            taken_before=taken_before, camera=camera, near=near)))
        return self._hits(self._call("query_image", args, timeout))

    @staticmethod
    def _hits(result):
        return [Hit.from_wire(h) for h in result.get("hits", [])]

    def get(self, image, *, timeout=None):
        """The stored record of an image by id (int) or stored path (str): an Image."""
        return Image.from_wire(self._call("get", _image_ref(image, "get"), timeout))

    def delete(self, image, *, timeout=None):
        """Delete an image (id or stored path) with its regions and vectors."""
        return DeleteResult.from_wire(self._call("delete", _image_ref(image, "delete"), timeout))

    def thumb(self, image, *, timeout=None):
        """The JPEG thumbnail of an image (id or stored path), as bytes: made by the
        server at ingest, upright (EXIF orientation applied), longer side 320 px or
        the photo's own when smaller. NotFoundError when the image is not stored, or
        was stored before the server made thumbnails."""
        return bytes(self._call("thumb", _image_ref(image, "thumb"), timeout)["data"])

    def stats(self, *, timeout=None):
        """Counts, index types, queues, memory: a Stats."""
        return Stats.from_wire(self._call("stats", {}, timeout))

    # ---- a folder, pipelined -------------------------------------------------

    def ingest_folder(self, folder, *, recursive=True, tags=None, server_path=False, window=32,
                      progress=None):
        """Ingest every JPEG/PNG under folder with up to ``window`` requests in
        flight on this connection; returns a FolderReport.

        Files are named by their resolved absolute path (as ``umgdb ingest``), so
        a second run reports unchanged photos as ``"unchanged"``. Other files and
        names starting with '.' are skipped (listed in ``report.skipped``). A photo
        that fails (unreadable, not really an image, refused) is reported as
        ``"failed"`` with its error and does not stop the run; a broken connection
        or a timeout does: the exception's ``report`` holds what was done.
        ``progress(done, total, file_result)`` is called after each photo.
        window: 1..64; keep it at least twice the server's ``--batch`` (16) so the
        encoder's batches fill (docs/server.md)."""
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError("window must be 1..%d (the server's requests in flight per connection)" % MAX_WINDOW)
        folder = os.path.expanduser(os.fspath(folder))
        if not os.path.isdir(folder):
            raise NotADirectoryError("ingest_folder: %r is not a directory" % (folder,))
        photos, skipped = _walk_photos(folder, recursive)
        # Stored paths: resolved (as `umgdb ingest` names them) for bytes; absolute
        # for server_path (the server resolves them itself against --allow-root).
        stored = [os.path.abspath(p) if server_path else os.path.realpath(p) for p in photos]
        results = [None] * len(photos)
        pending = {}   # request id -> index into photos
        done = 0

        def finish(i, res):
            nonlocal done
            results[i] = res
            done += 1
            if progress is not None:
                progress(done, len(photos), res)

        nxt = 0
        try:
            while nxt < len(photos) or pending:
                while nxt < len(photos) and len(pending) < window:
                    i, nxt = nxt, nxt + 1
                    try:
                        args, _ = _ingest_args(stored[i], None, tags, server_path, self._conn.max_frame)
                        pending[self._conn.queue("ingest", args)] = i
                    except (OSError, ServerError, ValueError) as e:
                        # This file only: unreadable, too large for a frame (TooLargeError,
                        # raised here without sending), a name msgpack cannot encode.
                        if isinstance(e, ConnectionError):
                            raise
                        finish(i, FileResult(photos[i], "failed", error=e))
                if not pending:
                    continue
                rid, ans = self._conn.recv_any(self.timeout)
                if rid == 0:
                    # An error the server could not tie to a request (a frame over
                    # its limit): it closes the connection next, so the run ends.
                    _wire.result_or_raise(ans, 0)
                i = pending.pop(rid)
                try:
                    r = IngestResult.from_wire(_wire.result_or_raise(ans, rid), path=stored[i])
                    finish(i, FileResult(photos[i], "unchanged" if r.duplicate else "ingested", result=r))
                except ServerError as e:
                    finish(i, FileResult(photos[i], "failed", error=e))
        except UmgdbError as e:
            # The run cannot go on (connection broken, timeout): what was done so far.
            # After a timeout the connection stays usable: the late answers are dropped.
            for rid in pending:
                self._conn.abandon(rid)
            e.report = FolderReport(files=[r for r in results if r is not None], skipped=skipped)
            raise
        return FolderReport(files=results, skipped=skipped)
