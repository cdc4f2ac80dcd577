"""Running the replicates on Ray Tune (the `confirm` phase after the search): what they are and what their
verdict means is in platform/report/replicates.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ranktune.platform.report.replicates import (
    CONFIRM_FILE,
    FAILED_FILE,
    load_confirm,
    replicate_points,
    select_configurations,
    summarize,
)
from ranktune.platform.store.files import write_json_atomic

if TYPE_CHECKING:
    from ranktune.platform.sweep.driver import Sweep

CONFIRM_DIR = "confirm"  # Ray Tune experiment of the replicates, under the sweep's storage


def run_confirm(sweep: Sweep, retry_failed: bool = False) -> dict[str, Any] | None:
    """Run the replicates (after the search) and write confirm.json; None when `confirm` is off, or
    when a replicate failed: a mean over the replicates that happened to survive is not the verdict
    asked for, so nothing is frozen and `--resume` runs the failed ones again (`retry_failed`) from
    their last checkpoints; FAILED_FILE says which failed and why.

    The replicates train through the search's trainable, with each one's MLflow run nested under its
    configuration's; sweep.json gains the configurations' run ids, so a resumed sweep nests under the same runs.
    """
    spec, state = sweep.spec, sweep.state
    if spec.confirm is None:
        return None
    from mlflow.entities import Param
    from ray import tune

    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.tracking.client import (
        CONFIGURATION,
        CONFIRM_OF_TAG,
        ROLE_TAG,
        SWEEP_TAG,
        mlflow_client,
        run_name,
    )

    path = spec.storage_dir / CONFIRM_FILE
    if path.is_file():  # a resumed sweep whose replicates had all finished
        return load_confirm(spec.storage_dir)
    client = mlflow_client(state.tracking_uri)
    chosen = select_configurations(spec, collect_trials(spec, state))
    if not chosen:
        return None
    if state.confirm_runs is None:
        state.confirm_runs = {}
    config_runs = state.confirm_runs
    for row in chosen:
        if row["trial_id"] not in config_runs:
            tags = {
                "mlflow.parentRunId": state.parent_run_id,
                CONFIRM_OF_TAG: row["trial_id"],
                SWEEP_TAG: spec.name,
                ROLE_TAG: CONFIGURATION,
            }
            name = f"{run_name(row['params'], row['trial_id'])}-replicated"
            run = client.create_run(state.experiment_id, run_name=name, tags=tags)
            # its params as the trials': the runs view groups by optim.name and shows each method's own
            params = [Param(k, str(v)[:6000]) for k, v in sorted(row["params"].items())]
            client.log_batch(run.info.run_id, params=params)
            config_runs[row["trial_id"]] = run.info.run_id
    state.write(spec.storage_dir)
    points = replicate_points(spec, chosen)
    index_of = {json.dumps(p, sort_keys=True, default=str): i // spec.confirm.seeds for i, p in enumerate(points)}
    run_of = [config_runs[row["trial_id"]] for row in chosen]

    def parent_of(params: dict[str, Any]) -> str:
        return run_of[index_of[json.dumps(params, sort_keys=True, default=str)]]

    confirm_dir = spec.storage_dir / CONFIRM_DIR
    if tune.Tuner.can_restore(str(confirm_dir)):
        tuner = tune.Tuner.restore(
            str(confirm_dir), trainable=sweep.trainable(), resume_unfinished=True, resume_errored=retry_failed
        )
    else:
        tuner = tune.Tuner(
            sweep.trainable(),
            tune_config=tune.TuneConfig(
                search_alg=fixed_points(points),
                num_samples=len(points),
                max_concurrent_trials=spec.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=CONFIRM_DIR,
                storage_path=str(spec.storage_dir),
                verbose=0,
                callbacks=sweep.callbacks(len(points), parent_of),
            ),
        )
    results = tuner.fit()
    if results.num_terminated + results.num_errors < len(points):  # interrupted: `--resume` continues it
        return None
    failed_file = spec.storage_dir / FAILED_FILE
    if results.num_errors:
        from ranktune.platform.sweep.mlflow_callback import failure_reason

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
    client.set_tag(state.parent_run_id, "ranktune.verdict", f"{summary['verdict']}: {summary['why']}")
    if "baseline_verdict" in summary:
        client.set_tag(
            state.parent_run_id,
            "ranktune.baseline_verdict",
            f"{summary['baseline_verdict']}: {summary['baseline_why']}",
        )
    write_json_atomic(path, summary)
    client.log_artifact(state.parent_run_id, str(path))
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
