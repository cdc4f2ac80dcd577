"""`ranktune sweep`: run or resume a sweep (or a ladder of them) and say how it ended."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from ranktune.platform.cli.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, SWEEP_DIR_HELP, add_set_arg, say
from ranktune.platform.cli.report import print_confirm, print_pareto


def cmd_sweep(args: argparse.Namespace) -> int:
    from ranktune.platform.report.table import flat_rows, render_table
    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.store.state import load_state
    from ranktune.platform.sweep.driver import resume_sweep, run_sweep
    from ranktune.search_spaces.spec import load_spec

    if args.quiet:  # Tune logs each failed trial's traceback; the table gives its reason, MLflow's error.txt the rest
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    from ranktune.platform.sweep.ladder import is_ladder_dir

    if args.resume and is_ladder_dir(args.resume):
        return _ladder(args, None)
    if args.resume:
        summary = resume_sweep(
            args.resume, address=args.address, progress=not args.quiet, retry_failed=not args.no_retry_failed
        )
    elif args.spec:
        spec = load_spec(args.spec, args.overrides)
        if spec.ladder is not None:
            return _ladder(args, spec)
        space = spec.search_space()
        trials = len(space.grid()) if spec.search.algorithm == "grid" else spec.budget.num_trials
        print(f"sweep {spec.name}: {trials} trials -> {spec.storage_dir}", file=sys.stderr)
        summary = run_sweep(spec, address=args.address, progress=not args.quiet)
    else:
        print("error: give a sweep spec, or --resume SWEEP_DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec, state = load_state(summary["storage"])
    rows = collect_trials(spec, state)
    render_table(spec, flat_rows(spec, rows))
    _print_outcome(spec, summary)
    if summary.get("interrupted"):
        print(
            f"interrupted: `ranktune sweep --resume {shlex.quote(str(summary['storage']))}` continues the sweep "
            "(trials still to run or interrupted resume from their last checkpoint)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary.get("confirm_failures"):  # the replicates asked for did not all run: no verdict, not a result
        print(f"error: {summary['confirm_failures']}", file=sys.stderr)
        return 1
    return sweep_exit_code(rows)


def _ladder(args: argparse.Namespace, spec) -> int:
    """`ranktune sweep` of a spec with `ladder:` (platform/sweep/ladder.py), or --resume of a ladder directory
    (spec None)."""
    from ranktune.platform.report.ladder import ladder_lines
    from ranktune.platform.sweep.ladder import LadderInterrupted, resume_ladder, run_ladder

    try:
        if spec is None:
            ladder = resume_ladder(args.resume, address=args.address, progress=not args.quiet)
        else:
            print(f"ladder {spec.name}: {len(spec.ladder.rungs)} rungs -> {spec.storage_dir}", file=sys.stderr)
            ladder = run_ladder(spec, address=args.address, progress=not args.quiet)
    except LadderInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    print("\n".join(ladder_lines(ladder)))
    return 0 if ladder["complete"] else 1


def sweep_exit_code(rows: list[dict]) -> int:
    """0 when some trial trained to the end of its budget (or was stopped early by the scheduler), else 1
    with one line per trial and its reason (the traceback is in the trial's MLflow error.txt)."""
    # A trial counts with a final objective only: one whose last evaluation was not finite has none.
    if any(r["status"] in ("finished", "stopped_early") and r["objective"] is not None for r in rows):
        return 0
    print(f"error: no trial finished ({len(rows)} started)", file=sys.stderr)
    for r in rows:
        reason = r["failure_reason"] or (
            "no final objective (its last evaluation was not a number)"
            if r["status"] in ("finished", "stopped_early")
            else "(no reason recorded)"
        )
        print(f"  trial {r['trial_id']} {r['status']}: {reason}", file=sys.stderr)
    return 1


def _print_outcome(spec, summary: dict) -> None:
    from ranktune.platform.report.table import winner_lines

    storage = summary["storage"]
    print_pareto(storage)
    print_confirm(summary.get("confirm"))
    quoted = shlex.quote(str(storage))
    say(f"plots: {storage}/plots/   HTML: ranktune report {quoted} --html   MLflow UI: ranktune ui {quoted}")
    say(*winner_lines(spec, summary["best"], storage, summary.get("confirm")), *summary.get("proxy_checks", []))


def add_parsers(sub) -> None:
    """The parsers of this group's commands, on the top-level parser's subparsers."""
    p = sub.add_parser("sweep", help="run a hyperparameter sweep (Ray Tune + Optuna + ASHA, tracked in MLflow)")
    p.add_argument("spec", nargs="?", help="sweep spec YAML (see docs/sweeps.md)")
    add_set_arg(p, "a spec field", "budget.num_trials=4")
    p.add_argument(
        "--resume",
        metavar="SWEEP_DIR",
        help=f"finish a sweep whose driver stopped or was killed; SWEEP_DIR: {SWEEP_DIR_HELP}",
    )
    p.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="with --resume: leave failed trials and replicates failed (default: run them again, each "
        "from its last checkpoint)",
    )
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--quiet", action="store_true", help="no live progress table")
    p.set_defaults(func=cmd_sweep)
