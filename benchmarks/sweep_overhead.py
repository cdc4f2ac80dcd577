"""Platform overhead: the same tiny trial run directly vs as a one-trial sweep (Ray Tune + MLflow).

    python benchmarks/sweep_overhead.py [--steps 120]

Reports, all measured in this run:
- direct_s: `Trainer(cfg).fit()` in this process (imports already warm);
- trial_s: the trial as the sweep's driver saw it (MLflow child run start -> end), which adds the
  trial actor's process start, per-evaluation checkpoint reporting and result handling;
- per-trial overhead = (trial_s - direct_s) / direct_s;
- fixed start-up: the rest of the sweep's wall time (Ray start, Tune and Optuna set-up, MLflow parent
  run, final report and plots), paid once per sweep, reported apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TINY = {
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "train": {"batch_size": 8, "micro_batch_size": 8, "eval_every": 20, "eval_blocks": 32, "log_every": 5},
    "schedule": {"warmup_steps": 5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()

    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.store.state import load_state
    from ranktune.platform.sweep.driver import run_sweep
    from ranktune.platform.sweep.trial import trial_train_config
    from ranktune.platform.tracking.client import child_runs, mlflow_client
    from ranktune.search_spaces import spec_from_dict
    from ranktune.trainables import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        raw = {
            "name": "overhead", "base_overrides": TINY, "storage": str(Path(tmp) / "sweep"),
            "space": {"params": {"optim.lr": {"type": "choice", "values": [3e-3]}}},
            "search": {"algorithm": "grid"}, "scheduler": {"name": "none"},
            "budget": {"steps_per_trial": args.steps}, "max_concurrent": 1,
        }  # fmt: skip
        spec = spec_from_dict(raw)

        # Same config and thread count the trial gets (checkpoint at every evaluation included).
        import torch

        torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
        cfg = trial_train_config(spec, {"optim.lr": 3e-3}, Path(tmp) / "direct")
        Trainer(cfg, progress=False)  # tokenize / warm the cache once, outside the timing
        start = time.perf_counter()
        Trainer(cfg, progress=False).fit()
        direct_s = time.perf_counter() - start

        start = time.perf_counter()
        run_sweep(spec, progress=False)
        sweep_s = time.perf_counter() - start
        _, state = load_state(spec.storage_dir)
        client = mlflow_client(state["tracking_uri"])
        (run,) = child_runs(client, state["experiment_id"], state["parent_run_id"])
        trial_s = (run.info.end_time - run.info.start_time) / 1000
        (row,) = collect_trials(spec, state)

    print(f"tiny model, {args.steps} steps, batch 8 x seq 64, evaluation + checkpoint every 20 steps, CPU")
    print(f"direct trainer run            {direct_s:8.2f} s")
    print(f"trial inside the sweep        {trial_s:8.2f} s   (status {row['status']})")
    overhead = trial_s - direct_s
    print(f"per-trial platform overhead   {overhead:8.2f} s = {overhead / direct_s:6.1%} of the trial")
    print(f"fixed sweep start-up/finish   {sweep_s - trial_s:8.2f} s   (once per sweep)")


if __name__ == "__main__":
    main()
