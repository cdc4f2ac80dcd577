"""The `ranktune` command line: main.py (the parser and its error handling) and one module per command group.

The entry point is `ranktune.platform.cli.main:main`; `python -m ranktune.platform.cli` runs it too."""
