"""MLflow tracking of a sweep: one parent run, one nested child run per trial, written by the driver.

The driver is the only writer (trials send results to it through Ray), so the default sqlite store
never sees concurrent writers. A child run is found again by its `ranktune.trial_id` tag, so a
restored trial, or a restarted driver, continues the same run instead of creating a duplicate.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ranktune.platform.store.state import SweepState

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
CONFIRM_OF_TAG = "ranktune.confirm_of"  # a replicated configuration's run (platform/sweep/confirm.py), not a trial
EVAL_SET_TAG = "ranktune.eval_set"  # identity of the held-out blocks the trial was scored on (data.eval_set_id)
STOP_REASON_TAG = "ranktune.stop_reason"  # why the scheduler stopped a trial: milestone, its value, the cutoff
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (markdown)
ROLE_TAG = "ranktune.role"  # trial | configuration (a replicated one, platform/sweep/confirm.py) | replicate
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
CURVE_KEYS = (
    "train_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "peak_memory_bytes",
    "optimizer_state_bytes",
    "parameter_bytes",
    "gradient_bytes",
    "tokens",
)
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
            ]
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
        "selectedColumns": [
            *(f"params.`{k}`" for k in params),
            f"tags.`{ROLE_TAG}`",
            f"tags.`{STATUS_TAG}`",
            f"metrics.`final_{metric}`",
            "metrics.`final_optimizer_state_MiB`",
            "metrics.`final_peak_memory_MiB`",
            "metrics.`final_tokens_per_s`",
            f"tags.`{STOP_REASON_TAG}`",
            f"tags.`{REASON_TAG}`",
        ],
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": {
            "aggregateFunction": "min" if mode == "min" else "max",
            "groupByKeys": [{"mode": "param", "groupByData": "optim.name"}],
        },
        "groupsExpanded": {f"param.optim.name.{m}": True for m in methods},
        "useGroupedValuesInCharts": False,  # each run its own line, not the group's aggregate
    }


def set_runs_view(
    client, experiment_id: str, metric: str, mode: str, param_keys: list[str] = (), methods: list[str] = ()
) -> bool:
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


def tag_roles(client, state: SweepState) -> int:
    """Give the runs of a sweep tracked before ROLE_TAG existed their role (the runs view lists runs by
    it); returns how many were tagged."""
    tagged = 0
    for run in child_runs(client, state.experiment_id, state.parent_run_id):
        tags = run.data.tags
        if CONFIRM_OF_TAG in tags:
            for replicate in child_runs(client, state.experiment_id, run.info.run_id):
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
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=500,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def log_text_artifact(client, run_id: str, name: str, text: str, artifact_path: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(strip_userinfo(text))
        client.log_artifact(run_id, str(path), artifact_path)


def results_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, default=str)
