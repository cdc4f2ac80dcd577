"""The sweep's trials as MLflow recorded them: one row per search trial, with typed params, status,
objective and cost; and `SweepResults`, a sweep as the reading commands see it, loaded once."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from ranktune.platform.report.ranking import RESULT_STATUSES, STATUS_ORDER, objective_key
from ranktune.platform.report.table import is_reference
from ranktune.search_spaces.spec import SweepSpec

if TYPE_CHECKING:
    from ranktune.platform.store.state import SweepState


class TrialRow(TypedDict):
    """One searched trial (an MLflow child run of the sweep); `results.json` is a list of these. A dict,
    so it is its own JSON and every reader (table, plots, export, ladder) indexes it the same way."""

    trial_id: str | None
    run_id: str
    start_time: int | None  # ms; the order trials started (trial ids are random hex)
    status: str  # finished | stopped_early | failed | diverged | lost | interrupted | infeasible_target | running
    failure_reason: str | None
    stop_reason: str | None
    params: dict[str, Any]  # the searched keys, typed
    reference: bool  # a target-aware sweep's reference: compared against, never the answer (ranking.py)
    objective: float | None  # final value of the objective metric, only for finished and stopped_early trials
    last_objective: float | None  # a failed trial's last evaluation: shown as such, never its objective
    step: int | None  # last step the objective was logged at
    eval_ppl: float | None
    peak_memory_bytes: float | None
    optimizer_state_bytes: float | None
    tokens_per_s: float | None
    wall_time: float | None  # s
    device_hours: float | None
    device_kind: str  # the unit of device_hours: GPU or CPU


class ReplicateRow(TypedDict):
    """One replicate run of `confirm`, nested under its configuration's run."""

    trial_id: str | None
    run_id: str
    replicate_of: str  # the searched trial it replicates
    status: str
    params: dict[str, Any]
    objective: float | None
    start_time: int | None


def collect_trials(spec: SweepSpec, state: SweepState) -> list[TrialRow]:
    """One row per trial (child run), with typed params, status, objective and cost."""
    from ranktune.platform.tracking.client import (
        CONFIRM_OF_TAG,
        PARAMS_TAG,
        REASON_TAG,
        STATUS_TAG,
        STOP_REASON_TAG,
        TRIAL_TAG,
        child_runs,
        mlflow_client,
    )

    client = mlflow_client(state.tracking_uri)
    metric = spec.objective.metric
    rows: list[TrialRow] = []
    devices = _devices_per_trial(spec)
    for run in child_runs(client, state.experiment_id, state.parent_run_id):
        tags, metrics = run.data.tags, run.data.metrics
        if CONFIRM_OF_TAG in tags:  # a replicated configuration (its replicates are nested under it)
            continue
        wall = metrics.get("final_wall_time")
        params = json.loads(tags.get(PARAMS_TAG, "{}"))
        status = tags.get(STATUS_TAG, "running")
        rows.append(
            TrialRow(
                trial_id=tags.get(TRIAL_TAG),
                run_id=run.info.run_id,
                start_time=run.info.start_time,  # ms; the order trials started (trial ids are random hex)
                status=status,
                failure_reason=tags.get(REASON_TAG),
                stop_reason=tags.get(STOP_REASON_TAG),
                params=params,
                reference=is_reference(spec, params),  # compared against, never the answer (ranking.py)
                objective=_objective(metrics, metric, status),
                # A failed trial's last evaluation, labelled as such in the report (not its objective);
                # stores written before `last_*` existed kept it as `final_*`.
                last_objective=None
                if status in RESULT_STATUSES
                else metrics.get(f"last_{metric}", metrics.get(f"final_{metric}")),
                step=_last_step(client, run.info.run_id, metric),
                eval_ppl=metrics.get("final_eval_ppl"),
                peak_memory_bytes=metrics.get("final_peak_memory_bytes"),
                optimizer_state_bytes=metrics.get("final_optimizer_state_bytes"),
                tokens_per_s=metrics.get("final_tokens_per_s"),
                wall_time=wall,
                device_hours=wall * devices[0] / 3600 if wall is not None else None,
                device_kind=devices[1],
            )
        )
    rows.sort(key=lambda r: (STATUS_ORDER.get(r["status"], 9), objective_key(r, spec.objective.mode)))
    return rows


