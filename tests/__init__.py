"""Python modules of tests/, run from the repository root: /usr/bin/python3 -m tests.NAME (tools/README.md)."""
