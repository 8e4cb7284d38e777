"""Python modules of tests/meaning/, run from the repository root: /usr/bin/python3 -m tests.meaning.NAME (tools/README.md)."""
