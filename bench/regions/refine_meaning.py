"""Text-to-region through the real server with and without "refine": "pixel".

    /usr/bin/python3 -m bench.regions.refine_meaning BUILD/umgdb [--seed 1000] [--count 200] [--model DIR] [--region-mode dense|crop]

tests/meaning/check_meaning.py's method (generate the held-out photos, `umgdb serve` on a
temporary data directory, `umgdb ingest`, every region query of tools/umgtrain/meaning.py
with `umgdb query --json -k 50 --regions`, scored by meaning.py), run twice on the same
server: plain and with `--refine`.  Prints the top-box accuracy (IoU >= 0.5 with the
phrase's object), the binding failure rate, how many top boxes changed, and the median
query time of both, measured interleaved (client process start-up included)."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from tools.umgtrain import meaning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("umgdb")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--model", default=os.path.join(ROOT, "tests", "fixtures", "synth-umg"))
    ap.add_argument("--region-mode", default="dense")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="umg-refine-")
    server = None
    try:
        photos = os.path.join(tmp, "photos")
        run(["/usr/bin/python3", "-m", "tools.synthworld.generate",
             "--seed", str(a.seed), "--count", str(a.count), photos], cwd=ROOT)
        sock = os.path.join(tmp, "umgdb.sock")
        server = subprocess.Popen([a.umgdb, "serve", "--data", os.path.join(tmp, "data"), "--model", a.model,
                                   "--socket", sock, "--region-mode", a.region_mode, "--log-level", "warn",
                                   "--threads", "1"])
        addr = "unix:" + sock
        for _ in range(300):
            if os.path.exists(sock) and subprocess.run([a.umgdb, "stats", "--server", addr],
                                                      stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL).returncode == 0:
                break
            if server.poll() is not None:
                sys.exit("refine_meaning: the server exited with %d" % server.returncode)
            time.sleep(0.1)
        files = sorted(os.path.join(photos, f) for f in os.listdir(photos) if f.endswith((".jpg", ".png")))
        run([a.umgdb, "ingest", "--server", addr, "--timeout", "600"] + files)
        with open(os.path.join(photos, "annotations.json")) as f:
            ann = json.load(f)
        queries = [q for q in meaning.make_queries(ann) if q["granularity"] == "region"]
        results = {"plain": [], "refine": []}
        times = {"plain": [], "refine": []}
        for q in queries:  # interleaved, so both arms see the same machine load
            for arm in ("plain", "refine"):
                cmd = [a.umgdb, "query", "--server", addr, "--json", "-k", str(a.k), "--regions"]
                if arm == "refine":
                    cmd.append("--refine")
                t0 = time.perf_counter()
                out = json.loads(run(cmd + [q["text"]]).stdout)
                times[arm].append(time.perf_counter() - t0)
                results[arm].append({"text": q["text"], "granularity": "region", "hits": out["hits"]})
        changed = sum(1 for p, r in zip(results["plain"], results["refine"])
                      if p["hits"] and r["hits"] and (p["hits"][0]["path"], p["hits"][0]["box"])
                      != (r["hits"][0]["path"], r["hits"][0]["box"]))
        print("refine_meaning: %d photos (seed %d), region mode %s, model %s, %d region queries, k = %d"
              % (a.count, a.seed, a.region_mode, os.path.relpath(a.model, ROOT), len(queries), a.k))
        for arm in ("plain", "refine"):
            f, _ = meaning.score(ann, results[arm])
            print("  %-7s top box IoU >= 0.5: %.3f (%d phrases)   binding failures: %.3f (%d)   "
                  "query median %.1f ms"
                  % (arm, f["region_top_iou50"], f["region_queries"], f["binding_failure_rate"],
                     f["binding_queries"], 1000 * statistics.median(times[arm])))
        print("  top box changed by refine: %d of %d queries" % (changed, len(queries)))
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
