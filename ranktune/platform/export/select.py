"""Which trial is exported: the sweep's answer, `--trial`, the best within a memory budget, and the
refusal (or `--fallback best-fitting`) when the answer cannot be exported."""

from __future__ import annotations

import shlex
from functools import partial
from typing import Any

from ranktune.platform.export.fit import TargetFit, fit_to_target
from ranktune.platform.export.rules import ScalingRules
from ranktune.trainables.config import ConfigError


def select_trial(
    rows: list[dict[str, Any]], mode: str, trial_id: str | None, sweep_dir: str, confirm: dict[str, Any] | None
) -> dict[str, Any]:
    """`--trial`, else the sweep's winner (by the replicates' mean, `confirm`, when the sweep ran replicates)."""
    from ranktune.platform.report.ranking import pick_winner
    from ranktune.platform.store.locks import running_owner

    if trial_id is not None:
        for r in rows:
            if r["trial_id"] == trial_id and r["status"] == "finished":
                return r
        finished = [r["trial_id"] for r in rows if r["status"] == "finished"]
        raise ConfigError([f"--trial: {trial_id!r} -> a finished trial of this sweep: {finished}"])
    best = pick_winner(rows, mode, confirm)
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
        raise ConfigError(
            [f"sweep_dir: {sweep_dir!r} has no trial that finished its budget ({counts or 'no trials'}) -> {advice}"]
        )
    return best


def target_fit_problem(
    spec,
    row: dict[str, Any],
    *,
    target: str,
    rules: ScalingRules,
    overrides: list[str],
    gib: float,
    allow_baseline: bool = False,
) -> str | None:
    """Why trial `row`'s `target` config cannot be exported within `gib` (None when it can)."""
    fit = fit_to_target(spec.trial_config(row["params"]), target, rules, overrides, gib)
    if fit.baseline and not allow_baseline:
        return fit.baseline
    return fit.problems[0] if fit.problems else None


def select_within_memory(
    spec, rows: list[dict[str, Any]], target: str, rules: ScalingRules, overrides: list[str], max_memory_gib: float
) -> dict[str, Any]:
    """`--max-memory-gib`: the best finished trial whose exported target config's estimate fits.

    Trials are tried best objective first; each one passed over is reported with what it needs."""
    from ranktune.platform.report.pareto import best_fitting

    why_not = partial(target_fit_problem, spec, target=target, rules=rules, overrides=overrides, gib=max_memory_gib)
    best, passed_over = best_fitting(spec, rows, why_not)
    if best is None:
        raise ConfigError(
            [f"--max-memory-gib: {max_memory_gib:g} -> no finished trial's {target} export fits", *passed_over]
        )
    return best


FALLBACKS = ("best-fitting",)  # `--fallback`: the only way export exports another trial than the one asked for


def what_is_lost(spec, best: dict[str, Any], chosen: dict[str, Any]) -> str:
    from ranktune.platform.report.table import method_of

    metric, gap = spec.objective.metric, chosen["objective"] - best["objective"]
    return (
        f"trial {chosen['trial_id']} ({method_of(spec, chosen['params'])}, {metric} {chosen['objective']:.4f}, "
        f"{gap:+.4f} = {100 * gap / abs(best['objective']):+.1f}% vs the sweep's answer {best['trial_id']})"
    )


def best_fitting_instead(
    spec,
    rows: list[dict[str, Any]],
    best: dict[str, Any],
    target: str,
    rules: ScalingRules,
    overrides: list[str],
    budget_gib: float,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The best finished trial other than `best` whose target config can be exported, and the lines of
    the better ones passed over."""
    from ranktune.platform.report.pareto import best_fitting

    why_not = partial(target_fit_problem, spec, target=target, rules=rules, overrides=overrides, gib=budget_gib)
    return best_fitting(spec, [r for r in rows if r is not best], why_not)


def refusal(
    spec,
    rows: list[dict[str, Any]],
    source: dict[str, Any],
    fit: TargetFit,
    target: str,
    rules: ScalingRules,
    overrides: list[str],
    budget_gib: float,
) -> list[str]:
    """Exit-2 lines for the sweep's answer: one per setting to change, then what a fallback would lose."""
    from ranktune.platform.report.table import method_of

    head = (
        f"trial {source['trial_id']} ({method_of(spec, source['params'])}, the sweep's answer) cannot be "
        f"exported to {target} on {budget_gib:g} GiB as it is:"
    )
    lines = [head, *([fit.baseline] if fit.baseline else []), *fit.problems]
    lines.append(
        f"--trial: {source['trial_id']} -> export it anyway by name"
        if fit.baseline and not fit.problems
        else "--budget-gib / --set / --rules: change what the lines above name"
    )
    chosen, _ = best_fitting_instead(spec, rows, source, target, rules, overrides, budget_gib)
    if chosen is not None:
        lines.append(f"--fallback best-fitting: exports {what_is_lost(spec, source, chosen)}")
    return lines
