"""Checks of meaning through the real server (issue 6), on the synthetic world.

    /usr/bin/python3 -m tests.meaning.check_meaning UMGDB_BIN [--count 200] [--seed 1000]
                                   [--region-mode dense|crop] [--model DIR]

Generates held-out photos (a seed the model never saw in training), starts
`umgdb serve` with tests/fixtures/synth-umg on a temporary data directory and a
Unix socket, ingests the photos with `umgdb ingest`, runs every query of
tools/umgtrain/meaning.py (captions -> image search, phrases -> region search,
colour+shape phrases -> attribute binding) with `umgdb query --json` (region queries
also with `--refine`, the pixel-level re-ranking), scores the answers with
meaning.py's definitions, and prints the figures next to issue 6's
targets (met or not).  It FAILS when a figure drops below its FLOOR: the issue's
target where the committed model clears it by several queries, otherwise the
figure measured when the model was committed minus a small margin (see FLOORS).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tools.umgtrain import meaning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGETS = {"recall@1": (">=", 0.8), "recall@5": (">=", 0.95), "region_top_iou50": (">=", 0.8),
           "binding_failure_rate": ("report", None)}
# Measured through the server with the committed synth-umg (seed 1000, 200 photos; docs/synth.md):
# recall@1 0.850, recall@5 0.995 in both modes; region_top_iou50 0.811 dense (0.863 with --refine) /
# 0.021 crop; binding failures 0.021 / 0.542 (reported only).  Floors: the targets where the
# figure clears them by several queries (recall@1, recall@5, dense --refine), else measured minus
# ~0.05 (plain dense: 0.811 is one query above 0.8, and a one-query flip from last-bit differences
# on another CPU must not turn CI red; the printed line still says whether the target is met).
# The crop mode's region figures are not asserted (near zero: a floor would assert nothing).
FLOORS = {"dense": {"recall@1": 0.80, "recall@5": 0.95, "region_top_iou50": 0.76,
                    "region_top_iou50 --refine": 0.80},
          "crop": {"recall@1": 0.80, "recall@5": 0.95}}


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("umgdb")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--region-mode", default="dense")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--model", default=os.path.join(ROOT, "tests", "fixtures", "synth-umg"),
                    help="checkpoint to check (default: the committed synth-umg, whose figures FLOORS holds)")
    a = ap.parse_args()
    model = a.model
    tmp = tempfile.mkdtemp(prefix="umg-meaning-")
    server = None
    try:
        photos = os.path.join(tmp, "photos")
        run(["/usr/bin/python3", "-m", "tools.synthworld.generate",
             "--seed", str(a.seed), "--count", str(a.count), photos], cwd=ROOT)
        sock = os.path.join(tmp, "umgdb.sock")
        server = subprocess.Popen([a.umgdb, "serve", "--data", os.path.join(tmp, "data"), "--model", model,
                                   "--socket", sock, "--region-mode", a.region_mode, "--log-level", "warn"])
        addr = "unix:" + sock
        for _ in range(300):
            if os.path.exists(sock) and subprocess.run([a.umgdb, "stats", "--server", addr],
                                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                break
            if server.poll() is not None:
                sys.exit("check_meaning: the server exited with %d" % server.returncode)
            time.sleep(0.1)
        files = sorted(os.path.join(photos, f) for f in os.listdir(photos) if f.endswith((".jpg", ".png")))
        run([a.umgdb, "ingest", "--server", addr, "--timeout", "600"] + files)
        with open(os.path.join(photos, "annotations.json")) as f:
            ann = json.load(f)
        results, refined = [], []
        t0 = time.time()
        for q in meaning.make_queries(ann):
            cmd = [a.umgdb, "query", "--server", addr, "--json", "-k", str(a.k)]
            if q["granularity"] == "region":
                cmd.append("--regions")
            out = json.loads(run(cmd + [q["text"]]).stdout)
            results.append({"text": q["text"], "granularity": q["granularity"], "hits": out["hits"]})
            if q["granularity"] == "region":  # the same query re-ranked by the pixel level
                out = json.loads(run(cmd + ["--refine", q["text"]]).stdout)
                refined.append({"text": q["text"], "granularity": q["granularity"], "hits": out["hits"]})
        figures, failures = meaning.score(ann, results)
        # with `umgdb query --refine` (docs/regions.md, "Pixel-level refinement"): region figures only
        rfig, _ = meaning.score(ann, refined)
        figures["region_top_iou50 --refine"] = rfig["region_top_iou50"]
        figures["binding_failure_rate --refine"] = rfig["binding_failure_rate"]
        print("check_meaning: %d photos (seed %d), region mode %s, %d queries in %.1f s"
              % (a.count, a.seed, a.region_mode, len(results), time.time() - t0))
        bad = []
        floors = FLOORS.get(a.region_mode, {})
        for key, val in figures.items():
            line = "  %-30s %s" % (key, "%.3f" % val if isinstance(val, float) else val)
            target = TARGETS.get(key.split(" ")[0])
            if target and target[1] is not None:
                line += "   (issue 6 target %s %.2f: %s)" % (target[0], target[1],
                                                             "met" if val >= target[1] else "NOT met")
            if key in floors:
                line += "   floor %.2f" % floors[key]
                if val < floors[key]:
                    bad.append(key)
            print(line)
        if bad:
            sys.exit("check_meaning: below the committed level: " + ", ".join(bad))
        print("check_meaning: 1 passed, 0 failed")
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
