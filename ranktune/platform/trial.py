"""What Ray Tune runs for one trial: a thin adapter from the trainer's callbacks to `tune.report`.

One worker: the trainer runs right here in the Tune trial. Several workers: the trial starts a Ray
Train `TorchTrainer` (DDP over gloo or NCCL) whose rank-0 reports reach Tune through Ray's
`TuneReportCallback` (see `distributed.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.callbacks import Callback, Metrics
from ranktune.trainables.config import TrainConfig

CHECKPOINT_FILE = "state.pt"


def memory_rejection(spec: SweepSpec, cfg: TrainConfig, gpus_per_trial: float) -> str | None:
    """Why `cfg` cannot fit the sweep's memory budget (None when it fits or there is no budget).

    Estimated for the device the trial runs on (CUDA adds the fixed overhead). Deterministic, so the
    driver's MLflow callback recomputes the same reason for a trial that returned without a result.
    """
    if spec.memory_budget_gib is None:
        return None
    from ranktune.platform.memory import estimate_memory, gib, verdict

    estimate = estimate_memory(cfg, device="cuda" if gpus_per_trial > 0 else "cpu")
    if verdict(estimate, spec.memory_budget_gib).fits:
        return None
    return (f"memory estimate {gib(estimate.total)} ({estimate.phase} phase) exceeds memory_budget_gib "
            f"{spec.memory_budget_gib:g}")  # fmt: skip


def trial_memory_rejection(spec_json: str, gpus_per_trial: float, params: dict[str, Any]) -> str | None:
    """`memory_rejection` from what the driver has: the spec and a trial's sampled params."""
    spec = SweepSpec.model_validate_json(spec_json)
    try:
        cfg = spec.trial_config(params)
    except ValueError:
        return None  # an invalid config fails in the trial itself, with its own message
    return memory_rejection(spec, cfg, gpus_per_trial)


def trial_train_config(spec: SweepSpec, params: dict[str, Any], work_dir: str | Path) -> TrainConfig:
    """The trial's training config: base + sampled params, checkpoints at every evaluation.

    ASHA stops and Ray restores trials only at reported results, so every evaluation comes with a
    checkpoint; only the newest is kept in the trial's scratch directory (Tune persists the
    reported ones into the sweep's storage).
    """
    cfg = spec.trial_config(params, output_dir=Path(work_dir) / "run")
    cfg.output.checkpoint_every = cfg.train.eval_every
    cfg.output.keep_checkpoints = 1
    return cfg


class ReportTo(Callback):
    """Turns trainer events into Tune results: one result (and checkpoint) per evaluation.

    Each result carries the `log` records since the previous one (`log_history`, a JSON string so
    Tune's CSV/TensorBoard loggers pass it through), so the driver can draw step-indexed training
    curves without a result per step (ASHA only sees evaluations).
    """

    def __init__(self, report: Callable[[Metrics, str | None], None]) -> None:
        self.report = report
        self.pending: list[Metrics] = []
        self.last_log: Metrics = {}
        self.start_step = 0

    def on_train_start(self, info: Metrics) -> None:
        self.start_step = info["start_step"]  # > 0 when this run continues from a checkpoint

    def on_log(self, metrics: Metrics) -> None:
        keep = ("step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_bytes",
                "optimizer_state_bytes", "parameter_bytes", "gradient_bytes", "wall_time")  # fmt: skip
        record = {k: metrics[k] for k in keep if k in metrics}
        self.pending.append(record)
        self.last_log = record

    def on_eval(self, metrics: Metrics) -> None:
        result = {**self.last_log, **{k: v for k, v in metrics.items() if k != "checkpoint"}}
        result["log_history"] = json.dumps(self.pending)
        result["start_step"] = self.start_step
        self.pending = []
        self.report(result, metrics.get("checkpoint"))


@contextlib.contextmanager
def staged_checkpoint(checkpoint_file: str) -> Iterator[str]:
    """A directory holding just this checkpoint as `state.pt`, for Ray to persist into storage."""
    with tempfile.TemporaryDirectory() as staging:
        target = Path(staging) / CHECKPOINT_FILE
        try:
            os.link(checkpoint_file, target)  # same filesystem: no copy of the weights
        except OSError:
            shutil.copy2(checkpoint_file, target)
        yield staging


def with_node_id(result: Metrics) -> Metrics:
    """The result plus the Ray node it was computed on: MLflow then shows where each trial ran, and
    where it continued after its node failed."""
    import ray

    return {**result, "node_id": ray.get_runtime_context().get_node_id()}


def tune_report(result: Metrics, checkpoint_file: str | None) -> None:
    from ray import tune

    result = with_node_id(result)
    if checkpoint_file is None:
        tune.report(result)
        return
    with staged_checkpoint(checkpoint_file) as staging:
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(staging))


def run_trial(params: dict[str, Any], spec_json: str, gpus_per_trial: float = 0.0,
              prepare: Callable | None = None) -> None:  # fmt: skip
    """Tune function trainable. `prepare(trainer, params)` runs before training (tests inject faults)."""
    import torch
    from ray import tune

    from ranktune.trainables.checkpoint import load_checkpoint
    from ranktune.trainables.trainer import Trainer

    spec = SweepSpec.model_validate_json(spec_json)
    # Scratch space outside the trial directory: Ray syncs the trial directory to storage in the
    # background, and must not race the trainer rotating its checkpoint files.
    with tempfile.TemporaryDirectory(prefix="ranktune-trial-") as work_dir:
        cfg = trial_train_config(spec, params, work_dir)
        if memory_rejection(spec, cfg, gpus_per_trial) is not None:
            # Return without a result: Optuna records the trial as PRUNED (no value, no error) and
            # the MLflow callback tags it pruned_memory with the reason.
            return
        if spec.resources.num_workers > 1:
            from ranktune.platform.distributed import run_distributed_trial

            run_distributed_trial(spec, cfg, tune.get_context().get_trial_id(), gpus_per_trial)
            return

        torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
        trainer = Trainer(cfg, [ReportTo(tune_report)], progress=False)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # restored after a failure, a driver restart, or a scheduler pause
            with checkpoint.as_directory() as d:
                trainer.load_state_dict(load_checkpoint(Path(d) / CHECKPOINT_FILE))
        if prepare is not None:
            prepare(trainer, params)
        trainer.fit()
