#!/usr/bin/python3
"""qemu_dispatch.py - the portable binary's run-time kernel choice on other CPUs.

    tests/qemu_dispatch.py BUILD/umgdb [FIXTURE_DIR]

Runs `umgdb embed --verbose` on the clip-tiny fixture (its 6 images with patch
tokens, its 10 texts) natively and under `qemu-x86_64 -cpu MODEL` for older CPU
models, and checks for every (model, precision):
  - it ran (no illegal instruction: qemu reports SIGILL as a signal exit);
  - the kernels it says it picked fit the emulated CPU (no AVX-512 where the
    model or qemu has none; int8 on "c" without AVX2);
  - fp32: every embedding within cosine 0.99999 and 1e-4 of the torch reference
    (what test_embed_cli asks of the native binary);
  - int8: within cosine 0.999 of the reference, and within cosine 0.99999 of the
    native int8 output (the int8 products give the same bits on every ISA,
    enc_kernels.h, but the fp32 parts around them - layer norms, GELU, OpenBLAS's
    attention - round differently per ISA, and a rounding step in a quantized
    activation can move a value by one step);
  - auto: what enc_precision_auto picks for the CPU the binary saw: int8 with
    AVX-VNNI / AVX-512 VNNI / AMX, or with AVX2 and no AVX-512 (Haswell, and
    qemu 7.2's Skylake-Server, whose AVX-512 it masks), else fp32 (Nehalem);
  - bf16 / fp16 where the CPU lacks them: refused with a clear message (exit 1).
qemu 7.2's TCG emulates up to AVX2 (no AVX-512); an AVX-512 model is still run
(its AVX-512 bits are masked, qemu warns) and checked as what qemu gives it.

OPENBLAS_CORETYPE is removed from the emulated process's environment: OpenBLAS
honours it inside qemu and would run AVX2 kernels on an emulated Nehalem.
Exit 77 (ctest: skipped) when qemu-x86_64 is not installed.
"""
import json
import math
import os
import shutil
import subprocess
import sys

# (model, precisions): the refusals are cheap; an AVX-512 model runs auto only
# (under qemu 7.2 it ends up an AVX2 CPU, which Haswell covers already).
PLAN = [("Nehalem", ["fp32", "int8", "auto", "bf16"]), ("Haswell", ["fp32", "int8", "auto", "fp16"]),
        ("Skylake-Server", ["auto"])]
TOL = {"fp32": 0.99999, "int8": 0.999}


def run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    return p.returncode, p.stdout, p.stderr


def embed_args(umgdb, fixture, precision):
    ref = json.load(open(os.path.join(fixture, "reference.json")))
    args = [umgdb, "embed", "--model", fixture, "--verbose", "--patches", "--precision", precision]
    for it in ref["images"]:
        args += ["--image", os.path.join(fixture, "images", it["file"])]
    for it in ref["texts"]:
        args += ["--text", it["text"]]
    return ref, args


def cosine(a, b):
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def worst_cosine(out, ref):
    """The lowest cosine over image embeddings, patch tokens and texts."""
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    want = ref["images"] + ref["texts"]
    if len(lines) != len(want):
        raise AssertionError("%d outputs for %d inputs" % (len(lines), len(want)))
    worst = 1.0
    for got, w in zip(lines, want):
        worst = min(worst, cosine(got["embedding"], w["embedding"]))
        if "patch_tokens_projected" in w:
            for g, r in zip(got["patches"], w["patch_tokens_projected"]):
                worst = min(worst, cosine(g, r))
    return worst


def native_as_ref(out):
    """embed's output in the reference's shape, to compare two runs."""
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    return {"images": [{"embedding": l["embedding"], "patch_tokens_projected": l["patches"]} for l in lines
                       if "patches" in l],
            "texts": [{"embedding": l["embedding"]} for l in lines if "patches" not in l]}


def kernels_line(err):
    for line in err.splitlines():
        if line.startswith("umgdb embed: kernels: "):
            return line[len("umgdb embed: kernels: "):]
    return None


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    umgdb = os.path.abspath(sys.argv[1])
    here = os.path.dirname(os.path.abspath(__file__))
    fixture = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "fixtures", "clip-tiny")
    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        print("qemu_dispatch: SKIPPED: qemu-x86_64 is not installed (Debian: qemu-user; scripts/install-deps)")
        return 77
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("UMG_CPU", None)
    failures = []
    native = {}
    for prec in ["fp32", "int8"]:
        ref, args = embed_args(umgdb, fixture, prec)
        rc, out, err = run(args, os.environ)
        if rc:
            print("native %s failed (%d): %s" % (prec, rc, err))
            return 1
        native[prec] = out
    checked = 0
    for model, precisions in PLAN:
        for prec in precisions:
            ref, args = embed_args(umgdb, fixture, prec)
            rc, out, err = run([qemu, "-cpu", model] + args, env)
            kernels = kernels_line(err)
            what = "%s %s" % (model, prec)
            if rc < 0 or "Illegal instruction" in err or "SIGILL" in err:
                failures.append("%s: killed by signal %d (illegal instruction?)" % (what, -rc))
                continue
            cpu = kernels.split("; cpu ", 1)[1] if kernels and "; cpu " in kernels else ""
            has_avx2 = "avx2" in cpu
            if prec in ("bf16", "fp16"):
                feature = "AVX512-BF16" if prec == "bf16" else "AVX512-FP16"
                if "avx512" in cpu and rc == 0:
                    continue  # an emulator with AVX-512 BF16/FP16: it ran
                if rc != 1 or feature not in err:
                    failures.append("%s: want a clear refusal naming %s, got exit %d: %s" % (what, feature, rc, err[-300:]))
                print("%-22s refused as it should: %s" % (what, err.strip().splitlines()[-1]))
                checked += 1
                continue
            if rc != 0 or kernels is None:
                failures.append("%s: exit %d, kernels %r: %s" % (what, rc, kernels, err[-300:]))
                continue
            if model == "Nehalem" and cpu != "baseline (x86-64-v2 / plain C)":
                failures.append("%s: Nehalem reports %r" % (what, cpu))
            if model != "Nehalem" and not has_avx2:
                failures.append("%s: %s has AVX2 but the binary saw %r" % (what, model, cpu))
            used = kernels.split(" ", 1)[0]
            if prec == "auto":
                flags = cpu.split()
                vnni = any(f in flags for f in ("avx-vnni", "avx512-vnni", "amx-int8"))
                # enc_precision_auto (qemu emulates no AMX, auto's bf16 case)
                want = "int8" if vnni or ("avx2+fma" in flags and "avx512" not in flags) else "fp32"
                if used != want:
                    failures.append("%s: auto chose %s, want %s on %r" % (what, used, want, cpu))
            tol = TOL[used]
            worst = worst_cosine(out, ref)
            to_native = worst_cosine(out, native_as_ref(native[used]))
            print("%-22s kernels %-55s worst cosine %.7f to the reference, %.8f to native %s" % (
                what, kernels, worst, to_native, used))
            if not worst >= tol:
                failures.append("%s: worst cosine %.7f < %g" % (what, worst, tol))
            if not to_native >= 0.99999:
                failures.append("%s: worst cosine %.8f to the native %s output" % (what, to_native, used))
            checked += 1
    for f in failures:
        print("FAIL " + f)
    print("qemu_dispatch: %d checks run, %d failures" % (checked, len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
