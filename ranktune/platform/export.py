"""Export a sweep's best trial as a single-GPU training config for a target model (e.g. 7b on 24 GiB).

    result = export_best("sweeps/compare", "7b", budget_gib=24)

1. pick the best finished trial (objective, then lower peak memory on ties; report.pick_best);
2. map its hyperparameters from the proxy to the target with `ScalingRules` (docs/export.md);
3. apply the single-GPU memory settings: bf16 weights, activation checkpointing, 8-bit GaLore with
   per-layer updates and low-rank gradient accumulation (the proxy's global clip kept; int8 projectors
   when needed) or ReLoRA with an int8 frozen base and 8-bit moments, the paper's tokens per step
   (512 x 256) split into the largest micro-batch whose estimate fits the budget;
4. write the config (with the estimate and launch command as a header), log both on the sweep's
   MLflow parent run and tag the source trial's run. Refuse, naming the setting to change, when no
   trial finished or nothing fits.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ranktune.platform.budget import DEFAULT_BUDGET_GIB
from ranktune.platform.duration import (
    DEFAULT_CARD,
    Duration,
    MicroBatchChoice,
    RunBudget,
    estimate_duration,
    fastest_micro_batch,
    sized_steps,
)
from ranktune.platform.memory import (
    MemoryEstimate,
    RunEstimate,
    Verdict,
    estimate_run,
    gib,
    verdict,
)
from ranktune.trainables.config import ConfigError, TrainConfig, apply_overrides, config_from_dict
from ranktune.trainables.model import MODEL_PRESETS
from ranktune.trainables.optim.registry import lookup

# The config section of each method that updates with the scaled full-rank gradient (docs/apollo.md).
SCALED_GRADIENT_SECTIONS = {"apollo_adamw": "apollo", "apollo_mini": "apollo_mini", "fira_adamw": "fira"}
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
        raise ConfigError([f"--rules: {path!r} holds a {type(raw).__name__} -> a mapping of scaling rules "
                           "(see docs/export.md)"])  # fmt: skip
    try:
        return ScalingRules.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([f"rules.{'.'.join(map(str, e['loc']))}: {e.get('input')!r} -> {e['msg']}"
                           for e in exc.errors()]) from None  # fmt: skip


@dataclass(frozen=True)
class ExportResult:
    trial_id: str
    config_path: Path
    config: TrainConfig
    estimate: RunEstimate
    verdict: Verdict
    command: str
    substitute: str | None = None  # why the best trial was not the one exported, and what that loses
    notices: tuple[str, ...] = ()  # what the user's --set changed in tokens per step / total tokens
    duration: Duration | None = None
    micro_batch: MicroBatchChoice | None = None
    sizing: str | None = None  # what --tokens / --days sized, and how


# ---------------------------------------------------------------------------------- mapping


def scale_interval(value: int, proxy: TrainConfig, target_steps: int, target_tokens_per_step: int,
                   rule: str) -> int:  # fmt: skip
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
    train.update(steps=steps, batch_size=rules.batch_size, micro_batch_size=1, precision="bf16", device="auto",
                 compile=False, eval_every=max(1, steps // 100), log_every=10)  # fmt: skip
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
    elif name.startswith("galore_"):
        g = raw["galore"]
        g["rank"] = target_rank(proxy.galore.rank, proxy_hidden, target_hidden, rules)
        if rules.update_proj_gap is not None:
            g["update_proj_gap"] = rules.update_proj_gap
    elif name in SCALED_GRADIENT_SECTIONS:
        section = SCALED_GRADIENT_SECTIONS[name]
        a, pa = raw[section], getattr(proxy, section)
        if name == "apollo_adamw" and rules.apollo_rank is not None:
            a["rank"] = rules.apollo_rank
        elif name != "apollo_mini":  # APOLLO-Mini stays at its proxy rank (1)
            a["rank"] = target_rank(pa.rank, proxy_hidden, target_hidden, rules)
        scale_rule = {"apollo_adamw": rules.apollo_scale, "apollo_mini": rules.apollo_mini_scale}.get(name, "same")
        if scale_rule == "hidden_over_rank":
            a["scale"] = pa.scale * (target_hidden / a["rank"]) / (proxy_hidden / pa.rank)
        if rules.update_proj_gap is not None:
            a["update_proj_gap"] = rules.update_proj_gap
    if name in SCALED_GRADIENT_SECTIONS:
        # Their per-layer update needs each full gradient, so there is no low-rank accumulator to defer a
        # global clip over: the proxy's global clip becomes a per-tensor one.
        section = SCALED_GRADIENT_SECTIONS[name]
        if proxy.train.grad_clip > 0 and not getattr(proxy, section).per_tensor_clip:
            raw[section]["per_tensor_clip"] = proxy.train.grad_clip
        train["grad_clip"] = 0.0
    elif name in ("relora", "lora"):
        r, pr = raw["relora"], proxy.relora
        r["rank"] = target_rank(pr.rank, proxy_hidden, target_hidden, rules)
        r["base_precision"] = rules.relora_base_precision
        in_run = rules.relora_warm_start == "in_run" and pr.warm_start_steps
        r["warm_start_steps"] = interval(pr.warm_start_steps) if in_run else 0  # else: a checkpoint (export_inputs)
        r["relora_every"] = max(interval(pr.relora_every), pr.restart_warmup_steps + 1)
    return raw


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    raw.setdefault(section, {})[key] = value


def get_key(cfg: TrainConfig, dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return getattr(getattr(cfg, section), key)


# ---------------------------------------------------------------------------------- fitting


def micro_batch_candidates(batch_size: int, largest: int) -> list[int]:
    """Divisors of the batch size, largest first (accumulation = batch / micro-batch)."""
    return [mb for mb in range(min(batch_size, largest), 0, -1) if batch_size % mb == 0]


def fit_micro_batch(raw: dict[str, Any], overrides: list[str], rules: ScalingRules,
                    budget_gib: float, card_key: str = DEFAULT_CARD) -> tuple[TrainConfig, RunEstimate]:  # fmt: skip
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


def fitting_micro_batches(raw: dict[str, Any], overrides: list[str], rules: ScalingRules,
                          budget_gib: float) -> list[tuple[TrainConfig, RunEstimate]]:  # fmt: skip
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
        candidates = [cfg.train.micro_batch_size] if fixed else micro_batch_candidates(
            cfg.train.batch_size, rules.max_micro_batch_size)  # fmt: skip
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
    """Settings to try in turn, cheapest in accuracy first: none, then the method's memory options.

    GaLore: int8 projectors (half the bytes of bf16 ones; see docs/galore.md for their cost)."""
    savings: list[list[str]] = [[]]
    if raw["optim"]["name"].startswith("galore_") and "galore.projector_dtype" not in user_keys:
        savings.append(["galore.projector_dtype=int8"])
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
    if name in ("adamw", "adamw8bit", "adafactor"):
        problems.append(f"optim.name: {name!r} -> full-rank state does not fit; export a galore_* or relora trial "
                        "(ranktune export --trial ID)")  # fmt: skip
    # Per-layer methods that need full gradients keep them alive between micro-batches; GaLore's
    # low-rank accumulation does not.
    full_accumulation = (name.startswith("galore_") and cfg.galore.per_layer and cfg.galore.accumulation == "full") or (
        name in SCALED_GRADIENT_SECTIONS and getattr(cfg, SCALED_GRADIENT_SECTIONS[name]).per_layer
    )
    if full_accumulation and cfg.grad_accum_steps > 1:
        on_device = name in SCALED_GRADIENT_SECTIONS and getattr(cfg, SCALED_GRADIENT_SECTIONS[name]).full_grad_buffer
        host = (f"--set {SCALED_GRADIENT_SECTIONS[name]}.full_grad_buffer=host keeps them in host memory, exactly; or "
                if on_device == "device" else "")  # fmt: skip
        problems.append(
            f"train.batch_size: {cfg.train.batch_size} -> per-layer {name} with accumulation keeps full gradients "
            f"(here {gib(peak.gradients)} stay alive between micro-batches): {host}--set train.batch_size=N "
            "with N small enough that N sequences fit in one micro-batch (fewer tokens per step than the paper's 131k)"
        )
    if peak.phase.startswith("warm start"):
        problems.append(
            f"relora.warm_start_steps: {cfg.relora.warm_start_steps} -> the full-rank warm start needs "
            f"{gib(peak.total)}; --set relora.warm_start_steps=0 --set relora.warm_start_checkpoint=PATH "
            "(a full-rank checkpoint trained elsewhere)"
        )
    if not cfg.model.activation_checkpointing:
        problems.append("model.activation_checkpointing: false -> true")
    return problems


# ---------------------------------------------------------------------------------- export


def select_trial(rows: list[dict[str, Any]], mode: str, trial_id: str | None, sweep_dir: str) -> dict[str, Any]:
    """`--trial`, else the sweep's winner (by the replicates' mean when the sweep ran replicates)."""
    from ranktune.platform.confirm import load_confirm
    from ranktune.platform.locks import running_owner
    from ranktune.platform.ranking import pick_winner

    if trial_id is not None:
        for r in rows:
            if r["trial_id"] == trial_id and r["status"] == "finished":
                return r
        finished = [r["trial_id"] for r in rows if r["status"] == "finished"]
        raise ConfigError([f"--trial: {trial_id!r} -> a finished trial of this sweep: {finished}"])
    best = pick_winner(rows, mode, load_confirm(Path(sweep_dir)))
    if best is None:
        counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
        unfinished = any(r["status"] in ("running", "lost", "interrupted") for r in rows) or not rows
        owner = running_owner(sweep_dir)
        if owner is not None:  # `--resume` is refused while the driver runs
            advice = f"the sweep is still running ({owner}); export when it ends"
        elif unfinished:
            advice = f"finish the sweep first (ranktune sweep --resume {shlex.quote(str(sweep_dir))})"
        else:
            advice = "no trial can finish on resume; see why with `ranktune report SWEEP_DIR` and start a new sweep"
        raise ConfigError([f"sweep_dir: {sweep_dir!r} has no trial that finished its budget ({counts or 'no trials'})"
                           f" -> {advice}"])  # fmt: skip
    return best


@dataclass(frozen=True)
class TargetFit:
    """A proxy configuration's config at the target, fitted to the budget (or why it cannot be)."""

    proxy: TrainConfig
    config: TrainConfig | None  # None when `problems` is not empty
    estimate: RunEstimate | None
    problems: tuple[str, ...] = ()  # one `field: value -> what to change` line each
    baseline: str | None = None  # why it is a baseline, not a pretraining recipe (registry `export_refusal`)
    inputs: tuple[str, ...] = ()  # what the user still has to give (registry `export_inputs`)


