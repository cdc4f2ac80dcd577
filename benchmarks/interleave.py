"""Time the compared rows of a benchmark interleaved, so a change of load between rows does not distort
their ratio.

    times = interleaved({"adamw": adamw_step, "galore_adamw": galore_step}, rounds=8)
    medians(times, skip=1)  # {"adamw": 0.21, "galore_adamw": 0.25}

Timing the rows one after another lets another job's start or end land between two rows: on one shared
machine the same GaLore vs galore-torch comparison gave 1.38x and 4.12x under load and 0.91x quiet (issue
26). Interleaved, every row's k-th step runs within one round of the others', so a load change hits all
rows alike and the median per row drops the steps it hit hardest.

Each round runs one step of every row in turn; the order rotates by one row each round, so no row always
follows the same neighbour (cache and allocator effects of the row before). A step is a callable with no
arguments: it returns None, and the helper times the call, or the seconds it measured itself (a step run
in another process, or one that leaves its data preparation out of the timing).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(steps: dict[str, Callable[[], float | None]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each row's steps in the order they ran (index i: round i), rows round-robin."""
    if rounds < 1:
        raise ValueError(f"rounds: {rounds} -> at least 1")
    labels = list(steps)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for i in range(rounds):
        shift = i % len(labels) if labels else 0
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            measured = steps[label]()
            times[label].append(time.perf_counter() - start if measured is None else measured)
    return times


def medians(times: dict[str, list[float]], skip: int = 0) -> dict[str, float]:
    """The median step of each row, leaving out its first `skip` steps (state allocation, warm-up)."""
    return {label: statistics.median(t[skip:] or t) for label, t in times.items()}
