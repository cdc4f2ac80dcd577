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

Each step is its own module: select.py (1), rules.py and mapping.py (2), fit.py (3); this one writes (4).
"""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ranktune.platform.budget import DEFAULT_BUDGET_GIB
from ranktune.platform.duration import (
    DEFAULT_CARD,
    Duration,
    MicroBatchChoice,
    RunBudget,
    estimate_duration,
)
from ranktune.platform.export.fit import (
    check_budget_overrides,
    fit_micro_batch_choice,
    fit_to_target,
    size_to_budget,
    token_notices,
)
from ranktune.platform.export.mapping import map_to_target
from ranktune.platform.export.rules import ScalingRules, target_rules
from ranktune.platform.export.select import (
    FALLBACKS,
    best_fitting_instead,
    refusal,
    select_trial,
    select_within_memory,
    what_is_lost,
)
from ranktune.platform.memory import (
    MemoryEstimate,
    RunEstimate,
    Verdict,
    gib,
    verdict,
)
from ranktune.trainables.config import ConfigError, TrainConfig, config_from_dict
from ranktune.trainables.model import MODEL_PRESETS
from ranktune.trainables.optim.registry import lookup


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


def export_best(
    sweep_dir: str | Path,
    target: str = "7b",
    budget_gib: float = DEFAULT_BUDGET_GIB,
    out: str | Path | None = None,
    rules: ScalingRules | None = None,
    overrides: list[str] = (),
    trial_id: str | None = None,
    max_memory_gib: float | None = None,
    fallback: str | None = None,
    notify: Callable[[str], None] | None = None,
    run_budget: RunBudget | None = None,
    card_key: str = DEFAULT_CARD,
) -> ExportResult:
    """Export the sweep's answer (the replicates' best mean, else the best full-budget trial), or refuse.

    Another trial only when asked: `trial_id` (by name: a baseline such as LoRA from a random init is
    exported only so), `max_memory_gib` (the best trial that fits it), or `fallback="best-fitting"` (the
    best trial that fits the budget, with a line saying what is lost). `rules` None: the sweep's
    `target.rules` when it was searched for this target, else the defaults. A complete ladder exports its
    top rung's answer with the ladder's fitted lr (`rules: fitted`). `notify` receives the line saying the
    tracking server is away and results.json was read instead (the export is then not logged on the
    sweep's MLflow run)."""
    from ranktune.platform.export.fitted_rules import ladder_source
    from ranktune.platform.report.trials import SweepResults
    from ranktune.platform.tracking.client import log_text_artifact, mlflow_client

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
    results = SweepResults.load(sweep_dir)
    spec, state, rows, offline = results.spec, results.state, results.trials, results.offline
    if rules is None:  # a target-aware sweep's own rules (and tokens per step) for its target
        same_target = spec.target is not None and spec.target.model == target
        rules = target_rules(spec) if same_target else ScalingRules()
    if offline and notify is not None:
        notify(offline)
    substitute = None
    if max_memory_gib is not None and trial_id is None:
        budget_gib = max_memory_gib
        source = select_within_memory(spec, rows, target, rules, overrides, max_memory_gib)
    else:
        source = select_trial(rows, spec.objective.mode, trial_id, str(sweep_dir), results.confirm)
    proxy = spec.trial_config(source["params"])
    fit = fit_to_target(proxy, target, rules, overrides, budget_gib)
    blocked = bool(fit.problems) or (fit.baseline is not None and trial_id is None)
    if blocked and fallback is not None and trial_id is None:
        chosen, passed_over = best_fitting_instead(spec, rows, source, target, rules, overrides, budget_gib)
        if chosen is None:
            raise ConfigError(
                refusal(spec, rows, source, fit, target, rules, overrides, budget_gib)
                + ["--fallback best-fitting: no other finished trial can be exported either"]
            )
        substitute = "\n".join(
            [
                f"exporting {what_is_lost(spec, source, chosen)} instead of the sweep's answer "
                f"({(fit.baseline or fit.problems[0]).split(' -> ')[0]})",
                *(f"  passed over {p}" for p in passed_over),
            ]
        )
        source, proxy = chosen, spec.trial_config(chosen["params"])
        fit = fit_to_target(proxy, target, rules, overrides, budget_gib)
    elif blocked:
        raise ConfigError(refusal(spec, rows, source, fit, target, rules, overrides, budget_gib))
    if fit.inputs:
        raise ConfigError(
            [f"trial {source['trial_id']} ({proxy.optim.name}): its {target} run needs input:", *fit.inputs]
        )
    sizing = None
    if run_budget is not None:  # --tokens / --days: the rules' steps become the budget's
        _, rules, sizing = size_to_budget(
            proxy, target, rules, map_to_target(proxy, target, rules), overrides, budget_gib, run_budget, card_key
        )
    raw = map_to_target(proxy, target, rules)
    fitted = fitted_lr_lines(raw, proxy, target, ladder) if ladder is not None else []  # the lr: memory is as fitted
    cfg, run, choice = fit_micro_batch_choice(raw, overrides, rules, budget_gib, card_key)
    duration = estimate_duration(cfg, card_key)
    v = verdict(run, budget_gib)
    notices = token_notices(config_from_dict(map_to_target(proxy, target, rules)), cfg) if overrides else ()

    path = Path(out) if out else spec.storage_dir / f"export_{target}.yaml"
    command = f"ranktune train {shlex.quote(str(path))}"
    header = export_header(
        spec.name,
        source,
        proxy,
        cfg,
        rules,
        run,
        v,
        command,
        overrides,
        substitute,
        notices,
        duration=duration,
        choice=choice,
        sizing=sizing,
    )
    header = "".join(f"# {line}\n" for line in fitted) + header
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + body)
    except OSError as exc:
        raise ConfigError([f"--out: {str(path)!r} cannot be written ({exc.strerror or exc})"]) from None
    estimate_json = json.dumps(
        {
            "budget_gib": budget_gib,
            "fits": v.fits,
            "headroom_bytes": v.headroom,
            "phases": [p.as_dict() for p in run.phases],
            "command": command,
            "source_trial": source["trial_id"],
            "rules": rules.model_dump(),
            "substitute": substitute,
            "notices": list(notices),
        },
        indent=2,
    )
    path.with_suffix(".memory.json").write_text(estimate_json)

    result = ExportResult(source["trial_id"], path, cfg, run, v, command, substitute, notices, duration, choice, sizing)
    if offline:
        return result
    client = mlflow_client(state.tracking_uri)
    parent = state.parent_run_id
    log_text_artifact(client, parent, path.name, header + body, "export")
    log_text_artifact(client, parent, path.with_suffix(".memory.json").name, estimate_json, "export")
    client.set_tag(parent, f"ranktune.export.{target}.trial_id", source["trial_id"])
    client.set_tag(source["run_id"], "ranktune.exported_to", f"{target} ({gib(v.total)} of {budget_gib:g} GiB)")
    return result


