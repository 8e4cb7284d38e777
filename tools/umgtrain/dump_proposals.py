"""The server's region proposals of a generated world: for validate.py --proposals and
for train.py --proposals (training on the boxes the server really ranks).

    /usr/bin/python3 -m tools.umgtrain.dump_proposals UMGDB_BIN PHOTO_DIR MODEL_DIR OUT.json
    /usr/bin/python3 -m tools.umgtrain.dump_proposals UMGDB_BIN --seed S --count N MODEL_DIR OUT.json [--procs P]

Starts `umgdb serve` on a temporary data directory, ingests every photo of PHOTO_DIR
(or, with --seed/--count, the photos `python3 -m tools.synthworld.generate --seed S --count N`
writes, rendered here by P processes into a temporary directory; no masks or
annotations), 32 proposals each, as tests/meaning/check_meaning.py does, and writes
{file name: the `umgdb get --json` record, whose "regions" hold the boxes}.
enc_propose depends on the pixels only, not on the model: any checkpoint gives the
same boxes (the model only has to load)."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool

from tools.synthworld import world


def _write_photo(job):
    seed, index, out_dir = job
    name, data, _, _, _ = world.make(seed, index)
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(data)
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("umgdb")
    ap.add_argument("args", nargs="+", help="[PHOTO_DIR] MODEL_DIR OUT.json")
    ap.add_argument("--seed", type=int, help="render the photos of this world seed instead of PHOTO_DIR")
    ap.add_argument("--count", type=int)
    ap.add_argument("--procs", type=int, default=2, help="processes rendering the photos (--seed)")
    ap.add_argument("--threads", type=int, default=1, help="the server's --threads; parallel `get` calls")
    a = ap.parse_args()
    if (a.seed is None) != (len(a.args) == 3) or len(a.args) not in (2, 3) or (a.seed is not None and not a.count):
        ap.error("give PHOTO_DIR MODEL_DIR OUT.json, or --seed S --count N MODEL_DIR OUT.json")
    model, out = a.args[-2:]
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="umg-props-")
    srv = None
    try:
        if a.seed is not None:
            photos = os.path.join(tmp, "photos")
            os.makedirs(photos)
            jobs = [(a.seed, i, photos) for i in range(a.count)]
            with Pool(a.procs) as p:
                p.map(_write_photo, jobs, chunksize=16)
            print("dump_proposals: rendered %d photos in %.0f s" % (a.count, time.time() - t0), flush=True)
        else:
            photos = a.args[0]
        sock = os.path.join(tmp, "s.sock")
        addr = "unix:" + sock
        srv = subprocess.Popen([a.umgdb, "serve", "--data", os.path.join(tmp, "data"), "--model", model,
                                "--socket", sock, "--log-level", "error", "--threads", str(a.threads)])
        for _ in range(300):
            if os.path.exists(sock) and subprocess.run([a.umgdb, "stats", "--server", addr],
                                                      capture_output=True).returncode == 0:
                break
            if srv.poll() is not None:
                sys.exit("dump_proposals: the server exited with %d" % srv.returncode)
            time.sleep(0.1)
        files = sorted(os.path.join(photos, f) for f in os.listdir(photos) if f.endswith((".jpg", ".png")))
        t1 = time.time()
        subprocess.run([a.umgdb, "ingest", "--server", addr, "--timeout", "600"] + files, check=True,
                       capture_output=True)
        print("dump_proposals: ingested in %.0f s" % (time.time() - t1), flush=True)

        def get(f):
            r = subprocess.run([a.umgdb, "get", "--server", addr, "--json", "--path", os.path.abspath(f)],
                               check=True, capture_output=True, text=True)
            return os.path.basename(f), json.loads(r.stdout)

        with ThreadPoolExecutor(max(1, a.threads)) as ex:
            res = dict(ex.map(get, files))
        with open(out + ".tmp", "w") as fo:
            json.dump(res, fo)
        os.replace(out + ".tmp", out)
        print("dump_proposals: %d photos in %.0f s wall" % (len(res), time.time() - t0), flush=True)
    finally:
        if srv is not None:
            srv.terminate()
            srv.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
