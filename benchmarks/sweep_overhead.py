"""Platform overhead: the same tiny trial run directly vs as a one-trial sweep (Ray Tune + MLflow).

    python benchmarks/sweep_overhead.py [--steps 120]

Reports, all measured in this run:
- direct_s: `Trainer(cfg).fit()` in this process (imports already warm);
- trial_s: the trial as the sweep's driver saw it (MLflow child run start -> end), which adds the
  trial actor's process start, per-evaluation checkpoint reporting and result handling;
- per-trial overhead = (trial_s - direct_s) / direct_s;
- fixed start-up: the rest of the sweep's wall time (Ray start, Tune and Optuna set-up, MLflow parent
  run, final report and plots), paid once per sweep, reported apart.

The direct runs and the sweeps alternate (benchmarks/interleave.py, `--rounds` of each, medians), so a
change of load during the benchmark shifts both sides of the ratio alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from interleave import interleaved, medians

TINY = {
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "train": {"batch_size": 8, "micro_batch_size": 8, "eval_every": 20, "eval_blocks": 32, "log_every": 5},
    "schedule": {"warmup_steps": 5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3, help="direct runs and sweeps, alternating; medians")
    args = parser.parse_args()

    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.store.state import load_state
    from ranktune.platform.sweep.driver import run_sweep
    from ranktune.platform.sweep.trial import trial_train_config
    from ranktune.platform.tracking.client import child_runs, mlflow_client
    from ranktune.search_spaces import spec_from_dict
    from ranktune.trainables import Trainer

    params = {"optim.lr": 3e-3}
    with tempfile.TemporaryDirectory() as tmp:

        def spec_for(storage: str):
            raw = {
                "name": "overhead",
                "base_overrides": TINY,
                "storage": str(Path(tmp) / storage),
                "space": {"params": {"optim.lr": {"type": "choice", "values": [3e-3]}}},
                "search": {"algorithm": "grid"},
                "scheduler": {"name": "none"},
                "budget": {"steps_per_trial": args.steps},
                "max_concurrent": 1,
            }
            return spec_from_dict(raw)

        spec = spec_for("sweep-0")
        # Same config and thread count the trial gets (checkpoint at every evaluation included).
        import torch

        torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
        Trainer(trial_train_config(spec, params, Path(tmp) / "warm"), progress=False)  # tokenize / warm the cache once
        directs: list[Path] = []
        sweeps: list[dict] = []  # per sweep: wall seconds, the trial's status

        def direct() -> None:
            directs.append(Path(tmp) / f"direct-{len(directs)}")
            Trainer(trial_train_config(spec, params, directs[-1]), progress=False).fit()

        def sweep() -> float:
            """One one-trial sweep; returns the trial's seconds as the driver saw them (MLflow child run)."""
            one = spec_for(f"sweep-{len(sweeps)}")
            start = time.perf_counter()
            run_sweep(one, progress=False)
            wall_s = time.perf_counter() - start
            _, state = load_state(one.storage_dir)
            client = mlflow_client(state.tracking_uri)
            (run,) = child_runs(client, state.experiment_id, state.parent_run_id)
            (row,) = collect_trials(one, state)
            sweeps.append({"wall_s": wall_s, "status": row["status"]})
            return (run.info.end_time - run.info.start_time) / 1000

        times = interleaved({"direct": direct, "sweep": sweep}, rounds=args.rounds)
        median = medians(times)
        direct_s, trial_s = median["direct"], median["sweep"]
        fixed_s = statistics.median(s["wall_s"] - t for s, t in zip(sweeps, times["sweep"], strict=True))
        statuses = sorted({s["status"] for s in sweeps})

    print(
        f"tiny model, {args.steps} steps, batch 8 x seq 64, evaluation + checkpoint every 20 steps, CPU; "
        f"{args.rounds} direct runs and sweeps alternating, medians"
    )
    print(f"direct trainer run            {direct_s:8.2f} s")
    print(f"trial inside the sweep        {trial_s:8.2f} s   (status {', '.join(statuses)})")
    overhead = trial_s - direct_s
    print(f"per-trial platform overhead   {overhead:8.2f} s = {overhead / direct_s:6.1%} of the trial")
    print(f"fixed sweep start-up/finish   {fixed_s:8.2f} s   (once per sweep)")


if __name__ == "__main__":
    main()
