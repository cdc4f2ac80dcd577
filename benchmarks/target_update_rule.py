"""What training proxies with their 7b update rule changes (docs/export.md, "Target-aware sweeps").

    python benchmarks/target_update_rule.py                 # compare_tiny's proxy, 80 steps
    python benchmarks/target_update_rule.py --steps 40

Each configuration of a small grid (GaLore ranks x learning rates, ReLoRA) trains twice on the README
demo's proxy (configs/sweeps/compare_tiny.yaml): as the spec's trial config (whole-model updates, fp32
state: the proxy before target-aware sweeps) and as a target-aware sweep trains it
(`target.proxy_config`: per-layer 8-bit GaLore with low-rank accumulation and int8 projectors; ReLoRA
with 8-bit moments and an int8 base). All trainers live in one process and their steps are
interleaved round-robin, so the step-time ratio (median per row) is measured under the same load.
Prints the final held-out loss of both, the rankings, and the time ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from interleave import interleaved

CONFIGS = [
    *(
        {"optim.name": "galore_adamw", "optim.lr": lr, "galore.rank": rank, "galore.update_proj_gap": 20}
        for rank in (16, 32, 64)
        for lr in (3e-3, 1e-2)
    ),
    *(
        {
            "optim.name": "relora",
            "optim.lr": lr,
            "relora.rank": 16,
            "relora.relora_every": 30,
            "relora.warm_start_steps": 20,
            "relora.restart_warmup_steps": 4,
        }
        for lr in (3e-3, 1e-2)
    ),
]


def train_step(trainer):
    """One training step of `trainer` (its next micro-batches included), for `interleaved`."""

    def step() -> None:
        trainer.model.train()
        trainer.train_step(trainer.next_micro_batches())

    return step


def main() -> None:
    import torch

    from ranktune.platform.export.target import proxy_config
    from ranktune.search_spaces.spec import load_spec
    from ranktune.trainables import Trainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--spec", default="configs/sweeps/compare_tiny.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.spec, [f"budget.steps_per_trial={args.steps}"])
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for i, params in enumerate(CONFIGS):
            for variant in ("whole-model", "target rule"):
                run_dir = f"{out}/{i}-{variant}"
                if variant == "whole-model":
                    cfg = spec.trial_config(params, output_dir=run_dir)
                else:
                    cfg = proxy_config(spec, params, output_dir=run_dir)
                cfg.output.checkpoint_every = 0
                trainer = Trainer(cfg, progress=False)
                trainer.save = lambda: None
                rows.append(
                    {"params": params, "variant": variant, "trainer": trainer, "times": [], "optim": cfg.optim.name}
                )
        # round-robin (benchmarks/interleave.py): every row's step k under the same load
        times = interleaved({str(k): train_step(row["trainer"]) for k, row in enumerate(rows)}, rounds=args.steps)
        for k, row in enumerate(rows):
            row["times"] = times[str(k)]
        for row in rows:
            row["loss"] = row["trainer"].evaluate()["eval_loss"]
    print(f"{'configuration':58s} {'whole-model':>11s} {'target rule':>11s} {'delta':>7s} {'time ratio':>10s}")
    ranks = {}
    for i, params in enumerate(CONFIGS):
        whole, target = rows[2 * i], rows[2 * i + 1]
        ratio = statistics.median(target["times"][2:]) / statistics.median(whole["times"][2:])
        name = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in params.items())
        print(
            f"{name[:58]:58s} {whole['loss']:11.4f} {target['loss']:11.4f} {target['loss'] - whole['loss']:+7.4f} "
            f"{ratio:10.2f}"
        )
        ranks[i] = (whole["loss"], target["loss"])
    by_whole = sorted(ranks, key=lambda i: ranks[i][0])
    by_target = sorted(ranks, key=lambda i: ranks[i][1])
    print("ranking (config index, best first): whole-model", by_whole, " target rule", by_target)
    pairs = [(a, b) for a in ranks for b in ranks if a < b]
    agree = sum((ranks[a][0] < ranks[b][0]) == (ranks[a][1] < ranks[b][1]) for a, b in pairs)
    print(f"pairs ordered the same: {agree} of {len(pairs)}")


if __name__ == "__main__":
    main()
