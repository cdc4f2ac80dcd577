"""Sweep results: the trials as MLflow recorded them, ranked, tabled and plotted."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from ranktune.search_spaces.spec import SweepSpec

log = logging.getLogger(__name__)

STATUS_ORDER = {"finished": 0, "stopped_early": 1, "running": 2, "pruned_memory": 3, "infeasible_target": 4,
                "lost": 5, "failed": 6}  # fmt: skip


def collect_trials(spec: SweepSpec, state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial (child run), with typed params, status, objective and cost."""
    from ranktune.platform.tracking import (
        CONFIRM_OF_TAG,
        PARAMS_TAG,
        REASON_TAG,
        STATUS_TAG,
        STOP_REASON_TAG,
        TRIAL_TAG,
        child_runs,
        mlflow_client,
    )

    client = mlflow_client(state["tracking_uri"])
    metric = spec.objective.metric
    rows = []
    for run in child_runs(client, state["experiment_id"], state["parent_run_id"]):
        tags, metrics = run.data.tags, run.data.metrics
        if CONFIRM_OF_TAG in tags:  # a replicated configuration (its replicates are nested under it)
            continue
        wall = metrics.get("final_wall_time")
        devices = _devices_per_trial(spec)
        rows.append(
            {
                "trial_id": tags.get(TRIAL_TAG),
                "run_id": run.info.run_id,
                "status": tags.get(STATUS_TAG, "running"),
                "failure_reason": tags.get(REASON_TAG),
                "stop_reason": tags.get(STOP_REASON_TAG),
                "params": json.loads(tags.get(PARAMS_TAG, "{}")),
                "objective": metrics.get(f"final_{metric}"),
                "step": _last_step(client, run.info.run_id, metric),
                "eval_ppl": metrics.get("final_eval_ppl"),
                "peak_memory_bytes": metrics.get("final_peak_memory_bytes"),
                "optimizer_state_bytes": metrics.get("final_optimizer_state_bytes"),
                "tokens_per_s": metrics.get("final_tokens_per_s"),
                "wall_time": wall,
                "device_hours": wall * devices[0] / 3600 if wall is not None else None,
                "device_kind": devices[1],
            }
        )
    rows.sort(key=lambda r: (STATUS_ORDER.get(r["status"], 9), _objective_key(r, spec.objective.mode)))
    return rows


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


def _last_step(client, run_id: str, metric: str) -> int | None:
    history = client.get_metric_history(run_id, metric)
    return max((m.step for m in history), default=None)


def _objective_key(row: dict[str, Any], mode: str) -> float:
    value = row["objective"]
    if value is None or not math.isfinite(value):
        return math.inf
    return value if mode == "min" else -value


def pick_best(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """Best trial that ran its whole budget; lower peak memory breaks ties."""
    finished = [r for r in rows if r["status"] == "finished" and r["objective"] is not None]
    if not finished:
        return None
    return min(finished, key=lambda r: (_objective_key(r, mode), r["peak_memory_bytes"] or 0))


def confirmed_configuration(confirm: dict[str, Any] | None) -> dict[str, Any] | None:
    """The replicated configuration with the best mean (confirm.json), None without replicates."""
    return next((c for c in (confirm or {}).get("configurations", []) if c["mean"] is not None), None)


def pick_winner(rows: list[dict[str, Any]], mode: str, confirm: dict[str, Any] | None) -> dict[str, Any] | None:
    """The sweep's answer: the search trial whose configuration has the best replicate mean when the
    sweep ran replicates (the search's single best was chosen for being lowest, so its value is biased
    low), else the search's best trial."""
    top = confirmed_configuration(confirm)
    if top is not None:
        for r in rows:
            if r["trial_id"] == top["trial_id"]:
                return r
    return pick_best(rows, mode)


IMPORTANCE_MIN_TRIALS = 20  # Optuna's fANOVA importances from fewer full-budget trials are noise


def write_plots(spec: SweepSpec, state: dict[str, Any], rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The method-coloured plots of plots.py, the Pareto front (several objectives), and Optuna's
    parameter importances once there are enough full-budget trials for them to mean something."""
    from ranktune.platform.confirm import load_confirm
    from ranktune.platform.pareto import plot_front
    from ranktune.platform.plots import write_method_plots

    written = write_method_plots(spec, state, rows, out_dir, load_confirm(spec.storage_dir))
    front = plot_front(spec, rows, out_dir / "pareto.png")
    if front:
        written.append(front)
    if sum(r["status"] == "finished" for r in rows) >= IMPORTANCE_MIN_TRIALS:
        importances = _param_importances(spec, out_dir / "param_importances.png")
        if importances:
            written.append(importances)
    return written


def _param_importances(spec: SweepSpec, path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{spec.storage_dir / 'optuna.db'}")
    try:
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore")
            # With several objectives Optuna's plots need one value per trial: the primary objective's.
            ax = ovm.plot_param_importances(study, target=lambda t: t.values[0], target_name=spec.objective.metric)
    except Exception as exc:  # Optuna raises for conditional-only spaces
        log.warning("plot param_importances skipped: %s", exc)
        return None
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
