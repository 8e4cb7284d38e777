#!/usr/bin/python3
"""The server's region proposals of a generated world, for validate.py --proposals.

    tools/umgtrain/dump_proposals.py UMGDB_BIN PHOTO_DIR MODEL_DIR OUT.json

Starts `umgdb serve` on a temporary data directory, ingests every photo of PHOTO_DIR
(32 proposals each, as tests/meaning/check_meaning.py does), and writes
{file name: the `umgdb get --json` record, whose "regions" hold the boxes}."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    umgdb, photos, model, out = sys.argv[1:5]
    tmp = tempfile.mkdtemp(prefix="umg-props-")
    sock = os.path.join(tmp, "s.sock")
    addr = "unix:" + sock
    srv = subprocess.Popen([umgdb, "serve", "--data", os.path.join(tmp, "data"), "--model", model,
                            "--socket", sock, "--log-level", "warn", "--threads", "1"])
    try:
        for _ in range(300):
            if os.path.exists(sock) and subprocess.run([umgdb, "stats", "--server", addr],
                                                      capture_output=True).returncode == 0:
                break
            if srv.poll() is not None:
                sys.exit("dump_proposals: the server exited with %d" % srv.returncode)
            time.sleep(0.1)
        files = sorted(os.path.join(photos, f) for f in os.listdir(photos) if f.endswith((".jpg", ".png")))
        subprocess.run([umgdb, "ingest", "--server", addr, "--timeout", "600"] + files, check=True,
                       capture_output=True)
        res = {}
        for f in files:
            r = subprocess.run([umgdb, "get", "--server", addr, "--json", "--path", os.path.abspath(f)],
                               check=True, capture_output=True, text=True)
            res[os.path.basename(f)] = json.loads(r.stdout)
        with open(out, "w") as fo:
            json.dump(res, fo)
    finally:
        srv.terminate()
        srv.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
