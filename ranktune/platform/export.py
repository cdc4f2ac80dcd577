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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ranktune.platform.budget import DEFAULT_BUDGET_GIB
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

# The config section of each method that updates with the scaled full-rank gradient (docs/apollo.md).
SCALED_GRADIENT_SECTIONS = {"apollo_adamw": "apollo", "apollo_mini": "apollo_mini", "fira_adamw": "fira"}
# Paper training lengths (GaLore table), used when the rules give no step count.
PAPER_STEPS = {"60m": 10_000, "130m": 20_000, "350m": 60_000, "1b": 100_000, "7b": 150_000}


class ScalingRules(BaseModel):
    """How proxy hyperparameters become target ones. Every rule is a key of a `--rules` YAML file."""

    model_config = ConfigDict(extra="forbid")

    # rank: "relative" keeps rank / hidden_size (the paper: 128 at 512 wide, 1024 at 4096), rounded to
    # a multiple of rank_multiple; "absolute" keeps the number.
    rank: Literal["relative", "absolute"] = "relative"
    rank_multiple: int = Field(default=64, ge=1)
    # GaLore update_proj_gap, in optimizer updates: None keeps the proxy's value.
    update_proj_gap: int | None = Field(default=None, ge=1)
    # ReLoRA relora_every and warm_start_steps, and schedule.warmup_steps: "fraction" keeps their share of
    # the run (proxies are short); "tokens" keeps the tokens between events; "steps" keeps the count.
    intervals: Literal["fraction", "tokens", "steps"] = "fraction"
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
    # APOLLO's rank at the target: a number (the paper: 256 at 7b), or None for the `rank` rule.
    apollo_rank: int | None = Field(default=256, ge=1)
    # APOLLO's scale: "hidden_over_rank" keeps scale * rank / hidden (the paper's alpha = sqrt(n / r)
    # compensation, so scale grows with model size at a fixed rank); "same" keeps the proxy's value.
    # APOLLO-Mini's paper runs use scale 128 at every size, hence its own rule, "same" by default.
    apollo_scale: Literal["hidden_over_rank", "same"] = "hidden_over_rank"
    apollo_mini_scale: Literal["hidden_over_rank", "same"] = "same"
    data_source: Literal["c4", "proxy"] = "c4"  # c4: streamed, max_tokens = steps x tokens per step


def load_rules(path: str | None) -> ScalingRules:
    if path is None:
        return ScalingRules()
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"--rules: {path!r} -> an existing YAML file"])
    try:
        return ScalingRules.model_validate(yaml.safe_load(p.read_text()) or {})
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
    substitute: str | None = None  # why the best trial was not the one exported (low_rank_if_best_does_not_fit)


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
    if name.startswith("galore_"):
        g = raw["galore"]
        raw["optim"]["name"] = "galore_adamw8bit"
        g["rank"] = target_rank(proxy.galore.rank, proxy_hidden, target_hidden, rules)
        g["per_layer"] = True
        # Low-rank accumulators keep the paper's tokens per step without full gradients, and defer the
        # update so the proxy's global-norm clip (train.grad_clip, unchanged) still applies.
        g["accumulation"] = "low_rank"
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
        a["per_layer"] = True  # the update needs the full gradient, but only one at a time without accumulation
        if rules.update_proj_gap is not None:
            a["update_proj_gap"] = rules.update_proj_gap
        if proxy.train.grad_clip > 0 and not pa.per_tensor_clip:
            a["per_tensor_clip"] = proxy.train.grad_clip
        train["grad_clip"] = 0.0
    elif name in ("relora", "lora"):
        r, pr = raw["relora"], proxy.relora
        r["rank"] = target_rank(pr.rank, proxy_hidden, target_hidden, rules)
        r["base_precision"] = rules.relora_base_precision
        r["inner_optimizer"] = "adamw8bit"
        r["warm_start_steps"] = interval(pr.warm_start_steps) if pr.warm_start_steps else 0
        r["relora_every"] = max(interval(pr.relora_every), pr.restart_warmup_steps + 1)
    return raw


# ---------------------------------------------------------------------------------- fitting


def micro_batch_candidates(batch_size: int, largest: int) -> list[int]:
    """Divisors of the batch size, largest first (accumulation = batch / micro-batch)."""
    return [mb for mb in range(min(batch_size, largest), 0, -1) if batch_size % mb == 0]


