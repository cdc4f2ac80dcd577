"""`ranktune` command line. Bad input exits 2 with a one-line-per-problem message, never a traceback."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from ranktune.platform.cli import export, report, serve, sweep, train
from ranktune.platform.cli.common import EXIT_BAD_INPUT, TERMINAL_FALLBACK_WIDTH, terminal_width


class TopLevelParser(argparse.ArgumentParser):
    """`ranktune --help` ends with the registered optimization methods (importing them costs the torch
    import, so only the top-level help does)."""

    def format_help(self) -> str:
        from ranktune.trainables.optim import OPTIMIZERS

        width = min(terminal_width(), TERMINAL_FALLBACK_WIDTH)
        name_width = max(map(len, OPTIMIZERS)) + 2
        lines = ["methods (optim.name; a sweep's branches choose among them):"]
        lines += [f"  {name:<{name_width}}{entry.description}" for name, entry in sorted(OPTIMIZERS.items())]
        import textwrap

        methods = "\n".join(
            textwrap.fill(line, width, subsequent_indent=" " * (name_width + 2), break_long_words=False)
            for line in lines
        )
        return super().format_help() + "\n" + methods + "\n"


def build_parser() -> argparse.ArgumentParser:
    from ranktune import __version__

    parser = TopLevelParser(
        prog="ranktune",
        description="Find the best low-rank pretraining recipe (GaLore, Fira, APOLLO, ReLoRA, LoRA against full-rank "
        "AdamW) for LLaMA: sweep on a small proxy, replicate the winner, export it for a 7b run.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"ranktune {__version__}")
    # The commands' own parsers are plain: only the top-level help lists methods (and imports torch).
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser)
    train.add_parsers(sub)
    sweep.add_parsers(sub)
    report.add_parsers(sub)
    serve.add_parsers(sub)
    export.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # first: --help and usage errors need no torch
    from ranktune.trainables.checkpoint import CheckpointError
    from ranktune.trainables.config import ConfigError
    from ranktune.trainables.trainer import TrainingDiverged

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # MLflow announces every schema step of a new sqlite store at INFO
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    try:
        return args.func(args)
    except ConfigError as exc:  # one problem: one line; several: one line each under a heading
        print(f"error: {exc.problems[0]}" if len(exc.problems) == 1 else f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TrainingDiverged as exc:
        print(f"error: {exc} (lower optim.lr, raise schedule.warmup_steps or enable train.grad_clip)", file=sys.stderr)
        return 1
    except MemoryError:  # host RAM; CUDA's OutOfMemoryError is handled below
        print(
            "error: out of memory (host RAM) -> lower train.micro_batch_size (the batch is kept by gradient "
            "accumulation), data.seq_len or the model; `ranktune estimate` shows the need",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"error: no space left on the device{where} -> free some space and rerun (`--resume` continues a "
            "training run or a sweep from where it stopped)",
            file=sys.stderr,
        )
        return 1
    except RuntimeError as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA); torch not imported here
            raise
        print(
            f"error: out of GPU memory ({str(exc).splitlines()[0][:160]}) -> lower train.micro_batch_size (the "
            "batch is kept by gradient accumulation) or the model; `ranktune estimate` shows the need",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
