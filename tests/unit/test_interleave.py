"""benchmarks/interleave.py: the compared rows' steps run round-robin, so a load change lands on every row."""

from __future__ import annotations

import sys

import pytest
from support.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from interleave import interleaved, medians  # noqa: E402


def test_rows_step_round_robin_and_a_slow_round_slows_every_row():
    calls: list[str] = []

    def row(label: str):
        def step() -> float:
            calls.append(label)
            # A load spike in round 2 (the third): every row's step in it is slow, not one row's steps.
            return 10.0 if len(calls) in range(7, 10) else {"a": 1.0, "b": 2.0, "c": 3.0}[label]

        return step

    times = interleaved({label: row(label) for label in "abc"}, rounds=5)
    # each round one step of every row, the order rotated by one row per round
    assert calls == list("abcbcacababcbca")
    assert times == {"a": [1.0, 1.0, 10.0, 1.0, 1.0], "b": [2.0, 2.0, 10.0, 2.0, 2.0], "c": [3.0, 3.0, 10.0, 3.0, 3.0]}
    assert medians(times) == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert medians({"a": [9.0, 1.0, 2.0]}, skip=1) == {"a": 1.5}


def test_a_step_returning_none_is_timed_by_the_helper():
    times = interleaved({"a": lambda: None}, rounds=3)
    assert len(times["a"]) == 3 and all(t >= 0 for t in times["a"])
    with pytest.raises(ValueError, match="rounds: 0 -> at least 1"):
        interleaved({"a": lambda: None}, rounds=0)
