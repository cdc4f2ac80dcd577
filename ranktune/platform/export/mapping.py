"""A proxy configuration mapped to the target model: shapes, rank, intervals, learning rate (by the rules)."""

from __future__ import annotations

import copy
import math
from typing import Any

from ranktune.platform.export.rules import PAPER_STEPS, ScalingRules
from ranktune.trainables.config import ConfigError, TrainConfig
from ranktune.trainables.model import MODEL_PRESETS
from ranktune.trainables.optim.registry import TargetScaling, lookup


def scale_interval(value: int, proxy: TrainConfig, target_steps: int, target_tokens_per_step: int, rule: str) -> int:
    if rule == "steps":
        return value
    if rule == "tokens":
        return round(value * proxy.tokens_per_step / target_tokens_per_step)
    return round(value / proxy.train.steps * target_steps)


def target_rank(rank: int, proxy_hidden: int, target_hidden: int, rules: ScalingRules) -> int:
    if rules.rank == "absolute":
        return rank
    scaled = rank * target_hidden / proxy_hidden
    return max(rules.rank_multiple, round(scaled / rules.rank_multiple) * rules.rank_multiple)


def map_to_target(proxy: TrainConfig, target: str, rules: ScalingRules) -> dict[str, Any]:
    """The target config as a raw dict (validated later, after user overrides)."""
    if target not in MODEL_PRESETS:
        raise ConfigError([f"--target: {target!r} -> one of {sorted(MODEL_PRESETS)}"])
    proxy_hidden = proxy.model.llama_config().hidden_size
    target_hidden = MODEL_PRESETS[target].hidden_size
    steps = rules.steps or PAPER_STEPS.get(target)
    if steps is None:
        raise ConfigError([f"rules.steps: None -> a step count for target {target!r} (no paper value)"])
    tokens_per_step = rules.batch_size * rules.seq_len

    def interval(value: int) -> int:
        return scale_interval(value, proxy, steps, tokens_per_step, rules.intervals)

    raw = copy.deepcopy(proxy.model_dump(mode="json"))
    raw["model"] = {"name": target, "activation_checkpointing": rules.activation_checkpointing}
    data = raw["data"]
    data["seq_len"] = rules.seq_len
    data.pop("cache_dir")  # the proxy's cache path; the target run uses its own default
    if rules.data_source == "c4":
        data.update(source="c4", files=[], max_tokens=steps * tokens_per_step)
    width = proxy_hidden / target_hidden
    lr_scale = {"same": 1.0, "sqrt_width": math.sqrt(width), "width": width}[rules.lr]
    raw["optim"]["lr"] = proxy.optim.lr * lr_scale * rules.lr_multiplier
    raw["schedule"]["warmup_steps"] = min(interval(proxy.schedule.warmup_steps), steps - 1)
    train = raw["train"]
    train.update(
        steps=steps,
        batch_size=rules.batch_size,
        micro_batch_size=1,
        precision="bf16",
        device="auto",
        compile=False,
        eval_every=max(1, steps // 100),
        log_every=10,
    )
    raw["output"] = {"dir": f"runs/{target}-export", "checkpoint_every": max(1, steps // 50), "keep_checkpoints": 2}

    name = proxy.optim.name
    entry = lookup(name)
    for key, value in entry.single_gpu:  # the method's single-GPU settings (per-layer mode, 8-bit state)
        set_key(raw, key, value)
    recipe = entry.recipe_for(target) if rules.recipe == "published" else None
    if recipe is not None:
        # rank, scale and gap as published; the lr by how far the proxy's lr is from the method's
        # published small-model lr (clamped: a tiny proxy's best lr says little beyond a direction).
        low, high = rules.lr_ratio_range
        ratio = min(max(proxy.optim.lr / recipe.reference_lr, low), high)
        raw["optim"]["lr"] = recipe.lr * ratio * rules.lr_multiplier
        raw[recipe.section].update(rank=recipe.rank, scale=recipe.scale, update_proj_gap=recipe.update_proj_gap)
        if rules.update_proj_gap is not None:
            raw[recipe.section]["update_proj_gap"] = rules.update_proj_gap
    elif entry.target_mapping is not None:  # the method maps its own section (rank by width, scale, gap, ...)

        def rank(proxy_rank: int) -> int:
            return target_rank(proxy_rank, proxy_hidden, target_hidden, rules)

        scaling = TargetScaling(
            proxy_hidden,
            target_hidden,
            rank=rank,
            interval=interval,
            update_proj_gap=rules.update_proj_gap,
            rules=rules,
        )
        entry.target_mapping(raw, proxy, scaling)
    section = entry.full_gradient_section
    if section is not None:
        # Its per-layer update needs each full gradient, so there is no low-rank accumulator to defer a
        # global clip over: the proxy's global clip becomes a per-tensor one.
        if proxy.train.grad_clip > 0 and not getattr(proxy, section).per_tensor_clip:
            raw[section]["per_tensor_clip"] = proxy.train.grad_clip
        train["grad_clip"] = 0.0
    return raw


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    raw.setdefault(section, {})[key] = value


def get_key(cfg: TrainConfig, dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return getattr(getattr(cfg, section), key)
