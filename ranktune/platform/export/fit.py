"""Fitting a mapped configuration to the GPU budget: micro-batch, memory savings, sizing by tokens or days."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from ranktune.platform.duration import (
    DEFAULT_CARD,
    MicroBatchChoice,
    RunBudget,
    fastest_micro_batch,
    sized_steps,
)
from ranktune.platform.export.mapping import map_to_target
from ranktune.platform.export.rules import ScalingRules
from ranktune.platform.memory import (
    RunEstimate,
    estimate_run,
    gib,
    verdict,
)
from ranktune.trainables.config import ConfigError, TrainConfig, apply_overrides, config_from_dict
from ranktune.trainables.optim.registry import OPTIMIZERS, lookup


def micro_batch_candidates(batch_size: int, largest: int) -> list[int]:
    """Divisors of the batch size, largest first (accumulation = batch / micro-batch)."""
    return [mb for mb in range(min(batch_size, largest), 0, -1) if batch_size % mb == 0]


def fit_micro_batch(
    raw: dict[str, Any], overrides: list[str], rules: ScalingRules, budget_gib: float, card_key: str = DEFAULT_CARD
) -> tuple[TrainConfig, RunEstimate]:
    """The config with the fastest micro-batch that fits (duration.fastest_micro_batch); a user-given
    micro-batch is kept as is."""
    cfg, run, _ = fit_micro_batch_choice(raw, overrides, rules, budget_gib, card_key)
    return cfg, run


def fit_micro_batch_choice(
    raw: dict[str, Any], overrides: list[str], rules: ScalingRules, budget_gib: float, card_key: str = DEFAULT_CARD
) -> tuple[TrainConfig, RunEstimate, MicroBatchChoice]:
    """fit_micro_batch, with the choice it made: the fastest fitting micro-batch and the runner-up."""
    fits = fitting_micro_batches(raw, overrides, rules, budget_gib)
    choice = fastest_micro_batch([cfg for cfg, _ in fits], card_key)
    run = next(r for cfg, r in fits if cfg is choice.chosen)
    return config_from_dict(choice.chosen.model_dump(mode="json")), run, choice


def fitting_micro_batches(
    raw: dict[str, Any], overrides: list[str], rules: ScalingRules, budget_gib: float
) -> list[tuple[TrainConfig, RunEstimate]]:
    """Every micro-batch whose estimate fits, at the first memory-saving setting where one does."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    fixed = "train.micro_batch_size" in keys
    merged = apply_overrides(copy.deepcopy(raw), overrides)
    if rules.data_source == "c4" and "data.max_tokens" not in keys:
        # Steps x tokens per step of this file, after the user's overrides of either.
        t = merged["train"]
        merged["data"]["max_tokens"] = t["steps"] * t["batch_size"] * merged["data"]["seq_len"]
    for saving in memory_savings(merged, keys):
        cfg = config_from_dict(apply_overrides(copy.deepcopy(merged), saving))
        candidates = (
            [cfg.train.micro_batch_size]
            if fixed
            else micro_batch_candidates(cfg.train.batch_size, rules.max_micro_batch_size)
        )
        fits = []
        for mb in candidates:
            trial = cfg.model_copy(update={"train": cfg.train.model_copy(update={"micro_batch_size": mb})})
            run = estimate_run(trial)
            if verdict(run, budget_gib - rules.min_headroom_gib).fits:
                fits.append((trial, run))
        if fits:
            return fits
    raise ConfigError(does_not_fit(trial, run, budget_gib, rules.min_headroom_gib))


def memory_savings(raw: dict[str, Any], user_keys: set[str]) -> list[list[str]]:
    """Settings to try in turn, cheapest in accuracy first: none, then the method's memory options
    (its registry entry's `memory_savings`, e.g. GaLore's int8 projectors) that the user did not set."""
    savings: list[list[str]] = [[]]
    entry = OPTIMIZERS.get(raw["optim"]["name"])  # an unknown name is refused when the config is validated
    for key, value in entry.memory_savings if entry is not None else ():
        if key not in user_keys:
            savings.append([f"{key}={value}"])
    return savings


def does_not_fit(cfg: TrainConfig, run: RunEstimate, budget_gib: float, headroom_gib: float = 0.0) -> list[str]:
    """What to change, largest lever first, for a config whose smallest micro-batch does not fit."""
    peak = run.peak
    need = run.total / 2**30 + headroom_gib  # the micro-batch search keeps `headroom_gib` free
    problems = [
        f"memory: {gib(run.total)} at micro-batch {cfg.train.micro_batch_size} ({peak.phase} phase) -> "
        f"at most --budget-gib {budget_gib:g}; with this config it needs --budget-gib {math.ceil(need)}"
    ]
    name = cfg.optim.name
    entry = lookup(name)
    if entry.full_rank:
        low_rank = " or ".join(sorted(n for n, e in OPTIMIZERS.items() if e.single_gpu))
        problems.append(
            f"optim.name: {name!r} -> full-rank state does not fit; export a trial of a low-rank method "
            f"({low_rank}) (ranktune export --trial ID)"
        )
    # Per-layer methods that need full gradients keep them alive between micro-batches; GaLore's
    # low-rank accumulation does not.
    full_accumulation = entry.keeps_full_gradients is not None and entry.keeps_full_gradients(cfg)
    if full_accumulation and cfg.grad_accum_steps > 1:
        section = entry.full_gradient_section
        on_device = section is not None and getattr(cfg, section).full_grad_buffer == "device"
        host = f"--set {section}.full_grad_buffer=host keeps them in host memory, exactly; or " if on_device else ""
        problems.append(
            f"train.batch_size: {cfg.train.batch_size} -> per-layer {name} with accumulation keeps full gradients "
            f"(here {gib(peak.gradients)} stay alive between micro-batches): {host}--set train.batch_size=N "
            "with N small enough that N sequences fit in one micro-batch (fewer tokens per step than the paper's 131k)"
        )
    if entry.export_fit_advice is not None:  # the method's own levers, e.g. ReLoRA's full-rank warm start
        problems += entry.export_fit_advice(cfg, peak.phase, peak.total)
    if not cfg.model.activation_checkpointing:
        problems.append("model.activation_checkpointing: false -> true")
    return problems


