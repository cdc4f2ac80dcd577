"""Search efficiency: TPE + ASHA vs random search without pruning, on one fixed tiny problem.

    python benchmarks/search_efficiency.py [--seeds 0 1 2] [--trials 8] [--tpe-trials 24] [--steps 90]
        [--grace 10] [--reduction-factor 3] [--startup 3] [--eval-every 10] [--scheduler asha|hyperband]

The levers (grace period, reduction factor, TPE start-up trials, evaluation period = where rungs can
fall, ASHA or asynchronous Hyperband) are flags, so each can be tried alone against the defaults; a
reduced scale (fewer seeds, trials and steps) fits a shared machine.

Problem: the tiny LLaMA on the embedded corpus, AdamW, searching lr (log-uniform 1e-4..3e-2) and
warmup (0..30 steps). For each seed both searches run as real sweeps with the same step budget per
trial: random search without pruning for `--trials` trials, TPE + ASHA for up to `--tpe-trials`
(ASHA stops most trials early, so more trials cost about the same compute); `--random-cache` keeps
random search's trials so that lever runs share them. Compute is counted in
trial-steps (steps each trial actually trained, in the order trials finished). The figure of merit,
per seed: the trial-steps TPE + ASHA needed to reach random search's best final held-out loss, as a
fraction of random search's compute (all its trial-steps; the target is <= 50%), and, stricter, of
the trial-steps random search had spent when it found that best.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

TINY = {
    "model": {"name": "tiny"},
    "data": {"seq_len": 64},
    "train": {"batch_size": 8, "micro_batch_size": 8, "eval_every": 10, "eval_blocks": 32, "log_every": 5},
    "output": {"keep_checkpoints": 1},
}
SPACE = {
    "params": {
        "optim.lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-2},
        "schedule.warmup_steps": {"type": "int", "low": 0, "high": 30, "step": 5},
    }
}


def run(kind: str, seed: int, args, root: Path) -> list[tuple[int, float | None, str]]:
    """(steps trained, final objective or None, status) per trial, in finishing order."""
    import ray

    from ranktune.platform.store.state import load_state
    from ranktune.platform.sweep.driver import run_sweep
    from ranktune.platform.tracking.client import STATUS_TAG, child_runs, mlflow_client
    from ranktune.search_spaces import spec_from_dict

    raw = {
        "name": f"{kind}-{seed}",
        "base_overrides": TINY,
        "space": SPACE,
        "seed": seed,
        "storage": str(root / f"{kind}-{seed}"),
        "max_concurrent": 2,
        "budget": {"num_trials": args.tpe_trials if kind == "tpe_asha" else args.trials, "steps_per_trial": args.steps},
        "search": {"algorithm": "tpe" if kind == "tpe_asha" else "random", "n_startup_trials": args.startup},
        "scheduler": {"name": args.scheduler, "grace_period": args.grace, "reduction_factor": args.reduction_factor}
        if kind == "tpe_asha"
        else {"name": "none"},
    }
    raw["base_overrides"] = {**TINY, "train": {**TINY["train"], "eval_every": args.eval_every}}
    spec = spec_from_dict(raw)
    run_sweep(spec, progress=False)
    ray.shutdown()
    _, state = load_state(spec.storage_dir)
    client = mlflow_client(state.tracking_uri)
    runs = sorted(child_runs(client, state.experiment_id, state.parent_run_id), key=lambda r: r.info.end_time)
    out = []
    for r in runs:
        steps = max((m.step for m in client.get_metric_history(r.info.run_id, "eval_loss")), default=0)
        finished = r.data.tags.get(STATUS_TAG) == "finished"
        out.append((steps, r.data.metrics.get("final_eval_loss") if finished else None, r.data.tags.get(STATUS_TAG)))
        if args.verbose:
            print(
                f"  {kind} seed {seed}: {r.data.params} steps {steps} {r.data.tags.get(STATUS_TAG)} "
                f"loss {r.data.metrics.get('eval_loss')}",
                flush=True,
            )
    return out


def random_search(seed: int, args, root: Path) -> list[tuple[int, float | None, str]]:
    """Random search's trials for `seed`, from --random-cache when it holds this seed at this scale."""
    key = f"seed {seed}, {args.trials} trials of {args.steps} steps, eval every {args.eval_every}"
    cache = json.loads(args.random_cache.read_text()) if args.random_cache and args.random_cache.is_file() else {}
    if key not in cache:
        cache[key] = run("random", seed, args, root)
        if args.random_cache:
            args.random_cache.write_text(json.dumps(cache, indent=1))
    return [tuple(t) for t in cache[key]]


