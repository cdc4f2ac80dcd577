"""Plots of a sweep, drawn the same way everywhere: one colour per method, legends outside the data.

    loss_curves.png           train and held-out loss per trial and replicate; y-range on the trained part
                              and every curve's last point (stopped trials included)
    best_per_method.png       best full-budget loss per method; replicates' mean +/- std where there are any
    loss_vs_memory.png        loss vs optimizer-state memory, Pareto front joined
    loss_vs_throughput.png    loss vs tokens/s
    optimization_history.png  objective in the order the trials started; early-stopped trials hollow
    parallel_coordinates.png  one panel per method, over that method's own numeric params

Inputs are trials.collect_trials rows and their MLflow curves (`trial_curves`), so the HTML report
(report_html.py) draws from the same data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ranktune.search_spaces.spec import SweepSpec

if TYPE_CHECKING:
    from ranktune.platform.store.state import SweepState

# Methods without a colour of their own (OptimizerEntry.colour): dark shades apart from the built-ins' tab10.
OTHER_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
STATUS_STYLE = {"finished": "-", "stopped_early": "--"}  # anything else: dotted


def method_colour(method: str) -> str:
    """The method's colour from its registry entry, the same in every plot, report and sweep."""
    from ranktune.trainables.optim import OPTIMIZERS

    entry = OPTIMIZERS.get(method)
    if entry is not None and entry.colour:
        return entry.colour
    return OTHER_COLOURS[sum(map(ord, method)) % len(OTHER_COLOURS)]


