"""The Python client against the real server (issue 16, "A Python client")."""
import datetime
import hashlib
import io
import os
import shutil
import socket
import struct
import threading
import time

import msgpack
import pytest

import umgdb
from umgdb._wire import parse_address

from conftest import N_PHOTOS, TOKEN, Server, make_photos


def photo_bytes(photos, name):
    return photos[2][name][0]


# ---- connecting -------------------------------------------------------------

def test_hello_describes_the_server(client):
    info = client.server_info
    assert isinstance(info, umgdb.ServerInfo)
    assert (info.protocol, info.model, info.region_mode, info.precision) == (1, "synth-umg", "dense", "fp32")
    assert info.dim == 64 and info.grid == 10 and info.auth_required is False
    assert client.ping() == info


def test_unix_socket(server):
    with umgdb.Client("unix:" + server.sock) as c:
        assert c.ping().model == "synth-umg"


def test_select_where_there_is_no_poll(server, photos):
    with umgdb.Client(server.addr) as c:
        c._conn._poller = None                           # as on a platform without poll (Windows)
        name = sorted(photos[2])[8]
        r = c.ingest(photo_bytes(photos, name), name="select/" + name)
        assert c.get(r.image_id).path == "select/" + name


def test_addresses():
    assert parse_address("127.0.0.1:7431") == ("tcp", ("127.0.0.1", 7431))
    assert parse_address("7431") == ("tcp", ("127.0.0.1", 7431))
    assert parse_address("[::1]:80") == ("tcp", ("::1", 80))
    assert parse_address("localhost:9") == ("tcp", ("localhost", 9))
    assert parse_address("unix:/run/u.sock") == ("unix", "/run/u.sock")
    for bad in ("", "unix:", "host", "host:0", "host:70000", "[::1]80", ":80"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_nothing_listening_is_a_connection_error():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    addr = "127.0.0.1:%d" % port.getsockname()[1]
    port.close()
    with pytest.raises(umgdb.UmgdbConnectionError) as e:
        umgdb.Client(addr)
    assert e.value.code == "connection_error" and "cannot connect" in e.value.message


def test_context_manager_closes_the_connection(server, client):
    def connections():
        return client.stats().queues["connections"]

    before = connections()
    with umgdb.Client(server.addr) as c:
        c.ping()
        assert connections() == before + 1
    assert c.closed
    with pytest.raises(umgdb.UmgdbConnectionError):
        c.ping()
    deadline = time.monotonic() + 10
    while connections() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connections() == before


# ---- ingest, get, delete, stats ---------------------------------------------

def test_ingest_bytes_then_get(client, photos):
    name = sorted(photos[2])[0]
    data, (w, h), _ = photos[2][name]
    r = client.ingest(data, name="bytes/" + name, tags=["alpha", "beta"])
    assert isinstance(r, umgdb.IngestResult)
    assert r.image_id > 0 and r.regions > 0 and r.duplicate is False and r.replaced is False
    assert r.path == "bytes/" + name
    img = client.get(r.image_id)
    assert isinstance(img, umgdb.Image)
    assert (img.image_id, img.path, img.width, img.height, img.bytes) == (r.image_id, "bytes/" + name, w, h, len(data))
    assert img.sha256 == hashlib.sha256(data).hexdigest()
    assert img.tags == ["alpha", "beta"]
    assert len(img.regions) == r.regions
    for reg in img.regions:
        assert isinstance(reg.box, umgdb.Box) and reg.method in ("segments", "window")
        assert 0 <= reg.box.x and reg.box.x + reg.box.w <= w + 1e-3
        assert 0 <= reg.box.y and reg.box.y + reg.box.h <= h + 1e-3
    assert client.get("bytes/" + name) == img           # by stored path
    again = client.ingest(data, name="bytes/" + name, tags=["alpha", "beta"])
    assert again.duplicate is True and again.image_id == r.image_id


def test_ingest_a_local_path_sends_its_bytes(client, photos):
    root, folder, made = photos
    name = sorted(made)[1]
    # A directory the server may not read from: only the bytes can get there.
    local = os.path.join(root, "..", "local-only")
    os.makedirs(local, exist_ok=True)
    path = os.path.join(local, name)
    shutil.copyfile(os.path.join(folder, name), path)
    r = client.ingest(path, tags=["local"])
    assert r.path == os.path.realpath(path) and not r.duplicate
    assert client.get(r.image_id).sha256 == hashlib.sha256(made[name][0]).hexdigest()
    with pytest.raises(umgdb.AuthError) as e:      # not under --allow-root
        client.ingest(path, server_path=True)
    assert e.value.code == "forbidden"


def test_ingest_by_server_path(client, photos):
    root, folder, made = photos
    sub = os.path.join(root, "by-path")
    os.makedirs(sub, exist_ok=True)
    name = sorted(made)[2]
    path = os.path.join(sub, name)
    shutil.copyfile(os.path.join(folder, name), path)
    r = client.ingest(path, server_path=True, tags=["server-read"])
    assert r.path == path and not r.duplicate
    img = client.get(path)
    assert img.image_id == r.image_id and img.tags == ["server-read"]
    assert img.mtime == int(os.stat(path).st_mtime)    # the file's, as the server read it
    with pytest.raises(umgdb.NotFoundError) as e:
        client.ingest(os.path.join(sub, "missing.jpg"), server_path=True)
    assert e.value.code == "not_found"


def test_ingest_argument_checks(client):
    with pytest.raises(ValueError):
        client.ingest(b"\xff\xd8", name=None)       # bytes need a name
    with pytest.raises(ValueError):
        client.ingest(b"\xff\xd8", name="x.jpg", server_path=True)
    with pytest.raises(TypeError):
        client.ingest(42)
    with pytest.raises(TypeError):
        client.ingest(b"\xff\xd8", name="x.jpg", tags="one-string")


def test_delete_by_id_and_by_path(client, photos):
    made = photos[2]
    a, b = sorted(made)[3:5]
    ra = client.ingest(made[a][0], name="del/" + a)
    rb = client.ingest(made[b][0], name="del/" + b)
    d = client.delete(ra.image_id)
    assert isinstance(d, umgdb.DeleteResult) and (d.image_id, d.deleted) == (ra.image_id, True)
    with pytest.raises(umgdb.NotFoundError):
        client.get(ra.image_id)
    with pytest.raises(umgdb.NotFoundError) as e:
        client.delete(ra.image_id)
    assert e.value.code == "not_found" and e.value.request_id > 0
    assert client.delete("del/" + b).image_id == rb.image_id
    with pytest.raises(umgdb.NotFoundError):
        client.get("del/" + b)


def test_stats_count_what_is_stored(client, photos):
    made = photos[2]
    name = sorted(made)[5]
    before = client.stats()
    assert isinstance(before, umgdb.Stats) and before.model == "synth-umg" and before.dim == 64
    r = client.ingest(made[name][0], name="stats/" + name)
    after = client.stats()
    assert after.images == before.images + 1
    assert after.regions == before.regions + r.regions
    assert after.index["image"]["vectors"] == after.images
    assert after.uptime_s >= before.uptime_s and after.memory_bytes > 0
    client.delete(r.image_id)
    assert client.stats().images == before.images


# ---- queries ----------------------------------------------------------------

def test_query_image_granularity(client, collection, photos):
    root, folder, made = photos
    prefix = os.path.realpath(folder) + "/"
    ids = {r.image_id: r.path for r in collection.values()}
    for name, (_data, _size, caption) in sorted(made.items())[:3]:
        hits = client.query(caption, k=5, filters={"path_prefix": prefix})
        assert 1 <= len(hits) <= 5
        assert all(isinstance(h, umgdb.Hit) and h.box is None and h.heatmap is None for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for h in hits:
            assert ids[h.image_id] == h.path == h.name      # the filter kept the shared photos only
    assert len(client.query("a photo", k=N_PHOTOS, filters={"path_prefix": prefix})) == N_PHOTOS
    assert len(client.query("a photo", k=3)) == 3
    assert client.query("a photo", filters={"path_prefix": "/nowhere/"}) == []


def test_query_region_granularity(client, collection, photos):
    prefix = os.path.realpath(photos[1]) + "/"
    hits = client.query("a red circle", granularity="region", k=8, filters={"path_prefix": prefix})
    assert hits
    for h in hits:
        assert isinstance(h.box, umgdb.Box) and isinstance(h.region_id, int)
        stored = {reg.region_id: reg.box for reg in client.get(h.image_id).regions}
        assert h.region_id in stored                   # the hit's region is one of its photo's
        assert h.box == pytest.approx(stored[h.region_id], abs=1e-3)
    refined = client.query("a red circle", granularity="region", refine="pixel", k=4)
    assert refined and all(h.refined is not None for h in refined)


def test_query_pixel_granularity(client, collection):
    hits = client.query("a blue square", granularity="pixel", k=2)
    assert len(hits) == 2
    g = client.server_info.grid
    for h in hits:
        hm = h.heatmap
        assert isinstance(hm, umgdb.Heatmap) and hm.grid == g and len(hm.values) == g * g
        assert len(hm.rows()) == g and all(len(r) == g for r in hm.rows())
        img = client.get(h.image_id)
        # The grid covers the whole photo (and the padding beyond it).
        assert hm.extent.x <= 0 and hm.extent.y <= 0
        assert hm.extent.x + hm.extent.w >= img.width - 1e-3 and hm.extent.y + hm.extent.h >= img.height - 1e-3
        last = hm.cell_box(g - 1, g - 1)
        assert last.x + last.w == pytest.approx(hm.extent.x + hm.extent.w)


def test_query_image_by_bytes_path_and_id(client, collection, photos):
    root, folder, made = photos
    name = sorted(made)[6]
    mine = collection[name]
    # Other tests store copies of these photos elsewhere: look among the shared ones.
    only_shared = {"path_prefix": os.path.realpath(folder) + "/"}
    by_bytes = client.query_image(made[name][0], k=3, filters=only_shared)
    assert by_bytes[0].image_id == mine.image_id and by_bytes[0].score > 0.99   # the same photo
    by_path = client.query_image(os.path.join(folder, name), k=3, filters=only_shared)
    assert [h.image_id for h in by_path] == [h.image_id for h in by_bytes]
    by_id = client.query_image(mine.image_id, k=5)
    assert by_id and mine.image_id not in [h.image_id for h in by_id]           # itself left out
    img = client.get(mine.image_id)
    box = img.regions[0].box
    regions = client.query_image(mine.image_id, box=box, granularity="region", k=3)
    assert regions and all(h.box is not None for h in regions)
    with pytest.raises(TypeError):
        client.query_image(True)


def test_offset_pages_through_the_ranking(client, collection):
    full = client.query("a green star", k=6)
    assert len(full) == 6
    assert [h.image_id for h in client.query("a green star", k=3, offset=2)] == [h.image_id for h in full[2:5]]
    assert [h.image_id for h in client.query("a green star", k=2, offset=4)] == [h.image_id for h in full[4:6]]
    by_id = client.query_image(full[0].image_id, k=4)
    assert [h.image_id for h in client.query_image(full[0].image_id, k=2, offset=2)] == [h.image_id for h in by_id[2:4]]
    with pytest.raises(umgdb.RequestError) as e:
        client.query("a green star", offset=10001)
    assert "'offset'" in e.value.message


def test_per_photo(client, collection, photos):
    # One photo's boxes: one by default, more when asked for (all its boxes the
    # overlap rule keeps), every one of that photo.
    name = sorted(photos[2])[5]
    only = {"path_prefix": collection[name].path}
    one = client.query("a red circle", granularity="region", k=20, filters=only)
    many = client.query("a red circle", granularity="region", k=20, per_photo=100000, filters=only)
    assert len(one) == 1 and len(many) > 1
    assert {h.image_id for h in many} == {collection[name].image_id}
    assert many[0].region_id == one[0].region_id
    assert len(client.query("a red circle", granularity="region", k=20, per_photo=2, filters=only)) == 2


FIXTURE_IMAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "tests", "fixtures", "images")


@pytest.fixture(scope="module")
def captured(server):
    """Two photos with EXIF capture metadata (tests/fixtures/images, see tests/test_image.c):
    meta_full.jpg taken 2019-07-14T12:00:00+02:00 with a Fujifilm X-T3 in Sydney, and
    meta_partial.jpg taken 2021-01-02T03:04:05 (no offset) with a Canon EOS 5D Mark IV in New York."""
    with umgdb.Client(server.addr) as c:
        ids = {}
        for name in ("meta_full.jpg", "meta_partial.jpg"):
            with open(os.path.join(FIXTURE_IMAGES, name), "rb") as f:
                ids[name] = c.ingest(f.read(), name="/captured/" + name, tags=["captured"]).image_id
    return ids


def test_capture_filters_as_named_arguments(client, captured):
    full, partial = captured["meta_full.jpg"], captured["meta_partial.jpg"]

    def found(**kw):
        return {h.image_id for h in client.query("a photo", k=10, path_prefix="/captured/", **kw)}

    assert found() == {full, partial}
    assert found(camera="x-t3") == {full}
    assert found(camera="CANON") == {partial}
    assert found(taken_after=datetime.date(2020, 1, 1)) == {partial}
    assert found(taken_before="2020-01-01") == {full}
    assert found(taken_after="2019-07-14", taken_before=datetime.date(2019, 7, 15)) == {full}
    # an aware datetime is an instant: 12:00+02:00 is 10:00 UTC
    utc = datetime.timezone.utc
    assert found(taken_after=datetime.datetime(2019, 7, 14, 10, 0, 0, tzinfo=utc)) == {full, partial}
    assert found(taken_after=datetime.datetime(2019, 7, 14, 10, 0, 1, tzinfo=utc)) == {partial}
    east = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    assert found(taken_before=datetime.datetime(2019, 7, 14, 15, 30, 1, tzinfo=east)) == {full}   # 10:00:01Z
    # a naive datetime is a clock time, compared with each photo's own clock (12:00 in Sydney)
    assert found(taken_after=datetime.datetime(2019, 7, 14, 11, 59)) == {full, partial}
    assert found(taken_after=datetime.datetime(2019, 7, 14, 12, 0, 1)) == {partial}
    assert found(near=(-33.86, 151.21, 50)) == {full}
    assert found(near={"lat": 40.7, "lon": -74.0, "km": 10}) == {partial}
    assert found(tags=["captured"], camera="fujifilm", min_score=-1.0) == {full}
    # the same through filters=, and both ways at once when the keys differ
    assert {h.image_id for h in client.query("a photo", filters={"path_prefix": "/captured/", "camera": "canon"})} \
        == {partial}
    assert {h.image_id for h in client.query_image(full, k=5, filters={"path_prefix": "/captured/"},
                                                  camera="canon")} == {partial}
    hit = client.query("a photo", k=10, path_prefix="/captured/", camera="x-t3")[0]
    assert hit.camera == "Fujifilm X-T3" and hit.taken_at == "2019-07-14T12:00:00+02:00"
    assert hit.gps == pytest.approx((-33.8568, 151.2153)) and (hit.width, hit.height) == (48, 32)
    img = client.get(partial)
    assert (img.camera, img.taken_at) == ("Canon EOS 5D Mark IV", "2021-01-02T03:04:05")
    assert img.gps == pytest.approx((40.6892, -74.0445)) and "camera" not in img.extra
    with pytest.raises(umgdb.RequestError) as e:          # the server's own check of the text
        client.query("a photo", taken_after="last summer")
    assert "taken_after" in e.value.message


def test_filter_argument_checks(client):
    with pytest.raises(ValueError):                       # one filter given two ways
        client.query("x", filters={"camera": "a"}, camera="b")
    with pytest.raises(ValueError):
        client.query("x", near=(1, 2))
    with pytest.raises(ValueError):
        client.query("x", near={"lat": 1, "lon": 2})
    with pytest.raises(TypeError):
        client.query("x", tags="one-string")
    with pytest.raises(TypeError):
        client.query("x", taken_after=2019)


def test_thumb(client, photos):
    from PIL import Image as PILImage
    name = sorted(photos[2])[7]
    data, (w, h), _ = photos[2][name]
    r = client.ingest(data, name="thumbs/" + name)
    jpeg = client.thumb(r.image_id)
    assert isinstance(jpeg, bytes) and jpeg[:3] == b"\xff\xd8\xff"
    im = PILImage.open(io.BytesIO(jpeg))
    assert im.format == "JPEG" and max(im.size) == min(320, max(w, h))
    assert abs(im.size[0] / im.size[1] - w / h) < 0.02
    assert client.thumb("thumbs/" + name) == jpeg          # by stored path
    # an EXIF-rotated photo (stored 16x32, shown 32x16): the thumbnail is upright
    with open(os.path.join(FIXTURE_IMAGES, "exif_6.jpg"), "rb") as f:
        rot = client.ingest(f.read(), name="thumbs/exif_6.jpg")
    assert PILImage.open(io.BytesIO(client.thumb(rot.image_id))).size == (32, 16)
    client.delete(r.image_id)
    with pytest.raises(umgdb.NotFoundError) as e:
        client.thumb(r.image_id)
    assert e.value.code == "not_found"
    with pytest.raises(TypeError):
        client.thumb(1.5)


# ---- errors -----------------------------------------------------------------

def test_error_responses_carry_the_code_and_keep_the_connection(client):
    with pytest.raises(umgdb.RequestError) as e:
        client.query("cat", k=0)
    assert e.value.code == "invalid_argument" and "'k'" in e.value.message and e.value.request_id > 0
    assert str(e.value).startswith("invalid_argument: ")
    with pytest.raises(umgdb.RequestError) as e:
        client.query("cat", granularity="pixels")
    assert "granularity" in e.value.message
    with pytest.raises(umgdb.RequestError) as e:
        client.query("cat", filters={"colour": "red"})
    assert "filters.colour" in e.value.message
    with pytest.raises(umgdb.ImageError) as e:
        client.ingest(b"%PDF-1.7 not a photo", name="x.pdf")  # GIF decodes since issue 17
    assert e.value.code == "unsupported"
    assert isinstance(e.value, umgdb.ServerError) and isinstance(e.value, umgdb.UmgdbError)
    with pytest.raises(umgdb.NotFoundError):
        client.get(10 ** 12)
    assert client.ping().model == "synth-umg"            # still usable


def test_timeout_leaves_the_connection_usable(client, photos):
    made = photos[2]
    name = sorted(made)[7]
    with pytest.raises(umgdb.UmgdbTimeout) as e:
        client.ingest(made[name][0], name="timeout/" + name, timeout=1e-4)
    assert e.value.code == "timeout" and isinstance(e.value, TimeoutError)
    assert client.ping().model == "synth-umg"            # the late ingest answer was dropped
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:                   # the ingest itself went through
        try:
            assert client.get("timeout/" + name).bytes == len(made[name][0])
            break
        except umgdb.NotFoundError:
            time.sleep(0.05)
    else:
        pytest.fail("the timed-out ingest never landed")
    assert client.in_flight == 0


def test_client_refuses_a_request_over_its_frame_limit(server):
    with umgdb.Client(server.addr, max_frame=1 << 20) as c:
        with pytest.raises(umgdb.TooLargeError) as e:
            c.ingest(b"\xff\xd8" + bytes(2 << 20), name="big.jpg")
        assert e.value.request_id is None and e.value.code == "too_large"   # nothing was sent
        assert c.ping().model == "synth-umg"


# ---- a folder, pipelined ------------------------------------------------------

def test_ingest_folder_pipelined(client, photos):
    root, folder, made = photos
    top = os.path.join(root, "folder")
    os.makedirs(os.path.join(top, "sub"))
    names = sorted(made)
    for n in names[:6]:
        shutil.copyfile(os.path.join(folder, n), os.path.join(top, n))
    for n in names[6:9]:
        shutil.copyfile(os.path.join(folder, n), os.path.join(top, "sub", n))
    with open(os.path.join(top, "notes.txt"), "w") as f:
        f.write("not a photo\n")
    with open(os.path.join(top, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    shutil.copyfile(os.path.join(folder, names[0]), os.path.join(top, ".hidden.jpg"))

    seen = []
    window = 4
    report = client.ingest_folder(top, window=window,
                                  progress=lambda done, total, fr: seen.append((done, total, fr, client.in_flight)))
    n_photos = 6 + 3 + 1                                # broken.jpg is sent: only the server can tell
    assert [s[0] for s in seen] == list(range(1, n_photos + 1))
    assert all(s[1] == n_photos for s in seen)
    # Pipelined: when the first answer is handled, the rest of the window is still out.
    assert seen[0][3] == window - 1 and max(s[3] for s in seen) == window - 1
    assert client.in_flight == 0
    assert sorted(report.skipped) == sorted([os.path.join(top, ".hidden.jpg"), os.path.join(top, "notes.txt")])
    assert report.ingested == 9 and report.unchanged == 0
    [bad] = report.failed
    assert bad.path == os.path.join(top, "broken.jpg") and isinstance(bad.error, umgdb.ServerError)
    assert isinstance(bad.error, umgdb.ImageError) and bad.error.code == "bad_format"
    for fr in report.files:                              # every answer went to its own file
        if fr.status == "ingested":
            img = client.get(fr.result.image_id)
            assert img.path == os.path.realpath(fr.path) == fr.result.path
            with open(fr.path, "rb") as f:
                assert img.sha256 == hashlib.sha256(f.read()).hexdigest()
    again = client.ingest_folder(top, window=window)
    assert again.unchanged == 9 and again.ingested == 0 and len(again.failed) == 1
    flat = client.ingest_folder(top, recursive=False, window=1)
    assert len(flat.files) == 7 and os.path.join(top, "sub") not in [os.path.dirname(f.path) for f in flat.files]


def test_ingest_folder_by_server_path(client, photos):
    root, folder, made = photos
    top = os.path.join(root, "folder-by-path")
    make_photos(top, 20, 3)
    report = client.ingest_folder(top, server_path=True, tags=["pathwise"], window=2)
    assert report.ingested == 3 and not report.failed
    for fr in report.files:
        img = client.get(fr.path)
        assert img.image_id == fr.result.image_id and img.tags == ["pathwise"]


def test_ingest_folder_relative_path_and_odd_names(client, photos, monkeypatch):
    root, folder, made = photos
    top = os.path.join(root, "folder-odd")
    make_photos(top, 40, 2)
    odd = os.path.join(os.fsencode(top), b"caf\xe9.jpg")          # Latin-1 name: not UTF-8
    shutil.copyfile(os.path.join(folder, sorted(made)[0]), odd)
    monkeypatch.chdir(root)
    report = client.ingest_folder("folder-odd", server_path=True, window=3)
    assert report.ingested == 2
    for fr in report.files[1:]:                                   # the two photos: stored absolute
        assert fr.result.path == os.path.join(top, os.path.basename(fr.path))
        assert client.get(fr.result.path).image_id == fr.result.image_id
    [bad] = report.failed                                         # the protocol's strings are UTF-8
    assert bad.path == os.path.join("folder-odd", os.fsdecode(b"caf\xe9.jpg"))
    assert isinstance(bad.error, UnicodeEncodeError)


def test_ingest_folder_arguments(client, tmp_path):
    with pytest.raises(ValueError):
        client.ingest_folder(str(tmp_path), window=0)
    with pytest.raises(ValueError):
        client.ingest_folder(str(tmp_path), window=65)
    with pytest.raises(NotADirectoryError):
        client.ingest_folder(str(tmp_path / "absent"))
    empty = client.ingest_folder(str(tmp_path))
    assert empty.files == [] and empty.skipped == []


# ---- auth, the server's limits, a server that goes away -------------------------

@pytest.fixture(scope="module")
def auth_server(umgdb_bin, tmp_path_factory):
    """--require-auth with a token, and a 1 MiB frame limit."""
    srv = Server(umgdb_bin, str(tmp_path_factory.mktemp("auth")), extra=["--require-auth", "--max-frame", "1M"],
                 env={"UMGDB_AUTH_TOKEN": TOKEN})
    yield srv
    srv.stop()


def test_auth(auth_server):
    for token in (None, "wrong"):
        with pytest.raises(umgdb.AuthError) as e:
            umgdb.Client(auth_server.addr, token=token)
        assert e.value.code == "unauthorized"
    with umgdb.Client(auth_server.addr, token=TOKEN) as c:
        assert c.server_info.auth_required is True
        with pytest.raises(umgdb.NotFoundError):          # past the auth gate
            c.get(10 ** 9)
        assert c.stats().model == "synth-umg"


def test_server_frame_limit_closes_the_connection(auth_server, photos, tmp_path):
    with umgdb.Client(auth_server.addr, token=TOKEN) as c:      # the client thinks 64 MiB is fine
        with pytest.raises(umgdb.TooLargeError) as e:
            c.ingest(b"\xff\xd8" + bytes(2 << 20), name="big.jpg")
        assert e.value.code == "too_large" and e.value.request_id == 0
        with pytest.raises(umgdb.UmgdbConnectionError) as e:
            c.ping()
        assert "closed the connection" in e.value.message and "too_large" in e.value.message
        assert c.closed
    # A folder run against the same limit, with the client told the server's limit:
    # the big file fails alone, unsent; the others go through.
    folder = str(tmp_path / "mixed")
    make_photos(folder, 30, 2)
    with open(os.path.join(folder, "huge.png"), "wb") as f:
        f.write(b"\x89PNG" + bytes(2 << 20))
    with umgdb.Client(auth_server.addr, token=TOKEN, max_frame=1 << 20) as c:
        report = c.ingest_folder(folder)
        assert report.ingested == 2
        [big] = report.failed
        assert big.path.endswith("huge.png") and isinstance(big.error, umgdb.TooLargeError)
    # Not told: the server refuses the frame and closes, which ends the run; the
    # exception carries what was done before (the two photos sort first).
    os.rename(os.path.join(folder, "huge.png"), os.path.join(folder, "zz-huge.png"))
    with umgdb.Client(auth_server.addr, token=TOKEN) as c:
        with pytest.raises(umgdb.TooLargeError) as e:
            c.ingest_folder(folder, window=1)
        assert e.value.request_id == 0
        assert [f.status for f in e.value.report.files] == ["unchanged", "unchanged"]
        with pytest.raises(umgdb.UmgdbConnectionError):
            c.ping()
    assert auth_server.alive()


def test_server_stop_is_a_clear_error(umgdb_bin, tmp_path):
    srv = Server(umgdb_bin, str(tmp_path))
    c = umgdb.Client(srv.addr, timeout=30)
    c.ping()
    assert srv.stop() == 0
    t = time.monotonic()
    with pytest.raises(umgdb.UmgdbConnectionError) as e:
        c.ping()
    assert time.monotonic() - t < 10 and "closed" in e.value.message
    assert c.closed


# ---- faults a real server does not make (a scripted peer) -----------------------

class FakeServer:
    """Accepts one connection and runs behave(conn) on it, in a thread."""

    def __init__(self, behave):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, args=(behave,), daemon=True)
        self.thread.start()

    def _run(self, behave):
        conn, _ = self.lsock.accept()
        with conn:
            behave(conn)

    def close(self):
        self.lsock.close()
        self.thread.join(5)


def read_request(conn):
    (n,) = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))
    return msgpack.unpackb(conn.recv(n, socket.MSG_WAITALL))


