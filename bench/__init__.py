"""Python modules of bench/, run from the repository root: /usr/bin/python3 -m bench.NAME (tools/README.md)."""