def fit_to_target(proxy: TrainConfig, target: str, rules: ScalingRules, overrides: list[str],
                  budget_gib: float) -> TargetFit:  # fmt: skip
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


def target_fit_problem(spec, row: dict[str, Any], *, target: str, rules: ScalingRules, overrides: list[str],
                       gib: float, allow_baseline: bool = False) -> str | None:  # fmt: skip
    """Why trial `row`'s `target` config cannot be exported within `gib` (None when it can)."""
    fit = fit_to_target(spec.trial_config(row["params"]), target, rules, overrides, gib)
    if fit.baseline and not allow_baseline:
        return fit.baseline
    return fit.problems[0] if fit.problems else None


def select_within_memory(spec, rows: list[dict[str, Any]], target: str, rules: ScalingRules, overrides: list[str],
                         max_memory_gib: float) -> dict[str, Any]:  # fmt: skip
    """`--max-memory-gib`: the best finished trial whose exported target config's estimate fits.

    Trials are tried best objective first; each one passed over is reported with what it needs."""
    from ranktune.platform.pareto import best_fitting

    why_not = partial(target_fit_problem, spec, target=target, rules=rules, overrides=overrides, gib=max_memory_gib)
    best, passed_over = best_fitting(spec, rows, why_not)
    if best is None:
        raise ConfigError([f"--max-memory-gib: {max_memory_gib:g} -> no finished trial's {target} export fits",
                           *passed_over])  # fmt: skip
    return best


