"""Optimization methods by name: the registry the trainer and the config validation look up.

An entry says how to check a config (`check`, returning problems as `field: value -> allowed`
lines), how to build the `Method` for a model (`build`) and, optionally, its own LR schedule.
New methods register themselves here with `register(...)`; the training loop is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ranktune.trainables.optim.base import Method, TorchOptimizerMethod, decay_groups, tensor_bytes

if TYPE_CHECKING:
    from torch import nn

    from ranktune.trainables.config import TrainConfig


def _no_problems(cfg: TrainConfig) -> list[str]:
    return []


@dataclass(frozen=True)
class OptimizerEntry:
    build: Callable[[nn.Module, TrainConfig], Method]
    check: Callable[[TrainConfig], list[str]] = _no_problems
    # Returns step -> LR for the whole run; None uses the `schedule:` section (cosine / constant).
    schedule: Callable[[TrainConfig], Callable[[int], float]] | None = None
    description: str = ""


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register(name: str, entry: OptimizerEntry) -> None:
    OPTIMIZERS[name] = entry


def build_method(model: nn.Module, cfg: TrainConfig) -> Method:
    return OPTIMIZERS[cfg.optim.name].build(model, cfg)


# Importing the modules registers their entries.
from ranktune.trainables.optim import apollo, baselines, galore, relora  # noqa: E402,F401

__all__ = [
    "OPTIMIZERS",
    "Method",
    "OptimizerEntry",
    "TorchOptimizerMethod",
    "build_method",
    "decay_groups",
    "register",
    "tensor_bytes",
]
