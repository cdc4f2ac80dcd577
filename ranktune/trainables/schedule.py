"""Learning-rate schedules as plain functions of the optimizer step (0-based: the step about to run)."""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], float]


def cosine_with_warmup(peak_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> Schedule:
    """Linear warmup from 0 to `peak_lr`, then one cosine decay to `min_lr_ratio * peak_lr` at the end."""

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return peak_lr * (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)

    return lr_at


def constant_with_warmup(peak_lr: float, warmup_steps: int) -> Schedule:
    def lr_at(step: int) -> float:
        return peak_lr * (step + 1) / warmup_steps if step < warmup_steps else peak_lr

    return lr_at


def section_schedule(cfg) -> Schedule:
    """The `schedule:` section's curve (also the envelope of ReLoRA's jagged schedule)."""
    s = cfg.schedule
    if s.name == "constant":
        return constant_with_warmup(cfg.optim.lr, s.warmup_steps)
    return cosine_with_warmup(cfg.optim.lr, cfg.train.steps, s.warmup_steps, s.min_lr_ratio)
