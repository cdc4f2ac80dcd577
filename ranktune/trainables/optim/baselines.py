"""Full-rank baselines: AdamW (torch), 8-bit AdamW (bitsandbytes blockwise states), Adafactor (torch).

What each keeps per parameter (the `estimate_state` of its entry, and of inner optimizers elsewhere):

    adamw      exp_avg + exp_avg_sq in the parameter dtype, plus a 0-d fp32 `step` tensor
    adamw8bit  bitsandbytes: uint8 codes + one fp32 absmax per block for both moments, fp32 moments
               for small tensors, one pair of code maps per optimizer (see eightbit.py)
    adafactor  torch: a row (m) and a column (n) second moment per matrix, the full second moment for
               vectors, no first moment, a 0-d fp32 `step`
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ranktune.trainables.optim import eightbit
from ranktune.trainables.optim.base import TorchOptimizerMethod, decay_groups
from ranktune.trainables.optim.registry import Device, OptimizerEntry, ParamShape, PhaseState, register

STEP_TENSOR_BYTES = 4  # torch AdamW / Adafactor keep `step` as a 0-d fp32 tensor per parameter


def build_adamw(model, cfg) -> TorchOptimizerMethod:
    o = cfg.optim
    opt = torch.optim.AdamW(decay_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    return TorchOptimizerMethod(model, opt, cfg.train.grad_clip)


def build_adamw8bit(model, cfg) -> TorchOptimizerMethod:
    import bitsandbytes as bnb  # optional dependency: only runs that use it need it installed

    o = cfg.optim
    # bitsandbytes keeps small tensors (norms) in 32-bit state; matrices get 8-bit blockwise-quantised
    # moments. Runs on CPU and CUDA.
    opt = bnb.optim.AdamW8bit(decay_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    return TorchOptimizerMethod(model, opt, cfg.train.grad_clip)


def build_adafactor(model, cfg) -> TorchOptimizerMethod:
    o = cfg.optim
    # torch's Adafactor keeps factored second moments (row + column) for matrices, no first moment.
    opt = torch.optim.Adafactor(decay_groups(model, o.weight_decay), lr=o.lr, eps=(None, 1e-3))
    return TorchOptimizerMethod(model, opt, cfg.train.grad_clip)


# ---------------------------------------------------------------------------------- memory accounting


def inner_state_bytes(inner: str, shape: tuple[int, ...], value_bytes: int, step_tensor: bool) -> int:
    """State of one tensor under `inner` (adamw / adamw8bit / adafactor); `step_tensor`: torch's
    optimizers keep a 0-d fp32 step per tensor (GaLore's optimizers keep a plain int)."""
    n = math.prod(shape)
    step = STEP_TENSOR_BYTES if step_tensor else 0
    if inner == "adamw":
        return 2 * n * value_bytes + step
    if inner == "adamw8bit":
        return eightbit.adam_state_bytes(n)
    values = shape[0] + shape[1] if len(shape) == 2 else n
    return values * value_bytes + step


def full_rank_state(inner: str, params: Iterable[ParamShape], device: Device, phase: str) -> PhaseState:
    """One torch / bitsandbytes optimizer over every parameter (also ReLoRA's full-rank warm start)."""
    params = tuple(params)
    e = max(p.value_bytes for p in params)
    largest = max(p.numel for p in params) * e
    state = sum(inner_state_bytes(inner, p.shape, p.value_bytes, step_tensor=True) * p.count for p in params)
    if inner == "adamw":
        # torch's foreach AdamW (the default on CUDA) allocates sqrt(exp_avg_sq) for all tensors at once.
        temp = sum(p.numel * p.count * p.value_bytes for p in params) if device == "cuda" else largest
    elif inner == "adamw8bit":
        state += eightbit.QMAPS_BYTES
        temp = 0  # fused in-place kernel
    else:
        temp = 2 * largest  # row_var @ col_var and the update, one matrix at a time
    return PhaseState(
        phase=phase,
        weights=sum(p.numel * p.count * p.value_bytes for p in params),
        trainable=params,
        optimizer={"moments": state},
        step_temporaries=temp,
    )


def estimate_full_rank(inner: str):
    def estimate_state(shapes: tuple[ParamShape, ...], cfg, device: Device) -> list[PhaseState]:
        return [full_rank_state(inner, shapes, device, "full-rank")]

    return estimate_state


register(
    "adamw",
    OptimizerEntry(
        build=build_adamw,
        estimate_state=estimate_full_rank("adamw"),
        description="torch AdamW, fp32 moments",
        baseline=True,
        colour="#1f77b4",
        full_rank=True,
    ),
)
register(
    "adamw8bit",
    OptimizerEntry(
        build=build_adamw8bit,
        check=lambda cfg: eightbit.bitsandbytes_missing(),
        estimate_state=estimate_full_rank("adamw8bit"),
        description="bitsandbytes 8-bit AdamW",
        baseline=True,
        colour="#8c564b",
        full_rank=True,
    ),
)
register(
    "adafactor",
    OptimizerEntry(
        build=build_adafactor,
        estimate_state=estimate_full_rank("adafactor"),
        description="torch Adafactor, factored moments",
        colour="#7f7f7f",
        full_rank=True,
    ),
)
