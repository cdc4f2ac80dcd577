"""Transfer rules fitted on a ladder, and `ranktune export` using them (`rules: fitted`).

Per method, at each rung, the best configuration's step size eta = lr x the method's step-size knob
(the registry's `step_size_factor`: GaLore's scale, Fira's alpha, APOLLO's sqrt(scale); 1 for AdamW)
is fitted as a power law in width (hidden size), by least squares in log-log:

    log eta = log c + b log width        eta(width) = c * width ** b

with the slope's standard error from the residuals (n - 2 degrees of freedom: at least 3 rungs of
distinct widths). The best configuration's rank gets the same fit when it changes between rungs;
when the same rank won everywhere, the ladder gives no evidence on how rank should scale.

Export: the target's lr = eta(target width) / the target config's knob. Beyond
EXTRAPOLATION_FACTOR x the widest rung the header says it extrapolates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIN_RUNGS = 3
EXTRAPOLATION_FACTOR = 4.0  # target width over the widest rung's beyond which the fit is a guess


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * width ** exponent, fitted on `points` (width, y)."""

    coefficient: float
    exponent: float
    exponent_stderr: float | None  # None with exactly 2 distinct widths... never used below MIN_RUNGS
    points: list[tuple[float, float]]

    def __call__(self, width: float) -> float:
        return self.coefficient * width**self.exponent

    def describe(self, what: str) -> str:
        err = "" if self.exponent_stderr is None else f" +/- {self.exponent_stderr:.2f}"
        return f"{what} = {self.coefficient:.4g} x width^({self.exponent:.2f}{err}) from {len(self.points)} rungs"


