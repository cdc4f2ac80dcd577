"""`ranktune report DIR --html`: one self-contained `report.html` (plotly.js inlined, no network).

Sections: who won and the command to run next; the ranked table; every chart of the PNGs (best loss
per method with the replicates' mean +/- std; loss vs optimizer-state memory with the Pareto front;
loss vs tokens/s; train and held-out loss curves of every trial and replicate; history in start
order; parallel coordinates per method); the replicates' verdicts. Colours per method are those of plots.py. The file is
also logged on the sweep's MLflow parent run.
"""

from __future__ import annotations

import html
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ranktune.search_spaces.spec import SweepSpec

if TYPE_CHECKING:
    from ranktune.platform.report.trials import SweepResults

REPORT_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { background: #f4f4f4; padding: 2px 5px; }
pre { white-space: pre-wrap; } .swatch { display: inline-block; width: 10px; height: 10px; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; } .chart.wide { grid-column: 1 / -1; }
"""


def _layout(**extra) -> dict[str, Any]:
    """Legend under the plot area, title on the left, plotly's toolbar upright in the right margin: the
    toolbar covers neither (tests/test_report_html.py measures it in Chromium)."""
    return {
        "height": 400,
        "margin": {"l": 60, "r": 45, "t": 50, "b": 60},
        "template": "plotly_white",
        "modebar": {"orientation": "v"},
        "title": {"x": 0.01, "xanchor": "left", "font": {"size": 14}},
        "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": -0.2, "yanchor": "top"},
        **extra,
    }


def _figures(spec: SweepSpec, rows, methods, curves, confirm, replicates=()) -> list[tuple[str, Any]]:
    """Every chart the PNGs of plots.py have: best per method, loss vs memory (Pareto) and vs throughput,
    train and held-out curves, history, parallel coordinates; `replicates` (row, method) pairs."""
    import plotly.graph_objects as go

    from ranktune.platform.report.plots import curve_range, informative_range, method_colour, start_order

    metric = spec.objective.metric
    finished = [
        (r, m)
        for r, m in zip(rows, methods, strict=True)
        if r["status"] == "finished" and r["objective"] is not None and math.isfinite(r["objective"])
    ]
    layout = _layout()
    figures = []

    best: dict[str, float] = {}
    for r, m in finished:
        pick = min if spec.objective.mode == "min" else max
        best[m] = pick(best.get(m, r["objective"]), r["objective"])
    order = sorted(best, key=best.get, reverse=spec.objective.mode == "max")
    fig = go.Figure(
        go.Bar(
            x=order,
            y=[best[m] for m in order],
            marker_color=[method_colour(m) for m in order],
            name="best search trial",
            text=[f"{best[m]:.4f}" for m in order],
        )
    )
    reps = [e for e in (confirm or {}).get("configurations", []) if e.get("mean") is not None]
    if reps:
        fig.add_trace(
            go.Scatter(
                x=[e.get("method") or e["params"].get("optim.name", e["trial_id"]) for e in reps],
                y=[e["mean"] for e in reps],
                mode="markers",
                marker={"color": "black", "size": 9},
                error_y={"type": "data", "array": [e.get("std") or 0 for e in reps]},
                name="replicates mean +/- std",
            )
        )
    limits = informative_range([best[m] for m in order] + [e["mean"] for e in reps])
    fig.update_layout(**layout)
    fig.update_layout(title_text=f"best {metric} per method (full budget)", yaxis_title=metric)
    if limits:
        fig.update_yaxes(range=[limits[0] - 0.5 * (limits[1] - limits[0]), limits[1]])
    figures.append(("best per method", fig))

    for key, scale, label, front in (
        ("optimizer_state_bytes", 2**20, "optimizer state (MiB)", True),
        ("tokens_per_s", 1.0, "tokens/s", False),
    ):
        fig = go.Figure()
        points = [(r, m) for r, m in finished if r.get(key)]
        for m in sorted({m for _, m in points}):
            mine = [r for r, mm in points if mm == m]
            fig.add_trace(
                go.Scatter(
                    x=[r[key] / scale for r in mine],
                    y=[r["objective"] for r in mine],
                    mode="markers",
                    name=m,
                    marker={"color": method_colour(m), "size": 10},
                    text=[r["trial_id"] for r in mine],
                    hovertemplate=f"%{{text}}: %{{y:.4f}} at %{{x:.3g}}<extra>{m}</extra>",
                ),
            )
        if front and points:
            chosen, best_y = [], math.inf
            sign = 1 if spec.objective.mode == "min" else -1
            for r, _ in sorted(points, key=lambda p: (p[0][key], sign * p[0]["objective"])):
                if sign * r["objective"] < best_y:
                    chosen.append(r)
                    best_y = sign * r["objective"]
            fig.add_trace(
                go.Scatter(
                    x=[r[key] / scale for r in chosen],
                    y=[r["objective"] for r in chosen],
                    mode="lines",
                    line={"shape": "hv", "color": "black", "width": 1},
                    name="Pareto front",
                )
            )
        title = f"Pareto front: {metric} vs {label}" if front else f"{metric} vs {label}"
        fig.update_layout(**layout)
        fig.update_layout(title_text=title, xaxis_title=label, yaxis_title=metric)
        figures.append((title, fig))

    lines = [(r, m, False) for r, m in zip(rows, methods, strict=True)] + [(r, m, True) for r, m in replicates]
    for key, label in (("train_loss", "train loss"), ("eval_loss", "held-out loss")):
        fig, shown, legend = go.Figure(), [], set()
        for r, m, replicate in lines:
            points = curves.get(r["run_id"], {}).get(key, [])
            if not points:
                continue
            dash = "solid" if replicate else {"finished": "solid", "stopped_early": "dash"}.get(r["status"], "dot")
            what = f"replicate of {r.get('replicate_of')}" if replicate else r["status"]
            fig.add_trace(
                go.Scatter(
                    x=[s for s, _ in points],
                    y=[v for _, v in points],
                    mode="lines" if replicate else "lines+markers",
                    name=m,
                    legendgroup=m,
                    showlegend=m not in legend,
                    meta=r["trial_id"],
                    line={"color": method_colour(m), "dash": dash, "width": 1 if replicate else 2},
                    opacity=0.5 if replicate else 0.9,
                    hovertemplate=f"{r['trial_id']} ({what}): %{{y:.4f}} at step %{{x}}<extra>{m}</extra>",
                )
            )
            legend.add(m)
            shown.append(points)
        if not shown:
            continue
        fig.update_layout(**layout)
        fig.update_layout(
            title_text=f"{label} (dashed: stopped early; thin: replicates)", xaxis_title="step", yaxis_title=key
        )
        limits = curve_range(shown)
        if limits:
            fig.update_yaxes(range=list(limits))
        figures.append((f"{label} curves", fig))

    scored = [
        (rows[i], methods[i])
        for i in start_order(rows)
        if rows[i]["objective"] is not None and math.isfinite(rows[i]["objective"])
    ]
    if scored:
        fig, sign, best_so_far, line = go.Figure(), (1 if spec.objective.mode == "min" else -1), math.inf, []
        for i, (r, m) in enumerate(scored):
            full = r["status"] == "finished"
            if full and sign * r["objective"] < best_so_far:
                best_so_far = sign * r["objective"]
            line.append(sign * best_so_far if math.isfinite(best_so_far) else None)
            fig.add_trace(
                go.Scatter(
                    x=[i],
                    y=[r["objective"]],
                    mode="markers",
                    name=m,
                    legendgroup=m,
                    meta=r["trial_id"],
                    showlegend=m not in {t.name for t in fig.data},
                    marker={
                        "color": method_colour(m) if full else "white",
                        "size": 10,
                        "line": {"color": method_colour(m), "width": 2},
                    },
                    hovertemplate=f"{r['trial_id']} ({r['status']}): %{{y:.4f}}<extra>{m}</extra>",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=list(range(len(line))),
                y=line,
                mode="lines",
                line={"shape": "hv", "color": "black", "width": 1},
                name="best so far (full budget)",
            )
        )
        fig.update_layout(**layout)
        fig.update_layout(
            title_text="history (hollow: stopped early, not a result)",
            xaxis_title="trial, in the order they started",
            yaxis_title=metric,
        )
        figures.append(("history", fig))

    parallel = _parallel(spec, rows, methods)
    if parallel is not None:
        figures.append(("parallel coordinates", parallel))
    return figures


def _parallel(spec: SweepSpec, rows, methods):
    """One parallel-coordinates panel per method (its own numeric params, each scaled to its range as in
    parallel_coordinates.png, lr on a log scale), stacked; lines coloured by the objective on one scale.
    SVG lines, not plotly's Parcoords: those are WebGL, which drew only the first panel of several."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    from ranktune.platform.report.plots import _numeric_keys, _unit, method_colour

    panels: dict[str, list] = {}
    for r, m in zip(rows, methods, strict=True):
        if r["objective"] is not None and math.isfinite(r["objective"]) and _numeric_keys([r]):
            panels.setdefault(m, []).append(r)
    if not panels:
        return None
    values = [r["objective"] for rs in panels.values() for r in rs]
    low, high = min(values), max(values)
    scale = "Viridis_r" if spec.objective.mode == "min" else "Viridis"
    order = sorted(panels)
    fig = make_subplots(
        rows=len(order),
        cols=1,
        vertical_spacing=0.5 / len(order),
        subplot_titles=[f"{m} ({len(panels[m])} trial{'s' if len(panels[m]) > 1 else ''})" for m in order],
    )
    for row, m in enumerate(order, 1):
        rs = panels[m]
        keys = _numeric_keys(rs)
        spans = {k: (min(float(r["params"][k]) for r in rs), max(float(r["params"][k]) for r in rs)) for k in keys}
        for r in sorted(rs, key=lambda r: -r["objective"]):
            colour = sample_colorscale(scale, [(r["objective"] - low) / ((high - low) or 1.0)])[0]
            ys = [_unit(float(r["params"][k]), *spans[k], log=k.endswith("lr")) for k in keys]
            fig.add_trace(
                go.Scatter(
                    x=list(range(len(keys))),
                    y=ys,
                    mode="lines+markers",
                    name=m,
                    meta=r["trial_id"],
                    showlegend=False,
                    line={"color": colour, "width": 2, "dash": "solid" if r["status"] == "finished" else "dash"},
                    hovertemplate=f"{r['trial_id']}: {spec.objective.metric} {r['objective']:.4f}<br>"
                    + "<br>".join(f"{k}={r['params'][k]}" for k in keys)
                    + f"<extra>{m}</extra>",
                ),
                row=row,
                col=1,
            )
        labels = [f"{k.split('.', 1)[-1]}<br>{spans[k][0]:.3g} .. {spans[k][1]:.3g}" for k in keys]
        fig.update_xaxes(
            tickvals=list(range(len(keys))), ticktext=labels, range=[-0.3, len(keys) - 0.7], row=row, col=1
        )
        fig.update_yaxes(range=[-0.1, 1.1], showticklabels=False, row=row, col=1)
    for annotation, m in zip(fig.layout.annotations, order, strict=True):
        annotation.update(font={"color": method_colour(m)}, x=0, xanchor="left")
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            showlegend=False,
            hoverinfo="skip",
            marker={
                "colorscale": scale,
                "cmin": low,
                "cmax": high,
                "color": [low],
                "showscale": True,
                "colorbar": {"title": {"text": spec.objective.metric}},
            },
        )
    )
    fig.update_layout(**_layout(height=max(400, 190 * len(order) + 80)))
    fig.update_layout(title_text="parallel coordinates: each method's own params (dashed: stopped early)")
    return fig


