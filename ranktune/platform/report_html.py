"""`ranktune report DIR --html`: one self-contained `report.html` (plotly.js inlined, no network).

Sections: who won and the command to run next; the ranked table; best loss per method (with the
replicates' mean +/- std); loss vs optimizer-state memory with the Pareto front; loss vs tokens/s;
held-out loss curves; the replicates' verdict. Colours per method are those of plots.py. The file is
also logged on the sweep's MLflow parent run.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ranktune.search_spaces.spec import SweepSpec

REPORT_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { background: #f4f4f4; padding: 2px 5px; } .swatch { display: inline-block; width: 10px; height: 10px; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
"""


def _figures(spec: SweepSpec, rows, methods, curves, confirm) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go

    from ranktune.platform.plots import informative_range, method_colour

    metric = spec.objective.metric
    finished = [(r, m) for r, m in zip(rows, methods, strict=True) if r["status"] == "finished"
                and r["objective"] is not None and math.isfinite(r["objective"])]  # fmt: skip
    layout = {"height": 380, "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "template": "plotly_white",
              "legend": {"x": 1.02, "y": 1}}  # fmt: skip
    figures = []

    best: dict[str, float] = {}
    for r, m in finished:
        pick = min if spec.objective.mode == "min" else max
        best[m] = pick(best.get(m, r["objective"]), r["objective"])
    order = sorted(best, key=best.get, reverse=spec.objective.mode == "max")
    fig = go.Figure(go.Bar(x=order, y=[best[m] for m in order], marker_color=[method_colour(m) for m in order],
                           name="best search trial", text=[f"{best[m]:.4f}" for m in order]))  # fmt: skip
    reps = [e for e in (confirm or {}).get("configurations", []) if e.get("mean") is not None]
    if reps:
        fig.add_trace(go.Scatter(x=[e["params"].get("optim.name", e["trial_id"]) for e in reps],
                                 y=[e["mean"] for e in reps], mode="markers", marker={"color": "black", "size": 9},
                                 error_y={"type": "data", "array": [e.get("std") or 0 for e in reps]},
                                 name="replicates mean +/- std"))  # fmt: skip
    limits = informative_range([best[m] for m in order] + [e["mean"] for e in reps])
    fig.update_layout(title=f"best {metric} per method (full budget)", yaxis_title=metric, **layout)
    if limits:
        fig.update_yaxes(range=[limits[0] - 0.5 * (limits[1] - limits[0]), limits[1]])
    figures.append(("best per method", fig))

    for key, scale, label, front in (("optimizer_state_bytes", 2**20, "optimizer state (MiB)", True),
                                     ("tokens_per_s", 1.0, "tokens/s", False)):  # fmt: skip
        fig = go.Figure()
        points = [(r, m) for r, m in finished if r.get(key)]
        for m in sorted({m for _, m in points}):
            mine = [r for r, mm in points if mm == m]
            fig.add_trace(go.Scatter(x=[r[key] / scale for r in mine], y=[r["objective"] for r in mine],
                                     mode="markers", name=m, marker={"color": method_colour(m), "size": 10},
                                     text=[r["trial_id"] for r in mine],
                                     hovertemplate=f"%{{text}}: %{{y:.4f}} at %{{x:.3g}}<extra>{m}</extra>"),
                          )  # fmt: skip
        if front and points:
            chosen, best_y = [], math.inf
            sign = 1 if spec.objective.mode == "min" else -1
            for r, _ in sorted(points, key=lambda p: (p[0][key], sign * p[0]["objective"])):
                if sign * r["objective"] < best_y:
                    chosen.append(r)
                    best_y = sign * r["objective"]
            fig.add_trace(go.Scatter(x=[r[key] / scale for r in chosen], y=[r["objective"] for r in chosen],
                                     mode="lines", line={"shape": "hv", "color": "black", "width": 1},
                                     name="Pareto front"))  # fmt: skip
        fig.update_layout(title=f"{metric} vs {label}", xaxis_title=label, yaxis_title=metric, **layout)
        figures.append((f"{metric} vs {label}", fig))

    fig = go.Figure()
    shown, after_start = set(), []
    hover_step = "TRIAL: %{y:.4f} at step %{x}<extra></extra>"
    for r, m in zip(rows, methods, strict=True):
        points = curves.get(r["run_id"], {}).get("eval_loss", [])
        if not points:
            continue
        dash = {"finished": "solid", "stopped_early": "dash"}.get(r["status"], "dot")
        fig.add_trace(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], mode="lines+markers",
                                 name=m, legendgroup=m, showlegend=m not in shown,
                                 line={"color": method_colour(m), "dash": dash},
                                 hovertemplate=hover_step.replace("TRIAL", f"{r['trial_id']} ({r['status']})")),
                      )  # fmt: skip
        shown.add(m)
        after_start += [v for s, v in points if s > 0]
    fig.update_layout(title="held-out loss (dashed: stopped early; y-range leaves out step 0)",
                      xaxis_title="step", yaxis_title="eval_loss", **layout)  # fmt: skip
    limits = informative_range(after_start)
    if limits:
        fig.update_yaxes(range=list(limits))
    figures.append(("curves", fig))
    return figures


