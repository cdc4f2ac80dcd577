"""Target-aware sweeps: what a sampled configuration becomes at the sweep's `target`, decided before it trains.

    check = check_target(spec, params)     # TargetFit: the exported config, or why there is none
    infeasible_reason(spec, params)        # None, or the line recorded as the trial's reason
    proxy_config(spec, params)             # the proxy with the target's update rule (spec.target.proxy_update_rule)

The decision is export's own (`export.fit_to_target`: the transfer rules, the method's `baseline` and
the micro-batch fit within the budget less the rules' headroom), so every full-budget trial of a
target-aware sweep is one `ranktune export` writes. An infeasible configuration is handed to Tune like
any other, returns before training (trial.py), is tagged `infeasible_target` with the reason in MLflow
(tracking.py) and is told to Optuna as PRUNED with a violated constraint (feasible_search.py, Optuna
5's `trial.set_constraint`), so TPE models it as infeasible rather than as a loss. Draws are bounded:
the sweep stops after `budget.num_trials` feasible configurations or `target.max_infeasible_draws`
infeasible ones more.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from ranktune.platform.export.fit import TargetFit, fit_to_target
from ranktune.platform.export.mapping import get_key
from ranktune.platform.export.rules import RULE_SETS, target_rules
from ranktune.platform.report.table import is_reference
from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.config import ConfigError, TrainConfig, apply_overrides, config_from_dict
from ranktune.trainables.model import MODEL_PRESETS
from ranktune.trainables.optim.registry import lookup

INFEASIBLE_TARGET = "infeasible_target"  # MLflow status of a configuration whose target run cannot be exported
INFEASIBLE_ATTR = "ranktune.infeasible_target"  # Optuna user attribute: the reason
CONSTRAINT = "target"  # Optuna constraint (trial.set_constraint): 1 when infeasible, 0 when feasible


def check_target_spec(spec: SweepSpec) -> None:
    """Refused before the sweep starts: an unknown model or rule set."""
    if spec.target is None:
        return
    problems = []
    if spec.target.model not in MODEL_PRESETS:
        problems.append(f"target.model: {spec.target.model!r} -> one of {sorted(MODEL_PRESETS)}")
    if isinstance(spec.target.rules, str) and spec.target.rules not in RULE_SETS:
        problems.append(f"target.rules: {spec.target.rules!r} -> one of {sorted(RULE_SETS)}, or a mapping of rule keys")
    if problems:
        raise ConfigError(problems)
    target_rules(spec)


def check_target(spec: SweepSpec, params: dict[str, Any]) -> TargetFit:
    return _check_target(spec.model_dump_json(), json.dumps(params, sort_keys=True))


@lru_cache(maxsize=256)  # the driver asks for each trial at suggestion, start and completion
def _check_target(spec_json: str, params_json: str) -> TargetFit:
    spec = SweepSpec.model_validate_json(spec_json)
    t = spec.target
    return fit_to_target(spec.trial_config(json.loads(params_json)), t.model, target_rules(spec), [], t.budget_gib)


def infeasible_reason(spec: SweepSpec, params: dict[str, Any]) -> str | None:
    """Why the configuration's target run cannot be exported (None: it can, the spec has no target, or it
    is a reference trial, trained for comparison only)."""
    if spec.target is None:
        return None
    if is_reference(spec, params):
        return None
    try:
        fit = check_target(spec, params)
    except ConfigError:
        return None  # an invalid config fails in the trial itself, with its own message
    t = spec.target
    where = f"{t.model} on {t.budget_gib:g} GiB at {t.batch_size} x {t.seq_len} tokens per step"
    if fit.baseline:
        return f"not exportable to {where}: {fit.baseline}"
    if fit.problems:
        return f"not exportable to {where}: {fit.problems[0]}"
    return None


def with_update_rule(cfg: TrainConfig, target: TrainConfig) -> TrainConfig:
    """`cfg` with the values its method's `update_rule_keys` have in the target config."""
    keys = lookup(target.optim.name).update_rule_keys or lookup(cfg.optim.name).update_rule_keys
    overrides = [f"{key}={json.dumps(get_key(target, key))}" for key in keys]
    return config_from_dict(apply_overrides(cfg.model_dump(mode="json"), overrides)) if overrides else cfg


def proxy_config(spec: SweepSpec, params: dict[str, Any], output_dir=None) -> TrainConfig:
    """The config a trial trains: spec.trial_config, with the target's update rule when the sweep has a
    target, proxy_update_rule is on and the configuration is feasible."""
    cfg = spec.trial_config(params, output_dir=output_dir)
    if spec.target is None or not spec.target.proxy_update_rule:
        return cfg
    try:
        fit = check_target(spec, params)
    except ConfigError:
        return cfg
    return cfg if fit.config is None else with_update_rule(cfg, fit.config)
