"""The loss/memory/throughput trade-off: the Pareto front of a sweep's full-budget trials.

A spec's `objective` is primary (ranked, pruned on); `objectives` lists the trade-offs searched with
it (Optuna's multi-objective TPE). Only trials that ran their whole budget are on the front: a trial
stopped early has a loss from fewer steps, not comparable with the others'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ranktune.search_spaces.spec import SweepSpec


def objective_values(spec: SweepSpec, row: dict[str, Any]) -> list[float] | None:
    """The row's value of each objective, signed so that lower is better; None when one is missing."""
    values = []
    for i, obj in enumerate(spec.all_objectives()):
        value = row["objective"] if i == 0 else row.get(obj.metric)
        if value is None or not math.isfinite(value):
            return None
        values.append(value if obj.mode == "min" else -value)
    return values


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials that no other finished trial beats on every objective, by primary objective."""
    scored = [(r, v) for r in rows if r["status"] == "finished" for v in [objective_values(spec, r)] if v is not None]
    front = [r for r, v in scored if not any(dominates(w, v) for _, w in scored)]
    return sorted(front, key=lambda r: objective_values(spec, r))


Row = dict[str, Any]


def best_fitting(
    spec: SweepSpec, rows: list[Row], why_not: Callable[[Row], str | None]
) -> tuple[Row | None, list[str]]:
    """Best finished trial for which `why_not(row)` (e.g. "its memory estimate exceeds X") is None,
    and the reasons of the better trials passed over (each named with its method, searched or fixed)."""
    from ranktune.platform.report.ranking import objective_key
    from ranktune.platform.report.table import method_of

    mode = spec.objective.mode
    finished = sorted((r for r in rows if r["status"] == "finished"), key=lambda r: objective_key(r, mode))
    passed_over = []
    for row in finished:
        reason = why_not(row)
        if reason is None:
            return row, passed_over
        passed_over.append(f"trial {row['trial_id']} ({method_of(spec, row['params'])}): {reason}")
    return None, passed_over


def plot_front(spec: SweepSpec, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Primary objective against the first trade-off objective: every full-budget trial, front joined."""
    if not spec.objectives:
        return None
    import matplotlib.pyplot as plt

    other = spec.objectives[0].metric
    scale, unit = (2**20, " (MiB)") if other.endswith("_bytes") else (1.0, "")
    finished = [r for r in rows if r["status"] == "finished" and objective_values(spec, r) is not None]
    if not finished:
        return None
    front = pareto_front(spec, finished)
    from ranktune.platform.report.plots import method_colour
    from ranktune.platform.report.table import method_of

    fig, ax = plt.subplots(figsize=(8, 4.5))
    methods = sorted({method_of(spec, r["params"]) for r in finished})
    for r in finished:
        on_front = r in front
        colour = method_colour(method_of(spec, r["params"]))
        ax.scatter(
            r[other] / scale,
            r["objective"],
            s=44 if on_front else 22,
            zorder=3,
            color=colour,
            edgecolors="k" if on_front else "none",
        )
        ax.annotate(
            r["trial_id"],
            (r[other] / scale, r["objective"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
            alpha=0.8,
        )
    points = sorted((r[other] / scale, r["objective"]) for r in front)
    ax.step([p[0] for p in points], [p[1] for p in points], where="post", color="k", lw=1, label="Pareto front")
    ax.margins(x=0.12, y=0.1)  # room for the trial ids next to the outermost points
    ax.set_xlabel(other + unit)
    ax.set_ylabel(f"{spec.objective.metric} at the end of the budget")
    ax.set_title(f"sweep {spec.name}: {spec.objective.metric} vs {other} (full-budget trials)", fontsize=10)
    ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=method_colour(m), marker="o", ls="", label=m) for m in methods]
    handles.append(Line2D([], [], color="k", lw=1, label="Pareto front (outlined)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def format_front(spec: SweepSpec, front: list[dict[str, Any]]) -> list[str]:
    from ranktune.platform.report.table import method_of

    names = [o.metric for o in spec.all_objectives()]
    lines = [f"Pareto front ({', '.join(f'{o.mode} {o.metric}' for o in spec.all_objectives())}), full-budget trials:"]
    for r in front:
        values = [r["objective"], *(r.get(n) for n in names[1:])]
        shown = ", ".join(f"{n} {_short(n, v)}" for n, v in zip(names, values, strict=True))
        lines.append(f"  {method_of(spec, r['params']):<14} trial {r['trial_id']}: {shown}")
    return lines


def _short(name: str, value: float) -> str:
    return f"{value / 2**20:.2f} MiB" if name.endswith("_bytes") else f"{value:.4g}"
