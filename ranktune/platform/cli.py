"""`ranktune` command line. Bad input exits 2 with a one-line-per-problem message, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (defaults apply to anything it leaves out)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-3 --set train.steps=50 (repeatable)",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from ranktune.trainables.callbacks import JsonlMetrics, RichProgress
    from ranktune.trainables.checkpoint import latest_checkpoint
    from ranktune.trainables.config import load_config
    from ranktune.trainables.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    out = Path(cfg.output.dir)
    if latest_checkpoint(out) is not None and not args.resume:
        if not args.overwrite:
            print(
                f"error: output.dir {str(out)!r} already holds checkpoints; pass --resume to continue that run "
                "or --overwrite to start again",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(_dump_yaml(cfg.model_dump(mode="json")))

    metrics_file = JsonlMetrics(out / "metrics.jsonl")
    progress = RichProgress() if not args.quiet else None
    trainer = Trainer(cfg, callbacks=[metrics_file, *([progress] if progress else [])], progress=not args.quiet)
    if args.resume and trainer.resume_from_latest():
        metrics_file.truncate_after(trainer.step)
        print(f"resuming {out} at step {trainer.step}", file=sys.stderr)
    elif out.joinpath("metrics.jsonl").exists() and trainer.step == 0:
        out.joinpath("metrics.jsonl").unlink()

    def request_stop(signum, frame):  # finish the step, checkpoint, exit; a second Ctrl-C kills
        trainer.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nstopping after this step and writing a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, request_stop)
    try:
        summary = trainer.fit()
    finally:
        if progress:
            progress.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    line = (
        f"step {summary['steps']}  tokens {summary['tokens']}  final eval loss {summary['final_eval_loss']:.4f}"
        f" (ppl {summary['final_eval_ppl']:.2f})"
    )
    if "initial_eval_loss" in summary:
        line += f"  initial eval loss {summary['initial_eval_loss']:.4f}"
    print(line)
    print(f"metrics: {out / 'metrics.jsonl'}  checkpoints: {out / 'checkpoints'}")
    return 0 if summary["completed"] else 130


def cmd_config(args: argparse.Namespace) -> int:
    from ranktune.trainables.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(_dump_yaml(cfg.model_dump(mode="json")), end="")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ranktune.trainables.model import MODEL_PRESETS, build_model, count_parameters

    table = Table(title="model presets (vocab 32000)")
    for col in ("name", "hidden", "intermediate", "heads", "layers", "max_seq_len", "parameters"):
        table.add_column(col, justify="right")
    for name, c in MODEL_PRESETS.items():
        n = count_parameters(build_model(c, device="meta"))
        table.add_row(
            name,
            *map(str, (c.hidden_size, c.intermediate_size, c.num_heads, c.num_layers, c.max_seq_len)),
            f"{n / 1e6:,.1f}M",
        )
    Console().print(table)
    return 0


def _dump_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ranktune",
        description="Find the best low-rank (GaLore / ReLoRA) recipe for LLaMA pretraining.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="pretrain one model from a config (progress, metrics.jsonl, checkpoints)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output.dir")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in output.dir first")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("config", help="validate a config and print it fully resolved")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("models", help="list model presets with parameter counts")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ranktune.trainables.config import ConfigError
    from ranktune.trainables.trainer import TrainingDiverged

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as exc:
        print(f"error: {exc} (lower optim.lr, raise schedule.warmup_steps or enable train.grad_clip)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
