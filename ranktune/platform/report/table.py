"""The ranked table of a sweep, in the forms a reader needs: terminal (100 columns), CSV, JSON, markdown.

One row per trial: method first, then the branch's own parameters in one column with their section
(`galore.rank=64`, not a column per conditional parameter that other methods leave empty), a status
word, the objective, optimizer-state and peak memory, throughput and cost. Reasons (failures, memory
pruning, early stops) are listed under the table, where they have room.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from pathlib import Path
from typing import Any

from ranktune.search_spaces.spec import SweepSpec

STATUS_WORDS = {
    "finished": "finished",
    "stopped_early": "stopped",
    "pruned_memory": "pruned",
    "infeasible_target": "infeasible",
    "failed": "failed",
    "lost": "lost",
    "running": "running",
    "interrupted": "interrupted",
}
# --sort keys -> (field of a flat row, descending?)
SORT_KEYS = {
    "objective": ("objective", False),
    "method": ("method", False),
    "status": ("status_order", False),
    "optimizer_state": ("optimizer_state_mib", False),
    "peak": ("peak_mib", False),
    "tokens_per_s": ("tokens_per_s", True),
    "cost": ("device_hours", False),
}
COLUMNS = (
    "rank",
    "trial_id",
    "method",
    "params",
    "status",
    "objective",
    "optimizer_state_mib",
    "peak_mib",
    "tokens_per_s",
    "device_hours",
    "reason",
)


def method_of(spec: SweepSpec, params: dict[str, Any]) -> str:
    if "optim.name" in params:
        return str(params["optim.name"])
    try:
        return spec.trial_config(params).optim.name
    except ValueError:
        return "?"


def is_reference(spec: SweepSpec, params: dict[str, Any]) -> bool:
    """A target-aware sweep's reference trial: its method is a baseline (registry `baseline` or
    `sanity_baseline`), trained for comparison whatever its target run needs, and never the answer."""
    from ranktune.trainables.optim import reference_methods

    return spec.target is not None and method_of(spec, params) in reference_methods()


def format_value(value: Any) -> str:
    from ranktune.platform.tracking.client import short_float

    if isinstance(value, float):
        return short_float(value) if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3g}"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    """The trial's own sampled params, `section.key=value`, in a stable order; the method is its own column."""
    return " ".join(f"{k}={format_value(v)}" for k, v in sorted(params.items()) if k != "optim.name")


