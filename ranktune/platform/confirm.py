"""Replicates and a verdict: re-run the best configurations with new seeds, say whether the winner is real.

After the search, `confirm: {top_k: N, seeds: S}` takes the best full-budget trial of each of the top-N
methods (the branch key of a conditional space; without branches, the top-N configurations) and
re-runs each with S new seeds (`train.seed` = base seed + 1 ... + S) at the full budget, through the
same trainable as the search. The searched trial itself is not one of the replicates: it was picked
for being lowest, so its value is biased low (the winner's curse); the replicates are not.

The best full-budget trial of the best full-rank baseline method (registry: `OptimizerEntry.baseline`,
i.e. AdamW or 8-bit AdamW) is always replicated too, even when it is not among the top-N: the verdict
says whether the winner beats it.

Verdict rule (platform/significance.py, docs/sweeps.md "Fair comparison"): the configurations are
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

import json
import math
import shlex
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ranktune.platform.sweep_files import write_json_atomic
from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.config import ConfigError

CONFIRM_DIR = "confirm"  # Ray Tune experiment of the replicates, under the sweep's storage
CONFIRM_FILE = "confirm.json"
FAILED_FILE = "confirm.failed"  # one line: which replicates failed, why, what to run; removed once they all ran


def select_configurations(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The searched trials to replicate: best full-budget trial of each of the top_k methods (or the
    top_k trials without branches), best first; then the best full-budget trial of a baseline method
    (full-rank AdamW / 8-bit AdamW) when none of those is one."""
    from ranktune.platform.ranking import objective_key

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
    from ranktune.platform.report_table import method_of
    from ranktune.trainables.optim import baseline_methods

    return method_of(spec, row["params"]) in baseline_methods()