def fit_micro_batch(raw: dict[str, Any], overrides: list[str], rules: ScalingRules,
                    budget_gib: float) -> tuple[TrainConfig, RunEstimate]:  # fmt: skip
    """The config with the largest micro-batch that fits; a user-given micro-batch is kept as is."""
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
        for mb in candidates:
            trial = cfg.model_copy(update={"train": cfg.train.model_copy(update={"micro_batch_size": mb})})
            run = estimate_run(trial)
            if verdict(run, budget_gib - rules.min_headroom_gib).fits:
                return config_from_dict(trial.model_dump(mode="json")), run
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
        problems.append(
            f"train.batch_size: {cfg.train.batch_size} -> per-layer {name} frees gradients only without "
            f"accumulation (here {gib(peak.gradients)} of full gradients stay alive between micro-batches); "
            f"use --set train.batch_size=N with N small enough that N sequences fit in one micro-batch "
            "(fewer tokens per step than the paper's 131k)"
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
    from ranktune.platform.report import pick_winner

    if trial_id is not None:
        for r in rows:
            if r["trial_id"] == trial_id and r["status"] == "finished":
                return r
        finished = [r["trial_id"] for r in rows if r["status"] == "finished"]
        raise ConfigError([f"--trial: {trial_id!r} -> a finished trial of this sweep: {finished}"])
    best = pick_winner(rows, mode, load_confirm(Path(sweep_dir)))
    if best is None:
        counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
        unfinished = any(r["status"] in ("running", "lost") for r in rows) or not rows
        advice = (
            "finish the sweep first (ranktune sweep --resume SWEEP_DIR)"
            if unfinished
            else "no trial can finish on resume; see why with `ranktune report SWEEP_DIR` and start a new sweep"
        )
        raise ConfigError([f"sweep_dir: {sweep_dir!r} has no trial that finished its budget ({counts or 'no trials'})"
                           f" -> {advice}"])  # fmt: skip
    return best


def target_fit_problem(spec, row: dict[str, Any], *, target: str, rules: ScalingRules, overrides: list[str],
                       gib: float) -> str | None:  # fmt: skip
    """Why trial `row`'s `target` config cannot fit `gib` at any micro-batch (None when it fits)."""
    try:
        fit_micro_batch(map_to_target(spec.trial_config(row["params"]), target, rules), overrides, rules, gib)
    except ConfigError as exc:
        return exc.problems[0]
    return None


def select_within_memory(spec, rows: list[dict[str, Any]], target: str, rules: ScalingRules, overrides: list[str],
                         max_memory_gib: float) -> dict[str, Any]:  # fmt: skip
    """`--max-memory-gib`: the best finished trial whose exported target config's estimate fits.

    Trials are tried best objective first; each one passed over is reported with what it needs."""
    from ranktune.platform.pareto import best_fitting

    why_not = partial(target_fit_problem, spec, target=target, rules=rules, overrides=overrides, gib=max_memory_gib)
    best, passed_over = best_fitting(rows, spec.objective.mode, why_not)
    if best is None:
        raise ConfigError([f"--max-memory-gib: {max_memory_gib:g} -> no finished trial's {target} export fits",
                           *passed_over])  # fmt: skip
    return best


FULL_RANK = ("adamw", "adamw8bit", "adafactor")


def low_rank_if_best_does_not_fit(spec, rows: list[dict[str, Any]], best: dict[str, Any], target: str,
                                  rules: ScalingRules, overrides: list[str],
                                  budget_gib: float) -> tuple[dict[str, Any], str | None]:  # fmt: skip
    """The best trial, or, when its target config does not fit (a full-rank winner, or GaLore at the
    paper's batch with accumulation), the best finished low-rank trial whose target config does, with
    a line saying what was exported instead of what, and the loss gap.

    A full-rank winner at 7b is the normal outcome of a small proxy sweep (at 2 layers the low-rank
    methods lose little memory and some loss), and the point of the export is the low-rank recipe."""
    from ranktune.platform.pareto import best_fitting

    why_not = partial(target_fit_problem, spec, target=target, rules=rules, overrides=overrides, gib=budget_gib)
    problem = why_not(best)
    if problem is None:
        return best, None
    low_rank = [r for r in rows if spec.trial_config(r["params"]).optim.name not in FULL_RANK and r is not best]
    chosen, passed_over = best_fitting(low_rank, spec.objective.mode, why_not)
    if chosen is None:
        raise ConfigError([f"best trial {best['trial_id']} ({best['params'].get('optim.name')}): {problem}",
                           *passed_over, "no finished low-rank trial's export fits either -> raise --budget-gib, "
                           "or give --trial ID"])  # fmt: skip
    metric, gap = spec.objective.metric, chosen["objective"] - best["objective"]
    kind = "is full-rank and its" if spec.trial_config(best["params"]).optim.name in FULL_RANK else "has a"
    line = (f"best trial {best['trial_id']} ({best['params'].get('optim.name')}, {metric} {best['objective']:.4f}) "
            f"{kind} {target} config that does not fit {budget_gib:g} GiB ({problem.split(' -> ')[0]}); "
            f"exporting the best low-rank trial that fits: {chosen['trial_id']} "
            f"({chosen['params'].get('optim.name')}, {metric} {chosen['objective']:.4f}, "
            f"{gap:+.4f} vs the best = {100 * gap / abs(best['objective']):+.1f}%)")  # fmt: skip
    return chosen, "\n".join([line, *(f"  passed over {p}" for p in passed_over)])


def export_best(sweep_dir: str | Path, target: str = "7b", budget_gib: float = DEFAULT_BUDGET_GIB,
                out: str | Path | None = None, rules: ScalingRules | None = None, overrides: list[str] = (),
                trial_id: str | None = None, max_memory_gib: float | None = None) -> ExportResult:  # fmt: skip
    from ranktune.platform.ladder_rules import ladder_source
    from ranktune.platform.report import collect_trials
    from ranktune.platform.sweep import load_state
    from ranktune.platform.tracking import log_text_artifact, mlflow_client

    rules = rules or ScalingRules()
    ladder = ladder_source(sweep_dir)  # a ladder: its top rung's trials, and its fitted lr rule (`rules: fitted`)
    if ladder is not None:
        sweep_dir = ladder.sweep_dir
    spec, state = load_state(sweep_dir)
    rows = collect_trials(spec, state)
    substitute = None
    if max_memory_gib is not None and trial_id is None:
        budget_gib = max_memory_gib
        source = select_within_memory(spec, rows, target, rules, list(overrides), max_memory_gib)
    else:
        source = select_trial(rows, spec.objective.mode, trial_id, str(sweep_dir))
        if trial_id is None:
            source, substitute = low_rank_if_best_does_not_fit(spec, rows, source, target, rules, list(overrides),
                                                               budget_gib)  # fmt: skip
    proxy = spec.trial_config(source["params"])
    raw = map_to_target(proxy, target, rules)
    fitted = fitted_lr_lines(raw, proxy, target, ladder) if ladder is not None else []
    cfg, run = fit_micro_batch(raw, list(overrides), rules, budget_gib)
    v = verdict(run, budget_gib)

    path = Path(out) if out else spec.storage_dir / f"export_{target}.yaml"
    command = f"ranktune train {path}"
    header = export_header(spec.name, source, proxy, cfg, rules, run, v, command, list(overrides))
    header = "".join(f"# {line}\n" for line in fitted) + header
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body)
    estimate_json = json.dumps({"budget_gib": budget_gib, "fits": v.fits, "headroom_bytes": v.headroom,
                                "phases": [p.as_dict() for p in run.phases], "command": command,
                                "source_trial": source["trial_id"], "rules": rules.model_dump()}, indent=2)  # fmt: skip
    path.with_suffix(".memory.json").write_text(estimate_json)

    client = mlflow_client(state["tracking_uri"])
    parent = state["parent_run_id"]
    log_text_artifact(client, parent, path.name, header + body, "export")
    log_text_artifact(client, parent, path.with_suffix(".memory.json").name, estimate_json, "export")
    client.set_tag(parent, f"ranktune.export.{target}.trial_id", source["trial_id"])
    client.set_tag(source["run_id"], "ranktune.exported_to", f"{target} ({gib(v.total)} of {budget_gib:g} GiB)")
    return ExportResult(source["trial_id"], path, cfg, run, v, command, substitute)


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
                  run: RunEstimate, v: Verdict, command: str, overrides: list[str]) -> str:  # fmt: skip
    peak: MemoryEstimate = run.peak
    lines = [
        f"Exported by `ranktune export` from sweep {sweep!r}, trial {source['trial_id']} "
        f"(objective {source['objective']:.4f}; proxy {proxy.model.name}, {proxy.optim.name}).",
        f"Proxy params: {json.dumps(source['params'], sort_keys=True)}",
        f"Rules: {json.dumps(rules.model_dump(), sort_keys=True)}",
        *([f"Overrides: {' '.join(overrides)}"] if overrides else []),
        f"Tokens per step: {cfg.train.batch_size} x {cfg.data.seq_len} = {cfg.tokens_per_step}; micro-batch "
        f"{cfg.train.micro_batch_size}, {cfg.grad_accum_steps} accumulation steps.",
        f"Memory estimate ({peak.phase} phase, ranktune.platform.memory):",
        *(f"  {label:32s} {gib(value):>12s}" for label, value in peak.rows()),
        f"  {'total':32s} {gib(peak.total):>12s}",
        f"Verdict: {v.line()}",
        f"Launch: {command}",
        "",
    ]
    return "".join(f"# {line}\n" if line else "\n" for line in lines)
