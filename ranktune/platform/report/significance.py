"""Is the winner real? Welch's test on the replicates, with a stated error rate.

For the winner (best replicate mean) against each other replicated configuration:

    gap        mean(other) - mean(winner), signed so that > 0 means the winner is better
    se         sqrt(s_w^2 / n_w + s_o^2 / n_o)            (sample std, ddof=1)
    df         Welch-Satterthwaite degrees of freedom
    t, p       gap / se, two-sided p from Student's t with df
    interval   gap +/- t_(1 - alpha/2, df) * se          (95% with alpha = 0.05)
    p_holm     Holm's step-down adjustment over all the winner's comparisons (more than two configurations)

Verdict of one comparison:

    resolved    p_holm < alpha: the winner is better; false-positive rate at most alpha (5%) over all
                the comparisons together
    beaten      p_holm < alpha and the other is better: only against a reference (a target-aware sweep's
                baseline is ranked after the configurations it can launch, whatever its mean)
    tie         the interval lies within +/- tie_threshold: the two are practically equal
    add seeds   neither: about 2 * (2.8 sigma / gap)^2 replicates per arm detect the observed gap with
                80% power at alpha 5% (2.8 = z_0.975 + z_0.8; sigma^2 = the mean of the two variances);
                when the gap is under half the threshold, the count that would show the tie instead
                (2.8 sigma / (threshold - gap) in place of 2.8 sigma / gap)
    too few replicates   an arm has fewer than 2 values (no spread)

A std-overlap rule ("means differ by more than the sum of the stds") is not used: it compares spreads,
not standard errors, so more seeds never help it (power 0.60 / 0.56 / 0.54 at 3 / 5 / 10 seeds for a
2-sigma gap, where Welch has 0.37 / 0.77 / 0.99), and a bootstrap at 3 seeds has a ~19% false-positive
rate.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

ALPHA = 0.05
POWER_Z = 2.8  # z_(1 - alpha/2) + z_(power) = 1.96 + 0.84: alpha 5% two-sided, power 80%
RESOLVED, BEATEN, TIE, ADD_SEEDS, TOO_FEW = "resolved", "beaten", "tie", "add seeds", "too few replicates"


@dataclass(frozen=True)
class Comparison:
    """The winner against one other configuration (see the module doc)."""

    winner: str  # labels (trial ids) of the two configurations
    other: str
    n_winner: int
    n_other: int
    gap: float | None
    se: float | None
    df: float | None
    t: float | None
    p: float | None
    p_holm: float | None
    low: float | None  # the gap's interval at 1 - alpha
    high: float | None
    verdict: str
    seeds_per_arm: int | None  # replicates per arm the verdict needs (add seeds only)

    def why(self) -> str:
        if self.verdict == TOO_FEW:
            return f"fewer than 2 replicates (n {self.n_winner} and {self.n_other})"
        interval = f"gap {self.gap:.4g}, 95% interval [{self.low:.3g}, {self.high:.3g}]"
        test = f"Welch t {self.t:.2f}, df {self.df:.1f}, p {self.p:.2g}"
        if self.p_holm is not None and self.p_holm != self.p:
            test += f", Holm p {self.p_holm:.2g}"
        if self.verdict == ADD_SEEDS:
            return f"{interval}; {test}; about {self.seeds_per_arm} seeds per arm needed"
        return f"{interval}; {test}"

    def as_dict(self) -> dict:
        return {**asdict(self), "why": self.why()}


def welch(
    winner: list[float], other: list[float], alpha: float = ALPHA
) -> tuple[float, float, float, float, float, float, float]:
    """(gap, se, df, t, p, low, high) of mean(other) - mean(winner); both need >= 2 values."""
    from scipy import stats

    n1, n2 = len(winner), len(other)
    v1, v2 = statistics.variance(winner) / n1, statistics.variance(other) / n2
    gap = statistics.fmean(other) - statistics.fmean(winner)
    se = math.sqrt(v1 + v2)
    if se == 0.0:  # identical replicates in both arms: no spread to test against
        return gap, 0.0, float(n1 + n2 - 2), math.copysign(math.inf, gap) if gap else 0.0, float(gap == 0), gap, gap
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    t = gap / se
    p = 2.0 * float(stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1.0 - alpha / 2.0, df)) * se
    return gap, se, df, t, p, gap - half, gap + half


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seeds_per_arm(gap: float, winner: list[float], other: list[float], tie_threshold: float) -> int:
    """Replicates per arm for 80% power at alpha 5%: to detect `gap`, or, when the gap is inside the
    threshold, to show that the interval fits inside it."""
    sigma = math.sqrt((statistics.variance(winner) + statistics.variance(other)) / 2.0)
    # The nearer goal: a gap under half the threshold is shown a tie, a larger one detected; either way
    # the effect is >= threshold / 2, so the count stays finite next to the threshold.
    effect = tie_threshold - abs(gap) if abs(gap) < tie_threshold / 2 else abs(gap)
    return max(2, math.ceil(2.0 * (POWER_Z * sigma / effect) ** 2)) if effect > 0 else 2


def compare(
    winner: tuple[str, list[float]], others: list[tuple[str, list[float]]], tie_threshold: float, alpha: float = ALPHA
) -> list[Comparison]:
    """The winner against each other configuration, Holm-adjusted over those that can be tested."""
    name, values = winner
    tests = {}
    for other, vals in others:
        if len(values) >= 2 and len(vals) >= 2:
            tests[other] = welch(values, vals, alpha)
    adjusted = dict(zip(tests, holm([r[4] for r in tests.values()]), strict=True))
    out = []
    for other, vals in others:
        if other not in tests:
            out.append(
                Comparison(
                    name, other, len(values), len(vals), None, None, None, None, None, None, None, None, TOO_FEW, None
                )
            )
            continue
        gap, se, df, t, p, low, high = tests[other]
        if adjusted[other] < alpha:
            verdict, seeds = (RESOLVED if gap > 0 else BEATEN), None
        elif -tie_threshold <= low and high <= tie_threshold:
            verdict, seeds = TIE, None
        else:
            verdict, seeds = ADD_SEEDS, seeds_per_arm(gap, values, vals, tie_threshold)
        out.append(
            Comparison(
                name, other, len(values), len(vals), gap, se, df, t, p, adjusted[other], low, high, verdict, seeds
            )
        )
    return out
