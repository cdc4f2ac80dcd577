"""`ranktune report`: a sweep's ranked trials, replicates, plots and the answer."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ranktune.platform.cli.common import SWEEP_DIR_HELP, positive_gib, say


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def print_pareto(storage: str | Path) -> None:
    from ranktune.platform.report.pareto import format_front
    from ranktune.platform.store.state import load_state

    spec, _ = load_state(storage)
    path = Path(storage) / "pareto.json"
    if spec.objectives and path.is_file():
        say(*format_front(spec, json.loads(path.read_text())))


def print_confirm(confirm: dict | None) -> None:
    from ranktune.platform.report.replicates import format_confirm

    if confirm:
        say(*format_confirm(confirm))


def cmd_report(args: argparse.Namespace) -> int:
    from ranktune.platform.report.figures import write_plots
    from ranktune.platform.report.ranking import pick_winner
    from ranktune.platform.report.table import flat_rows, render_table, sort_rows, to_csv, to_json, winner_lines
    from ranktune.platform.report.trials import SweepResults
    from ranktune.platform.store.locks import running_owner

    if (Path(args.sweep_dir) / "ladder.json").is_file():
        from ranktune.platform.report.ladder import ladder_lines

        print("\n".join(ladder_lines(json.loads((Path(args.sweep_dir) / "ladder.json").read_text()))))
        print(
            f"HTML: {Path(args.sweep_dir) / 'ladder.html'}; each rung's sweep: ranktune report "
            f"{shlex.quote(str(Path(args.sweep_dir) / 'rungs'))}/<rung>"
        )
        return 0
    results = SweepResults.load(args.sweep_dir)
    spec, state, rows, offline, confirm = results.spec, results.state, results.trials, results.offline, results.confirm
    if offline:
        print(offline, file=sys.stderr)
    flat = sort_rows(flat_rows(spec, rows), args.sort, spec.objective.mode)
    if args.csv or args.json:  # machine-readable: the table alone on stdout
        print(to_csv(flat) if args.csv else to_json(flat), end="" if args.csv else "\n")
        return 0
    render_table(spec, flat)
    storage = spec.storage_dir
    if spec.objectives:
        from ranktune.platform.report.pareto import format_front, pareto_front

        say(*format_front(spec, pareto_front(spec, rows)))
    if args.max_memory_gib is not None:
        _print_best_within(spec, rows, args.max_memory_gib)
    print_confirm(confirm)
    plots_dir = storage / "plots"
    if offline:  # plots and the HTML report draw the curves MLflow holds
        print(f"plots: {plots_dir}/ as last drawn" if plots_dir.is_dir() else "plots: none (they need the server)")
    elif not args.no_plots and (args.plots or args.html or not any(plots_dir.glob("*.png"))):
        plots = write_plots(spec, state, rows, confirm, plots_dir)  # drawn once; --plots redraws
        say("plots: " + ", ".join(str(p) for p in plots))
    elif plots_dir.is_dir():
        say(f"plots: {plots_dir}/ (--plots redraws them)")
    if args.html and not offline:
        from ranktune.platform.report.html import write_html_report

        say(f"HTML report: {write_html_report(results)}")
    winner = pick_winner(rows, spec.objective.mode, confirm)
    from ranktune.platform.report.proxy_checks import proxy_check_lines

    say(
        *winner_lines(spec, winner, str(storage), confirm, running=running_owner(storage)),
        *proxy_check_lines(spec, rows),
    )
    return 0


def _print_best_within(spec, rows: list[dict], max_gib: float) -> None:
    """The best finished trial whose own memory estimate (proxy model, trial's device) fits max_gib."""
    from ranktune.platform.memory import estimate_memory, gib, verdict
    from ranktune.platform.report.pareto import best_fitting

    device = "cuda" if spec.resources.gpus_per_trial not in (0, 0.0) and _cuda() else "cpu"

    def why_not(row: dict) -> str | None:
        estimate = estimate_memory(spec.trial_config(row["params"]), device=device)
        return None if verdict(estimate, max_gib).fits else f"estimate {gib(estimate.total)} > {max_gib:g} GiB"

    best, passed_over = best_fitting(spec, rows, why_not)
    for line in passed_over:
        say(f"  passed over {line}")
    if best is None:
        say(f"no finished trial's memory estimate fits {max_gib:g} GiB")
    else:
        say(
            f"best under {max_gib:g} GiB: trial {best['trial_id']} objective {best['objective']:.4f} with "
            f"{best['params']}"
        )


def add_parsers(sub) -> None:
    """The parsers of this group's commands, on the top-level parser's subparsers."""
    p = sub.add_parser("report", help="ranked table of a sweep's trials, and its plots")
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print the table as CSV (nothing else)")
    out.add_argument("--json", action="store_true", help="print the table as JSON (nothing else)")
    p.add_argument(
        "--sort",
        default="objective",
        metavar="KEY",
        help="order of the rows: objective (default), method, status, optimizer_state, peak, tokens_per_s, cost",
    )
    p.add_argument("--no-plots", action="store_true", help="do not write plots")
    p.add_argument("--plots", action="store_true", help="redraw the plots (default: only when there are none)")
    p.add_argument("--html", action="store_true", help="write SWEEP_DIR/report.html (interactive, self-contained)")
    p.add_argument(
        "--max-memory-gib",
        type=positive_gib,
        default=None,
        help="also name the best finished trial whose memory estimate fits this many GiB",
    )
    p.set_defaults(func=cmd_report)