FULL_RANK = ("adamw", "adamw8bit", "adafactor")
FALLBACKS = ("best-fitting",)  # `--fallback`: the only way export exports another trial than the one asked for


def what_is_lost(spec, best: dict[str, Any], chosen: dict[str, Any]) -> str:
    from ranktune.platform.report_table import method_of

    metric, gap = spec.objective.metric, chosen["objective"] - best["objective"]
    return (f"trial {chosen['trial_id']} ({method_of(spec, chosen['params'])}, {metric} {chosen['objective']:.4f}, "
            f"{gap:+.4f} = {100 * gap / abs(best['objective']):+.1f}% vs the sweep's answer {best['trial_id']})")


def best_fitting_instead(spec, rows: list[dict[str, Any]], best: dict[str, Any], target: str, rules: ScalingRules,
                         overrides: list[str], budget_gib: float) -> tuple[dict[str, Any] | None, list[str]]:
    """The best finished trial other than `best` whose target config can be exported, and the lines of
    the better ones passed over."""
    from ranktune.platform.pareto import best_fitting

    why_not = partial(target_fit_problem, spec, target=target, rules=rules, overrides=overrides, gib=budget_gib)
    return best_fitting(spec, [r for r in rows if r is not best], why_not)


def refusal(spec, rows: list[dict[str, Any]], source: dict[str, Any], fit: TargetFit, target: str,
            rules: ScalingRules, overrides: list[str], budget_gib: float) -> list[str]:  # fmt: skip
    """Exit-2 lines for the sweep's answer: one per setting to change, then what a fallback would lose."""
    from ranktune.platform.report_table import method_of

    head = (f"trial {source['trial_id']} ({method_of(spec, source['params'])}, the sweep's answer) cannot be "
            f"exported to {target} on {budget_gib:g} GiB as it is:")
    lines = [head, *([fit.baseline] if fit.baseline else []), *fit.problems]
    lines.append(f"--trial: {source['trial_id']} -> export it anyway by name" if fit.baseline and not fit.problems
                 else "--budget-gib / --set / --rules: change what the lines above name")  # fmt: skip
    chosen, _ = best_fitting_instead(spec, rows, source, target, rules, overrides, budget_gib)
    if chosen is not None:
        lines.append(f"--fallback best-fitting: exports {what_is_lost(spec, source, chosen)}")
    return lines