def start_order(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of `rows` in the order their trials started (their MLflow runs' start times; Tune's
    trial ids are random hex, not an order)."""
    return sorted(range(len(rows)), key=lambda i: (rows[i].get("start_time") or 0, i))


def curve_range(curves: list[list[tuple[int, float]]]) -> tuple[float, float] | None:
    """y-limits of loss curves: informative_range of what follows step 0, widened to every curve's last
    point, so a trial stopped early at a high loss stays in the chart."""
    limits = informative_range([v for points in curves for s, v in points if s > 0])
    last = [points[-1][1] for points in curves if points and math.isfinite(points[-1][1])]
    if limits is None or not last:
        return limits
    low, high = min(limits[0], min(last)), max(limits[1], max(last))
    margin = 0.04 * (high - low or 1.0)
    return low - (margin if low < limits[0] else 0.0), high + (margin if high > limits[1] else 0.0)


def trial_curves(
    state: SweepState, rows: list[dict[str, Any]], metrics: tuple[str, ...] = ("train_loss", "eval_loss")
) -> dict[str, dict[str, list]]:
    """run_id -> metric -> [(step, value)] sorted by step, from MLflow."""
    from ranktune.platform.tracking.client import mlflow_client

    client = mlflow_client(state.tracking_uri)
    curves = {}
    for r in rows:
        curves[r["run_id"]] = {
            m: sorted((h.step, h.value) for h in client.get_metric_history(r["run_id"], m)) for m in metrics
        }
    return curves


def informative_range(values: list[float]) -> tuple[float, float] | None:
    """y-limits that leave out the untrained start: from the lowest value to the 90th percentile of
    what follows step 0, plus a margin (the step-0 loss, ~ln(vocab), would flatten every difference)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return None
    low, high = finite[0], finite[min(len(finite) - 1, int(0.9 * len(finite)))]
    margin = 0.08 * (high - low or abs(high) or 1.0)
    return low - margin, high + margin


def _method_legend(ax, methods: list[str], with_status: bool = False, with_replicates: bool = False) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=method_colour(m), lw=2, label=m) for m in methods]
    if with_status:
        handles += [
            Line2D([], [], color="k", ls="-", label="full budget"),
            Line2D([], [], color="k", ls="--", marker="x", label="stopped early"),
            Line2D([], [], color="k", ls=":", label="failed / other"),
        ]
    if with_replicates:
        handles.append(Line2D([], [], color="k", lw=0.8, alpha=0.5, label="replicate (new seed)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_loss_curves(spec: SweepSpec, rows, curves, methods, path: Path, replicates=()) -> Path | None:
    """Every trial's curve (line gid = its trial id), and the replicates' (thin, gid `replicate:<id>`);
    `replicates` are (row, method) pairs of report.collect_replicates."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    drawn = False
    lines = [(r, m, False) for r, m in zip(rows, methods, strict=True)] + [(r, m, True) for r, m in replicates]
    for ax, metric, title in ((axes[0], "train_loss", "train loss"), (axes[1], "eval_loss", "held-out loss")):
        shown = []
        for r, method, replicate in lines:
            points = curves.get(r["run_id"], {}).get(metric, [])
            if not points:
                continue
            drawn = True
            ax.plot(
                [s for s, _ in points],
                [v for _, v in points],
                color=method_colour(method),
                lw=0.8 if replicate else 1.3,
                ls="-" if replicate else STATUS_STYLE.get(r["status"], ":"),
                marker="." if metric == "eval_loss" and not replicate else None,
                alpha=0.5 if replicate else 0.85,
                gid=f"replicate:{r['trial_id']}" if replicate else r["trial_id"],
            )
            if r["status"] == "stopped_early" and not replicate:  # where it was stopped: an x at its last point
                ax.plot(*points[-1], marker="x", color=method_colour(method), ms=6)
            shown.append(points)
        limits = curve_range(shown)
        if limits:
            ax.set_ylim(*limits)
        ax.set_xlabel("step (optimizer updates)")
        ax.set_title(f"{title} (step 0 off the top; x: stopped early)", fontsize=10)
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    _method_legend(
        axes[1], sorted(set(methods) | {m for _, m in replicates}), with_status=True, with_replicates=bool(replicates)
    )
    fig.suptitle(f"{spec.name}: loss curves by method")
    return _save(fig, path)


def plot_best_per_method(spec: SweepSpec, rows, methods, confirm, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    best: dict[str, float] = {}
    for r, method in zip(rows, methods, strict=True):
        if r["status"] == "finished" and r["objective"] is not None and math.isfinite(r["objective"]):
            better = min if spec.objective.mode == "min" else max
            best[method] = better(best.get(method, r["objective"]), r["objective"])
    if not best:
        return None
    replicates = {}
    for entry in (confirm or {}).get("configurations", []):
        if entry.get("mean") is not None:
            replicates[entry["params"].get("optim.name", "?")] = (entry["mean"], entry.get("std") or 0.0, entry["n"])
    order = sorted(best, key=lambda m: best[m], reverse=spec.objective.mode == "max")
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(order) + 1.6))
    ys = range(len(order))
    ax.barh(ys, [best[m] for m in order], color=[method_colour(m) for m in order], height=0.6, label="search")
    for y, m in zip(ys, order, strict=True):
        ax.text(best[m], y, f" {best[m]:.4f}", va="center", fontsize=8)
        if m in replicates:
            mean, std, n = replicates[m]
            ax.errorbar(mean, y, xerr=std, fmt="o", color="k", capsize=4, ms=4)
            ax.text(mean, y + 0.38, f"replicates {mean:.4f} +/- {std:.4f} (n={n})", fontsize=7, ha="center")
    ax.set_yticks(list(ys), order)
    ax.invert_yaxis()
    values = [best[m] for m in order] + [mean + d for mean, std, _ in replicates.values() for d in (-std, std)]
    span = max(values) - min(values) or 0.1
    ax.set_xlim(min(values) - 0.5 * span, max(values) + 0.6 * span)
    ax.set_xlabel(f"best {spec.objective.metric} at the full budget")
    ax.set_title(f"{spec.name}: best trial per method (black: replicates' mean +/- std)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _scatter(
    spec: SweepSpec, rows, methods, key: str, scale: float, xlabel: str, path: Path, front: bool
) -> Path | None:
    import matplotlib.pyplot as plt

    points = [
        (r[key] / scale, r["objective"], r, m)
        for r, m in zip(rows, methods, strict=True)
        if r["status"] == "finished" and r.get(key) and r["objective"] is not None
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for x, y, r, m in points:
        ax.scatter(x, y, color=method_colour(m), s=36, zorder=3, edgecolors="k", linewidths=0.4)
        ax.annotate(r["trial_id"][:8], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points", alpha=0.7)
    if front:  # lower loss and lower memory are both better
        sign = 1 if spec.objective.mode == "min" else -1
        ordered = sorted(points, key=lambda p: (p[0], sign * p[1]))
        chosen, best_y = [], math.inf
        for x, y, _, _ in ordered:
            if sign * y < best_y:
                chosen.append((x, y))
                best_y = sign * y
        ax.step(
            [p[0] for p in chosen],
            [p[1] for p in chosen],
            where="post",
            color="k",
            lw=1,
            alpha=0.6,
            label="Pareto front",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{spec.objective.metric} (full budget)")
    ax.grid(alpha=0.3)
    _method_legend(ax, sorted({m for *_, m in points}))
    what = xlabel.split(" (")[0]
    ax.set_title(f"{spec.name}: {spec.objective.metric} vs {what}" + (" (line: Pareto front)" if front else ""))
    return _save(fig, path)


def plot_history(spec: SweepSpec, rows, methods, path: Path) -> Path | None:
    """Objective in the order the trials started (start_order), x = that position."""
    import matplotlib.pyplot as plt

    scored = [(rows[i], methods[i]) for i in start_order(rows) if rows[i]["objective"] is not None]
    if not scored:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    best, line = math.inf, []
    sign = 1 if spec.objective.mode == "min" else -1
    for i, (r, m) in enumerate(scored):
        full = r["status"] == "finished"
        ax.scatter(
            i,
            r["objective"],
            s=36,
            zorder=3,
            color=method_colour(m) if full else "none",
            edgecolors=method_colour(m),
            linewidths=1.2,
            gid=r["trial_id"],
        )
        if full and sign * r["objective"] < best:
            best = sign * r["objective"]
        line.append(sign * best if math.isfinite(best) else math.nan)
    ax.plot(range(len(line)), line, color="k", lw=1, drawstyle="steps-post", label="best so far (full budget)")
    values = [r["objective"] for r, _ in scored if math.isfinite(r["objective"])]
    if values:  # every trial's point, the stopped ones' too
        margin = 0.05 * (max(values) - min(values) or 1.0)
        ax.set_ylim(min(values) - margin, max(values) + margin)
    ax.set_xlabel("trial, in the order they started")
    ax.set_ylabel(spec.objective.metric)
    ax.set_title(f"{spec.name}: history; hollow = stopped early (its value at the last milestone), not a result")
    ax.grid(alpha=0.3)
    _method_legend(ax, sorted({m for _, m in scored}))
    return _save(fig, path)


def plot_parallel_per_method(spec: SweepSpec, rows, methods, path: Path) -> Path | None:
    """One panel per method with a scored trial and a numeric param: axes are that method's own
    params scaled to their range (labelled min/max), lines coloured by the objective."""
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    panels = {}
    for r, m in zip(rows, methods, strict=True):
        if r["objective"] is not None and math.isfinite(r["objective"]):
            panels.setdefault(m, []).append(r)
    panels = {m: rs for m, rs in panels.items() if _numeric_keys(rs)}  # every method, even with one trial
    if not panels:
        return None
    values = [r["objective"] for rs in panels.values() for r in rs]
    norm = colors.Normalize(min(values), max(values))
    cmap = cm.viridis_r if spec.objective.mode == "min" else cm.viridis
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (m, rs) in zip(axes[0], sorted(panels.items()), strict=True):
        keys = _numeric_keys(rs)
        spans = {k: (min(float(r["params"][k]) for r in rs), max(float(r["params"][k]) for r in rs)) for k in keys}
        for r in sorted(rs, key=lambda r: -r["objective"]):
            ys = [_unit(float(r["params"][k]), *spans[k], log=k.endswith("lr")) for k in keys]
            ax.plot(
                range(len(keys)),
                ys,
                color=cmap(norm(r["objective"])),
                marker="o",
                lw=1.5,
                ls=STATUS_STYLE.get(r["status"], ":"),
            )
        ax.set_xticks(range(len(keys)), [k.split(".", 1)[-1] for k in keys], rotation=20, fontsize=7)
        for i, k in enumerate(keys):
            ax.text(i, -0.08, f"{spans[k][0]:.3g}", ha="center", va="top", fontsize=6)
            ax.text(i, 1.06, f"{spans[k][1]:.3g}", ha="center", fontsize=6)
        ax.set_ylim(-0.15, 1.15)
        ax.set_yticks([])
        ax.set_title(m, color=method_colour(m), fontsize=10)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), label=spec.objective.metric)
    fig.suptitle(f"{spec.name}: each method's own params (dashed: stopped early)", fontsize=10)
    return _save(fig, path)


def _numeric_keys(rows) -> list[str]:
    keys = sorted({k for r in rows for k in r["params"] if k != "optim.name"})
    return [k for k in keys if all(isinstance(r["params"].get(k), (int, float)) for r in rows)]


def _unit(value: float, low: float, high: float, log: bool) -> float:
    if high <= low:
        return 0.5
    if log and low > 0:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_method_plots(spec: SweepSpec, state, rows, out_dir: Path, confirm=None) -> list[Path]:
    """Every plot of this module that has data; see the module doc."""
    import matplotlib

    matplotlib.use("Agg")
    from ranktune.platform.report.table import method_of

    out_dir.mkdir(parents=True, exist_ok=True)
    methods = [method_of(spec, r["params"]) for r in rows]
    from ranktune.platform.report.trials import collect_replicates

    replicates = collect_replicates(spec, state)
    curves = trial_curves(state, rows + replicates)
    written = [
        plot_loss_curves(
            spec,
            rows,
            curves,
            methods,
            out_dir / "loss_curves.png",
            [(r, method_of(spec, r["params"])) for r in replicates],
        ),
        plot_best_per_method(spec, rows, methods, confirm, out_dir / "best_per_method.png"),
        _scatter(
            spec,
            rows,
            methods,
            "optimizer_state_bytes",
            2**20,
            "optimizer state (MiB)",
            out_dir / "loss_vs_memory.png",
            front=True,
        ),
        _scatter(
            spec,
            rows,
            methods,
            "tokens_per_s",
            1.0,
            "throughput (tokens/s)",
            out_dir / "loss_vs_throughput.png",
            front=False,
        ),
        plot_history(spec, rows, methods, out_dir / "optimization_history.png"),
        plot_parallel_per_method(spec, rows, methods, out_dir / "parallel_coordinates.png"),
    ]
    return [p for p in written if p is not None]
