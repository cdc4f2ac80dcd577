"""ReLoRA's jagged cosine schedule, and when the method wraps and restarts.

    envelope   the `schedule:` section's curve: linear warmup over schedule.warmup_steps, then one
               cosine over the whole run down to schedule.min_lr_ratio (or constant)
    restart    at each restart r the LR drops to 0 and climbs linearly over restart_warmup_steps:
               lr(r + i) = i / restart_warmup_steps * envelope(r + restart_warmup_steps), never above
               the envelope; from r + restart_warmup_steps on it is the envelope again

Steps are counted as in the trainer: `s` is the 0-based index of the step about to run, which is also
the number of updates done. The method merges after update number r, so step index r is the first
step of a new cycle. The end of an in-run warm start (wrapping, fresh LoRA moments) re-warms the same
way; a restart is never scheduled at the last step (nothing would train after it).

`schedule_points(cfg)` and `plot_schedule(cfg, path)` back the `ranktune schedule CONFIG` command.
"""

from __future__ import annotations

from collections.abc import Callable

from ranktune.trainables.optim.registry import build_schedule
from ranktune.trainables.schedule import section_schedule


def wrap_step(cfg) -> int:
    """Updates done when the model gets wrapped: 0 (from the start or a checkpoint) or warm_start_steps."""
    return 0 if cfg.relora.warm_start_checkpoint else cfg.relora.warm_start_steps


def restart_steps(cfg) -> list[int]:
    """Update counts after which ReLoRA merges and restarts (empty for plain `lora`)."""
    if cfg.optim.name != "relora":
        return []
    start, every = wrap_step(cfg), cfg.relora.relora_every
    return list(range(start + every, cfg.train.steps, every))


def restart_marks(cfg) -> set[int]:
    """The steps around every restart a reader of the schedule checks: just before and after it, and
    where its re-warmup ends (`ranktune schedule`)."""
    warm = cfg.relora.restart_warmup_steps
    return {step for r in restart_steps(cfg) for step in (r - 1, r, r + 1, r + warm)}


def rewarm_starts(cfg) -> list[int]:
    """Step indices where the LR drops to 0 and re-warms: the in-run wrap (if any) and every restart."""
    wrap = wrap_step(cfg)
    return ([wrap] if wrap > 0 else []) + restart_steps(cfg)


def jagged_cosine(cfg) -> Callable[[int], float]:
    """step index -> LR for relora / lora (registered as their `schedule`)."""
    outer = section_schedule(cfg)
    starts = rewarm_starts(cfg)
    warmup = cfg.relora.restart_warmup_steps

    def lr_at(step: int) -> float:
        lr = outer(step)
        for start in starts:
            if start <= step < start + warmup:
                ramp = (step - start) / warmup * outer(start + warmup)
                return min(lr, ramp)
        return lr

    return lr_at


def settling_windows(cfg) -> list[tuple[int, int]]:
    """Update counts at which the loss rises by design: the full-rank warm start up to the wrap plus the
    re-warmup after it, and the `restart_warmup_steps` after each restart (early stopping skips them)."""
    warmup = cfg.relora.restart_warmup_steps
    windows = [(1, wrap_step(cfg) + warmup)] if wrap_step(cfg) > 0 else []
    windows += [(restart + 1, restart + warmup) for restart in restart_steps(cfg) if warmup > 0]
    return windows


def schedule_points(cfg) -> list[tuple[int, float]]:
    """(step index, LR) for every step of the run, from the method's registered schedule."""
    lr_at = build_schedule(cfg)
    return [(step, lr_at(step)) for step in range(cfg.train.steps)]


def plot_schedule(cfg, path: str) -> str:
    """Write a PNG of the run's LR schedule (restarts marked) to `path`; returns the path."""
    import matplotlib  # optional and slow to import: only the `schedule --plot` command needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, lrs = zip(*schedule_points(cfg), strict=True)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(steps, lrs, lw=1)
    for r in restart_steps(cfg):
        ax.axvline(r, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{cfg.optim.name}: {len(restart_steps(cfg))} restarts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
