"""What Ray Tune runs for one trial: a thin adapter from the trainer's callbacks to `tune.report`.

One worker: the trainer runs right here in the Tune trial. Several workers: the trial starts a Ray
Train `TorchTrainer` (DDP over gloo or NCCL) whose rank-0 reports reach Tune through Ray's
`TuneReportCallback` (see `distributed.py`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.callbacks import Callback, Metrics
from ranktune.trainables.config import TrainConfig


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


TRIALS_DIR = "trials"  # under the sweep's storage: one directory per trial, holding its checkpoints


def trial_dir(spec: SweepSpec, trial_id: str) -> Path:
    return spec.storage_dir / TRIALS_DIR / trial_id


def trial_train_config(spec: SweepSpec, params: dict[str, Any], output_dir: str | Path) -> TrainConfig:
    """The trial's training config: base + sampled params, a checkpoint at every evaluation.

    ASHA stops trials, and a trial continues after a failure or a driver restart, only at reported
    results, so every evaluation comes with a checkpoint; only the newest is kept.
    """
    cfg = spec.trial_config(params, output_dir=Path(output_dir))
    cfg.output.checkpoint_every = cfg.train.eval_every
    cfg.output.keep_checkpoints = 1
    return cfg


class ReportTo(Callback):
    """Turns trainer events into Tune results: one result per evaluation (`report` also gets the path
    of the checkpoint written with it).

    Each result carries the `log` records since the previous one (`log_history`, a JSON string so
    Tune's CSV/TensorBoard loggers pass it through), so the driver can draw step-indexed training
    curves without a result per step (ASHA only sees evaluations).
    """

    def __init__(self, report: Callable[[Metrics, str | None], None]) -> None:
        self.report = report
        self.pending: list[Metrics] = []
        self.last_log: Metrics = {}
        self.start_step = 0
        self.eval_set = ""
        self.reported = False

    def on_train_start(self, info: Metrics) -> None:
        self.start_step = info["start_step"]  # > 0 when this run continues from a checkpoint
        self.eval_set = info["eval_set"]  # the held-out set's identity, recorded on the MLflow run

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
        result["eval_set"] = self.eval_set
        self.pending = []
        self.reported = True
        self.report(result, metrics.get("checkpoint"))

    def on_train_end(self, summary: Metrics) -> None:
        # Restored from a checkpoint taken at the very last step (the driver died after the trial's
        # final report but before Tune recorded it as finished): nothing was left to train, so no
        # evaluation was reported. Report the final state once, or Tune would end the trial with an
        # empty result and the sweep would count a finished trial as stopped early.
        if self.reported or not summary["completed"]:
            return
        self.reported = True
        final = {"step": summary["steps"], "tokens": summary["tokens"], "eval_loss": summary["final_eval_loss"],
                 "eval_ppl": summary["final_eval_ppl"], "wall_time": summary["wall_time"]}  # fmt: skip
        self.report({**final, "log_history": "[]", "start_step": self.start_step, "eval_set": self.eval_set}, None)


def with_node_id(result: Metrics) -> Metrics:
    """The result plus the Ray node it was computed on: MLflow then shows where each trial ran, and
    where it continued after its node failed."""
    import ray

    return {**result, "node_id": ray.get_runtime_context().get_node_id()}


def tune_report(result: Metrics, checkpoint_file: str | None) -> None:
    """The checkpoint is already in the trial's directory in storage, where `run_trial` looks for it."""
    from ray import tune

    tune.report(with_node_id(result))


def run_trial(params: dict[str, Any], spec_json: str, gpus_per_trial: float = 0.0,
              prepare: Callable | None = None) -> None:  # fmt: skip
    """Tune function trainable. `prepare(trainer, params)` runs before training (tests inject faults).

    The trainer checkpoints straight into `storage/trials/<trial_id>/`, and a trial that Tune starts
    again (after a node failure, a driver restart or a scheduler pause) continues from the newest
    checkpoint there. Checkpoints are not handed to Tune: Tune deletes a trial's superseded
    checkpoint before its experiment snapshot records the new one, so a driver killed in between
    left a snapshot pointing at a deleted checkpoint and the trial failed on resume.
    """
    import torch
    from ray import tune

    from ranktune.trainables.trainer import Trainer

    spec = SweepSpec.model_validate_json(spec_json)
    trial_id = tune.get_context().get_trial_id()
    if spec.resources.num_workers > 1:
        from ranktune.platform.distributed import run_distributed_trial

        # Ray Train keeps, and resumes from, the checkpoints of its own run (storage/train/<trial_id>).
        with tempfile.TemporaryDirectory(prefix="ranktune-trial-") as work_dir:
            cfg = trial_train_config(spec, params, work_dir)
            if memory_rejection(spec, cfg, gpus_per_trial) is None:
                run_distributed_trial(spec, cfg, trial_id, gpus_per_trial)
        return

    cfg = trial_train_config(spec, params, trial_dir(spec, trial_id))
    if memory_rejection(spec, cfg, gpus_per_trial) is not None:
        # Return without a result: Optuna records the trial as PRUNED (no value, no error) and
        # the MLflow callback tags it pruned_memory with the reason.
        return
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
    trainer = Trainer(cfg, [ReportTo(tune_report)], progress=False)
    trainer.resume_from_latest()
    if prepare is not None:
        prepare(trainer, params)
    trainer.fit()
