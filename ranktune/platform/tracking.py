"""MLflow tracking of a sweep: one parent run, one nested child run per trial, written by the driver.

The driver is the only writer (trials send results to it through Ray), so the default sqlite store
never sees concurrent writers. A child run is found again by its `ranktune.trial_id` tag, so a
restored trial, or a restarted driver, continues the same run instead of creating a duplicate.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

log = logging.getLogger(__name__)

TRIAL_TAG = "ranktune.trial_id"
SWEEP_TAG = "ranktune.sweep"
STATUS_TAG = "ranktune.status"  # finished stopped_early failed pruned_memory infeasible_target lost interrupted
PRUNED_MEMORY = "pruned_memory"  # the trial's memory estimate exceeded the sweep's memory_budget_gib
LOST = "lost"  # started, then its driver died before Tune's snapshot recorded it (see sweep.close_lost_runs)
INTERRUPTED = "interrupted"  # running when the sweep was stopped (Ctrl-C); `--resume` continues it
REASON_TAG = "ranktune.failure_reason"
RESUMED_TAG = "ranktune.resumed_from_step"  # set when a trial continued from a checkpoint
RETRIED_TAG = "ranktune.retried_after"  # a failed trial that `sweep --resume` ran again: the failure's reason
PARAMS_TAG = "ranktune.params"  # the sampled params as JSON, types kept (MLflow params are strings)
NODES_TAG = "ranktune.node_ids"  # Ray nodes the trial reported from, in order, comma-separated
CONFIRM_OF_TAG = "ranktune.confirm_of"  # a replicated configuration's run (platform/confirm.py), not a trial
EVAL_SET_TAG = "ranktune.eval_set"  # identity of the held-out blocks the trial was scored on (data.eval_set_id)
STOP_REASON_TAG = "ranktune.stop_reason"  # why the scheduler stopped a trial: milestone, its value, the cutoff
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (markdown)
ROLE_TAG = "ranktune.role"  # trial | configuration (a replicated one, platform/confirm.py) | replicate
REPLICATE_OF_TAG = "ranktune.replicate_of"  # a replicate's searched trial (its configuration's confirm_of)
TRIAL, CONFIGURATION, REPLICATE = "trial", "configuration", "replicate"
# What the experiment holds (model training runs, not GenAI traces), for MLflow UIs that read it. The
# UI of MLflow 3.17 does not: see runs_page_url.
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# A view of the experiment's runs page that lists the trials, best first, with their status and
# final metrics. Stored as an experiment tag in the format of the UI's own "Share" button, which the
# UI reads when its URL names the key (viewStateShareKey).
RUNS_VIEW_KEY = "ranktune-trials"
SHARED_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"

# Metrics that become step-indexed curves in MLflow (from each result and its log_history).
CURVE_KEYS = ("train_loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_bytes", "optimizer_state_bytes",
              "parameter_bytes", "gradient_bytes", "tokens")  # fmt: skip
EVAL_KEYS = ("eval_loss", "eval_ppl")


# `scheme://user:password@host` -> `scheme://host`: credentials never reach artifacts, params or the console.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")
TRACKING_CONNECT_TIMEOUT_S = 5.0


def strip_userinfo(text: str) -> str:
    """`text` with the user:password part of every URI in it removed."""
    return _USERINFO.sub(r"\g<scheme>", text)


def check_tracking_store(tracking_uri: str, field: str = "tracking.tracking_uri") -> None:
    """Refuse a tracking server that does not answer, in seconds (MLflow's own retries take minutes)."""
    import http.client
    import urllib.parse

    from ranktune.trainables.config import ConfigError

    url = urllib.parse.urlsplit(tracking_uri)
    if url.scheme not in ("http", "https"):
        return
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        raise ConfigError([f"{field}: {strip_userinfo(tracking_uri)!r} -> a URI with a valid port"]) from None
    conn_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(url.hostname or "localhost", port, timeout=TRACKING_CONNECT_TIMEOUT_S)
    try:
        conn.request("GET", (url.path.rstrip("/") or "") + "/health")
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConfigError(
            [
                f"{field}: {strip_userinfo(tracking_uri)!r} -> a reachable MLflow tracking server (no answer within "
                f"{TRACKING_CONNECT_TIMEOUT_S:g} s: {reason})"
            ]  # fmt: skip
        ) from None
    finally:
        conn.close()


def mlflow_client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def get_or_create_experiment(client, name: str, artifact_root: str | None = None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root, tags=EXPERIMENT_KIND_TAGS)


def runs_view_state(metric: str, mode: str, param_keys: list[str] = (), methods: list[str] = ()) -> dict[str, Any]:
    """The sweep's runs with a role (trials, replicated configurations with their replicates nested
    under them; not the sweep's parent, under which everything would sit folded), best objective
    first, grouped by method (every group open), with the method, its own params and how each run
    ended as columns; the charts show every run (MLflow's default: the first 10)."""
    params = ["optim.name", *(k for k in param_keys if k != "optim.name")]
    return {
        "searchFilter": f"tags.`{ROLE_TAG}` LIKE '%'",
        "orderByKey": f"metrics.`final_{metric}`",
        "orderByAsc": mode == "min",
        "selectedColumns": [*(f"params.`{k}`" for k in params), f"tags.`{ROLE_TAG}`", f"tags.`{STATUS_TAG}`",
                            f"metrics.`final_{metric}`", "metrics.`final_optimizer_state_MiB`",
                            "metrics.`final_peak_memory_MiB`", "metrics.`final_tokens_per_s`",
                            f"tags.`{STOP_REASON_TAG}`", f"tags.`{REASON_TAG}`"],
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": {"aggregateFunction": "min" if mode == "min" else "max",
                    "groupByKeys": [{"mode": "param", "groupByData": "optim.name"}]},
        "groupsExpanded": {f"param.optim.name.{m}": True for m in methods},
        "useGroupedValuesInCharts": False,  # each run its own line, not the group's aggregate
    }  # fmt: skip


