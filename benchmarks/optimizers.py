"""Optimizer-state bytes, trainable parameters and median step time per method, as ratios to AdamW.

    python benchmarks/optimizers.py                 # 60m model, every row
    python benchmarks/optimizers.py --model tiny --steps 4 --only adamw galore_adamw apollo_adamw

Every row times the trainer's own `Trainer.train_step` on random tokens, so method-specific work
(GaLore's SVD, ReLoRA's merge) is inside the timed steps. A method
may expose `benchmark_extras()` returning extra figures (e.g. SVD seconds, merge+reset seconds).

The rows' steps are interleaved (benchmarks/interleave.py: step i of every row within round i, medians
per row), so a change of load during the run shifts every row alike instead of distorting the ratios.
All rows' trainers are alive at once: memory is the sum of the rows' (use --only to run fewer).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from interleave import interleaved

from ranktune.trainables.config import config_from_dict
from ranktune.trainables.optim import OptimizerEntry, TorchOptimizerMethod, register
from ranktune.trainables.optim.galore.method import targeted_linears
from ranktune.trainables.trainer import Trainer

# (label, config overrides). AdamW first: every ratio is against it.
ROWS: list[tuple[str, dict]] = [
    ("adamw", {"optim": {"name": "adamw"}}),
    ("adamw8bit", {"optim": {"name": "adamw8bit"}}),
    ("adafactor", {"optim": {"name": "adafactor"}}),
    # GaLore at the paper's 60m rank (128) and scale. update_proj_gap 3 instead of 200 puts projector
    # updates inside the timed steps (steps 3 and 6 of 0..6); those are timed apart as proj_step_s.
    ("galore_adamw", {"optim": {"name": "galore_adamw"}, "galore": {"rank": 128, "update_proj_gap": 3}}),
    (
        "galore_adamw_randomized",
        {"optim": {"name": "galore_adamw"}, "galore": {"rank": 128, "update_proj_gap": 3, "svd": "randomized"}},
    ),
    ("galore_adamw8bit", {"optim": {"name": "galore_adamw8bit"}, "galore": {"rank": 128, "update_proj_gap": 3}}),
    ("galore_adafactor", {"optim": {"name": "galore_adafactor"}, "galore": {"rank": 128, "update_proj_gap": 3}}),
    (
        "galore_adamw_per_layer",
        {
            "optim": {"name": "galore_adamw"},
            "galore": {"rank": 128, "update_proj_gap": 3, "per_layer": True},
            "train": {"grad_clip": 0.0},
        },
    ),
    (
        "galore_adamw8bit_per_layer",
        {
            "optim": {"name": "galore_adamw8bit"},
            "galore": {"rank": 128, "update_proj_gap": 3, "per_layer": True},
            "train": {"grad_clip": 0.0},
        },
    ),
    # APOLLO (rank 128 = the 60m paper's d/4, random projector regenerated from its seed, and stored),
    # APOLLO-Mini (rank 1) and Fira (rank 128, SVD), projector updates at steps 3 and 6 as for GaLore.
    ("apollo_adamw", {"optim": {"name": "apollo_adamw"}, "apollo": {"rank": 128, "update_proj_gap": 3}}),
    (
        "apollo_adamw_stored",
        {"optim": {"name": "apollo_adamw"}, "apollo": {"rank": 128, "update_proj_gap": 3, "proj_storage": "matrix"}},
    ),
    ("apollo_mini", {"optim": {"name": "apollo_mini"}, "apollo_mini": {"update_proj_gap": 3}}),
    ("fira_adamw", {"optim": {"name": "fira_adamw"}, "fira": {"rank": 128, "update_proj_gap": 3}}),
    # The public galore-torch GaLoreAdamW on the same targets (registered below; benchmark-only dependency).
    ("galore_torch_adamw", {"optim": {"name": "galore_torch_adamw"}, "galore": {"rank": 128, "update_proj_gap": 3}}),
    # ReLoRA at the paper's 60m rank (128). relora_every 3 puts merge+reset inside the timed steps
    # (after steps 3 and 6); its time is reported apart as merge_reset_s, the step median is a LoRA step.
    ("relora", {"optim": {"name": "relora"}, "relora": {"rank": 128, "relora_every": 3, "restart_warmup_steps": 1}}),
    (
        "relora_adamw8bit",
        {
            "optim": {"name": "relora"},
            "relora": {"rank": 128, "relora_every": 3, "restart_warmup_steps": 1, "inner_optimizer": "adamw8bit"},
        },
    ),
    (
        "relora_int8_base",
        {
            "optim": {"name": "relora"},
            "relora": {"rank": 128, "relora_every": 3, "restart_warmup_steps": 1, "base_precision": "int8"},
        },
    ),
]


def build_galore_torch_adamw(model, cfg) -> TorchOptimizerMethod:
    from galore_torch import GaLoreAdamW

    g, o = cfg.galore, cfg.optim
    projected = [m.weight for m in targeted_linears(model, g.target_modules).values()]
    rest = [p for p in model.parameters() if all(p is not q for q in projected)]
    galore = {"rank": g.rank, "update_proj_gap": g.update_proj_gap, "scale": g.scale, "proj_type": g.proj_type}
    groups = [{"params": projected, **galore}, {"params": rest}]
    opt = GaLoreAdamW(groups, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay, no_deprecation_warning=True)
    return TorchOptimizerMethod(model, opt, cfg.train.grad_clip)


register("galore_torch_adamw", OptimizerEntry(build=build_galore_torch_adamw, description="public galore-torch"))


def build_row(sections: dict, args: argparse.Namespace, output_dir: str) -> tuple[Trainer, Callable[[], float]]:
    """The row's trainer and its step: one `train_step` on fresh random tokens (drawn outside the timing)."""
    raw = {
        "model": {"name": args.model},
        "data": {"seq_len": args.seq_len},
        "schedule": {"name": "constant", "warmup_steps": 0},  # every row at the configured LR
        "train": {
            "steps": 10_000,
            "batch_size": args.batch,
            "micro_batch_size": args.batch,
            "device": "cpu",
            "seed": 0,
        },
        "output": {"dir": output_dir},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    trainer = Trainer(config_from_dict(raw), progress=False)
    gen = torch.Generator().manual_seed(0)  # every row sees the same tokens

    def step() -> float:
        x = torch.randint(0, trainer.llama_cfg.vocab_size, (args.batch, args.seq_len + 1), generator=gen)
        start = time.perf_counter()
        trainer.train_step([(x[:, :-1], x[:, 1:])])
        return time.perf_counter() - start

    return trainer, step


def summarize(label: str, trainer: Trainer, times: list[float]) -> dict:
    """The row's figures from its step times (in the order they ran)."""
    method, cfg = trainer.method, trainer.cfg
    state = method.state_bytes()
    # GaLore, APOLLO and Fira recompute their projectors at updates 0, T, 2T, ...: time those steps apart.
    section = next((s for s in ("galore", "apollo_mini", "apollo", "fira") if cfg.optim.name.startswith(s)), None)
    gap = getattr(cfg, section).update_proj_gap if section else 0
    proj_steps = [t for i, t in enumerate(times) if i and gap and i % gap == 0]
    other_steps = [t for i, t in enumerate(times) if i and not (gap and i % gap == 0)]
    row = {
        "method": label,
        "state_bytes": sum(state.values()),
        "trainable_params": sum(p.numel() for p in method.trainable_parameters()),
        "median_step_s": statistics.median(other_steps or times),  # first step allocates state
        "state_by_category": state,
        "extras": method.benchmark_extras() if hasattr(method, "benchmark_extras") else {},
    }
    if proj_steps:
        row["extras"]["proj_step_s"] = statistics.median(proj_steps)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="60m")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--only", nargs="*", help="labels of the rows to run (adamw always runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed, so runs compare)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = [r for r in ROWS if not args.only or r[0] in args.only or r[0] == "adamw"]
    with tempfile.TemporaryDirectory(prefix="ranktune-bench-") as output_dir:  # nothing is written there
        built = {label: build_row(sections, args, output_dir) for label, sections in rows}
        times = interleaved({label: step for label, (_, step) in built.items()}, rounds=args.steps)
        results = [summarize(label, trainer, times[label]) for label, (trainer, _) in built.items()]
    ref = results[0]
    print(
        f"model {args.model}, batch {args.batch} x seq {args.seq_len}, {args.steps} steps per row interleaved "
        f"(round-robin, median per row), CPU, {args.threads} threads"
    )
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
    by_label = {r["method"]: r for r in results}
    if {"galore_adamw", "galore_torch_adamw"} <= by_label.keys():
        ratio = by_label["galore_adamw"]["median_step_s"] / by_label["galore_torch_adamw"]["median_step_s"]
        print(f"galore_adamw median step vs public GaLoreAdamW: {ratio:.2f}x (target <= 1.0)")
    if {"galore_adamw", "galore_adamw_randomized"} <= by_label.keys():
        full, rand = (by_label[k]["extras"].get("proj_step_s") for k in ("galore_adamw", "galore_adamw_randomized"))
        if full and rand:
            print(f"randomized-SVD projector step vs full SVD: {rand / full:.2f}x (target <= 0.7)")
    if {"galore_adamw", "apollo_adamw"} <= by_label.keys():
        svd, random = (by_label[k]["extras"].get("proj_step_s") for k in ("galore_adamw", "apollo_adamw"))
        if svd and random:
            print(f"APOLLO projector-update step (random draw) vs GaLore's (SVD): {random / svd:.2f}x")


if __name__ == "__main__":
    main()
