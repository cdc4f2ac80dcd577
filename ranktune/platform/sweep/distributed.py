"""A multi-worker trial: Ray Train's `TorchTrainer` (DDP) run from inside a Tune function trial.

This is how current Ray combines the two (Train V2): the Tune trial starts the Train run, each
worker calls `ray.train.report`, and Ray's `TuneReportCallback` forwards rank 0's metrics and
checkpoint path to Tune, where ASHA and the MLflow callback see them like any other trial's.
Ray Train resumes a run from its own storage when started again under the same name, so a
restored Tune trial continues from the Train run's latest checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ranktune.platform.sweep.reporting import ReportTo, with_node_id
from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.callbacks import Metrics
from ranktune.trainables.checkpoint import load_checkpoint
from ranktune.trainables.config import TrainConfig
from ranktune.trainables.trainer import Trainer

CHECKPOINT_FILE = "state.pt"


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


def train_report(result: Metrics, checkpoint_file: str | None) -> None:
    """Every worker reports (Ray Train expects all ranks to); only rank 0 carries the checkpoint."""
    import ray.train

    result = with_node_id(result)
    if checkpoint_file is None:
        ray.train.report(result)
        return
    with staged_checkpoint(checkpoint_file) as staging:
        ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(staging))


def train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker, inside the process group Ray set up (gloo on CPU, NCCL on GPU)."""
    import ray.train
    import torch

    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory(prefix=f"ranktune-rank{rank}-") as work_dir:
        raw = config["train_config"]
        raw["output"]["dir"] = str(Path(work_dir) / "run")
        cfg = TrainConfig.model_validate(raw)
        trainer = Trainer(cfg, [ReportTo(train_report)], progress=False)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                trainer.load_state_dict(load_checkpoint(Path(d) / CHECKPOINT_FILE))
        trainer.fit()


def run_distributed_trial(spec: SweepSpec, cfg: TrainConfig, trial_name: str, gpus_per_worker: float) -> None:
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": spec.resources.cpus_per_trial, **({"GPU": gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "train_config": cfg.model_dump(mode="json"),
            "cpus_per_worker": spec.resources.cpus_per_trial,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=spec.resources.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=trial_name,
            storage_path=str(spec.storage_dir / "train"),
            callbacks=[TuneReportCallback()],
            # Ray Train saves its run state before deleting a superseded checkpoint: keeping one is safe.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()