def token_notices(before: TrainConfig, after: TrainConfig) -> tuple[str, ...]:
    """What `--set` changed in the tokens a step and the run see, against the rules' config."""
    notices = []
    if after.tokens_per_step != before.tokens_per_step:
        notices.append(f"tokens per step: {after.tokens_per_step:,} ({after.train.batch_size} x "
                       f"{after.data.seq_len}) instead of the rules' {before.tokens_per_step:,}")  # fmt: skip
    total_before, total_after = before.train.steps * before.tokens_per_step, after.train.steps * after.tokens_per_step
    if total_after != total_before:
        notices.append(f"tokens in all: {total_after / 1e9:.3g}B ({after.train.steps:,} steps) instead of "
                       f"{total_before / 1e9:.3g}B ({before.train.steps:,} steps)")  # fmt: skip
    return tuple(f"the run now sees {n}" for n in notices)


def export_best(sweep_dir: str | Path, target: str = "7b", budget_gib: float = DEFAULT_BUDGET_GIB,
                out: str | Path | None = None, rules: ScalingRules | None = None, overrides: list[str] = (),
                trial_id: str | None = None, max_memory_gib: float | None = None,
                fallback: str | None = None, notify: Callable[[str], None] | None = None,
                run_budget: RunBudget | None = None, card_key: str = DEFAULT_CARD) -> ExportResult:  # fmt: skip
    """Export the sweep's answer (the replicates' best mean, else the best full-budget trial), or refuse.

    Another trial only when asked: `trial_id` (by name: a baseline such as LoRA from a random init is
    exported only so), `max_memory_gib` (the best trial that fits it), or `fallback="best-fitting"` (the
    best trial that fits the budget, with a line saying what is lost). `rules` None: the sweep's
    `target.rules` when it was searched for this target, else the defaults. A complete ladder exports its
    top rung's answer with the ladder's fitted lr (`rules: fitted`). `notify` receives the line saying the
    tracking server is away and results.json was read instead (the export is then not logged on the
    sweep's MLflow run)."""
    from ranktune.platform.ladder_rules import ladder_source
    from ranktune.platform.sweep_state import load_state
    from ranktune.platform.tracking import log_text_artifact, mlflow_client
    from ranktune.platform.trials import read_trials

    if fallback is not None and fallback not in FALLBACKS:
        raise ConfigError([f"--fallback: {fallback!r} -> one of {list(FALLBACKS)}"])
    if out is not None:
        check_out_path(Path(out))
    if target not in MODEL_PRESETS:  # before any memory estimate: those would be about a model that does not exist
        raise ConfigError([f"--target: {target!r} -> one of {sorted(MODEL_PRESETS)} (model presets: ranktune models)"])
    overrides = list(overrides)
    if run_budget is not None:
        check_budget_overrides(overrides)
    ladder = ladder_source(sweep_dir)  # a ladder: its top rung's trials, and its fitted lr rule (`rules: fitted`)
    if ladder is not None:
        sweep_dir = ladder.sweep_dir
    spec, state = load_state(sweep_dir)
    if rules is None:  # a target-aware sweep's own rules (and tokens per step) for its target
        same_target = spec.target is not None and spec.target.model == target
        rules = target_rules(spec) if same_target else ScalingRules()
    rows, offline = read_trials(spec, state)
    if offline and notify is not None:
        notify(offline)
    substitute = None
    if max_memory_gib is not None and trial_id is None:
        budget_gib = max_memory_gib
        source = select_within_memory(spec, rows, target, rules, overrides, max_memory_gib)
    else:
        source = select_trial(rows, spec.objective.mode, trial_id, str(sweep_dir))
    proxy = spec.trial_config(source["params"])
    fit = fit_to_target(proxy, target, rules, overrides, budget_gib)
    blocked = bool(fit.problems) or (fit.baseline is not None and trial_id is None)
    if blocked and fallback is not None and trial_id is None:
        chosen, passed_over = best_fitting_instead(spec, rows, source, target, rules, overrides, budget_gib)
        if chosen is None:
            raise ConfigError(refusal(spec, rows, source, fit, target, rules, overrides, budget_gib)
                              + ["--fallback best-fitting: no other finished trial can be exported either"])
        substitute = "\n".join([f"exporting {what_is_lost(spec, source, chosen)} instead of the sweep's answer "
                                f"({(fit.baseline or fit.problems[0]).split(' -> ')[0]})",
                                *(f"  passed over {p}" for p in passed_over)])  # fmt: skip
        source, proxy = chosen, spec.trial_config(chosen["params"])
        fit = fit_to_target(proxy, target, rules, overrides, budget_gib)
    elif blocked:
        raise ConfigError(refusal(spec, rows, source, fit, target, rules, overrides, budget_gib))
    if fit.inputs:
        raise ConfigError([f"trial {source['trial_id']} ({proxy.optim.name}): its {target} run needs input:",
                           *fit.inputs])  # fmt: skip
    sizing = None
    if run_budget is not None:  # --tokens / --days: the rules' steps become the budget's
        _, rules, sizing = size_to_budget(proxy, target, rules, map_to_target(proxy, target, rules), overrides,
                                          budget_gib, run_budget, card_key)  # fmt: skip
    raw = map_to_target(proxy, target, rules)
    fitted = fitted_lr_lines(raw, proxy, target, ladder) if ladder is not None else []  # the lr: memory is as fitted
    cfg, run, choice = fit_micro_batch_choice(raw, overrides, rules, budget_gib, card_key)
    duration = estimate_duration(cfg, card_key)
    v = verdict(run, budget_gib)
    notices = token_notices(config_from_dict(map_to_target(proxy, target, rules)), cfg) if overrides else ()

    path = Path(out) if out else spec.storage_dir / f"export_{target}.yaml"
    command = f"ranktune train {shlex.quote(str(path))}"
    header = export_header(spec.name, source, proxy, cfg, rules, run, v, command, overrides, substitute, notices,
                           duration=duration, choice=choice, sizing=sizing)  # fmt: skip
    header = "".join(f"# {line}\n" for line in fitted) + header
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + body)
    except OSError as exc:
        raise ConfigError([f"--out: {str(path)!r} cannot be written ({exc.strerror or exc})"]) from None
    estimate_json = json.dumps({"budget_gib": budget_gib, "fits": v.fits, "headroom_bytes": v.headroom,
                                "phases": [p.as_dict() for p in run.phases], "command": command,
                                "source_trial": source["trial_id"], "rules": rules.model_dump(),
                                "substitute": substitute, "notices": list(notices)}, indent=2)  # fmt: skip
    path.with_suffix(".memory.json").write_text(estimate_json)

    result = ExportResult(source["trial_id"], path, cfg, run, v, command, substitute, notices, duration, choice, sizing)
    if offline:
        return result
    client = mlflow_client(state["tracking_uri"])
    parent = state["parent_run_id"]
    log_text_artifact(client, parent, path.name, header + body, "export")
    log_text_artifact(client, parent, path.with_suffix(".memory.json").name, estimate_json, "export")
    client.set_tag(parent, f"ranktune.export.{target}.trial_id", source["trial_id"])
    client.set_tag(source["run_id"], "ranktune.exported_to", f"{target} ({gib(v.total)} of {budget_gib:g} GiB)")
    return result


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


