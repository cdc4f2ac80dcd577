"""`ranktune train | config | schedule | models`: one model from a config."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ranktune.platform.cli.common import add_config_args, dump_yaml


def cmd_train(args: argparse.Namespace) -> int:
    from ranktune.platform.store.locks import own_directory
    from ranktune.trainables.config import load_config
    from ranktune.trainables.data import check_data_inputs
    from ranktune.trainables.run import check_output_dir

    cfg = load_config(args.config, args.overrides)
    check_output_dir(cfg.output.dir)  # before own_directory writes its lock there
    check_data_inputs(cfg.data)
    with own_directory(Path(cfg.output.dir), "output.dir", "training run") as out:
        return _train(args, cfg, out)


def _train(args: argparse.Namespace, cfg, out: Path) -> int:
    from ranktune.platform.store.locks import LOCK_FILE, OWNER_FILE
    from ranktune.trainables.callbacks import RichProgress
    from ranktune.trainables.run import finish_run, start_run

    progress = RichProgress() if not args.quiet else None
    trainer = start_run(
        cfg,
        resume=args.resume,
        overwrite=args.overwrite,
        callbacks=[progress] if progress else [],
        progress=not args.quiet,
        notify=lambda line: print(line, file=sys.stderr),
        keep_on_overwrite=(LOCK_FILE, OWNER_FILE),
    )

    def request_stop(signum, frame):  # finish the step, checkpoint, exit; a second Ctrl-C kills
        trainer.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nstopping after this step and writing a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, request_stop)
    try:
        summary = finish_run(trainer)
    finally:
        if progress:
            progress.close()
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
    from ranktune.trainables.config import config_keys, load_config

    if args.keys:
        for key, type_name, default, meaning in config_keys():
            print(f"{key}  ({type_name}, default {json.dumps(default)})\n    {meaning}")
        return 0
    cfg = load_config(args.config, args.overrides)
    print(dump_yaml(cfg.model_dump(mode="json")), end="")
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


def cmd_schedule(args: argparse.Namespace) -> int:
    from ranktune.trainables.config import ConfigError, load_config
    from ranktune.trainables.optim.relora_schedule import plot_schedule, restart_marks, restart_steps, schedule_points

    cfg = load_config(args.config, args.overrides)
    points = schedule_points(cfg)
    if args.all:
        print("step,lr")
        print("\n".join(f"{step},{lr:.6g}" for step, lr in points))
    else:
        # The points a reader checks: start, end of warmup, around every restart, the end.
        restarts = restart_steps(cfg)
        marks = {0, cfg.schedule.warmup_steps, len(points) - 1} | restart_marks(cfg)
        print(f"{cfg.optim.name}: {len(points)} steps, peak lr {cfg.optim.lr:g}, restarts after {restarts or 'none'}")
        for step in sorted(m for m in marks if 0 <= m < len(points)):
            print(f"  step {step:>7}  lr {points[step][1]:.6g}{'  <- restart' if step in restarts else ''}")
    if args.plot:
        path = Path(args.plot).expanduser()
        if path.is_dir():
            raise ConfigError([f"--plot: {args.plot!r} is a directory -> a PNG file to write"])
        path = path if path.suffix else path.with_suffix(".png")  # what matplotlib would write; say so
        try:
            print(f"plot: {plot_schedule(cfg, str(path))}")
        except OSError as exc:
            raise ConfigError([f"--plot: {str(path)!r} cannot be written ({exc.strerror or exc})"]) from None
        except ValueError as exc:  # matplotlib: "Format 'x' is not supported (supported formats: ...)"
            raise ConfigError([f"--plot: {str(path)!r} -> a .png (or .pdf/.svg) file ({exc})"]) from None
    return 0


def add_parsers(sub) -> None:
    """The parsers of this group's commands, on the top-level parser's subparsers."""
    p = sub.add_parser("train", help="pretrain one model from a config (progress, metrics.jsonl, checkpoints)")
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output.dir")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in output.dir first")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("config", help="validate a config and print it fully resolved")
    add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every config key with its type, default and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("schedule", help="print (or plot) the LR schedule of a config, e.g. ReLoRA's sawtooth")
    add_config_args(p)
    p.add_argument("--plot", metavar="PNG", help="also write a plot of the schedule")
    p.add_argument("--all", action="store_true", help="print every step as CSV")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("models", help="list model presets with parameter counts")
    p.set_defaults(func=cmd_models)
