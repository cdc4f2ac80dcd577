"""The plug-in point between the training loop and an optimization method.

The loop only ever talks to a `Method`:

    method.begin_step(lr)                 # once per optimizer step, before the micro-batches
    method.begin_micro_batch(is_last)     # before each backward (per-layer methods step in hooks)
    loss.backward()
    stats = method.step()                 # clip + optimizer step + zero grads; returns e.g. grad_norm
    stats |= method.end_step(step)        # after the update: ReLoRA merges and restarts here

A plain torch optimizer is `TorchOptimizerMethod`. GaLore (parameter groups, steps inside gradient
hooks) and ReLoRA (wraps the model, merges and prunes optimizer state) subclass `Method` and are
registered by name in `ranktune.trainables.optim`; the loop does not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def tensor_bytes(obj: Any) -> int:
    """Bytes held by all tensors inside a (nested) optimizer-state structure."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    # bitsandbytes and others keep state in small objects; count their tensor attributes too.
    if hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        return sum(tensor_bytes(v) for v in vars(obj).values())
    return 0


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's rule: 2-D weights (matrices, embeddings) decay; 1-D parameters (norms) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class Method:
    """Base class of an optimization method. Subclasses set `self.optimizers` and `self.model`."""

    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    grad_clip: float = 0.0

    def begin_step(self, lr: float) -> None:
        # Groups may carry `lr_scale` (e.g. a method wanting a different LR for some parameters).
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

    def begin_micro_batch(self, is_last: bool) -> None:
        """Called before each backward; only methods that update inside gradient hooks need it."""

    def step(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        if self.grad_clip > 0:
            params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return stats

    def end_step(self, step: int) -> dict[str, float]:
        """Called after the update of optimizer step `step` (1-based count of updates done)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for opt, sd in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(sd)

    def state_bytes(self) -> dict[str, int]:
        """Optimizer-state bytes by category; the loop reports their sum as optimizer_state_bytes."""
        return {"moments": sum(tensor_bytes(opt.state) for opt in self.optimizers)}

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)


class TorchOptimizerMethod(Method):
    """One torch optimizer over the model's parameters, with global-norm clipping."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
        self.model = model
        self.optimizers = [optimizer]
        self.grad_clip = grad_clip
