"""`ranktune estimate | export`: a config's memory against a GPU budget; a sweep's answer as a single-GPU
config for a target model."""

from __future__ import annotations

import argparse
import sys

from ranktune.platform.budget import DEFAULT_BUDGET_GIB
from ranktune.platform.cli.common import (
    SWEEP_DIR_HELP,
    add_card_arg,
    add_config_args,
    add_set_arg,
    positive_gib,
    positive_tokens,
    say,
)


def cmd_estimate(args: argparse.Namespace) -> int:
    from ranktune.platform.cards import card
    from ranktune.platform.duration import estimate_duration
    from ranktune.platform.memory import estimate_run, render_estimate
    from ranktune.trainables.config import load_config

    cfg = load_config(args.config, args.overrides)
    card(args.card)  # refuse an unknown card before printing anything
    verdict = render_estimate(estimate_run(cfg, device=args.device, overhead_gib=args.overhead_gib), args.budget_gib)
    print("\n".join(estimate_duration(cfg, args.card).lines()))
    return 0 if verdict.fits else 1


def cmd_export(args: argparse.Namespace) -> int:
    from ranktune.platform.cards import card
    from ranktune.platform.duration import RunBudget
    from ranktune.platform.export.recipe import export_best
    from ranktune.platform.export.rules import load_rules

    card(args.card)
    run_budget = RunBudget(args.tokens, args.days) if args.tokens is not None or args.days is not None else None
    result = export_best(
        args.sweep_dir,
        args.target,
        budget_gib=args.budget_gib,
        out=args.out,
        rules=load_rules(args.rules) if args.rules else None,
        overrides=args.overrides,
        trial_id=args.trial,
        max_memory_gib=args.max_memory_gib,
        fallback=args.fallback,
        notify=lambda line: print(line, file=sys.stderr),
        run_budget=run_budget,
        card_key=args.card,
    )
    if result.substitute:
        say(result.substitute)
    say(
        *result.notices,
        f"exported trial {result.trial_id} -> {result.config_path}",
        result.verdict.line(),
        f"Micro-batch: {result.micro_batch.line()}",
        *([f"Sized: {result.sizing}"] if result.sizing else []),
        *result.duration.lines(),
        f"launch: {result.command}",
    )
    return 0


def add_parsers(sub) -> None:
    """The parsers of this group's commands, on the top-level parser's subparsers."""
    p = sub.add_parser("estimate", help="estimate a config's training memory and check it against a GPU budget")
    add_config_args(p)
    p.add_argument(
        "--budget-gib",
        type=positive_gib,
        default=DEFAULT_BUDGET_GIB,
        help="GPU memory budget in GiB (default %(default)g)",
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda adds the fixed overhead")
    p.add_argument("--overhead-gib", type=float, default=None, help="fixed overhead (default 1 GiB on cuda)")
    add_card_arg(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("export", help="turn a sweep's best trial into a single-GPU config for a target model")
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    p.add_argument("--target", default="7b", help="target model preset (default 7b)")
    p.add_argument(
        "--budget-gib",
        type=positive_gib,
        default=DEFAULT_BUDGET_GIB,
        help="GPU memory budget in GiB (default %(default)g)",
    )
    p.add_argument("--out", help="config file to write (default SWEEP_DIR/export_<target>.yaml)")
    p.add_argument(
        "--rules",
        help="scaling rules: published (default: the methods' published target recipes), "
        "proxy (map the proxy's values), or a YAML file (see docs/export.md)",
    )
    p.add_argument(
        "--trial",
        help="export this finished trial instead of the sweep's answer (a baseline such as "
        "LoRA from a random init is exported only so)",
    )
    p.add_argument(
        "--fallback",
        choices=["best-fitting"],
        default=None,
        help="when the sweep's answer cannot be exported: export the best trial that can, saying "
        "what is lost (default: refuse, exit 2)",
    )
    p.add_argument(
        "--max-memory-gib",
        type=positive_gib,
        default=None,
        help="export the best finished trial whose target config's estimate fits this many GiB "
        "(the budget for the export too)",
    )
    add_set_arg(p, "a field of the exported config", "train.steps=1000")
    add_card_arg(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--tokens",
        type=positive_tokens,
        default=None,
        metavar="N",
        help="size the run to N training tokens (e.g. 2e10): train.steps, warmup, intervals and data.max_tokens follow",
    )
    size.add_argument(
        "--days",
        type=float,
        default=None,
        metavar="D",
        help="size the run to D days on --card at the duration estimate's throughput",
    )
    p.set_defaults(func=cmd_export)