def flat_rows(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """trials.collect_trials rows (already ranked) as flat records with the table's columns."""
    from ranktune.platform.report.ranking import STATUS_ORDER

    out = []
    for i, r in enumerate(rows, 1):
        reason = r.get("failure_reason") or r.get("stop_reason")
        if r.get("reference") and not reason:
            reason = "reference: a baseline to compare with, never the answer nor exported"
        last = r.get("last_objective")
        if last is not None and r["objective"] is None and math.isfinite(last):
            at = f" at step {r['step']}" if r.get("step") is not None else ""
            reason = f"{reason or r['status']} (last {spec.objective.metric} {last:.4g}{at}, not a result)"
        out.append(
            {
                "rank": i,
                "trial_id": r["trial_id"],
                "method": method_of(spec, r["params"]),
                "params": params_text(r["params"]),
                "status": STATUS_WORDS.get(r["status"], r["status"]),
                "status_order": STATUS_ORDER.get(r["status"], 9),
                "step": r["step"],
                "objective": r["objective"],
                "optimizer_state_mib": _mib(r["optimizer_state_bytes"]),
                "peak_mib": _mib(r["peak_memory_bytes"]),
                "tokens_per_s": r["tokens_per_s"],
                "device_hours": r["device_hours"],
                "device_kind": r["device_kind"],
                "reason": reason,
            }
        )
    return out


def sort_rows(flat: list[dict[str, Any]], key: str, mode: str) -> list[dict[str, Any]]:
    if key not in SORT_KEYS:
        from ranktune.trainables.config import ConfigError

        raise ConfigError([f"--sort: {key!r} -> one of {sorted(SORT_KEYS)}"])
    field, descending = SORT_KEYS[key]
    if field == "objective":
        descending = mode == "max"

    def value(row: dict[str, Any]):
        v = row[field]
        missing = v is None or (isinstance(v, float) and not math.isfinite(v))
        return (
            row["status_order"] > 1 if field == "objective" else False,
            missing,
            0 if missing else (-v if descending and not isinstance(v, str) else v),
        )

    return sorted(flat, key=value)


def _mib(value: float | None) -> float | None:
    return value / 2**20 if value else None


def _cell(value: Any, digits: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, digits) if isinstance(value, float) else str(value)


def render_table(spec: SweepSpec, flat: list[dict[str, Any]], width: int = 100, console=None) -> None:
    """The ranked table at `width` columns (the terminal's own width when wider), reasons underneath."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal or console.width < width:
        console = Console(width=width, file=console.file)
    unit = flat[0]["device_kind"] if flat else "GPU"
    metric = spec.objective.metric
    table = Table(
        title=f"{spec.name}: {spec.objective.mode} {metric} after {spec.budget.steps_per_trial} steps; "
        f"memory in MiB (opt: optimizer state)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    table.add_column("#", justify="right")
    table.add_column("method", no_wrap=True)
    # As wide as its longest `key=value` at least, so none is cut mid-word (rich folds what does not fit).
    longest = max((len(word) for r in flat for word in (r["params"] or "-").split()), default=1)
    table.add_column("params", ratio=1, overflow="fold", min_width=min(longest, 40))
    table.add_column("status", no_wrap=True)
    table.add_column(metric.removeprefix("eval_"), justify="right", no_wrap=True)
    table.add_column("opt", justify="right", no_wrap=True)
    table.add_column("peak", justify="right", no_wrap=True)
    table.add_column("tok/s", justify="right", no_wrap=True)
    table.add_column(f"{unit}-h", justify="right", no_wrap=True)
    table.add_column("trial", no_wrap=True)
    for r in flat:
        status = r["status"] if r["status"] != "stopped" or r["step"] is None else f"stop@{r['step']}"
        table.add_row(
            str(r["rank"]),
            r["method"],
            r["params"] or "-",
            status,
            _cell(r["objective"]),
            _cell(r["optimizer_state_mib"], ".2f"),
            _cell(r["peak_mib"], ".0f"),
            _cell(r["tokens_per_s"], ".0f"),
            _cell(r["device_hours"], ".3f"),
            r["trial_id"] or "?",
        )
    console.print(table)
    for r in flat:
        if r["reason"] and r["status"] != "finished":
            console.print(f"  {r['trial_id']} {r['status']}: {r['reason'][:300]}", highlight=False, soft_wrap=False)


def to_csv(flat: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, "step"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def to_json(flat: list[dict[str, Any]]) -> str:
    return json.dumps([{k: r[k] for k in (*COLUMNS, "step")} for r in flat], indent=2)


def to_markdown(spec: SweepSpec, flat: list[dict[str, Any]]) -> str:
    """The parent run's MLflow description: the ranked table as markdown."""
    metric = spec.objective.metric
    head = ["#", "method", "params", "status", metric, "opt MiB", "peak MiB", "tok/s", "trial"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in flat:
        cells = [
            str(r["rank"]),
            r["method"],
            f"`{r['params']}`" if r["params"] else "-",
            r["status"],
            _cell(r["objective"]),
            _cell(r["optimizer_state_mib"], ".2f"),
            _cell(r["peak_mib"], ".0f"),
            _cell(r["tokens_per_s"], ".0f"),
            r["trial_id"] or "?",
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def winner_lines(
    spec: SweepSpec,
    best: dict[str, Any] | None,
    storage: str,
    confirm: dict[str, Any] | None = None,
    running: str | None = None,
) -> list[str]:
    """The last lines of a report: who won (by the replicates' mean when there are replicates), and
    the command to run next (quoted, to paste as is). `running`: who runs the sweep now, if anyone."""
    quoted = shlex.quote(str(storage))
    if best is None:
        if running is not None:  # `--resume` is refused while the driver runs
            return [f"no trial has run its whole budget yet: the sweep is still running ({running})"]
        return [
            "no trial ran its whole budget: nothing to export (reasons above); "
            f"finish it with: ranktune sweep --resume {quoted}"
        ]
    method, metric = method_of(spec, best["params"]), spec.objective.metric
    top = next((c for c in (confirm or {}).get("configurations", []) if c["trial_id"] == best["trial_id"]), None)
    if top is not None and top["mean"] is not None:
        std = "" if top["std"] is None else f" +/- {top['std']:.4f}"
        value = f"{metric} {top['mean']:.4f}{std} over {top['n']} replicates, {confirm['verdict']}"
    else:
        value = f"{metric} {best['objective']:.4f}"
    return [
        f"winner: {method} (trial {best['trial_id']}, {value}"
        + (f"; {params_text(best['params'])})" if params_text(best["params"]) else ")"),
        f"next: ranktune export {quoted} --target 7b    (train the winner as is: ranktune train "
        f"{shlex.quote(str(Path(storage) / 'best_config.yaml'))})",
    ]