def steps_to_reach(trials, target: float) -> int | None:
    spent = 0
    for steps, objective, _ in trials:
        spent += steps
        if objective is not None and objective <= target + 1e-9:
            return spent
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--tpe-trials", type=int, default=24)
    # 90 steps, evaluated every 10: ASHA's rungs at 10, 30 and 90 (reduction factor 3). With 40 steps
    # the rungs were 10 and 30, and a trial stopped at 30 had cost 75% of a full one.
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--grace", type=int, default=10, help="ASHA grace period (steps)")
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--startup", type=int, default=3, help="TPE random start-up trials")
    parser.add_argument("--eval-every", type=int, default=10, help="evaluation period: rungs fall on evaluations")
    parser.add_argument("--scheduler", choices=["asha", "hyperband"], default="asha")
    parser.add_argument("--verbose", action="store_true", help="print every trial's params, steps and loss")
    parser.add_argument(
        "--random-cache",
        type=Path,
        help="JSON file keeping random search's trials per seed: "
        "random search does not depend on the TPE/ASHA levers, so lever runs can share it",
    )
    args = parser.parse_args()
    print(
        f"scale: seeds {args.seeds}, {args.trials} random / {args.tpe_trials} TPE trials of {args.steps} steps; "
        f"{args.scheduler} grace {args.grace}, reduction factor {args.reduction_factor:g}, "
        f"TPE start-up {args.startup}, eval every {args.eval_every}",
        flush=True,
    )

    to_budget, to_find = [], []  # TPE+ASHA's compute / random's whole budget, / random's compute to find its best
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            random_trials = random_search(seed, args, Path(tmp))
            tpe_trials = run("tpe_asha", seed, args, Path(tmp))
            best_random = min(o for _, o, _ in random_trials if o is not None)
            random_cost = steps_to_reach(random_trials, best_random)
            tpe_cost = steps_to_reach(tpe_trials, best_random)
            best_tpe = min((o for _, o, _ in tpe_trials if o is not None), default=float("nan"))
            total_random = sum(s for s, _, _ in random_trials)
            total_tpe = sum(s for s, _, _ in tpe_trials)
            line = (
                f"seed {seed}: random best {best_random:.4f} after {random_cost} of its {total_random} "
                f"trial-steps; TPE+ASHA best {best_tpe:.4f}, total {total_tpe} trial-steps; "
            )
            if tpe_cost is None:
                line += "TPE+ASHA never reached random's best"
                to_budget.append(float("inf"))
                to_find.append(float("inf"))
            else:
                to_budget.append(tpe_cost / total_random)
                to_find.append(tpe_cost / random_cost)
                line += (
                    f"reached it after {tpe_cost} trial-steps = {tpe_cost / total_random:.0%} of random "
                    f"search's compute ({tpe_cost / random_cost:.0%} of what it spent to find it)"
                )
            print(line, flush=True)
    reached = sum(r != float("inf") for r in to_budget)
    print(
        f"median compute TPE+ASHA / random search: {statistics.median(to_budget):.2f} (target <= 0.50); "
        f"/ random's compute to find its best: {statistics.median(to_find):.2f}; "
        f"{reached}/{len(to_budget)} seeds reached random's best"
    )


if __name__ == "__main__":
    main()