def replicate_points(spec: SweepSpec, chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base_seed = spec.trial_config({}).train.seed
    return [{**row["params"], "train.seed": base_seed + i} for row in chosen for i in range(1, spec.confirm.seeds + 1)]


def summarize(spec: SweepSpec, chosen: list[dict[str, Any]], values: dict[int, list[float]]) -> dict[str, Any]:
    """values: index into `chosen` -> the replicates' objective values. Returns the table and verdict."""
    from ranktune.platform.report_table import method_of

    sign = 1.0 if spec.objective.mode == "min" else -1.0
    table = []
    for i, row in enumerate(chosen):
        vals = [v for v in values.get(i, []) if v is not None and math.isfinite(v)]
        table.append({
            "trial_id": row["trial_id"], "method": method_of(spec, row["params"]), "params": row["params"],
            "baseline": is_baseline(spec, row), "reference": bool(row.get("reference")),
            "search_objective": row["objective"],
            "values": vals, "n": len(vals), "mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) >= 2 else None,
        })  # fmt: skip
    # The winner is the best mean among the answers: a reference (a target-aware sweep's baseline, which
    # its target cannot run) is compared with, ranked after them.
    ranked = sorted((t for t in table if t["mean"] is not None), key=lambda t: (t["reference"], sign * t["mean"]))
    return {"metric": spec.objective.metric, "mode": spec.objective.mode, "seeds": spec.confirm.seeds,
            "tie_threshold": spec.confirm.tie_threshold,
            "configurations": ranked + [t for t in table if t["mean"] is None],
            **verdict(ranked, sign, spec.confirm.tie_threshold)}  # fmt: skip


RULE = ("Welch's t-test of the winner against each other configuration, Holm-adjusted: resolved when p < 0.05, "
        "tie when the gap's 95% interval lies within +/- the tie threshold, else add seeds")  # fmt: skip


def verdict(ranked: list[dict[str, Any]], sign: float, tie_threshold: float) -> dict[str, Any]:
    """The winner (best mean) against the runner-up and the best baseline (see the module doc)."""
    from ranktune.platform.significance import TOO_FEW, compare

    if len(ranked) < 2:
        return {"verdict": TOO_FEW, "rule": RULE, "why": "fewer than two configurations with replicates",
                "comparisons": []}  # fmt: skip
    win, others = ranked[0], ranked[1:]
    # In the objective's "lower is better" direction, so a positive gap always favours the winner.
    signed = [(c["trial_id"], [sign * v for v in c["values"]]) for c in ranked]
    comparisons = compare(signed[0], signed[1:], tie_threshold)
    runner = comparisons[0]
    out = {"verdict": runner.verdict, "rule": RULE, "why": runner.why(), "winner": win["trial_id"],
           "runner_up": others[0]["trial_id"], "comparisons": [c.as_dict() for c in comparisons]}  # fmt: skip
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


def run_confirm(spec: SweepSpec, state: dict[str, Any], make_trainable: Callable, callbacks: Callable,
                save_state: Callable[[], None], retry_failed: bool = False) -> dict[str, Any] | None:  # fmt: skip
    """Run the replicates (after the search) and write confirm.json; None when `confirm` is off, or
    when a replicate failed: a mean over the replicates that happened to survive is not the verdict
    asked for, so nothing is frozen and `--resume` runs the failed ones again (`retry_failed`) from
    their last checkpoints; FAILED_FILE says which failed and why.

    `make_trainable()` is the search's trainable; `callbacks(parent_of, num_trials)` the Tune callbacks
    with each replicate's MLflow run nested under `parent_of(params)`; `save_state()` persists `state`
    (which gains the configurations' run ids, so a resumed sweep nests under the same runs).
    """
    if spec.confirm is None:
        return None
    from mlflow.entities import Param
    from ray import tune

    from ranktune.platform.tracking import CONFIGURATION, CONFIRM_OF_TAG, ROLE_TAG, SWEEP_TAG, mlflow_client, run_name
    from ranktune.platform.trials import collect_trials

    path = spec.storage_dir / CONFIRM_FILE
    if path.is_file():  # a resumed sweep whose replicates had all finished
        return load_confirm(spec.storage_dir)
    client = mlflow_client(state["tracking_uri"])
    chosen = select_configurations(spec, collect_trials(spec, state))
    if not chosen:
        return None
    config_runs = state.setdefault("confirm_runs", {})
    for row in chosen:
        if row["trial_id"] not in config_runs:
            tags = {"mlflow.parentRunId": state["parent_run_id"], CONFIRM_OF_TAG: row["trial_id"], SWEEP_TAG: spec.name,
                    ROLE_TAG: CONFIGURATION}  # fmt: skip
            name = f"{run_name(row['params'], row['trial_id'])}-replicated"
            run = client.create_run(state["experiment_id"], run_name=name, tags=tags)
            # its params as the trials': the runs view groups by optim.name and shows each method's own
            params = [Param(k, str(v)[:6000]) for k, v in sorted(row["params"].items())]
            client.log_batch(run.info.run_id, params=params)
            config_runs[row["trial_id"]] = run.info.run_id
    save_state()
    points = replicate_points(spec, chosen)
    index_of = {json.dumps(p, sort_keys=True, default=str): i // spec.confirm.seeds for i, p in enumerate(points)}
    run_of = [config_runs[row["trial_id"]] for row in chosen]

    def parent_of(params: dict[str, Any]) -> str:
        return run_of[index_of[json.dumps(params, sort_keys=True, default=str)]]

    confirm_dir = spec.storage_dir / CONFIRM_DIR
    if tune.Tuner.can_restore(str(confirm_dir)):
        tuner = tune.Tuner.restore(str(confirm_dir), trainable=make_trainable(), resume_unfinished=True,
                                   resume_errored=retry_failed)  # fmt: skip
    else:
        tuner = tune.Tuner(
            make_trainable(),
            tune_config=tune.TuneConfig(
                search_alg=fixed_points(points), num_samples=len(points),
                max_concurrent_trials=spec.max_concurrent,
            ),
            run_config=tune.RunConfig(name=CONFIRM_DIR, storage_path=str(spec.storage_dir), verbose=0,
                                      callbacks=callbacks(parent_of, len(points))),
        )  # fmt: skip
    results = tuner.fit()
    if results.num_terminated + results.num_errors < len(points):  # interrupted: `--resume` continues it
        return None
    failed_file = spec.storage_dir / FAILED_FILE
    if results.num_errors:
        from ranktune.platform.tracking import failure_reason

        reasons = sorted({failure_reason(str(r.error)) for r in results if r.error is not None})
        failed_file.write_text(
            f"replicates: {results.num_errors} of {len(points)} failed ({'; '.join(reasons)[:300]}), so there is no "
            "verdict -> once the cause is fixed, `ranktune sweep --resume "
            f"{shlex.quote(str(spec.storage_dir))}` runs them again\n"
        )
        return None
    failed_file.unlink(missing_ok=True)
    values: dict[int, list[float]] = {}
    for result in results:
        metrics = result.metrics or {}
        if metrics.get("step") == spec.budget.steps_per_trial and spec.objective.metric in metrics:
            values.setdefault(index_of[json.dumps(result.config, sort_keys=True, default=str)], []).append(
                float(metrics[spec.objective.metric])
            )
    summary = summarize(spec, chosen, values)
    for entry in summary["configurations"]:
        run_id = config_runs[entry["trial_id"]]
        client.set_tag(run_id, "ranktune.params", json.dumps(entry["params"], sort_keys=True, default=str))
        for key in ("mean", "std", "n"):
            if entry[key] is not None:
                client.log_metric(run_id, f"{spec.objective.metric}_{key}", float(entry[key]))
        if entry["mean"] is not None:  # ranks the configuration among the trials in the runs view
            client.log_metric(run_id, f"final_{spec.objective.metric}", float(entry["mean"]))
        client.set_terminated(run_id, status="FINISHED")
    client.set_tag(state["parent_run_id"], "ranktune.verdict", f"{summary['verdict']}: {summary['why']}")
    if "baseline_verdict" in summary:
        client.set_tag(state["parent_run_id"], "ranktune.baseline_verdict",
                       f"{summary['baseline_verdict']}: {summary['baseline_why']}")  # fmt: skip
    write_json_atomic(path, summary)
    client.log_artifact(state["parent_run_id"], str(path))
    return summary


def fixed_points(points: list[dict[str, Any]]):
    """A Tune searcher that hands out exactly these configs, in order (Tune's BasicVariantGenerator
    needs every key of every point in a shared param_space, which branches with their own keys lack)."""
    from ray.tune.search import Searcher

    class FixedPoints(Searcher):
        def __init__(self, configs: list[dict[str, Any]]) -> None:
            super().__init__()
            self.pending = [dict(c) for c in configs]

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            return self.pending.pop(0) if self.pending else Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass

        # Tune snapshots its searcher with the experiment: a resumed confirm hands out only what is left.
        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_text(json.dumps(self.pending))

        def restore(self, checkpoint_path: str) -> None:
            self.pending = json.loads(Path(checkpoint_path).read_text())

    return FixedPoints(points)


def format_confirm(summary: dict[str, Any]) -> list[str]:
    """Lines for the console: one per configuration, then the verdicts (winner vs runner-up, vs the baseline)."""
    lines = [f"replicates ({summary['seeds']} new seeds each, full budget): {summary['metric']} mean +/- std"]
    for entry in summary["configurations"]:
        name = entry.get("method") or entry["params"].get("optim.name", entry["trial_id"])
        mean = "-" if entry["mean"] is None else f"{entry['mean']:.4f}"
        std = "-" if entry["std"] is None else f"{entry['std']:.4f}"
        role = ", baseline" if entry.get("baseline") else ""
        lines.append(f"  {name:<14} trial {entry['trial_id']}: {mean} +/- {std} (n={entry['n']}{role}; "
                     f"search run {entry['search_objective']:.4f})")  # fmt: skip
    names = {e["trial_id"]: e.get("method") or e["trial_id"] for e in summary["configurations"]}
    if "runner_up" in summary:
        lines.append(f"verdict, {names[summary['winner']]} vs {names[summary['runner_up']]} (runner-up): "
                     f"{summary['verdict']} ({summary['why']})")  # fmt: skip
    else:
        lines.append(f"verdict: {summary['verdict']} ({summary['why']})")
    if "baseline_verdict" in summary:
        against = f" vs {names[summary['baseline']]}" if "baseline" in summary else ""
        lines.append(f"verdict, {names.get(summary.get('winner'), 'winner')}{against} (baseline): "
                     f"{summary['baseline_verdict']} ({summary['baseline_why']})")  # fmt: skip
    lines.append(f"rule: {summary['rule']} (tie threshold {summary.get('tie_threshold', '-')}; docs/sweeps.md)")
    return lines


CONFIRM_KEYS = ("configurations", "verdict", "metric")  # what every reader needs; the rest is shown when present
CONFIGURATION_KEYS = ("trial_id", "params", "mean", "std", "n", "search_objective")


def load_confirm(storage: Path) -> dict[str, Any] | None:
    """The replicate phase's summary, or None before it ends; a damaged file is refused naming it."""
    from ranktune.platform.sweep_files import read_json_object

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
        raise ConfigError([f"{str(path)!r} is damaged (configurations: each needs {', '.join(CONFIGURATION_KEYS)})"
                           f" -> {what}"])  # fmt: skip
    return summary
