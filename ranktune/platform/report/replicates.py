"""Replicates and a verdict: which configurations are re-run with new seeds, and what their results say.

Running them is the sweep's (platform/sweep/confirm.py); reading them is everyone's (report, export, ui).

After the search, `confirm: {top_k: N, seeds: S}` takes the best full-budget trial of each of the top-N
methods (the branch key of a conditional space; without branches, the top-N configurations) and
re-runs each with S new seeds (`train.seed` = base seed + 1 ... + S) at the full budget, through the
same trainable as the search. The searched trial itself is not one of the replicates: it was picked
for being lowest, so its value is biased low (the winner's curse); the replicates are not.

The best full-budget trial of the best full-rank baseline method (registry: `OptimizerEntry.baseline`,
i.e. AdamW or 8-bit AdamW) is always replicated too, even when it is not among the top-N: the verdict
says whether the winner beats it.

Verdict rule (platform/report/significance.py, docs/sweeps.md "Fair comparison"): the configurations are
ranked by their replicates' mean; the winner is compared with each other one by Welch's t-test, Holm-
adjusted over the comparisons: *resolved* (Holm p < 0.05), *tie* (the gap's 95% interval lies within
+/- `confirm.tie_threshold`) or *add seeds* (with the replicates per arm the observed gap and spread
need). The sweep's `verdict` is that of the winner against the runner-up; `baseline_verdict` that of
the winner against the baseline.

MLflow: each configuration gets a run under the sweep's parent (tag `ranktune.confirm_of` = the
searched trial), holding the mean/std; its replicates are nested under it. `storage/confirm.json`
holds the same table and the verdict.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.config import ConfigError

CONFIRM_FILE = "confirm.json"
FAILED_FILE = "confirm.failed"  # one line: which replicates failed, why, what to run; removed once they all ran


def select_configurations(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The searched trials to replicate: best full-budget trial of each of the top_k methods (or the
    top_k trials without branches), best first; then the best full-budget trial of a baseline method
    (full-rank AdamW / 8-bit AdamW) when none of those is one."""
    from ranktune.platform.report.ranking import objective_key

    finished = [r for r in rows if r["status"] == "finished" and r["objective"] is not None]
    finished.sort(key=lambda r: objective_key(r, spec.objective.mode))
    answers = [r for r in finished if not r.get("reference")]  # a reference is replicated only as the baseline
    branches = spec.search_space().branches
    if branches is None:
        top = answers[: spec.confirm.top_k]
    else:
        chosen: dict[Any, dict[str, Any]] = {}
        for row in answers:
            chosen.setdefault(row["params"].get(branches.key), row)
        top = list(chosen.values())[: spec.confirm.top_k]
    if not any(is_baseline(spec, r) for r in top):
        top += [r for r in finished if is_baseline(spec, r)][:1]
    return top


def is_baseline(spec: SweepSpec, row: dict[str, Any]) -> bool:
    """Whether the trial's method is a full-rank reference (OptimizerEntry.baseline in the registry)."""
    from ranktune.platform.report.table import method_of
    from ranktune.trainables.optim import baseline_methods

    return method_of(spec, row["params"]) in baseline_methods()


