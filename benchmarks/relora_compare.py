"""Full-rank AdamW vs LoRA vs LoRA + warm start vs ReLoRA at the same step budget (tiny model, CPU).

    python benchmarks/relora_compare.py                  # 600 steps each, a few minutes per row on 2 cores
    python benchmarks/relora_compare.py --steps 200 --only full relora

Prints the held-out loss of each run and, for ReLoRA, the train loss just before and after every
restart (mean of `--window` steps before vs the worst `--window`-step mean in the 2 x
restart_warmup_steps after), to check that restarts cause no loss spike. With `--eval-every N` (N
dividing the restart steps) it also compares the held-out loss at each restart with the next one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from ranktune.trainables import Trainer
from ranktune.trainables.callbacks import Callback
from ranktune.trainables.config import config_from_dict
from ranktune.trainables.optim.relora_schedule import restart_steps


class Losses(Callback):
    def __init__(self) -> None:
        self.train: dict[int, float] = {}
        self.eval: dict[int, float] = {}
        self.trainable: int | str = "all"

    def on_step(self, metrics) -> None:
        self.train[metrics["step"]] = metrics["train_loss"]
        self.trainable = metrics.get("trainable_parameters", "all")

    def on_eval(self, metrics) -> None:
        self.eval[metrics["step"]] = metrics["eval_loss"]


def base_config(args: argparse.Namespace, output_dir: str) -> dict:
    return {
        "model": {"name": "tiny", "hidden_size": args.hidden, "intermediate_size": args.intermediate},
        "data": {"source": "embedded", "seq_len": args.seq_len, "max_tokens": 2_000_000},
        "optim": {"name": "adamw", "lr": args.lr},
        "schedule": {"name": "cosine", "warmup_steps": args.steps // 10, "min_lr_ratio": 0.1},
        "relora": {"rank": args.rank, "alpha": args.alpha, "restart_warmup_steps": args.restart_warmup},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch,
            "micro_batch_size": args.batch,
            "eval_every": args.eval_every or args.steps,
            "eval_blocks": 16 * args.batch,
            "log_every": args.steps,
            "seed": 0,
            "device": "cpu",
        },
        "output": {"dir": output_dir, "checkpoint_every": 0},
    }


def rows(args: argparse.Namespace) -> dict[str, dict]:
    warm = args.steps // 4
    every = (args.steps - warm) // 4  # three restarts after the warm start
    return {
        "full": {"optim": {"name": "adamw"}},
        "lora": {"optim": {"name": "lora"}},
        "lora+warm": {"optim": {"name": "lora"}, "relora": {"warm_start_steps": warm}},
        "relora": {"optim": {"name": "relora"}, "relora": {"warm_start_steps": warm, "relora_every": every}},
    }


def spike_report(cfg, train: dict[int, float], window: int) -> list[tuple[int, float, float]]:
    """(restart step, mean loss of `window` steps before, worst `window`-step mean after) per restart."""
    out = []
    after_span = 2 * max(cfg.relora.restart_warmup_steps, window)
    for r in restart_steps(cfg):
        before = statistics.mean(train[s] for s in range(r - window + 1, r + 1))
        after = [train[s] for s in range(r + 1, min(r + after_span, cfg.train.steps) + 1)]
        worst = max(statistics.mean(after[i : i + window]) for i in range(max(1, len(after) - window + 1)))
        out.append((r, before, worst))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=344)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--restart-warmup", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: at the end)")
    parser.add_argument("--only", nargs="*", help="row labels: full lora lora+warm relora")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    results = []
    for label, sections in rows(args).items():
        if args.only and label not in args.only:
            continue
        with tempfile.TemporaryDirectory() as out:
            raw = base_config(args, out)
            for section, values in sections.items():
                raw.setdefault(section, {}).update(values)
            cfg = config_from_dict(raw)
            losses = Losses()
            start = time.perf_counter()
            summary = Trainer(cfg, [losses], progress=False).fit()
            seconds = time.perf_counter() - start
        results.append((label, summary, seconds))
        print(
            f"{label:<10} held-out loss {summary['final_eval_loss']:.4f} (ppl {summary['final_eval_ppl']:.1f})  "
            f"trainable at end {losses.trainable}  {seconds:.0f}s",
            flush=True,
        )
        for r, before, worst in spike_report(cfg, losses.train, args.window):
            print(
                f"    restart after step {r}: train loss {before:.4f} before, worst {worst:.4f} after "
                f"({100 * (worst / before - 1):+.1f}%)",
                flush=True,
            )
            later = [s for s in sorted(losses.eval) if s > r]
            if r in losses.eval and later:  # the eval at r sees the merged model, whose function is unchanged
                before, after = losses.eval[r], losses.eval[later[0]]
                print(
                    f"        held-out loss {before:.4f} at step {r}, {after:.4f} at step {later[0]} "
                    f"({100 * (after / before - 1):+.1f}%)",
                    flush=True,
                )

    print(
        f"\n{args.steps} steps x {args.batch} x {args.seq_len} tokens, tiny model hidden {args.hidden}, "
        f"rank {args.rank}, alpha {args.alpha:g}"
    )
    print(f"{'run':<10}{'held-out loss':>15}{'ppl':>10}")
    for label, summary, _ in results:
        print(f"{label:<10}{summary['final_eval_loss']:>15.4f}{summary['final_eval_ppl']:>10.1f}")


if __name__ == "__main__":
    main()
