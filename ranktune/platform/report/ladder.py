"""The ladder in the report: console lines, two plots, an HTML page and an MLflow run (ladder.py writes
ladder.json; everything here reads only that)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def ladder_lines(ladder: dict[str, Any]) -> list[str]:
    lines = [
        f"ladder {ladder['name']}: {len(ladder['rungs'])} rungs"
        f"{'' if ladder['complete'] else ' (incomplete)'}, best {ladder['promote']} per method promoted, "
        f"lr re-searched x{'/x'.join(f'{f:g}' for f in ladder['lr_factors'])}"
    ]
    for rung in ladder["rungs"]:
        lines.append(
            f"rung {rung['index']} {rung['name']}: width {rung['width']}, {rung['num_layers']} layers, "
            f"{rung['parameters'] / 1e6:.2f}M parameters ({rung['matrix_share']:.0%} matrices), "
            f"{rung['steps']} steps, {len(rung['configurations'])} configurations"
        )
        order = ", ".join(f"{m['method']} {m['loss']:.4f}" for m in rung["method_ranking"])
        lines.append(f"  methods: {order}")
        ranked = [c for c in rung["configurations"] if c["loss"] is not None]  # ladder.json keeps them best first
        lines.append(
            "  configurations: "
            + (", ".join(f"{c['config_id']} ({c['method']}) {c['loss']:.4f}" for c in ranked) or "none finished")
        )
    for c in ladder["comparisons"]:
        kept = (
            f"best configuration kept by {sum(c['best_config_kept'].values())} of {len(c['best_config_kept'])} methods"
            if c["best_config_kept"]
            else "best configuration kept: n/a (one configuration per method)"
        )
        lines.append(
            f"{c['lower']} -> {c['upper']}: Spearman {_f(c['spearman'])}, Kendall {_f(c['kendall'])} over "
            f"{c['configurations']} configurations; methods' order Kendall {_f(c['method_kendall'])} over "
            f"{c['methods']}; winner {c['lower_winner']} -> {c['upper_winner']}; {kept}; "
            f"regret {_f(c['regret'], '.4f')}"
        )
    lines.append(f"transfer verdict: {ladder['verdict']}")
    for method, rule in sorted(ladder.get("rules", {}).items()):
        fit = rule["step_size_text"] or f"no fit ({rule['note']})"
        lines.append(f"rule {method}: {fit}; {rule['rank_note']}")
        if rule["step_size_text"] and rule["note"]:
            lines.append(f"  warning: {rule['note']}")
    return lines


def write_ladder_plots(ladder: dict[str, Any], out_dir: Path) -> list[Path]:
    """Held-out loss vs parameters per method (best configuration at each rung), best lr x knob vs width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ranktune.platform.report.plots import method_colour

    out_dir.mkdir(parents=True, exist_ok=True)
    per_method: dict[str, list[tuple[float, float, float, float]]] = {}
    for rung in ladder["rungs"]:
        best: dict[str, dict[str, Any]] = {}
        for c in rung["configurations"]:
            if c["loss"] is not None and (c["method"] not in best or c["loss"] < best[c["method"]]["loss"]):
                best[c["method"]] = c
        for method, c in best.items():
            per_method.setdefault(method, []).append((rung["parameters"], c["loss"], rung["width"], c["step_size"]))
    written = []
    for name, xlabel, ylabel, pick in [
        ("ladder_loss_vs_size.png", "parameters", "held-out loss (best configuration)", lambda t: (t[0], t[1])),
        ("ladder_lr_vs_width.png", "width (hidden size)", "best lr x step-size knob", lambda t: (t[2], t[3])),
    ]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, rows in sorted(per_method.items()):
            pts = sorted(pick(t) for t in rows if pick(t)[1] is not None)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=method_colour(method), label=method)
        ax.set_xscale("log")
        if name.startswith("ladder_lr"):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"ladder {ladder['name']}")
        ax.legend(fontsize=7)
        fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(out_dir / name)
    return written


def write_ladder_html(ladder: dict[str, Any], storage: Path, plots: list[Path]) -> Path:
    rows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{r['width']}</td><td>{r['parameters'] / 1e6:.2f}M</td>"
        f"<td>{r['matrix_share']:.0%}</td><td>{r['steps']}</td><td>"
        + ", ".join(f"{html.escape(m['method'])} {m['loss']:.4f}" for m in r["method_ranking"])
        + "</td></tr>"
        for r in ladder["rungs"]
    )
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in ladder_lines(ladder))
    images = "".join(f'<img src="plots/{p.name}" style="max-width:48%">' for p in plots)
    page = (
        f"<html><head><meta charset='utf-8'><title>ladder {html.escape(ladder['name'])}</title></head><body>"
        f"<h1>ladder {html.escape(ladder['name'])}</h1>"
        f"<p><b>{html.escape(ladder['verdict'])}</b></p>"
        "<table border=1 cellpadding=4><tr><th>rung</th><th>width</th><th>parameters</th><th>matrices</th>"
        f"<th>steps</th><th>methods, best first</th></tr>{rows}</table><ul>{lines}</ul>{images}"
        "</body></html>"
    )
    path = storage / "ladder.html"
    path.write_text(page)
    return path


def log_ladder_run(spec, ladder: dict[str, Any], storage: Path, plots: list[Path]) -> None:
    """One MLflow run `<name>-ladder` (the rungs' sweeps have a parent run each) with ladder.json, the plots
    and the verdict; re-used when the ladder is written again."""
    from ranktune.platform.tracking.client import NOTE_TAG, SWEEP_TAG, get_or_create_experiment, mlflow_client

    client = mlflow_client(spec.tracking_uri)
    experiment = get_or_create_experiment(client, spec.tracking.experiment or spec.name)
    state_path = storage / "ladder_mlflow.json"
    run_id = json.loads(state_path.read_text())["run_id"] if state_path.is_file() else None
    if run_id is None:
        run_id = client.create_run(
            experiment, run_name=f"{spec.name}-ladder", tags={SWEEP_TAG: spec.name, "ranktune.kind": "ladder"}
        ).info.run_id
        state_path.write_text(json.dumps({"run_id": run_id}))
    client.log_artifact(run_id, str(storage / "ladder.json"))
    for p in plots:
        client.log_artifact(run_id, str(p), "plots")
    client.set_tag(run_id, "ranktune.verdict", ladder["verdict"][:5000])
    client.set_tag(run_id, NOTE_TAG, "  \n".join(ladder_lines(ladder)))
    for c in ladder["comparisons"]:
        for key in ("spearman", "kendall", "method_kendall", "regret"):
            if c[key] is not None:
                client.log_metric(run_id, f"{c['lower']}_{c['upper']}_{key}", float(c[key]))
    if ladder["complete"]:
        client.set_terminated(run_id, status="FINISHED")
