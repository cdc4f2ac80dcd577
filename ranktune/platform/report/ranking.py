"""Ranking rules shared by the report, the replicates, the Pareto front and export: which trial is best,
and which is the sweep's answer. Imports no other report module, so every one of them can import it."""

from __future__ import annotations

import math
from typing import Any

STATUS_ORDER = {
    "finished": 0,
    "stopped_early": 1,
    "running": 2,
    "interrupted": 2,
    "pruned_memory": 3,
    "lost": 4,
    "failed": 5,
}
# Statuses whose final value of the objective is a result (stopped_early: the value where the search
# stopped it). A failed or lost trial's last evaluation, often the untrained model's at step 0, is not.
RESULT_STATUSES = ("finished", "stopped_early")


def objective_key(row: dict[str, Any], mode: str) -> float:
    value = row["objective"]
    if value is None or not math.isfinite(value):
        return math.inf
    return value if mode == "min" else -value


def pick_best(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """Best trial that ran its whole budget, references left out (a target-aware sweep's baselines, see
    report_table.is_reference); lower peak memory breaks ties."""
    finished = [r for r in rows if r["status"] == "finished" and r["objective"] is not None and not r.get("reference")]
    if not finished:
        return None
    return min(finished, key=lambda r: (objective_key(r, mode), r["peak_memory_bytes"] or 0))


def confirmed_configuration(
    confirm: dict[str, Any] | None, rows: list[dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    """The replicated configuration with the best mean (confirm.json), None without replicates; with the
    sweep's `rows`, the best whose trial is not a reference (a baseline is replicated to compare with)."""
    references = {r["trial_id"] for r in rows or () if r.get("reference")}
    return next(
        (
            c
            for c in (confirm or {}).get("configurations", [])
            if c["mean"] is not None and c["trial_id"] not in references
        ),
        None,
    )


def pick_winner(rows: list[dict[str, Any]], mode: str, confirm: dict[str, Any] | None) -> dict[str, Any] | None:
    """The sweep's answer: the search trial whose configuration has the best replicate mean when the
    sweep ran replicates (the search's single best was chosen for being lowest, so its value is biased
    low), else the search's best trial; never a reference trial."""
    top = confirmed_configuration(confirm, rows)
    if top is not None:
        for r in rows:
            if r["trial_id"] == top["trial_id"]:
                return r
    return pick_best(rows, mode)
