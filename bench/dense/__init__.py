"""Python modules of bench/dense/, run from the repository root: /usr/bin/python3 -m bench.dense.NAME (tools/README.md)."""
