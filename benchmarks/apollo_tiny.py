"""AdamW, GaLore, Fira, APOLLO and APOLLO-Mini on the tiny model: held-out loss at the same steps, lr tuned.

    nice python benchmarks/apollo_tiny.py                # 100 steps, 3 learning rates per method
    python benchmarks/apollo_tiny.py --steps 300 --only apollo_adamw apollo_mini

Every method trains the same model (tiny preset, embedded corpus, same data order and seed) for the
same number of steps with each learning rate of its grid; the table gives the best held-out loss
and the learning rate that gave it. GaLore, Fira and APOLLO use rank hidden/4 (the papers' d/4) and
update_proj_gap steps/2, APOLLO-Mini rank 1 with scale 128; everything else is the section's defaults.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ranktune.trainables import Trainer
from ranktune.trainables.config import config_from_dict

LR_GRIDS = {
    "adamw": [1e-3, 3e-3, 1e-2],
    "galore_adamw": [3e-3, 1e-2, 3e-2],
    "fira_adamw": [1e-3, 3e-3, 1e-2, 3e-2],  # best at 3e-3 of [3e-3, 1e-2, 3e-2]: the grid reaches below it
    "apollo_adamw": [3e-3, 1e-2, 3e-2],
    "apollo_mini": [1e-3, 3e-3, 1e-2, 3e-2],  # scale 128 makes its steps large: best at the grid's low end
}


def method_sections(name: str, rank: int, gap: int) -> dict:
    section = {"galore_adamw": "galore", "fira_adamw": "fira", "apollo_adamw": "apollo", "apollo_mini": "apollo_mini"}
    if name == "adamw":
        return {}
    keys = {"update_proj_gap": gap} if name == "apollo_mini" else {"rank": rank, "update_proj_gap": gap}
    return {section[name]: keys}


def run(name: str, lr: float, args: argparse.Namespace) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        raw = {
            "model": {"name": "tiny"},
            "data": {"source": "embedded", "seq_len": args.seq_len, "max_tokens": args.max_tokens},
            "optim": {"name": name, "lr": lr},
            "schedule": {"name": "cosine", "warmup_steps": args.steps // 10, "min_lr_ratio": 0.1},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch,
                "micro_batch_size": args.batch,
                "eval_every": args.steps,
                "eval_blocks": args.eval_blocks,
                "log_every": args.steps,
                "seed": 0,
                "device": "cpu",
            },
            "output": {"dir": out, "checkpoint_every": 0},
            **method_sections(name, args.rank, args.steps // 2),
        }
        start = time.perf_counter()
        summary = Trainer(config_from_dict(raw), progress=False).fit()
        return summary["final_eval_loss"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rank", type=int, default=32, help="GaLore / Fira / APOLLO rank (tiny hidden is 128)")
    parser.add_argument("--eval-blocks", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help=f"methods: {' '.join(LR_GRIDS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    best = {}
    for name, grid in LR_GRIDS.items():
        if args.only and name not in args.only:
            continue
        for lr in grid:
            loss, seconds = run(name, lr, args)
            print(f"{name:<13} lr {lr:<7g} held-out loss {loss:.4f}  {seconds:.0f}s", flush=True)
            if name not in best or loss < best[name][0]:
                best[name] = (loss, lr)

    print(
        f"\ntiny model, {args.steps} steps x {args.batch} x {args.seq_len} tokens, embedded corpus, "
        f"rank {args.rank} (APOLLO-Mini 1), update_proj_gap {args.steps // 2}, "
        "best of each method's lr grid"
    )
    print("| method | held-out loss | lr | vs AdamW |\n|---|---|---|---|")
    ref = best.get("adamw", (None,))[0]
    for name, (loss, lr) in best.items():
        ratio = f"{loss / ref:.3f}" if ref else "-"
        print(f"| {name} | {loss:.4f} | {lr:g} | {ratio} |")


if __name__ == "__main__":
    main()
