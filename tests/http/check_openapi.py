#!/usr/bin/python3
"""Every op's real HTTP answer validates against web/openapi.json as served.

Starts `umgdb serve --http` (tests/fixtures/clip-tiny) on a temporary data
directory, fetches GET /v1/openapi.json, runs every operation (ok answers and
a few errors) and validates each answer's JSON against the schema the
document gives for that path, method and status (python3-jsonschema, Debian).
Also checks the document covers every op of the msgpack protocol.

usage: check_openapi.py UMGDB_BINARY
"""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import jsonschema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "fixtures", "clip-tiny")
OPS = ["hello", "ping", "ingest", "query", "query_image", "get", "delete", "stats", "thumb"]  # protocol/proto_request.c


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def inline_refs(node, doc):
    """The schema with every local $ref replaced by what it names (the
    document has no cycles), so any jsonschema version validates it."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return inline_refs(target, doc)
        return {k: inline_refs(v, doc) for k, v in node.items() if k not in ("format",)}
    if isinstance(node, list):
        return [inline_refs(v, doc) for v in node]
    return node


def main():
    binary = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="umg_openapi_")
    port = free_port()
    photos = os.path.join(tmp, "photos")
    os.makedirs(photos)
    img = os.path.join(TINY, "images", sorted(f for f in os.listdir(os.path.join(TINY, "images"))
                                              if f.endswith(".jpg"))[0])
    shutil.copy(img, os.path.join(photos, "p.jpg"))
    log = open(os.path.join(tmp, "log"), "w")
    srv = subprocess.Popen([binary, "serve", "--data", os.path.join(tmp, "data"), "--model", TINY, "--threads", "1",
                            "--socket", os.path.join(tmp, "sock"), "--http", "127.0.0.1:%d" % port,
                            "--allow-root", photos], stdout=log, stderr=log)
    base = "http://127.0.0.1:%d" % port
    checked = []
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/v1/openapi.json", timeout=5).read()
                break
            except OSError:
                if srv.poll() is not None:
                    sys.exit("server exited: " + open(os.path.join(tmp, "log")).read())
                time.sleep(0.1)
        doc = json.loads(urllib.request.urlopen(base + "/v1/openapi.json").read())
        assert doc["openapi"].startswith("3."), doc["openapi"]
        for op in OPS:
            assert "/v1/" + op in doc["paths"], "openapi.json lacks /v1/" + op

        def call(method, path, body=None, raw=None, query="", template=None):
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            req = urllib.request.Request(base + path + query, data=data, method=method)
            if raw is None:
                req.add_header("Content-Type", "application/json")
            try:
                r = urllib.request.urlopen(req, timeout=60)
                status, text = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, text = e.code, e.read()
            answer = json.loads(text)
            op = doc["paths"][template or path][method.lower()]
            resp = op["responses"].get(str(status))
            assert resp, "%s %s: status %d not in the document" % (method, path, status)
            schema = inline_refs(resp["content"]["application/json"]["schema"], doc)
            jsonschema.validate(answer, schema)
            checked.append((method, template or path, status))
            return status, answer

        def call_bytes(path, template, headers=None):
            """A GET answering bytes: its status, media type and documented
            headers must be what the document gives for it."""
            req = urllib.request.Request(base + path, headers=headers or {})
            try:
                r = urllib.request.urlopen(req, timeout=60)
                status, hdrs, body = r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                status, hdrs, body = e.code, e.headers, e.read()
            resp = doc["paths"][template]["get"]["responses"].get(str(status))
            assert resp, "GET %s: status %d not in the document" % (path, status)
            if status != 304:
                assert hdrs["Content-Type"] in resp["content"], (path, hdrs["Content-Type"], list(resp["content"]))
                assert int(hdrs["Content-Length"]) == len(body)
            for h in resp.get("headers", {}):
                assert hdrs[h], "GET %s: no %s header, which the document gives" % (path, h)
            checked.append(("GET", template, status))
            return status, hdrs, body

        st, a = call("POST", "/v1/hello", {"client": "check_openapi"})
        assert st == 200 and a["ok"], a
        call("POST", "/v1/ping", {})
        st, a = call("POST", "/v1/ingest", raw=open(img, "rb").read(), query="?name=bytes.jpg&tags=a,b")
        assert st == 200, a
        id1 = a["result"]["image_id"]
        st, a = call("POST", "/v1/ingest", {"path": os.path.join(photos, "p.jpg"), "tags": ["x"]})
        assert st == 200, a
        id2 = a["result"]["image_id"]
        st, a = call("POST", "/v1/ingest", {"data": base64.b64encode(open(img, "rb").read()).decode(), "name": "b64.jpg"})
        assert st == 200, a
        for g in ("image", "region", "pixel"):
            st, a = call("POST", "/v1/query", {"text": "a photo", "granularity": g, "k": 3})
            assert st == 200 and a["result"]["hits"], a
        st, a = call("POST", "/v1/query", {"text": "a photo", "granularity": "region", "refine": "pixel", "k": 2})
        assert st == 200, a
        st, a = call("POST", "/v1/query_image", {"image_id": id1, "k": 2})
        assert st == 200, a
        st, a = call("POST", "/v1/query_image", {"data": base64.b64encode(open(img, "rb").read()).decode(),
                                                 "granularity": "region", "k": 2})
        assert st == 200, a
        st, a = call("POST", "/v1/get", {"image_id": id2})
        assert st == 200 and a["result"]["tags"] == ["x"], a
        st, a = call("GET", "/v1/images/%d" % id1, template="/v1/images/{id}")
        assert st == 200 and a["result"]["path"] == "bytes.jpg", a
        st, a = call("POST", "/v1/stats", {})
        assert st == 200 and a["result"]["images"] == 3, a
        # thumbnails: one per photo whichever way it came; revalidation; 404 once deleted
        thumb = "/v1/images/{id}/thumb"
        for iid in (id1, id2):
            st, hdrs, jpeg = call_bytes("/v1/images/%d/thumb" % iid, thumb)
            assert st == 200 and jpeg[:2] == b"\xff\xd8", (st, jpeg[:16])
        st, _, body = call_bytes("/v1/images/%d/thumb" % id1, thumb, {"If-None-Match": hdrs["ETag"]})
        assert st == 304 and body == b"", st
        st, a = call("POST", "/v1/thumb", {"path": "bytes.jpg"})     # the msgpack op: the same bytes, base64
        assert st == 200 and base64.b64decode(a["result"]["data"]) == call_bytes("/v1/images/%d/thumb" % id1, thumb)[2]
        st, a = call("POST", "/v1/delete", {"image_id": id1})
        assert st == 200 and a["result"]["deleted"], a
        assert call("GET", "/v1/images/%d/thumb" % id1, template=thumb)[0] == 404
        assert call("POST", "/v1/thumb", {"image_id": id1})[0] == 404
        # errors validate as Error with their documented status
        assert call("POST", "/v1/get", {"image_id": id1})[0] == 404
        assert call("POST", "/v1/query", {"text": "x", "k": 0})[0] == 400
        assert call("POST", "/v1/query", {"text": "x", "colour": 1})[0] == 400
        assert call("GET", "/v1/images/%d/file" % id1, template="/v1/images/{id}/file")[0] == 404
        r = urllib.request.urlopen(base + "/v1/images/%d/file" % id2)
        assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg" and r.read() == open(img, "rb").read()
    finally:
        srv.terminate()
        srv.wait(60)
        log.close()
    print("validated %d answers against openapi.json: %s" % (len(checked), sorted(set(p for _, p, _ in checked))))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
