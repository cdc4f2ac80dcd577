"""What every command shares: exit codes, argument types, the terminal's width, `--set` and `--card`."""

from __future__ import annotations

import argparse
import math

EXIT_BAD_INPUT = 2  # refused input: one line per problem
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def positive_gib(text: str) -> float:
    """A memory size in GiB: a finite number above 0 (argparse refuses anything else, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} -> a number of GiB, e.g. 24") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} -> a finite number of GiB above 0, e.g. 24")
    return value


def tcp_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} -> a port number 1-65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} -> a port number 1-65535")
    return value


TERMINAL_FALLBACK_WIDTH = 100  # piped output: the width the ranked table is drawn at


SWEEP_DIR_HELP = (
    "a sweep's directory: its spec's `storage` (e.g. sweeps/compare-tiny), holding sweep.json, "
    "optuna.db and the MLflow store"
)


def terminal_width() -> int:
    import shutil

    return max(40, shutil.get_terminal_size((TERMINAL_FALLBACK_WIDTH, 24)).columns)


def wrapped(lines, width: int | None = None) -> str:
    """`lines` folded to the terminal's width at spaces only (a path or a value is never cut), each
    continuation indented under its line."""
    import textwrap

    width = width or terminal_width()
    out = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip(" ")) + 4)
        out += textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False) or [
            ""
        ]
    return "\n".join(out)


def say(*lines: str) -> None:
    print(wrapped(lines))


def add_set_arg(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """The repeatable `--set KEY=VALUE` override every config-reading command takes."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what}, e.g. --set {example} (repeatable)",
    )


def add_card_arg(p: argparse.ArgumentParser) -> None:
    from ranktune.platform.cards import CARDS, DEFAULT_CARD

    p.add_argument(
        "--card",
        default=DEFAULT_CARD,
        choices=sorted(CARDS),
        help="GPU the duration is estimated for (default %(default)s; see docs/export.md)",
    )


def positive_tokens(text: str) -> int:
    """`--tokens 2e10` or `--tokens 20000000000`: a whole number of tokens."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} -> a number of tokens, e.g. 2e10") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} -> a positive whole number of tokens")
    return int(value)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (defaults apply to anything it leaves out)")
    add_set_arg(p, "a config field", "optim.lr=1e-3 --set train.steps=50")


def dump_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