def check_out_path(path: Path) -> None:
    """--out names a file to (over)write, not a directory."""
    if path.is_dir():
        raise ConfigError([f"--out: {str(path)!r} is a directory -> a YAML file to write, e.g. "
                           f"{str(path / 'export.yaml')!r}"])  # fmt: skip


SIZED_KEYS = ("train.steps", "data.max_tokens")  # what --tokens / --days decide


def check_budget_overrides(overrides: list[str]) -> None:
    """A --set of what --tokens / --days decide is refused (before anything is fitted with it)."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    clash = [k for k in SIZED_KEYS if k in keys]
    if clash:
        raise ConfigError([f"--set {clash[0]}: --tokens / --days decide it -> drop the --set, or the budget"])


def size_to_budget(proxy: TrainConfig, target: str, rules: ScalingRules, raw: dict[str, Any], overrides: list[str],
                   budget_gib: float, run_budget: RunBudget,
                   card_key: str) -> tuple[dict[str, Any], ScalingRules, str]:  # fmt: skip
    """`--tokens` / `--days`: the steps that spend the budget at the fitted config's tokens per step (and,
    for days, its step time on the card); the target is mapped again with them, so warmup and the
    method's intervals follow the `intervals` rule and data.max_tokens the new steps."""
    check_budget_overrides(overrides)
    first, _ = fit_micro_batch(raw, overrides, rules, budget_gib, card_key)
    steps, why = sized_steps(first, run_budget, card_key)
    sized_rules = rules.model_copy(update={"steps": steps})
    line = (f"{why}; schedule.warmup_steps and the method's intervals by the `intervals: {rules.intervals}` rule, "
            f"data.max_tokens = {steps * first.tokens_per_step:,}" if rules.data_source == "c4" else
            f"{why}; schedule.warmup_steps and the method's intervals by the `intervals: {rules.intervals}` rule "
            "(data_source: proxy keeps the proxy's corpus and data.max_tokens)")  # fmt: skip
    return map_to_target(proxy, target, sized_rules), sized_rules, line