def hello_answer(rid):
    return {"id": rid, "ok": True, "result": {"protocol": 1, "server": "fake", "model": "m", "dim": 4, "grid": 2,
                                             "region_mode": "dense", "precision": "fp32", "auth_required": False}}


def frame(obj):
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def test_silent_server_times_out():
    stop = threading.Event()
    fake = FakeServer(lambda conn: stop.wait(10))
    t = time.monotonic()
    with pytest.raises(umgdb.UmgdbTimeout):
        umgdb.Client(fake.addr, timeout=0.5)
    assert time.monotonic() - t < 5
    stop.set()
    fake.close()


@pytest.mark.parametrize("reply, what", [
    (b"", "closed the connection"),
    (struct.pack(">I", 0xFFFFFFF0), "frame of"),                      # over max_frame: refused unbuffered
    (struct.pack(">I", 3) + b"\xc1\xc1\xc1", "malformed"),
    (frame([1, 2]), "malformed"),
    (frame({"id": 99, "ok": True, "result": {}}), "not waiting"),
])
def test_broken_answers_are_connection_errors(reply, what):
    def behave(conn):
        req = read_request(conn)
        conn.sendall(frame(hello_answer(req["id"])))
        read_request(conn)
        conn.sendall(reply)
        time.sleep(0.2)

    fake = FakeServer(behave)
    c = umgdb.Client(fake.addr, timeout=5)
    assert c.server_info.server == "fake"
    with pytest.raises(umgdb.UmgdbConnectionError) as e:
        c.stats()
    assert what in e.value.message and c.closed
    fake.close()