def _table_html(spec: SweepSpec, flat: list[dict[str, Any]]) -> str:
    from ranktune.platform.report.plots import method_colour

    head = [
        "#",
        "method",
        "params",
        "status",
        spec.objective.metric,
        "opt MiB",
        "peak MiB",
        "tok/s",
        f"{flat[0]['device_kind'] if flat else 'GPU'}-h",
        "trial",
        "why",
    ]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in flat:

        def num(v, fmt):
            return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

        cells = [
            (str(r["rank"]), True),
            (
                f"<span class='swatch' style='background:{method_colour(r['method'])}'></span> "
                f"{html.escape(r['method'])}",
                False,
            ),
            (f"<code>{html.escape(r['params'])}</code>" if r["params"] else "-", False),
            (html.escape(r["status"]), False),
            (num(r["objective"], ".4f"), True),
            (num(r["optimizer_state_mib"], ".2f"), True),
            (num(r["peak_mib"], ".0f"), True),
            (num(r["tokens_per_s"], ".0f"), True),
            (num(r["device_hours"], ".3f"), True),
            (html.escape(r["trial_id"] or "?"), False),
            (html.escape(r["reason"] or "") if r["status"] != "finished" else "", False),
        ]
        out.append("<tr>" + "".join(f"<td class='num'>{c}</td>" if n else f"<td>{c}</td>" for c, n in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def render_html(spec: SweepSpec, rows, methods, flat, curves, confirm, best, storage: str, replicates=()) -> str:
    from ranktune.platform.report.replicates import format_confirm
    from ranktune.platform.report.table import winner_lines

    charts = []
    for i, (title, fig) in enumerate(_figures(spec, rows, methods, curves, confirm, replicates)):
        # plotly.js once, inlined: the file opens offline and from an MLflow artifact view
        chart = fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        charts.append((chart, title == "parallel coordinates"))  # a panel per method: the page's width
    winner = "<br>".join(html.escape(line) for line in winner_lines(spec, best, storage, confirm))
    verdict = "<pre>" + html.escape("\n".join(format_confirm(confirm))) + "</pre>" if confirm else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ranktune sweep {html.escape(spec.name)}</title>
<style>{STYLE}</style></head><body>
<h1>Sweep {html.escape(spec.name)}: {html.escape(spec.objective.mode)} {html.escape(spec.objective.metric)}
after {spec.budget.steps_per_trial} steps</h1>
<p>{winner}</p>
<h2>Ranked trials</h2>
{_table_html(spec, flat)}
<h2>Charts</h2>
<div class="charts">{"".join(f'<div class="chart{" wide" if wide else ""}">{c}</div>' for c, wide in charts)}</div>
{"<h2>Replicates</h2>" + verdict if verdict else ""}
<h2>Next</h2>
<p><code>ranktune export {html.escape(shlex.quote(storage))} --target 7b</code> &nbsp; then the
<code>ranktune train ...</code> command it prints.
MLflow: <code>ranktune ui {html.escape(shlex.quote(storage))}</code></p>
</body></html>
"""


def write_html_report(results: SweepResults) -> Path:
    from ranktune.platform.report.plots import trial_curves
    from ranktune.platform.report.ranking import pick_winner
    from ranktune.platform.report.table import flat_rows, method_of
    from ranktune.platform.tracking.client import mlflow_client

    spec, state, rows, confirm, storage = results.spec, results.state, results.trials, results.confirm, results.storage
    methods = [method_of(spec, r["params"]) for r in rows]
    replicates = results.replicates
    page = render_html(
        spec,
        rows,
        methods,
        flat_rows(spec, rows),
        trial_curves(state, rows + replicates),
        confirm,
        pick_winner(rows, spec.objective.mode, confirm),
        str(storage),
        [(r, method_of(spec, r["params"])) for r in replicates],
    )
    path = storage / REPORT_FILE
    path.write_text(page)
    mlflow_client(state.tracking_uri).log_artifact(state.parent_run_id, str(path))
    return path
