"""Optimizer-state bytes, trainable parameters and median step time per method, as ratios to AdamW.

    python benchmarks/optimizers.py                 # 60m model, every row
    python benchmarks/optimizers.py --model tiny --steps 4 --only adamw galore_adamw

Every row runs the same loop the trainer runs (begin_step / backward / step / end_step) on random
tokens, so method-specific work (GaLore's SVD, ReLoRA's merge) is inside the timed steps. A method
may expose `benchmark_extras()` returning extra figures (e.g. SVD seconds, merge+reset seconds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ranktune.trainables.config import config_from_dict
from ranktune.trainables.model import build_model
from ranktune.trainables.optim import build_method

# (label, config overrides). AdamW first: every ratio is against it.
ROWS: list[tuple[str, dict]] = [
    ("adamw", {"optim": {"name": "adamw"}}),
    ("adamw8bit", {"optim": {"name": "adamw8bit"}}),
    ("adafactor", {"optim": {"name": "adafactor"}}),
]


def measure(label: str, sections: dict, args: argparse.Namespace) -> dict:
    raw = {
        "model": {"name": args.model},
        "data": {"seq_len": args.seq_len},
        "train": {"steps": 10_000, "batch_size": args.batch, "micro_batch_size": args.batch, "device": "cpu"},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    model = build_model(cfg.model.llama_config(), "cpu")
    method = build_method(model, cfg)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.steps):
        x = torch.randint(0, model.cfg.vocab_size, (args.batch, args.seq_len + 1), generator=gen)
        start = time.perf_counter()
        method.begin_step(cfg.optim.lr)
        method.begin_micro_batch(is_last=True)
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        method.step()
        method.end_step(step + 1)
        times.append(time.perf_counter() - start)
    state = method.state_bytes()
    row = {
        "method": label,
        "state_bytes": sum(state.values()),
        "trainable_params": sum(p.numel() for p in method.trainable_parameters()),
        "median_step_s": statistics.median(times[1:] if len(times) > 1 else times),  # first step allocates state
        "state_by_category": state,
    }
    if hasattr(method, "benchmark_extras"):
        row["extras"] = method.benchmark_extras()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="60m")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--only", nargs="*", help="labels of the rows to run (adamw always runs)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    rows = [r for r in ROWS if not args.only or r[0] in args.only or r[0] == "adamw"]
    results = [measure(label, sections, args) for label, sections in rows]
    ref = results[0]
    print(f"model {args.model}, batch {args.batch} x seq {args.seq_len}, {args.steps} steps per row, CPU")
    header = f"{'method':<28}{'state MiB':>11}{'x adamw':>9}{'trainable M':>13}{'step s':>9}{'x adamw':>9}  extras"
    print(header)
    print("-" * len(header))
    for r in results:
        extras = "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.get("extras", {}).items()
        )
        print(
            f"{r['method']:<28}{r['state_bytes'] / 2**20:>11.1f}{r['state_bytes'] / ref['state_bytes']:>9.3f}"
            f"{r['trainable_params'] / 1e6:>13.2f}{r['median_step_s']:>9.3f}"
            f"{r['median_step_s'] / ref['median_step_s']:>9.2f}  {extras}"
        )


if __name__ == "__main__":
    main()
