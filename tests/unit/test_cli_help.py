"""Every command's --help, as a user sees it at 100 columns, against a snapshot in tests/snapshots/help/.

A change to a command's options shows up here as a diff to review. After an intended change, rewrite the
snapshots with `RANKTUNE_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_cli_help.py` and read the diff.
"""

from __future__ import annotations

import argparse
import os
import sys

import pytest
from support.paths import SNAPSHOTS

from ranktune.platform.cli.main import build_parser

SNAPSHOTS = SNAPSHOTS / "help"
# Python 3.13 lays help out differently (e.g. `-o, --out FILE`); the snapshots are 3.10-3.12's.
pytestmark = pytest.mark.skipif(sys.version_info >= (3, 13), reason="argparse 3.13+ formats help differently")


def commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return ["ranktune", *sorted(sub.choices)]


@pytest.mark.parametrize("command", commands())
def test_help_matches_its_snapshot(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse and the method list wrap at the terminal's width
    parser = build_parser()
    if command != "ranktune":
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[command]
    text = parser.format_help()
    path = SNAPSHOTS / f"{command}.txt"
    if os.environ.get("RANKTUNE_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no snapshot for `{command} --help`: write it with RANKTUNE_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"`{command} --help` changed: review it, then RANKTUNE_UPDATE_SNAPSHOTS=1"


def test_every_snapshot_is_a_command():
    stale = sorted(p.stem for p in SNAPSHOTS.glob("*.txt") if p.stem not in commands())
    assert not stale, f"snapshots of commands that no longer exist: {stale}"