def replicate_points(spec: SweepSpec, chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base_seed = spec.trial_config({}).train.seed
    return [{**row["params"], "train.seed": base_seed + i} for row in chosen for i in range(1, spec.confirm.seeds + 1)]


def summarize(spec: SweepSpec, chosen: list[dict[str, Any]], values: dict[int, list[float]]) -> dict[str, Any]:
    """values: index into `chosen` -> the replicates' objective values. Returns the table and verdict."""
    from ranktune.platform.report.table import method_of

    sign = 1.0 if spec.objective.mode == "min" else -1.0
    table = []
    for i, row in enumerate(chosen):
        vals = [v for v in values.get(i, []) if v is not None and math.isfinite(v)]
        table.append(
            {
                "trial_id": row["trial_id"],
                "method": method_of(spec, row["params"]),
                "params": row["params"],
                "baseline": is_baseline(spec, row),
                "reference": bool(row.get("reference")),
                "search_objective": row["objective"],
                "values": vals,
                "n": len(vals),
                "mean": statistics.fmean(vals) if vals else None,
                "std": statistics.stdev(vals) if len(vals) >= 2 else None,
            }
        )
    # The winner is the best mean among the answers: a reference (a target-aware sweep's baseline, which
    # its target cannot run) is compared with, ranked after them.
    ranked = sorted((t for t in table if t["mean"] is not None), key=lambda t: (t["reference"], sign * t["mean"]))
    return {
        "metric": spec.objective.metric,
        "mode": spec.objective.mode,
        "seeds": spec.confirm.seeds,
        "tie_threshold": spec.confirm.tie_threshold,
        "configurations": ranked + [t for t in table if t["mean"] is None],
        **verdict(ranked, sign, spec.confirm.tie_threshold),
    }


RULE = (
    "Welch's t-test of the winner against each other configuration, Holm-adjusted: resolved when p < 0.05, "
    "tie when the gap's 95% interval lies within +/- the tie threshold, else add seeds"
)


def verdict(ranked: list[dict[str, Any]], sign: float, tie_threshold: float) -> dict[str, Any]:
    """The winner (best mean) against the runner-up and the best baseline (see the module doc)."""
    from ranktune.platform.report.significance import TOO_FEW, compare

    if len(ranked) < 2:
        return {
            "verdict": TOO_FEW,
            "rule": RULE,
            "why": "fewer than two configurations with replicates",
            "comparisons": [],
        }
    win, others = ranked[0], ranked[1:]
    # In the objective's "lower is better" direction, so a positive gap always favours the winner.
    signed = [(c["trial_id"], [sign * v for v in c["values"]]) for c in ranked]
    comparisons = compare(signed[0], signed[1:], tie_threshold)
    runner = comparisons[0]
    out = {
        "verdict": runner.verdict,
        "rule": RULE,
        "why": runner.why(),
        "winner": win["trial_id"],
        "runner_up": others[0]["trial_id"],
        "comparisons": [c.as_dict() for c in comparisons],
    }
    baseline = next((o for o in ranked if o["baseline"]), None)
    if baseline is None:
        out["baseline_verdict"] = "no baseline"
        out["baseline_why"] = "no full-rank baseline method (AdamW / 8-bit AdamW) finished in the search"
    elif baseline is win:
        out["baseline_verdict"] = "winner is the baseline"
        out["baseline_why"] = f"the winner ({win['method']}) is itself the best full-rank baseline"
    else:
        against = next(c for c in comparisons if c.other == baseline["trial_id"])
        out.update(baseline=baseline["trial_id"], baseline_verdict=against.verdict, baseline_why=against.why())
    return out


def format_confirm(summary: dict[str, Any]) -> list[str]:
    """Lines for the console: one per configuration, then the verdicts (winner vs runner-up, vs the baseline)."""
    lines = [f"replicates ({summary['seeds']} new seeds each, full budget): {summary['metric']} mean +/- std"]
    for entry in summary["configurations"]:
        name = entry.get("method") or entry["params"].get("optim.name", entry["trial_id"])
        mean = "-" if entry["mean"] is None else f"{entry['mean']:.4f}"
        std = "-" if entry["std"] is None else f"{entry['std']:.4f}"
        role = ", baseline" if entry.get("baseline") else ""
        lines.append(
            f"  {name:<14} trial {entry['trial_id']}: {mean} +/- {std} (n={entry['n']}{role}; "
            f"search run {entry['search_objective']:.4f})"
        )
    names = {e["trial_id"]: e.get("method") or e["trial_id"] for e in summary["configurations"]}
    if "runner_up" in summary:
        lines.append(
            f"verdict, {names[summary['winner']]} vs {names[summary['runner_up']]} (runner-up): "
            f"{summary['verdict']} ({summary['why']})"
        )
    else:
        lines.append(f"verdict: {summary['verdict']} ({summary['why']})")
    if "baseline_verdict" in summary:
        against = f" vs {names[summary['baseline']]}" if "baseline" in summary else ""
        lines.append(
            f"verdict, {names.get(summary.get('winner'), 'winner')}{against} (baseline): "
            f"{summary['baseline_verdict']} ({summary['baseline_why']})"
        )
    lines.append(f"rule: {summary['rule']} (tie threshold {summary.get('tie_threshold', '-')}; docs/sweeps.md)")
    return lines


CONFIRM_KEYS = ("configurations", "verdict", "metric")  # what every reader needs; the rest is shown when present
CONFIGURATION_KEYS = ("trial_id", "params", "mean", "std", "n", "search_objective")


def load_confirm(storage: Path) -> dict[str, Any] | None:
    """The replicate phase's summary, or None before it ends; a damaged file is refused naming it."""
    from ranktune.platform.store.files import read_json_object

    path = storage / CONFIRM_FILE
    if not path.is_file():
        return None
    what = "the replicates' summary; delete it and `ranktune sweep --resume` the sweep to redo them"
    summary = read_json_object(path, what, required=CONFIRM_KEYS)
    entries = summary["configurations"]
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and all(k in e for k in CONFIGURATION_KEYS) and isinstance(e["params"], dict)
        for e in entries
    ):
        raise ConfigError(
            [f"{str(path)!r} is damaged (configurations: each needs {', '.join(CONFIGURATION_KEYS)}) -> {what}"]
        )
    return summary
