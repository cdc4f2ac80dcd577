"""Tune's callback that records every trial of a sweep as an MLflow run (nested under the sweep's parent
run): params, curves, final metrics, status and why it ended. The MLflow client side it writes through is
platform/tracking/client.py, which imports no Ray (the reading commands use it)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ranktune.platform.tracking.client import (
    CONFIRM_OF_TAG,
    CURVE_KEYS,
    EVAL_KEYS,
    EVAL_SET_TAG,
    NODES_TAG,
    PARAMS_TAG,
    REASON_TAG,
    REPLICATE,
    REPLICATE_OF_TAG,
    RESUMED_TAG,
    RETRIED_TAG,
    ROLE_TAG,
    STATUS_TAG,
    STOP_REASON_TAG,
    SWEEP_TAG,
    TRIAL,
    TRIAL_TAG,
    log_text_artifact,
    mlflow_client,
    run_name,
    strip_userinfo,
)


class MlflowTrials(Callback):
    """Tune callback: trial start/result/complete/error -> MLflow child runs under the sweep's parent."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        sweep_name: str,
        steps_per_trial: int,
        config_yaml,
        memory_check=None,
        parent_of=None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep_name = sweep_name
        self.steps_per_trial = steps_per_trial
        self.config_yaml = config_yaml  # params -> resolved training config (YAML text)
        self.memory_check = memory_check  # params -> (status, why) of a trial that is not trained, or None
        self.parent_of = parent_of  # params -> the run to nest under (replicates); None: the sweep's parent
        self._client = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._logged_step: dict[str, int] = {}  # run_id -> newest step already in MLflow
        self._nodes: dict[str, list[str]] = {}  # run_id -> Ray nodes it reported from (NODES_TAG)
        self._eval_set_tagged: set[str] = set()  # run_ids whose EVAL_SET_TAG is set

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into its experiment state
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from ranktune.platform.store.relocate import resumed_state

        self.__dict__.update(state)
        resumed = resumed_state()
        if resumed is not None:  # a resumed sweep, maybe copied or moved: its own store (relocate.py)
            self.tracking_uri = resumed.tracking_uri

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def run_id_for(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        parent = self.parent_of(trial.config) if self.parent_of else self.parent_run_id
        same_trial = f"tags.`{TRIAL_TAG}` = '{trial.trial_id}'"
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"{same_trial} and tags.mlflow.parentRunId = '{parent}'"
        )
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "train_loss") + self.client.get_metric_history(
                run_id, "eval_loss"
            )
            self._logged_step[run_id] = max((m.step for m in history), default=-1)
            self._nodes[run_id] = [n for n in found[0].data.tags.get(NODES_TAG, "").split(",") if n]
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {
                "mlflow.parentRunId": parent,
                TRIAL_TAG: trial.trial_id,
                SWEEP_TAG: self.sweep_name,
                ROLE_TAG: REPLICATE if self.parent_of else TRIAL,
            }
            if self.parent_of:  # a replicate: marked with the searched trial it replicates
                tags[REPLICATE_OF_TAG] = self.client.get_run(parent).data.tags.get(CONFIRM_OF_TAG, "")
            run = self.client.create_run(self.experiment_id, run_name=run_name(trial.config, trial.trial_id), tags=tags)
            run_id = run.info.run_id
            self._log_params(run_id, trial.config)
            self.client.set_tag(run_id, PARAMS_TAG, json.dumps(trial.config, sort_keys=True, default=str))
            try:
                log_text_artifact(self.client, run_id, "config.yaml", self.config_yaml(trial.config))
            except Exception as exc:  # an invalid sampled config fails in the trial itself, with its message
                self.client.set_tag(run_id, "ranktune.config_error", str(exc)[:5000])
            self._logged_step[run_id] = -1
        self._runs[trial.trial_id] = run_id
        return run_id

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(
            run_id, params=[Param(k, strip_userinfo(str(v))[:6000]) for k, v in sorted(params.items())]
        )

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id_for(trial)
        tags = self.client.get_run(run_id).data.tags
        if tags.get(STATUS_TAG) == "failed":  # run again by `sweep --resume`: no longer failed, until it fails
            self.client.set_tag(run_id, RETRIED_TAG, tags.get(REASON_TAG, "unknown error"))
            for tag in (STATUS_TAG, REASON_TAG):
                if tag in tags:
                    self.client.delete_tag(run_id, tag)
            self.client.update_run(run_id, status="RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        from mlflow.entities import Metric

        if "step" not in result:  # the empty final result of a trial that returned without training
            return
        run_id = self.run_id_for(trial)
        step = result["step"]
        if 0 < result.get("start_step", 0) < step:  # continued training from a checkpoint
            self.client.set_tag(run_id, RESUMED_TAG, str(result["start_step"]))
        nodes = self._nodes.setdefault(run_id, [])
        if result.get("node_id") and result["node_id"] not in nodes:  # a new trial, or one moved after a failure
            nodes.append(result["node_id"])
            self.client.set_tag(run_id, NODES_TAG, ",".join(nodes))
        if result.get("eval_set") and run_id not in self._eval_set_tagged:
            self.client.set_tag(run_id, EVAL_SET_TAG, result["eval_set"])
            self._eval_set_tagged.add(run_id)
        newest = self._logged_step.get(run_id, -1)
        stamp = int(result.get("timestamp", 0) * 1000)
        metrics = []
        for record in json.loads(result.get("log_history", "[]")):
            if record["step"] > newest:
                metrics += [Metric(k, float(record[k]), stamp, record["step"]) for k in CURVE_KEYS if k in record]
        if step > newest or (step == 0 and newest < 0):
            # The untrained model's perplexity (~ the vocabulary size) would flatten the chart of the
            # trained ones; its loss at step 0 is kept.
            keys = ("eval_loss",) if step == 0 else EVAL_KEYS
            metrics += [
                Metric(k, float(result[k]), stamp, step) for k in keys if k in result and math.isfinite(result[k])
            ]
        for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start : start + 900])
        self._logged_step[run_id] = max(newest, step)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id_for(trial)
        last = trial.last_result or {}
        rejected = self.memory_check(trial.config) if self.memory_check and "step" not in last else None
        if rejected:  # returned before training, without a result (see trial.rejection)
            status, reason = rejected
            self.client.set_tag(run_id, STATUS_TAG, status)
            self.client.set_tag(run_id, REASON_TAG, reason)
            self.client.set_terminated(run_id, status="KILLED")
            return
        # What MLflow already holds counts too: a trial restored after a driver crash may end with a
        # last result older than the curve it had logged before the crash.
        reached = max(last.get("step", 0), self._logged_step.get(run_id, -1))
        stopped_early = reached < self.steps_per_trial
        self.client.set_tag(run_id, STATUS_TAG, "stopped_early" if stopped_early else "finished")
        if stopped_early:
            # A decision of the search, not a crash: the run ends FINISHED and says why it ended early.
            from ranktune.platform.sweep.milestones import stop_reasons

            reason = stop_reasons.get(trial.trial_id, f"stopped by the scheduler at step {reached}")
            self.client.set_tag(run_id, STOP_REASON_TAG, reason)
        self.log_final(run_id, last)
        self.client.set_terminated(run_id, status="FINISHED")

    def log_final(self, run_id: str, last: dict[str, Any], failed: bool = False) -> None:
        """The run's `final_*` metrics from its last result. A failed trial's evaluation is not a result
        (its last one is often the untrained model's, at step 0): it is kept as `last_eval_*` at its
        step, so neither the report nor MLflow's `final_*` columns take it for the trial's objective;
        its costs (tokens, wall time, memory) are final all the same."""
        for key in (
            "eval_loss",
            "eval_ppl",
            "tokens",
            "wall_time",
            "tokens_per_s",
            "peak_memory_bytes",
            "optimizer_state_bytes",
        ):
            if key in last and isinstance(last[key], (int, float)) and math.isfinite(float(last[key])):
                if failed and key in EVAL_KEYS:
                    self.client.log_metric(run_id, f"last_{key}", float(last[key]), step=int(last.get("step", 0)))
                    continue
                self.client.log_metric(run_id, f"final_{key}", float(last[key]))
                if key.endswith("_bytes"):  # what the runs view shows: MiB reads at a glance, bytes do not
                    self.client.log_metric(run_id, f"final_{key.removesuffix('_bytes')}_MiB", float(last[key]) / 2**20)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id_for(trial)
        self.log_final(run_id, trial.last_result or {}, failed=True)
        error = trial_error_text(trial)
        self.client.set_tag(run_id, STATUS_TAG, "failed")
        self.client.set_tag(run_id, REASON_TAG, strip_userinfo(failure_reason(error)))
        if error:
            log_text_artifact(self.client, run_id, "error.txt", error)
        self.client.set_terminated(run_id, status="FAILED")


def trial_error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return ""


def failure_reason(error_text: str) -> str:
    """The one line a user needs: `diverged at step N: ...`, an OOM, or the exception's last line."""
    lines = [ln.strip() for ln in error_text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the message itself is at the end; source lines echo the f-string
        if "diverged at step" in ln:
            return ln[ln.index("diverged at step") :][:500]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:500]
    return (lines[-1] if lines else "unknown error")[:500]
