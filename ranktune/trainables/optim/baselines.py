"""Full-rank baselines: AdamW (torch), 8-bit AdamW (bitsandbytes blockwise states), Adafactor (torch)."""

from __future__ import annotations

import importlib.util

import torch

from ranktune.trainables.optim import OptimizerEntry, register
from ranktune.trainables.optim.base import TorchOptimizerMethod, decay_groups


def build_adamw(model, cfg) -> TorchOptimizerMethod:
    o = cfg.optim
    opt = torch.optim.AdamW(decay_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    return TorchOptimizerMethod(model, opt, cfg.train.grad_clip)


def bitsandbytes_missing() -> list[str]:
    if importlib.util.find_spec("bitsandbytes") is None:
        return ["optim.name: 8-bit states need bitsandbytes -> pip install bitsandbytes, or use adamw"]
    return []


def build_adamw8bit(model, cfg) -> TorchOptimizerMethod:
    import bitsandbytes as bnb

    o = cfg.optim
    # bitsandbytes keeps tensors under 4096 elements (norms) in 32-bit state; matrices get 8-bit
    # blockwise-quantised moments. Runs on CPU and CUDA.
    opt = bnb.optim.AdamW8bit(decay_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    return TorchOptimizerMethod(model, opt, cfg.train.grad_clip)


def build_adafactor(model, cfg) -> TorchOptimizerMethod:
    o = cfg.optim
    # torch's Adafactor keeps factored second moments (row + column) for matrices, no first moment.
    opt = torch.optim.Adafactor(decay_groups(model, o.weight_decay), lr=o.lr, eps=(None, 1e-3))
    return TorchOptimizerMethod(model, opt, cfg.train.grad_clip)


register("adamw", OptimizerEntry(build=build_adamw, description="torch AdamW, fp32 moments"))
register(
    "adamw8bit",
    OptimizerEntry(
        build=build_adamw8bit, check=lambda cfg: bitsandbytes_missing(), description="bitsandbytes 8-bit AdamW"
    ),
)
register("adafactor", OptimizerEntry(build=build_adafactor, description="torch Adafactor, factored moments"))