def fitted_lr_lines(raw: dict[str, Any], proxy: TrainConfig, target: str, ladder) -> list[str]:
    """`rules: fitted`: the target's lr from the ladder's power law (platform/ladder_rules.py), divided by the
    target config's step-size knob; the header lines that say so."""
    from ranktune.platform.ladder_rules import apply_fitted_lr
    from ranktune.trainables.optim.registry import lookup

    entry = lookup(proxy.optim.name)
    knob = 1.0
    if entry.step_size_factor is not None:
        knob = entry.step_size_factor(config_from_dict(copy.deepcopy(raw)))
    return apply_fitted_lr(raw, proxy.optim.name, MODEL_PRESETS[target].hidden_size, ladder, knob)


def export_header(sweep: str, source: dict[str, Any], proxy: TrainConfig, cfg: TrainConfig, rules: ScalingRules,
                  run: RunEstimate, v: Verdict, command: str, overrides: list[str], substitute: str | None = None,
                  notices: tuple[str, ...] = (), duration: Duration | None = None,
                  choice: MicroBatchChoice | None = None, sizing: str | None = None) -> str:  # fmt: skip
    peak: MemoryEstimate = run.peak
    recipe = lookup(proxy.optim.name).recipe_for(cfg.model.name) if rules.recipe == "published" else None
    lines = [
        f"Exported by `ranktune export` from sweep {sweep!r}, trial {source['trial_id']} "
        f"(objective {source['objective']:.4f}; proxy {proxy.model.name}, {proxy.optim.name}).",
        f"Proxy params: {json.dumps(source['params'], sort_keys=True)}",
        f"Rules: {json.dumps(rules.model_dump(), sort_keys=True)}",
        *([f"Recipe: {recipe.source} (rank {recipe.rank}, scale {recipe.scale:g}, update_proj_gap "
           f"{recipe.update_proj_gap}, lr {recipe.lr:g} x the proxy's lr / {recipe.reference_lr:g}, clamped to "
           f"{list(rules.lr_ratio_range)})"] if recipe else []),
        *([f"Overrides: {' '.join(overrides)}"] if overrides else []),
        *(substitute.splitlines() if substitute else []),
        *notices,
        f"Tokens per step: {cfg.train.batch_size} x {cfg.data.seq_len} = {cfg.tokens_per_step}; micro-batch "
        f"{cfg.train.micro_batch_size}, {cfg.grad_accum_steps} accumulation steps.",
        f"Memory estimate ({peak.phase} phase, ranktune.platform.memory):",
        *(f"  {label:32s} {gib(value):>12s}" for label, value in peak.rows()),
        f"  {'total':32s} {gib(peak.total):>12s}",
        f"Verdict: {v.line()}",
        *([f"Micro-batch: {choice.line()}"] if choice else []),
        *([f"Sized: {sizing}"] if sizing else []),
        *([f"Duration (ranktune.platform.duration): {duration.lines()[0]}", *duration.lines()[1:]] if duration else []),
        f"Launch: {command}",
        "",
    ]
    return "".join(f"# {line}\n" if line else "\n" for line in lines)