def test_pipeline_larger_than_the_socket_buffers(client, collection):
    """Tens of megabytes of requests queued at once, with tens of megabytes of
    answers: the server stops reading a connection whose answers are not taken
    (docs/server.md, backpressure), so a client that sent everything before
    reading would wait for ever once the kernel's buffers are full. This one
    reads while it sends (umgdb/_wire.py)."""
    conn = client._conn
    text = ("a red circle and a blue square " * 140)[:4096]
    # Large requests with small answers (24 KB of filters that no photo passes) ...
    heavy = {"text": text, "k": 1000, "filters": {"path_prefix": "/" + "p" * 4095,
                                                  "tags": ["%02d" % i + "t" * 254 for i in range(64)]}}
    # ... between small requests with large answers (every box of every photo, ~34 KB).
    wide = {"text": text, "granularity": "region", "k": 1000, "per_photo": 1000}
    n = 800
    t = time.monotonic()
    ids = []
    for _ in range(n):
        ids.append(conn.queue("query", heavy))
        ids.append(conn.queue("query", wide))
    answers = [conn.wait(rid, 120) for rid in ids]
    assert all(a["ok"] for a in answers)
    assert all(a["result"]["hits"] == [] for a in answers[0::2])
    assert len({len(a["result"]["hits"]) for a in answers[1::2]}) == 1
    sent = n * (len(msgpack.packb(heavy)) + len(msgpack.packb(wide)))
    got = sum(len(msgpack.packb(a)) for a in answers)
    assert sent > 16 << 20 and got > 16 << 20, "too small to fill the buffers"
    print("pipeline: %d requests, %.1f MB sent, %.1f MB of answers, %.1f s" % (2 * n, sent / 1e6, got / 1e6,
                                                                             time.monotonic() - t))


def test_results_keep_what_a_newer_server_adds():
    h = umgdb.Hit.from_wire({"image_id": 3, "path": "a.jpg", "score": 0.5, "box": [1, 2, 3, 4], "region_id": 9,
                             "colour": "red"})
    assert (h.image_id, h.path, h.score, h.box, h.region_id) == (3, "a.jpg", 0.5, umgdb.Box(1.0, 2.0, 3.0, 4.0), 9)
    assert h.heatmap is None and h.refined is None and h.extra == {"colour": "red"}
    r = umgdb.IngestResult.from_wire({"image_id": 1, "regions": 2, "duplicate": False}, path="x.jpg")
    assert r.replaced is False and r.path == "x.jpg" and r.extra == {}
    with pytest.raises(ValueError):
        umgdb.Hit.from_wire([1, 2])
