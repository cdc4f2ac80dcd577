"""LoRA layers for ReLoRA: a frozen base weight W plus a trainable low-rank update (alpha/r) B A.

    y = W x + (alpha / r) * B (A x)        W (out, in) frozen, A (r, in), B (out, r) trainable

The frozen base may be stored in the training dtype ("same"), in bf16, or in int8 (bitsandbytes'
LLM.int8 weight format: int8 rows with one absmax scale per output row). A stored base that differs
from the compute dtype goes through `_FrozenBaseLinear`, which keeps only the stored tensor for
backward and re-materialises the compute-dtype weight there, so the savings hold during training too.

`merge_lora_into_base` folds (alpha/r) B A into W in fp32 (whatever W is stored in) and then
re-initialises A (Kaiming-uniform) and B (zeros): B = 0 makes the layer's function unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BasePrecision = Literal["same", "bf16", "int8"]


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 (out, in) and fp32 row scales (out,): bitsandbytes' LLM.int8 format."""
    import bitsandbytes.functional as bnbf

    int8_rows, row_absmax, _ = bnbf.int8_vectorwise_quant(weight.float().contiguous())
    return int8_rows, row_absmax


def dequantize_int8_rows(int8_rows: torch.Tensor, row_absmax: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as bitsandbytes.functional.int8_vectorwise_dequant (row * absmax / 127), done
    # here in torch so that the backward pass needs nothing but the stored tensors.
    return int8_rows.float() * (row_absmax.float() / 127.0).unsqueeze(1)


def materialize(stored: torch.Tensor, row_absmax: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if row_absmax is not None:
        return dequantize_int8_rows(stored, row_absmax).to(dtype)
    return stored.to(dtype)


class _FrozenBaseLinear(torch.autograd.Function):
    """x @ W.T for a frozen W stored in another dtype; saves the stored W, not a converted copy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stored: torch.Tensor, row_absmax: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(stored, row_absmax)
        ctx.x_dtype = x.dtype
        return F.linear(x, materialize(stored, row_absmax, x.dtype))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        stored, row_absmax = ctx.saved_tensors
        grad_x = grad_out @ materialize(stored, row_absmax, grad_out.dtype)
        return grad_x.to(ctx.x_dtype), None, None


class LoRALinear(nn.Module):
    """A bias-free Linear with frozen weight and a trainable rank-`rank` update scaled by alpha/rank."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        base_precision: BasePrecision = "same",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if base.bias is not None:
            raise ValueError("LoRALinear wraps bias-free Linear layers only (the LLaMA projections have none)")
        self.out_features, self.in_features = base.weight.shape
        self.rank = rank
        self.scale = alpha / rank
        self.base_precision = base_precision
        # The trainable factors live in the dtype the model trains in (fp32, or bf16 with precision=bf16).
        train_dtype, device = base.weight.dtype, base.weight.device
        # Frozen tensors are Parameters with requires_grad=False so parameter counts and bytes include them.
        self.weight = nn.Parameter(torch.empty(0, device=device), requires_grad=False)
        self.weight_absmax: nn.Parameter | None = None
        self.set_base_weight(base.weight.detach())
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=train_dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=train_dtype, device=device))
        self.reset_lora(generator)

    # ---------------------------------------------------------------- frozen base

    def base_weight_fp32(self) -> torch.Tensor:
        absmax = self.weight_absmax.data if self.weight_absmax is not None else None
        return materialize(self.weight.data, absmax, torch.float32)

    @torch.no_grad()
    def set_base_weight(self, weight: torch.Tensor) -> None:
        """Store `weight` (any float dtype) in this layer's base precision, rounding once."""
        if self.base_precision == "int8":
            int8_rows, row_absmax = quantize_int8_rows(weight)
            self.weight = nn.Parameter(int8_rows, requires_grad=False)
            self.weight_absmax = nn.Parameter(row_absmax, requires_grad=False)
            return
        dtype = torch.bfloat16 if self.base_precision == "bf16" else weight.dtype
        if self.weight.shape == weight.shape and self.weight.dtype == dtype:
            self.weight.copy_(weight)  # in place: keeps the Parameter object (and any references to it)
        else:
            self.weight = nn.Parameter(weight.to(dtype).clone(), requires_grad=False)

    # ---------------------------------------------------------------- LoRA factors

    @torch.no_grad()
    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        """A <- Kaiming-uniform (as nn.Linear initialises weights), B <- 0, so (alpha/r) B A = 0."""
        # Drawn on the CPU from the method's own generator: the same numbers on any device, and
        # restarts are reproducible from the generator state saved in checkpoints.
        bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) on an (r, in) matrix
        a = torch.empty(self.lora_A.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        self.lora_A.copy_(a)
        self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        absmax = self.weight_absmax
        if absmax is None and self.weight.dtype == x.dtype:
            base = F.linear(x, self.weight)
        else:
            base = _FrozenBaseLinear.apply(x, self.weight, absmax)
        return base + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}, "
            f"base={self.base_precision}"
        )


@torch.no_grad()
def merge_lora_into_base(layer: LoRALinear, generator: torch.Generator | None = None) -> None:
    """W <- W + (alpha/r) B A computed in fp32, then A re-initialised and B zeroed (function unchanged)."""
    delta = (layer.lora_B.float() @ layer.lora_A.float()) * layer.scale
    layer.set_base_weight(layer.base_weight_fp32() + delta)
    layer.reset_lora(generator)


def is_target(name: str, target_modules: list[str]) -> bool:
    """A module is targeted when its dotted name ends with one of `target_modules` (e.g. 'q_proj')."""
    return any(name == t or name.endswith("." + t) for t in target_modules)


def wrap_lora(
    model: nn.Module,
    target_modules: list[str],
    rank: int,
    alpha: float,
    base_precision: BasePrecision,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Replace every targeted nn.Linear of `model` by a LoRALinear in place; returns the wrapped names."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and is_target(name, target_modules)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha, base_precision, generator))
    return [name for name, _ in targets]


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]