def fit_power_law(points: list[tuple[float, float]]) -> PowerLaw:
    """Least squares of log y on log width; needs >= MIN_RUNGS points with distinct widths, y > 0."""
    widths = {w for w, _ in points}
    if len(points) < MIN_RUNGS or len(widths) < MIN_RUNGS:
        raise ValueError(f"a power law needs >= {MIN_RUNGS} rungs of distinct widths (got widths {sorted(widths)})")
    if any(y <= 0 or w <= 0 for w, y in points):
        raise ValueError(f"a power law needs positive widths and values (got {points})")
    xs = [math.log(w) for w, _ in points]
    ys = [math.log(y) for _, y in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ssr = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    stderr = math.sqrt(ssr / (n - 2) / sxx)
    return PowerLaw(math.exp(intercept), slope, stderr, [(float(w), float(y)) for w, y in points])


@dataclass(frozen=True)
class MethodRule:
    method: str
    step_size: PowerLaw | None
    rank: PowerLaw | None
    rank_note: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["step_size_text"] = self.step_size.describe("lr x knob") if self.step_size else None
        d["rank_text"] = self.rank.describe("rank") if self.rank else None
        return d


def fit_rules(rungs: list[dict[str, Any]]) -> dict[str, MethodRule]:
    """Per method, from ladder.json's rungs (each with `width` and `configurations`)."""
    per_method: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    edges: dict[str, list[str]] = {}
    for rung in rungs:
        best: dict[str, dict[str, Any]] = {}
        for c in rung["configurations"]:
            if c["loss"] is not None and (c["method"] not in best or c["loss"] < best[c["method"]]["loss"]):
                best[c["method"]] = c
        for method, c in best.items():
            per_method.setdefault(method, []).append((float(rung["width"]), c))
            if lr_on_edge(c):
                edges.setdefault(method, []).append(str(rung.get("name", rung["width"])))
    rules = {}
    for method, rows in per_method.items():
        steps = [(w, c["step_size"]) for w, c in rows if c.get("step_size")]
        try:
            eta = fit_power_law(steps)
            note = ""
        except ValueError as exc:
            eta, note = None, str(exc)
        ranks = [(w, float(c["rank"])) for w, c in rows if c.get("rank")]
        rank_law, rank_note = None, "no rank (full-rank method)"
        if ranks:
            if len({r for _, r in ranks}) == 1:
                rank_note = f"rank {int(ranks[0][1])} won at every rung: no evidence on how rank should scale"
            else:
                try:
                    rank_law = fit_power_law(ranks)
                    rank_note = rank_law.describe("rank")
                except ValueError as exc:
                    rank_note = str(exc)
        if method in edges:
            note = (f"{note}; " if note else "") + (
                f"its best lr was at an end of the lr re-search at rung(s) {', '.join(edges[method])}: the optimum "
                "may lie beyond it, so the fit is a bound there, not an optimum (widen ladder.lr_factors)"
            )
        rules[method] = MethodRule(method, eta, rank_law, rank_note, note)
    return rules


def lr_on_edge(config: dict[str, Any]) -> bool:
    """Whether the configuration's best lr factor is the smallest or largest of several it tried."""
    losses = {float(f): v for f, v in (config.get("losses") or {}).items()}
    if len(losses) < 2:
        return False
    best = min(losses, key=losses.get)
    return best in (min(losses), max(losses))


def rule_from_dict(d: dict[str, Any]) -> MethodRule:
    def law(x: dict[str, Any] | None) -> PowerLaw | None:
        if x is None:
            return None
        return PowerLaw(x["coefficient"], x["exponent"], x["exponent_stderr"], [tuple(p) for p in x["points"]])

    return MethodRule(d["method"], law(d["step_size"]), law(d["rank"]), d["rank_note"], d.get("note", ""))


# ---------------------------------------------------------------------------------- export


LADDER_FILE = "ladder.json"


@dataclass(frozen=True)
class LadderSource:
    """What export takes from a ladder: the top rung's sweep (its trials) and the fitted rules."""

    ladder_dir: Path
    sweep_dir: Path
    rules: dict[str, MethodRule]
    widths: list[float]


def ladder_source(sweep_dir: str | Path) -> LadderSource | None:
    """A complete ladder's directory (ladder.json), or its top rung's sweep directory; None otherwise (a plain
    sweep, or a lower rung, which exports as the sweep it is)."""
    d = Path(sweep_dir).expanduser().resolve()
    for candidate in (d, d.parent.parent):
        path = candidate / LADDER_FILE
        if path.is_file():
            ladder = json.loads(path.read_text())
            if not ladder.get("complete"):
                return None
            top = (candidate / ladder["rungs"][-1]["sweep_dir"]).resolve()
            if candidate != d and top != d:
                return None
            rules = {m: rule_from_dict(r) for m, r in ladder.get("rules", {}).items()}
            return LadderSource(candidate, top, rules, [float(r["width"]) for r in ladder["rungs"]])
    return None


def apply_fitted_lr(
    raw: dict[str, Any], method: str, target_width: int, source: LadderSource, knob: float
) -> list[str]:
    """Set raw's optim.lr from the method's fitted rule; returns the header lines (the fit, extrapolation).
    `knob` is the target config's step-size factor (1 for methods without one)."""
    rule = source.rules.get(method)
    if rule is None or rule.step_size is None:
        why = rule.note if rule is not None else "the ladder has no rung results for it"
        return [f"Rules: fitted -> not for {method} ({why}); its lr follows the default rules"]
    eta = rule.step_size(target_width)
    raw.setdefault("optim", {})["lr"] = eta / knob
    lines = [
        f"Rules: fitted (ladder {source.ladder_dir}): {rule.step_size.describe('lr x knob')}; at width "
        f"{target_width}: lr x knob {eta:.4g}, lr {eta / knob:.4g} (knob {knob:g}); {rule.rank_note}"
    ]
    if rule.note:
        lines.append(f"warning: {rule.note}")
    widest = max(source.widths)
    if target_width > EXTRAPOLATION_FACTOR * widest:
        lines.append(
            f"warning: the fitted rule extrapolates {target_width / widest:.0f}x beyond the widest rung "
            f"({widest:g}); more than {EXTRAPOLATION_FACTOR:g}x is a guess, not a measurement"
        )
    return lines
