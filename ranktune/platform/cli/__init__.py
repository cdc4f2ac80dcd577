"""The `ranktune` command line."""

from ranktune.platform.cli.main import main

__all__ = ["main"]
