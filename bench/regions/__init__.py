"""Python modules of bench/regions/, run from the repository root: /usr/bin/python3 -m bench.regions.NAME (tools/README.md)."""