@dataclass(frozen=True)
class TargetFit:
    """A proxy configuration's config at the target, fitted to the budget (or why it cannot be)."""

    proxy: TrainConfig
    config: TrainConfig | None  # None when `problems` is not empty
    estimate: RunEstimate | None
    problems: tuple[str, ...] = ()  # one `field: value -> what to change` line each
    baseline: str | None = None  # why it is a baseline, not a pretraining recipe (registry `export_refusal`)
    inputs: tuple[str, ...] = ()  # what the user still has to give (registry `export_inputs`)


def fit_to_target(
    proxy: TrainConfig, target: str, rules: ScalingRules, overrides: list[str], budget_gib: float
) -> TargetFit:
    """Map `proxy` to `target`, ask its method what the config is (a baseline? missing inputs?) and fit
    the budget. The one place export, `--max-memory-gib` and a target-aware sweep decide feasibility."""
    raw = map_to_target(proxy, target, rules)
    entry = lookup(proxy.optim.name)
    try:
        unfitted = config_from_dict(apply_overrides(copy.deepcopy(raw), overrides))
    except ConfigError as exc:
        return TargetFit(proxy, None, None, tuple(exc.problems))
    baseline = entry.export_refusal(proxy, unfitted)
    inputs = tuple(entry.export_inputs(proxy, unfitted))
    try:
        cfg, run = fit_micro_batch(raw, overrides, rules, budget_gib)
    except ConfigError as exc:
        return TargetFit(proxy, None, None, tuple(exc.problems), baseline, inputs)
    return TargetFit(proxy, cfg, run, (), baseline, inputs)


def token_notices(before: TrainConfig, after: TrainConfig) -> tuple[str, ...]:
    """What `--set` changed in the tokens a step and the run see, against the rules' config."""
    notices = []
    if after.tokens_per_step != before.tokens_per_step:
        notices.append(
            f"tokens per step: {after.tokens_per_step:,} ({after.train.batch_size} x "
            f"{after.data.seq_len}) instead of the rules' {before.tokens_per_step:,}"
        )
    total_before, total_after = before.train.steps * before.tokens_per_step, after.train.steps * after.tokens_per_step
    if total_after != total_before:
        notices.append(
            f"tokens in all: {total_after / 1e9:.3g}B ({after.train.steps:,} steps) instead of "
            f"{total_before / 1e9:.3g}B ({before.train.steps:,} steps)"
        )
    return tuple(f"the run now sees {n}" for n in notices)


SIZED_KEYS = ("train.steps", "data.max_tokens")  # what --tokens / --days decide


def check_budget_overrides(overrides: list[str]) -> None:
    """A --set of what --tokens / --days decide is refused (before anything is fitted with it)."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    clash = [k for k in SIZED_KEYS if k in keys]
    if clash:
        raise ConfigError([f"--set {clash[0]}: --tokens / --days decide it -> drop the --set, or the budget"])


def size_to_budget(
    proxy: TrainConfig,
    target: str,
    rules: ScalingRules,
    raw: dict[str, Any],
    overrides: list[str],
    budget_gib: float,
    run_budget: RunBudget,
    card_key: str,
) -> tuple[dict[str, Any], ScalingRules, str]:
    """`--tokens` / `--days`: the steps that spend the budget at the fitted config's tokens per step (and,
    for days, its step time on the card); the target is mapped again with them, so warmup and the
    method's intervals follow the `intervals` rule and data.max_tokens the new steps."""
    check_budget_overrides(overrides)
    first, _ = fit_micro_batch(raw, overrides, rules, budget_gib, card_key)
    steps, why = sized_steps(first, run_budget, card_key)
    sized_rules = rules.model_copy(update={"steps": steps})
    line = (
        f"{why}; schedule.warmup_steps and the method's intervals by the `intervals: {rules.intervals}` rule, "
        f"data.max_tokens = {steps * first.tokens_per_step:,}"
        if rules.data_source == "c4"
        else f"{why}; schedule.warmup_steps and the method's intervals by the `intervals: {rules.intervals}` rule "
        "(data_source: proxy keeps the proxy's corpus and data.max_tokens)"
    )
    return map_to_target(proxy, target, sized_rules), sized_rules, line
