"""The ladder's arithmetic, apart from Ray and MLflow: promotion, the lr re-search points, and how much a
ranking at one rung says about the next (correlations, best-config stability, method order, regret).

A *configuration* is a first-rung trial's settings other than the lr, named by that trial's id; at
each rung it has a loss (the best over its lr re-search) and the lr that gave it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

LR_KEY = "optim.lr"


@dataclass
class ConfigResult:
    """One configuration at one rung."""

    config_id: str
    method: str
    params: dict[str, Any]  # the settings trained at this rung with the best lr (lr included)
    lr: float
    loss: float | None  # best over the lr factors; None when no run of it finished
    losses: dict[str, float] = field(default_factory=dict)  # lr factor (as text) -> loss
    step_size: float | None = None  # lr x the method's step-size knob (ladder_rules.py)
    rank: int | None = None


@dataclass(frozen=True)
class RungPoint:
    """One trial of a rung after the first: a configuration at a factor of its transferred lr."""

    config_id: str
    method: str
    factor: float
    params: dict[str, Any]

    @property
    def key(self) -> str:
        return params_key(self.params)


def params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def promote(results: list[ConfigResult], per_method: int) -> list[ConfigResult]:
    """The best `per_method` configurations of each method (finished ones only), best first overall."""
    ranked = sorted((r for r in results if r.loss is not None and math.isfinite(r.loss)), key=lambda r: r.loss)
    taken: dict[str, int] = {}
    chosen = []
    for r in ranked:
        if taken.get(r.method, 0) < per_method:
            taken[r.method] = taken.get(r.method, 0) + 1
            chosen.append(r)
    return chosen


def lr_points(promoted: list[ConfigResult], factors: list[float]) -> list[RungPoint]:
    """Each promoted configuration at each factor of the lr it won with at the rung below."""
    return [RungPoint(r.config_id, r.method, f, {**r.params, LR_KEY: r.lr * f}) for r in promoted for f in factors]


def unique_points(points: list[RungPoint]) -> list[dict[str, Any]]:
    """The distinct settings to train (two configurations can meet at one lr: one run serves both)."""
    seen: dict[str, dict[str, Any]] = {}
    for p in points:
        seen.setdefault(p.key, p.params)
    return list(seen.values())


def rung_results(points: list[RungPoint], loss_of: dict[str, float]) -> list[ConfigResult]:
    """Per configuration, the best loss over its lr factors; `loss_of` maps a run's params key to its loss."""
    by_config: dict[str, ConfigResult] = {}
    for p in points:
        r = by_config.setdefault(p.config_id, ConfigResult(p.config_id, p.method, p.params, p.params[LR_KEY], None))
        loss = loss_of.get(p.key)
        if loss is None or not math.isfinite(loss):
            continue
        r.losses[f"{p.factor:g}"] = loss
        if r.loss is None or loss < r.loss:
            r.loss, r.params, r.lr = loss, p.params, p.params[LR_KEY]
    return list(by_config.values())


@dataclass
class Comparison:
    """How the ranking at rung `lower` carries to rung `upper`, over the configurations both trained."""

    lower: str
    upper: str
    configurations: int
    spearman: float | None
    kendall: float | None
    methods: int
    method_kendall: float | None  # agreement of the methods' order (each by its best common configuration)
    same_winner: bool | None  # the best method is the same at both rungs
    lower_winner: str | None
    upper_winner: str | None
    # per method with >= 2 common configurations: its best below is still its best above (with one, trivially true)
    best_config_kept: dict[str, bool]
    regret: float | None  # upper loss of the lower rung's pick minus the upper rung's best
    lower_pick: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _correlation(kind: str, a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None  # undefined with fewer than two distinct values on either side
    from scipy import stats

    fn = stats.spearmanr if kind == "spearman" else stats.kendalltau
    value = float(fn(a, b).statistic)
    return value if math.isfinite(value) else None


def _best_per_method(results: dict[str, ConfigResult], ids: list[str]) -> dict[str, ConfigResult]:
    best: dict[str, ConfigResult] = {}
    for i in ids:
        r = results[i]
        if r.method not in best or r.loss < best[r.method].loss:
            best[r.method] = r
    return best


def compare(lower_name: str, lower: list[ConfigResult], upper_name: str, upper: list[ConfigResult]) -> Comparison:
    below = {r.config_id: r for r in lower if r.loss is not None}
    above = {r.config_id: r for r in upper if r.loss is not None}
    common = sorted(set(below) & set(above))
    a, b = [below[i].loss for i in common], [above[i].loss for i in common]
    best_below, best_above = _best_per_method(below, common), _best_per_method(above, common)
    methods = sorted(best_below)
    ma, mb = [best_below[m].loss for m in methods], [best_above[m].loss for m in methods]
    win_below = min(methods, key=lambda m: best_below[m].loss) if methods else None
    win_above = min(methods, key=lambda m: best_above[m].loss) if methods else None
    pick = min(common, key=lambda i: below[i].loss) if common else None
    regret = above[pick].loss - min(b) if pick is not None else None
    return Comparison(
        lower=lower_name,
        upper=upper_name,
        configurations=len(common),
        spearman=_correlation("spearman", a, b),
        kendall=_correlation("kendall", a, b),
        methods=len(methods),
        method_kendall=_correlation("kendall", ma, mb),
        same_winner=None if win_below is None else win_below == win_above,
        lower_winner=win_below,
        upper_winner=win_above,
        best_config_kept={
            m: best_below[m].config_id == best_above[m].config_id
            for m in methods
            if sum(below[i].method == m for i in common) >= 2
        },
        regret=regret,
        lower_pick=pick,
    )


def method_ranking(results: list[ConfigResult]) -> list[tuple[str, float, str]]:
    """(method, its best loss, that configuration's id), best first."""
    best: dict[str, ConfigResult] = {}
    for r in results:
        if r.loss is not None and (r.method not in best or r.loss < best[r.method].loss):
            best[r.method] = r
    return sorted(((m, r.loss, r.config_id) for m, r in best.items()), key=lambda t: t[1])


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def transfer_verdict(c: Comparison) -> str:
    """The first-to-last comparison in words."""
    if c.configurations == 0:
        return f"no configuration finished at both {c.lower} and {c.upper}: nothing to say about transfer"
    corr = f"Spearman rho {_fmt(c.spearman)}, Kendall tau {_fmt(c.kendall)} over {c.configurations} configurations"
    if c.methods >= 2 and c.method_kendall is not None and c.method_kendall >= 1.0 - 1e-9:
        return (
            f"the ranking of methods held from {c.lower} to {c.upper} ({c.methods} methods in the same order; "
            f"{corr}; regret of choosing at {c.lower}: {c.regret:.4f})"
        )
    if c.same_winner:
        return (
            f"the winner held from {c.lower} to {c.upper} ({c.upper_winner}), the order behind it did not "
            f"(method Kendall tau {_fmt(c.method_kendall)} over {c.methods} methods; {corr}; regret "
            f"{c.regret:.4f})"
        )
    return (
        f"it flipped: {c.lower_winner} won at {c.lower}, {c.upper_winner} at {c.upper} (method Kendall tau "
        f"{_fmt(c.method_kendall)} over {c.methods} methods; {corr}; regret of choosing at {c.lower}: "
        f"{c.regret:.4f})"
    )