def check_out_path(path: Path) -> None:
    """--out names a file to (over)write, not a directory."""
    if path.is_dir():
        raise ConfigError(
            [f"--out: {str(path)!r} is a directory -> a YAML file to write, e.g. {str(path / 'export.yaml')!r}"]
        )


def fitted_lr_lines(raw: dict[str, Any], proxy: TrainConfig, target: str, ladder) -> list[str]:
    """`rules: fitted`: the target's lr from the ladder's power law (platform/export/fitted_rules.py), divided by the
    target config's step-size knob; the header lines that say so."""
    from ranktune.platform.export.fitted_rules import apply_fitted_lr
    from ranktune.trainables.optim.registry import lookup

    entry = lookup(proxy.optim.name)
    knob = 1.0
    if entry.step_size_factor is not None:
        knob = entry.step_size_factor(config_from_dict(copy.deepcopy(raw)))
    return apply_fitted_lr(raw, proxy.optim.name, MODEL_PRESETS[target].hidden_size, ladder, knob)


def export_header(
    sweep: str,
    source: dict[str, Any],
    proxy: TrainConfig,
    cfg: TrainConfig,
    rules: ScalingRules,
    run: RunEstimate,
    v: Verdict,
    command: str,
    overrides: list[str],
    substitute: str | None = None,
    notices: tuple[str, ...] = (),
    duration: Duration | None = None,
    choice: MicroBatchChoice | None = None,
    sizing: str | None = None,
) -> str:
    peak: MemoryEstimate = run.peak
    recipe = lookup(proxy.optim.name).recipe_for(cfg.model.name) if rules.recipe == "published" else None
    lines = [
        f"Exported by `ranktune export` from sweep {sweep!r}, trial {source['trial_id']} "
        f"(objective {source['objective']:.4f}; proxy {proxy.model.name}, {proxy.optim.name}).",
        f"Proxy params: {json.dumps(source['params'], sort_keys=True)}",
        f"Rules: {json.dumps(rules.model_dump(), sort_keys=True)}",
        *(
            [
                f"Recipe: {recipe.source} (rank {recipe.rank}, scale {recipe.scale:g}, update_proj_gap "
                f"{recipe.update_proj_gap}, lr {recipe.lr:g} x the proxy's lr / {recipe.reference_lr:g}, clamped to "
                f"{list(rules.lr_ratio_range)})"
            ]
            if recipe
            else []
        ),
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