def collect_replicates(spec: SweepSpec, state: SweepState) -> list[ReplicateRow]:
    """The replicate runs of `confirm` (nested under each replicated configuration's run), as rows with
    `trial_id`, `run_id`, `status`, `params`, `objective` and `replicate_of` (the searched trial)."""
    from ranktune.platform.tracking.client import (
        CONFIRM_OF_TAG,
        PARAMS_TAG,
        STATUS_TAG,
        TRIAL_TAG,
        child_runs,
        mlflow_client,
    )

    client = mlflow_client(state.tracking_uri)
    rows = []
    for config_run in child_runs(client, state.experiment_id, state.parent_run_id):
        of = config_run.data.tags.get(CONFIRM_OF_TAG)
        if of is None:
            continue
        for run in child_runs(client, state.experiment_id, config_run.info.run_id):
            tags = run.data.tags
            status = tags.get(STATUS_TAG, "running")
            rows.append(
                {
                    "trial_id": tags.get(TRIAL_TAG),
                    "run_id": run.info.run_id,
                    "replicate_of": of,
                    "status": status,
                    "params": json.loads(tags.get(PARAMS_TAG, "{}")),
                    "objective": _objective(run.data.metrics, spec.objective.metric, status),
                    "start_time": run.info.start_time,
                }
            )
    return sorted(rows, key=lambda r: r["start_time"] or 0)


RESULTS_FILE = "results.json"  # the trials as collect_trials gave them when the sweep last ended


def read_trials(spec: SweepSpec, state: SweepState) -> tuple[list[TrialRow], str | None]:
    """(the sweep's trials, None) from its tracking store; when that store is a server that does not
    answer within seconds (MLflow's own retries take minutes, issue 24.8): (the trials saved in
    results.json, one line saying so). Neither: ConfigError naming the tracking URI."""
    from ranktune.platform.tracking.client import check_tracking_store, strip_userinfo
    from ranktune.trainables.config import ConfigError

    try:
        check_tracking_store(state.tracking_uri)
    except ConfigError as unreachable:
        saved = spec.storage_dir / RESULTS_FILE
        if not saved.is_file():
            raise ConfigError(
                [
                    f"{unreachable.problems[0]}; and {saved} does not exist (the sweep never ended), "
                    "so there is nothing to read offline"
                ]
            ) from None
        when = datetime.datetime.fromtimestamp(saved.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        return json.loads(saved.read_text()), (
            f"note: tracking server {strip_userinfo(state.tracking_uri)} does not answer; using {saved} "
            f"(written when the sweep last ended, {when}), without curves or plots"
        )
    return collect_trials(spec, state), None


def _devices_per_trial(spec: SweepSpec) -> tuple[float, str]:
    """(devices a trial holds, 'GPU' or 'CPU'): the unit of the cost column."""
    gpus = spec.resources.gpus_per_trial
    if gpus not in ("auto", 0, 0.0):
        return float(gpus) * spec.resources.num_workers, "GPU"
    try:
        import torch

        if gpus == "auto" and torch.cuda.is_available():
            return float(spec.resources.num_workers), "GPU"
    except ImportError:
        pass
    return spec.resources.cpus_per_trial * spec.resources.num_workers, "CPU"


def _objective(metrics: dict[str, float], metric: str, status: str) -> float | None:
    """The run's final value of the objective, only where its status makes it a result: a run a failed
    trial recorded before `last_*` existed holds its last evaluation, often step 0's, as `final_*`."""
    return metrics.get(f"final_{metric}") if status in RESULT_STATUSES else None


def _last_step(client, run_id: str, metric: str) -> int | None:
    history = client.get_metric_history(run_id, metric)
    return max((m.step for m in history), default=None)


@dataclass
class SweepResults:
    """A sweep as the reading commands (report, export, ui) see it, loaded once: its spec and state
    (wherever the directory now is), its trials (from MLflow, or results.json when the tracking server
    does not answer: `offline` then says so) and its replicates' summary (confirm.json)."""

    spec: SweepSpec
    state: SweepState
    trials: list[TrialRow]
    confirm: dict[str, Any] | None
    offline: str | None = None
    _replicates: list[ReplicateRow] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepResults:
        from ranktune.platform.report.replicates import load_confirm
        from ranktune.platform.store.state import load_state

        spec, state = load_state(sweep_dir)
        trials, offline = read_trials(spec, state)
        return cls(spec, state, trials, load_confirm(spec.storage_dir), offline)

    @property
    def storage(self) -> Path:
        return self.spec.storage_dir

    @property
    def replicates(self) -> list[ReplicateRow]:
        """The replicate runs (queried from MLflow on first use: only the HTML report and plots need them)."""
        if self._replicates is None:
            self._replicates = collect_replicates(self.spec, self.state)
        return self._replicates
