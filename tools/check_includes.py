"""Check the library layering of the C tree (docs/architecture.md).

    /usr/bin/python3 -m tools.check_includes [--self-test] [--server-lib libumg_server.a [--nm NM]]

1. Every `#include "x.h"` of a library's file names a header of its own library or of a library
   of a LOWER layer (LAYERS below): no arrow back up, none sideways between libraries of one
   layer (db and encoder, server and client), so no circle between libraries.
2. No circle of includes between files (a.h -> b.h -> a.h), in any directory.
3. The libraries without a wire or an event loop include neither <uv.h> nor <msgpack.h>.
4. With --server-lib (the built umg_server archive): calls inside server/ run one way,
   server.c -> server_ops.c -> server_common.c: no object file of that chain references a
   symbol defined by one before it (nm).

Exit 0 when clean; 1 with one line per finding.  `--self-test` first checks that each rule
catches a planted violation in a scratch tree (ctest runs both)."""

import argparse
import os
import re
import subprocess
import sys
import tempfile

# The layer of each library directory: an include may only go to a strictly lower layer.
LAYERS = {
    "base": 0,
    "index": 1,
    "protocol": 2, "db": 2, "encoder": 2,
    "engine": 3,
    "server": 4, "client": 4,
    "cli": 5,
}
NO_WIRE = {"base", "index", "db", "encoder", "engine"}
FORBIDDEN_SYSTEM = {"uv.h", "msgpack.h"}
SERVER_CHAIN = ["server.c", "server_ops.c", "server_common.c"]

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)


def scan(root):
    """{relative path: [(kind, name, line)]} for the C files of the library directories."""
    files = {}
    for lib in LAYERS:
        d = os.path.join(root, lib)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith((".c", ".h")):
                with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                files[f"{lib}/{name}"] = [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
                                          for m in INCLUDE.finditer(text)]
    return files


def resolve(files, src, name):
    """The library file that `#include "name"` in src means, or None (another project's)."""
    own = f"{src.split('/')[0]}/{os.path.basename(name)}"
    if own in files:
        return own
    hits = [p for p in files if p.endswith("/" + os.path.basename(name)) and p.endswith(".h")]
    return hits[0] if len(hits) == 1 else None


def check_tree(root):
    files = scan(root)
    problems = []
    edges = {}
    for src, incs in files.items():
        lib = src.split("/")[0]
        for kind, name, line in incs:
            if kind == "<":
                if lib in NO_WIRE and os.path.basename(name) in FORBIDDEN_SYSTEM:
                    problems.append(f"{src}:{line}: includes <{name}>: {lib}/ has no wire and no event loop")
                continue
            dst = resolve(files, src, name)
            if dst is None:
                continue
            edges.setdefault(src, []).append((dst, line))
            dlib = dst.split("/")[0]
            if dlib != lib and LAYERS[dlib] >= LAYERS[lib]:
                problems.append(f"{src}:{line}: includes {dst}: {lib}/ (layer {LAYERS[lib]}) may include only "
                                f"libraries below it, {dlib}/ is layer {LAYERS[dlib]}")
    # include circles between files: depth-first search with colours
    state, stack = {}, []

    def visit(f):
        state[f] = 1
        stack.append(f)
        for dst, line in edges.get(f, []):
            if state.get(dst) == 1:
                cycle = stack[stack.index(dst):] + [dst]
                problems.append(f"{f}:{line}: include circle: {' -> '.join(cycle)}")
            elif dst not in state:
                visit(dst)
        stack.pop()
        state[f] = 2

    for f in sorted(files):
        if f not in state:
            visit(f)
    return problems


def check_server_calls(archive, nm="nm"):
    """Symbols each member of the archive defines and uses (nm), then the chain's direction."""
    out = subprocess.run([nm, "-A", archive], capture_output=True, text=True, check=True).stdout
    defined, used = {}, {}
    for ln in out.splitlines():
        parts = ln.split()
        member = parts[0].split(":")[-2] if parts[0].count(":") >= 2 else parts[0]
        member = member.replace(".c.o", ".c")
        if len(parts) == 2 and parts[1] == "U":
            continue
        if len(parts) >= 3 and parts[-2] == "U":
            used.setdefault(member, set()).add(parts[-1])
        elif len(parts) >= 3 and parts[-2] in "TDBRC":
            defined.setdefault(member, set()).add(parts[-1])
    problems = []
    missing = [m for m in SERVER_CHAIN if m not in defined]
    if missing:
        return [f"{archive}: no member {', '.join(missing)} (the server's files were renamed: update SERVER_CHAIN)"]
    for i, later in enumerate(SERVER_CHAIN):
        for earlier in SERVER_CHAIN[:i]:
            back = sorted(used.get(later, set()) & defined[earlier])
            if back:
                problems.append(f"server/{later} calls server/{earlier} ({', '.join(back)}): calls run "
                                f"{' -> '.join(SERVER_CHAIN)}")
    return problems


def self_test():
    """Each rule catches a violation planted in a scratch tree; a clean tree passes."""
    def tree(spec):
        d = tempfile.mkdtemp(prefix="check-includes-")
        for path, text in spec.items():
            os.makedirs(os.path.join(d, os.path.dirname(path)), exist_ok=True)
            with open(os.path.join(d, path), "w") as f:
                f.write(text)
        return d

    clean = {"base/b.h": "#include <stdint.h>\n", "db/db.h": '#include "b.h"\n',
             "engine/e.c": '#include "db.h"\n#include "b.h"\n'}
    cases = [
        ("clean", clean, None),
        ("upward", {**clean, "db/db.c": '#include "e.h"\n', "engine/e.h": ""}, "may include only"),
        ("sideways", {**clean, "encoder/x.c": '#include "db.h"\n'}, "may include only"),
        ("circle", {**clean, "engine/p.h": '#include "q.h"\n', "engine/q.h": '#include "p.h"\n'},
         "include circle"),
        ("libuv", {**clean, "engine/u.c": "#include <uv.h>\n"}, "no event loop"),
    ]
    failed = 0
    for name, spec, want in cases:
        d = tree(spec)
        got = check_tree(d)
        ok = (not got) if want is None else any(want in p for p in got)
        if not ok:
            print(f"self-test {name}: expected {want or 'no finding'}, got {got}")
            failed += 1
    return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--server-lib", help="the built libumg_server.a: check the server's call direction")
    ap.add_argument("--nm", default="nm", help="the toolchain's nm (cross builds)")
    ap.add_argument("--self-test", action="store_true", help="check the checker on planted violations first")
    a = ap.parse_args()
    if a.self_test and self_test():
        return 1
    problems = check_tree(a.root)
    if a.server_lib:
        problems += check_server_calls(a.server_lib, a.nm)
    for p in problems:
        print(p)
    if not problems:
        print(f"check_includes: layering clean ({', '.join(sorted(LAYERS, key=LAYERS.get))})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
