"""Scaling rules: how a proxy's values become the target's (`--rules`: the methods' published target
recipes by default, the proxy's own values, or a YAML file; docs/export.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ranktune.trainables.config import ConfigError

# Paper training lengths (GaLore table), used when the rules give no step count.
PAPER_STEPS = {"60m": 10_000, "130m": 20_000, "350m": 60_000, "1b": 100_000, "7b": 150_000}


class ScalingRules(BaseModel):
    """How proxy hyperparameters become target ones. Every rule is a key of a `--rules` YAML file; the
    named sets (`--rules published`, `--rules proxy`) are in RULE_SETS."""

    model_config = ConfigDict(extra="forbid")

    # "published": a method with a published recipe at the target (its registry entry's `published`)
    # takes rank, scale and update_proj_gap from it, and its lr is the published lr times the proxy's lr
    # relative to the method's published small-model lr, clamped to lr_ratio_range: the papers fix rank
    # by memory, not by rank / width, and their refresh gaps are not an 80-step proxy's. "proxy": the
    # rules below (rank, update_proj_gap, lr, apollo_*) map the proxy's values, as before.
    recipe: Literal["published", "proxy"] = "published"
    lr_ratio_range: tuple[float, float] = (0.5, 2.0)
    # rank: "relative" keeps rank / hidden_size (the paper: 128 at 512 wide, 1024 at 4096), rounded to
    # a multiple of rank_multiple; "absolute" keeps the number. Methods without a published recipe
    # (ReLoRA, LoRA) use it under both recipes.
    rank: Literal["relative", "absolute"] = "relative"
    rank_multiple: int = Field(default=64, ge=1)
    # GaLore update_proj_gap, in optimizer updates: None keeps the proxy's value (or the published one).
    update_proj_gap: int | None = Field(default=None, ge=1)
    # ReLoRA relora_every and warm_start_steps, and schedule.warmup_steps: "fraction" keeps their share of
    # the run (proxies are short); "tokens" keeps the tokens between events; "steps" keeps the count.
    intervals: Literal["fraction", "tokens", "steps"] = "fraction"
    # ReLoRA / LoRA warm start at the target: "checkpoint": the exported run starts from a full-rank
    # checkpoint the user gives (a full-rank warm start does not fit 24 GiB at 7b; export asks for it);
    # "in_run": the proxy's warm start, scaled by `intervals` (needs the full-rank phase's memory).
    relora_warm_start: Literal["checkpoint", "in_run"] = "checkpoint"
    # Learning rate: "same", or scaled by (proxy hidden / target hidden) ** 0.5 or ** 1; then x lr_multiplier.
    lr: Literal["same", "sqrt_width", "width"] = "same"
    lr_multiplier: float = Field(default=1.0, gt=0)
    steps: int | None = Field(default=None, ge=1)  # None: the paper's steps for the target
    batch_size: int = Field(default=512, ge=1)  # sequences per update (paper: 512 x 256 = 131k tokens)
    seq_len: int = Field(default=256, ge=8)
    max_micro_batch_size: int = Field(default=64, ge=1)
    # The micro-batch search keeps this much of the budget free, beyond the estimate's own overhead:
    # the largest micro-batch that fits would otherwise leave next to nothing for allocator spikes.
    min_headroom_gib: float = Field(default=1.0, ge=0)
    activation_checkpointing: bool = True
    relora_base_precision: Literal["int8", "bf16"] = "int8"
    # recipe "proxy": APOLLO's rank at the target: a number (the paper: 256 at 7b), or None for the `rank` rule.
    apollo_rank: int | None = Field(default=256, ge=1)
    # recipe "proxy": APOLLO's scale: "hidden_over_rank" keeps scale * rank / hidden (the paper's
    # alpha = sqrt(n / r) compensation); "same" keeps the proxy's value. APOLLO-Mini's own rule is "same".
    apollo_scale: Literal["hidden_over_rank", "same"] = "hidden_over_rank"
    apollo_mini_scale: Literal["hidden_over_rank", "same"] = "same"
    data_source: Literal["c4", "proxy"] = "c4"  # c4: streamed, max_tokens = steps x tokens per step

    @model_validator(mode="after")
    def _check_lr_ratio_range(self) -> ScalingRules:
        low, high = self.lr_ratio_range
        if not 0 < low <= high:
            raise ValueError(f"lr_ratio_range: {list(self.lr_ratio_range)} -> [low, high] with 0 < low <= high")
        return self


# `--rules NAME`: the default (published target recipes) and the rules ranktune used before them.
RULE_SETS: dict[str, ScalingRules] = {
    "published": ScalingRules(),
    "proxy": ScalingRules(recipe="proxy", relora_warm_start="in_run"),
}


def load_rules(path: str | None) -> ScalingRules:
    """`--rules`: a name of RULE_SETS, or a YAML file of ScalingRules keys (unset keys: the defaults)."""
    if path is None:
        return ScalingRules()
    if path in RULE_SETS:
        return RULE_SETS[path].model_copy()
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"--rules: {path!r} -> one of {sorted(RULE_SETS)}, or an existing YAML file"])
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError([f"--rules: {path!r} is not a YAML file of scaling rules ({first})"]) from None
    except OSError as exc:
        raise ConfigError([f"--rules: {path!r} cannot be read ({exc.strerror or exc})"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"--rules: {path!r} holds a {type(raw).__name__} -> a mapping of scaling rules (see docs/export.md)"]
        )
    try:
        return ScalingRules.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            [f"rules.{'.'.join(map(str, e['loc']))}: {e.get('input')!r} -> {e['msg']}" for e in exc.errors()]
        ) from None


def target_rules(spec) -> ScalingRules:
    """Export's rules for the spec's target, with the target's tokens per step."""
    t = spec.target
    if isinstance(t.rules, str):
        rules = load_rules(t.rules)
    else:
        try:
            rules = ScalingRules.model_validate(t.rules)
        except ValueError as exc:
            raise ConfigError([f"target.rules: {t.rules!r} -> {exc}"]) from None
    return rules.model_copy(update={"batch_size": t.batch_size, "seq_len": t.seq_len})
