"""umgdb's Python tools, run as modules from the repository root:

    /usr/bin/python3 -m tools.NAME ...   (tools/README.md)
"""
