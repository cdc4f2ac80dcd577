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

STATUS_ORDER = {"finished": 0, "stopped_early": 1, "running": 2, "pruned_memory": 3, "lost": 4, "failed": 5}


def collect_trials(spec: SweepSpec, state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial (child run), with typed params, status, objective and cost."""
    from ranktune.platform.tracking import (
        CONFIRM_OF_TAG,
        PARAMS_TAG,
        REASON_TAG,
        STATUS_TAG,
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


def render_table(spec: SweepSpec, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    names = sorted({k for r in rows for k in r["params"]})
    unit = rows[0]["device_kind"] if rows else "GPU"
    table = Table(title=f"sweep {spec.name}: {spec.objective.mode} {spec.objective.metric} at the end of the budget")
    for col in ("#", "trial", "status", spec.objective.metric, "step", *names, "peak MiB", "tok/s", f"{unit}-h"):
        table.add_column(col, overflow="fold")
    for i, r in enumerate(rows, 1):
        status = r["status"]
        if status in ("failed", "pruned_memory"):  # the reason is what the reader needs
            status = f"{status}: {(r['failure_reason'] or '')[:160]}"
        table.add_row(
            str(i), r["trial_id"] or "?", status, _fmt(r["objective"]), _fmt(r["step"]),
            *(_fmt(r["params"].get(n, "")) for n in names),
            _fmt(r["peak_memory_bytes"] / 2**20 if r["peak_memory_bytes"] else None),
            _fmt(r["tokens_per_s"]), _fmt(r["device_hours"]),
        )  # fmt: skip
    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough that params stay on one line
        console = Console(width=200)
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_plots(spec: SweepSpec, state: dict[str, Any], rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Optuna's optimization history, parallel coordinates and parameter importances, plus overlaid
    loss curves of every trial. A plot that cannot be drawn (e.g. importances with under two finished
    trials) is skipped with a logged reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{spec.storage_dir / 'optuna.db'}")
    from optuna.visualization import matplotlib as ovm

    # With several objectives Optuna's plots need one value per trial: the primary objective's.
    primary = (lambda trial: trial.values[0]) if spec.objectives else None

    for name, draw in (
        ("optimization_history", ovm.plot_optimization_history),
        ("parallel_coordinates", ovm.plot_parallel_coordinate),
        ("param_importances", ovm.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                ax = draw(study, target=primary, target_name=spec.objective.metric)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.savefig(out_dir / f"{name}.png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(out_dir / f"{name}.png")
        except Exception as exc:  # Optuna raises for too few trials or conditional-only spaces
            log.warning("plot %s skipped: %s", name, exc)
    from ranktune.platform.pareto import plot_front

    front = plot_front(spec, rows, out_dir / "pareto.png")
    if front:
        written.append(front)
    curves = _loss_curves(state, rows, out_dir / "loss_curves.png")
    if curves:
        written.append(curves)
    return written


def _loss_curves(state: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    from ranktune.platform.tracking import mlflow_client

    client = mlflow_client(state["tracking_uri"])
    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = 0
    for r in rows:
        label = f"{r['trial_id']} {r['params'].get('optim.name', '')} ({r['status']})"
        for ax, metric in ((ax_train, "train_loss"), (ax_eval, "eval_loss")):
            history = sorted(client.get_metric_history(r["run_id"], metric), key=lambda m: m.step)
            if history:
                ax.plot([m.step for m in history], [m.value for m in history], label=label,
                        linestyle="--" if r["status"] != "finished" else "-", marker=".")  # fmt: skip
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in ((ax_train, "train loss"), (ax_eval, "held-out loss")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_eval.legend(fontsize=7, loc="upper right")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