def set_runs_view(client, experiment_id: str, metric: str, mode: str, param_keys: list[str] = (),
                  methods: list[str] = ()) -> bool:  # fmt: skip
    """Store the trials view on the experiment; False (and a warning) when the store refuses it."""
    try:
        state = runs_view_state(metric, mode, param_keys, methods)
        client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG, json.dumps(state))
    except Exception as exc:  # e.g. a shared server without write permission for this user
        log.warning("could not store the trials view on MLflow experiment %s: %s", experiment_id, exc)
        return False
    return True


def runs_page_url(base: str, experiment_id: str, with_view: bool = True) -> str:
    """The experiment's runs page in the MLflow UI's training view.

    MLflow 3.17's UI ignores `mlflow.experimentKind`: its workflow-based navigation (always on in the
    built bundle) derives the experiment kind from the `workflowType` URL parameter, else from the
    browser's last choice, GenAI by default, which opens on traces and folds the trials under their
    parent. `workflowType=machine_learning` asks for the training view (runs, models, metrics)."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={RUNS_VIEW_KEY}" if with_view else "")
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def run_name(params: dict[str, Any], trial_id: str) -> str:
    """What a trial is, readable in a list of runs: `galore_adamw-r64-lr3e-3-<trial id>`; a replicate's
    (params with `train.seed`) ends `-seed<N>`. The rank is `<section>.rank` of the method's own config
    sections (registry), whichever method."""
    parts = [str(params["optim.name"])] if "optim.name" in params else []
    rank = None
    if "optim.name" in params:
        from ranktune.trainables.optim import OPTIMIZERS

        entry = OPTIMIZERS.get(str(params["optim.name"]))
        rank = next((params[f"{s}.rank"] for s in (entry.sections if entry else ()) if f"{s}.rank" in params), None)
    if rank is not None:
        parts.append(f"r{rank}")
    if isinstance(params.get("optim.lr"), (int, float)):
        parts.append(f"lr{short_float(params['optim.lr'])}")
    if "train.seed" in params:
        parts.append(f"seed{params['train.seed']}")
    return "-".join([*parts, trial_id])


def short_float(value: float) -> str:
    """2 significant digits, exponent without padding: 0.003 -> 3e-3, 0.0047 -> 4.7e-3."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def tag_roles(client, state: dict[str, Any]) -> int:
    """Give the runs of a sweep tracked before ROLE_TAG existed their role (the runs view lists runs by
    it); returns how many were tagged."""
    tagged = 0
    for run in child_runs(client, state["experiment_id"], state["parent_run_id"]):
        tags = run.data.tags
        if CONFIRM_OF_TAG in tags:
            for replicate in child_runs(client, state["experiment_id"], run.info.run_id):
                if ROLE_TAG not in replicate.data.tags:
                    client.set_tag(replicate.info.run_id, ROLE_TAG, REPLICATE)
                    client.set_tag(replicate.info.run_id, REPLICATE_OF_TAG, tags[CONFIRM_OF_TAG])
                    tagged += 1
        if ROLE_TAG not in tags:
            client.set_tag(run.info.run_id, ROLE_TAG, CONFIGURATION if CONFIRM_OF_TAG in tags else TRIAL)
            tagged += 1
    return tagged


def child_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """Every trial run of a sweep (paged through: sweeps can have many trials)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=500,
            page_token=token,
        )  # fmt: skip
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def log_text_artifact(client, run_id: str, name: str, text: str, artifact_path: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(strip_userinfo(text))
        client.log_artifact(run_id, str(path), artifact_path)


class MlflowTrials(Callback):
    """Tune callback: trial start/result/complete/error -> MLflow child runs under the sweep's parent."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep_name: str,
                 steps_per_trial: int, config_yaml, memory_check=None, parent_of=None) -> None:  # fmt: skip
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
        from ranktune.platform.relocate import resumed_state

        self.__dict__.update(state)
        resumed = resumed_state()
        if resumed is not None:  # a resumed sweep, maybe copied or moved: its own store (relocate.py)
            self.tracking_uri = resumed["tracking_uri"]

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
            tags = {"mlflow.parentRunId": parent, TRIAL_TAG: trial.trial_id, SWEEP_TAG: self.sweep_name,
                    ROLE_TAG: REPLICATE if self.parent_of else TRIAL}  # fmt: skip
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
            from ranktune.platform.milestones import stop_reasons

            reason = stop_reasons.get(trial.trial_id, f"stopped by the scheduler at step {reached}")
            self.client.set_tag(run_id, STOP_REASON_TAG, reason)
        self.log_final(run_id, last)
        self.client.set_terminated(run_id, status="FINISHED")

    def log_final(self, run_id: str, last: dict[str, Any], failed: bool = False) -> None:
        """The run's `final_*` metrics from its last result. A failed trial's evaluation is not a result
        (its last one is often the untrained model's, at step 0): it is kept as `last_eval_*` at its
        step, so neither the report nor MLflow's `final_*` columns take it for the trial's objective;
        its costs (tokens, wall time, memory) are final all the same."""
        for key in ("eval_loss", "eval_ppl", "tokens", "wall_time", "tokens_per_s", "peak_memory_bytes",
                    "optimizer_state_bytes"):  # fmt: skip
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


def results_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, default=str)