def _table_html(spec: SweepSpec, flat: list[dict[str, Any]]) -> str:
    from ranktune.platform.plots import method_colour

    head = ["#", "method", "params", "status", spec.objective.metric, "opt MiB", "peak MiB", "tok/s",
            f"{flat[0]['device_kind'] if flat else 'GPU'}-h", "trial", "why"]  # fmt: skip
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in flat:

        def num(v, fmt):
            return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

        cells = [
            (str(r["rank"]), True),
            (f"<span class='swatch' style='background:{method_colour(r['method'])}'></span> "
             f"{html.escape(r['method'])}", False),
            (f"<code>{html.escape(r['params'])}</code>" if r["params"] else "-", False),
            (html.escape(r["status"]), False), (num(r["objective"], ".4f"), True),
            (num(r["optimizer_state_mib"], ".2f"), True), (num(r["peak_mib"], ".0f"), True),
            (num(r["tokens_per_s"], ".0f"), True), (num(r["device_hours"], ".3f"), True),
            (html.escape(r["trial_id"] or "?"), False),
            (html.escape(r["reason"] or "") if r["status"] != "finished" else "", False),
        ]  # fmt: skip
        out.append("<tr>" + "".join(f"<td class='num'>{c}</td>" if n else f"<td>{c}</td>" for c, n in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def render_html(spec: SweepSpec, rows, methods, flat, curves, confirm, best, storage: str) -> str:
    from ranktune.platform.confirm import format_confirm
    from ranktune.platform.report_table import winner_lines

    charts = []
    for i, (_, fig) in enumerate(_figures(spec, rows, methods, curves, confirm)):
        # plotly.js once, inlined: the file opens offline and from an MLflow artifact view
        charts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}))
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
<div class="charts">{"".join(f'<div class="chart">{c}</div>' for c in charts)}</div>
{"<h2>Replicates</h2>" + verdict if verdict else ""}
<h2>Next</h2>
<p><code>ranktune export {html.escape(storage)} --target 7b</code> &nbsp; then the <code>ranktune train ...</code>
command it prints. MLflow: <code>ranktune ui {html.escape(storage)}</code></p>
</body></html>
"""


def write_html_report(spec: SweepSpec, state: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    from ranktune.platform.confirm import load_confirm
    from ranktune.platform.plots import trial_curves
    from ranktune.platform.ranking import pick_winner
    from ranktune.platform.report_table import flat_rows, method_of
    from ranktune.platform.tracking import mlflow_client

    storage = spec.storage_dir
    confirm = load_confirm(storage)
    methods = [method_of(spec, r["params"]) for r in rows]
    page = render_html(spec, rows, methods, flat_rows(spec, rows), trial_curves(state, rows, ("eval_loss",)),
                       confirm, pick_winner(rows, spec.objective.mode, confirm), str(storage))  # fmt: skip
    path = storage / REPORT_FILE
    path.write_text(page)
    mlflow_client(state["tracking_uri"]).log_artifact(state["parent_run_id"], str(path))
    return path
