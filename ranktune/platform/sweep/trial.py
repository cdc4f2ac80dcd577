"""What Ray Tune runs for one trial: a thin adapter from the trainer's callbacks to `tune.report`.

One worker: the trainer runs right here in the Tune trial. Several workers: the trial starts a Ray
Train `TorchTrainer` (DDP over gloo or NCCL) whose rank-0 reports reach Tune through Ray's
`TuneReportCallback` (see `distributed.py`). Both report through `reporting.ReportTo`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ranktune.platform.memory import estimate_memory, gib, verdict
from ranktune.platform.sweep.distributed import run_distributed_trial
from ranktune.platform.sweep.reporting import ReportTo, with_node_id
from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.callbacks import Metrics
from ranktune.trainables.config import TrainConfig
from ranktune.trainables.run import finish_run, start_run


def memory_rejection(spec: SweepSpec, cfg: TrainConfig, gpus_per_trial: float) -> str | None:
    """Why `cfg` cannot fit the sweep's memory budget (None when it fits or there is no budget).

    Estimated for the device the trial runs on (CUDA adds the fixed overhead). Deterministic, so the
    driver's MLflow callback recomputes the same reason for a trial that returned without a result.
    """
    if spec.memory_budget_gib is None:
        return None
    estimate = estimate_memory(cfg, device="cuda" if gpus_per_trial > 0 else "cpu")
    if verdict(estimate, spec.memory_budget_gib).fits:
        return None
    return (
        f"memory estimate {gib(estimate.total)} ({estimate.phase} phase) exceeds memory_budget_gib "
        f"{spec.memory_budget_gib:g}"
    )


def rejection(
    spec: SweepSpec, params: dict[str, Any], cfg: TrainConfig, gpus_per_trial: float
) -> tuple[str, str] | None:
    """(MLflow status, reason) of a configuration that is not trained: its target run cannot be exported
    (a target-aware sweep, platform/export/target.py), or its own estimate exceeds memory_budget_gib."""
    from ranktune.platform.export.target import INFEASIBLE_TARGET, infeasible_reason

    reason = infeasible_reason(spec, params)
    if reason is not None:
        return INFEASIBLE_TARGET, reason
    reason = memory_rejection(spec, cfg, gpus_per_trial)
    return None if reason is None else ("pruned_memory", reason)


def trial_memory_rejection(spec_json: str, gpus_per_trial: float, params: dict[str, Any]) -> tuple[str, str] | None:
    """`rejection` from what the driver has: the spec and a trial's sampled params."""
    from ranktune.platform.export.target import proxy_config

    spec = SweepSpec.model_validate_json(spec_json)
    try:
        cfg = proxy_config(spec, params)
    except ValueError:
        return None  # an invalid config fails in the trial itself, with its own message
    return rejection(spec, params, cfg, gpus_per_trial)


TRIALS_DIR = "trials"  # under the sweep's storage: one directory per trial, holding its checkpoints


def trial_dir(spec: SweepSpec, trial_id: str) -> Path:
    return spec.storage_dir / TRIALS_DIR / trial_id


def trial_train_config(spec: SweepSpec, params: dict[str, Any], output_dir: str | Path) -> TrainConfig:
    """The trial's training config: base + sampled params (with a target-aware sweep's update rule,
    target.proxy_config), a checkpoint at every evaluation.

    ASHA stops trials, and a trial continues after a failure or a driver restart, only at reported
    results, so every evaluation comes with a checkpoint; only the newest is kept.
    """
    from ranktune.platform.export.target import proxy_config

    cfg = proxy_config(spec, params, output_dir=Path(output_dir))
    cfg.output.checkpoint_every = cfg.train.eval_every
    cfg.output.keep_checkpoints = 1
    return cfg


def tune_report(result: Metrics, checkpoint_file: str | None) -> None:
    """The checkpoint is already in the trial's directory in storage, where `run_trial` looks for it."""
    from ray import tune

    tune.report(with_node_id(result))


def run_trial(
    params: dict[str, Any], spec_json: str, gpus_per_trial: float = 0.0, prepare: Callable | None = None
) -> None:
    """Tune function trainable. `prepare(trainer, params)` runs before training (tests inject faults).

    The trial is a training run in `storage/trials/<trial_id>/` (config, metrics, checkpoints and
    summary, see `trainables/run.py`); a trial that Tune starts again (after a node failure, a
    driver restart or a scheduler pause) continues from the newest checkpoint there. Checkpoints
    are not handed to Tune: Tune deletes a trial's superseded checkpoint before its experiment
    snapshot records the new one, so a driver killed in between left a snapshot pointing at a
    deleted checkpoint and the trial failed on resume.
    """
    import torch
    from ray import tune

    spec = SweepSpec.model_validate_json(spec_json)
    trial_id = tune.get_context().get_trial_id()
    if spec.resources.num_workers > 1:
        # Ray Train keeps, and resumes from, the checkpoints of its own run (storage/train/<trial_id>).
        with tempfile.TemporaryDirectory(prefix="ranktune-trial-") as work_dir:
            cfg = trial_train_config(spec, params, work_dir)
            if rejection(spec, params, cfg, gpus_per_trial) is None:
                run_distributed_trial(spec, cfg, trial_id, gpus_per_trial)
        return

    cfg = trial_train_config(spec, params, trial_dir(spec, trial_id))
    if rejection(spec, params, cfg, gpus_per_trial) is not None:
        # Return without a result: Optuna records the trial as PRUNED (no value, no error) and
        # the MLflow callback tags it pruned_memory or infeasible_target with the reason.
        return
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
    trainer = start_run(cfg, resume=True, callbacks=[ReportTo(tune_report)])
    if prepare is not None:
        prepare(trainer, params)
    finish_run(trainer)
