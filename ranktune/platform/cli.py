"""`ranktune` command line. Bad input exits 2 with a one-line-per-problem message, never a traceback."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import shlex
import signal
import sys
from pathlib import Path

from ranktune.platform.budget import DEFAULT_BUDGET_GIB
from ranktune.platform.serve import warn_if_exposed

EXIT_BAD_INPUT = 2
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
SWEEP_DIR_HELP = ("a sweep's directory: its spec's `storage` (e.g. sweeps/compare-tiny), holding sweep.json, "
                  "optuna.db and the MLflow store")  # fmt: skip


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
        out += textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False,
                             break_on_hyphens=False) or [""]  # fmt: skip
    return "\n".join(out)


def say(*lines: str) -> None:
    print(wrapped(lines))


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

        methods = "\n".join(textwrap.fill(line, width, subsequent_indent=" " * (name_width + 2),
                                           break_long_words=False) for line in lines)  # fmt: skip
        return super().format_help() + "\n" + methods + "\n"


def _add_set_arg(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """The repeatable `--set KEY=VALUE` override every config-reading command takes."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override {what}, e.g. --set {example} (repeatable)")  # fmt: skip


def _add_card_arg(p: argparse.ArgumentParser) -> None:
    from ranktune.platform.cards import CARDS, DEFAULT_CARD

    p.add_argument("--card", default=DEFAULT_CARD, choices=sorted(CARDS),
                   help="GPU the duration is estimated for (default %(default)s; see docs/export.md)")  # fmt: skip


def _positive_tokens(text: str) -> int:
    """`--tokens 2e10` or `--tokens 20000000000`: a whole number of tokens."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} -> a number of tokens, e.g. 2e10") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} -> a positive whole number of tokens")
    return int(value)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (defaults apply to anything it leaves out)")
    _add_set_arg(p, "a config field", "optim.lr=1e-3 --set train.steps=50")


def cmd_train(args: argparse.Namespace) -> int:
    from ranktune.platform.locks import own_directory
    from ranktune.trainables.config import load_config
    from ranktune.trainables.data import check_data_inputs
    from ranktune.trainables.run import check_output_dir

    cfg = load_config(args.config, args.overrides)
    check_output_dir(cfg.output.dir)  # before own_directory writes its lock there
    check_data_inputs(cfg.data)
    with own_directory(Path(cfg.output.dir), "output.dir", "training run") as out:
        return _train(args, cfg, out)


def _train(args: argparse.Namespace, cfg, out: Path) -> int:
    from ranktune.platform.locks import LOCK_FILE, OWNER_FILE
    from ranktune.trainables.callbacks import RichProgress
    from ranktune.trainables.run import finish_run, start_run

    progress = RichProgress() if not args.quiet else None
    trainer = start_run(cfg, resume=args.resume, overwrite=args.overwrite, callbacks=[progress] if progress else [],
                        progress=not args.quiet, notify=lambda line: print(line, file=sys.stderr),
                        keep_on_overwrite=(LOCK_FILE, OWNER_FILE))  # fmt: skip

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


def cmd_sweep(args: argparse.Namespace) -> int:
    from ranktune.platform.report_table import flat_rows, render_table
    from ranktune.platform.sweep import resume_sweep, run_sweep
    from ranktune.platform.sweep_state import load_state
    from ranktune.platform.trials import collect_trials
    from ranktune.search_spaces.spec import load_spec

    if args.quiet:  # Tune logs each failed trial's traceback; the table gives its reason, MLflow's error.txt the rest
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    from ranktune.platform.ladder import is_ladder_dir

    if args.resume and is_ladder_dir(args.resume):
        return _ladder(args, None)
    if args.resume:
        summary = resume_sweep(args.resume, address=args.address, progress=not args.quiet,
                               retry_failed=not args.no_retry_failed)  # fmt: skip
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
        print(f"interrupted: `ranktune sweep --resume {shlex.quote(str(summary['storage']))}` continues the sweep "
              "(trials still to run or interrupted resume from their last checkpoint)", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    if summary.get("confirm_failures"):  # the replicates asked for did not all run: no verdict, not a result
        print(f"error: {summary['confirm_failures']}", file=sys.stderr)
        return 1
    return sweep_exit_code(rows)


def _ladder(args: argparse.Namespace, spec) -> int:
    """`ranktune sweep` of a spec with `ladder:` (platform/ladder.py), or --resume of a ladder directory (spec None)."""
    from ranktune.platform.ladder import LadderInterrupted, resume_ladder, run_ladder
    from ranktune.platform.ladder_report import ladder_lines

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
        reason = r["failure_reason"] or ("no final objective (its last evaluation was not a number)"
                                         if r["status"] in ("finished", "stopped_early") else "(no reason recorded)")
        print(f"  trial {r['trial_id']} {r['status']}: {reason}", file=sys.stderr)
    return 1


def _print_outcome(spec, summary: dict) -> None:
    from ranktune.platform.report_table import winner_lines

    storage = summary["storage"]
    _print_pareto(storage)
    _print_confirm(summary.get("confirm"))
    quoted = shlex.quote(str(storage))
    say(f"plots: {storage}/plots/   HTML: ranktune report {quoted} --html   MLflow UI: ranktune ui {quoted}")
    say(*winner_lines(spec, summary["best"], storage, summary.get("confirm")), *summary.get("proxy_checks", []))


def _print_pareto(storage: str | Path) -> None:
    from ranktune.platform.pareto import format_front
    from ranktune.platform.sweep_state import load_state

    spec, _ = load_state(storage)
    path = Path(storage) / "pareto.json"
    if spec.objectives and path.is_file():
        say(*format_front(spec, json.loads(path.read_text())))


def _print_confirm(confirm: dict | None) -> None:
    from ranktune.platform.confirm import format_confirm

    if confirm:
        say(*format_confirm(confirm))


def cmd_report(args: argparse.Namespace) -> int:
    from ranktune.platform.confirm import load_confirm
    from ranktune.platform.locks import running_owner
    from ranktune.platform.ranking import pick_winner
    from ranktune.platform.report import write_plots
    from ranktune.platform.report_table import flat_rows, render_table, sort_rows, to_csv, to_json, winner_lines
    from ranktune.platform.sweep_state import load_state
    from ranktune.platform.trials import read_trials

    if (Path(args.sweep_dir) / "ladder.json").is_file():
        from ranktune.platform.ladder_report import ladder_lines

        print("\n".join(ladder_lines(json.loads((Path(args.sweep_dir) / "ladder.json").read_text()))))
        print(f"HTML: {Path(args.sweep_dir) / 'ladder.html'}; each rung's sweep: ranktune report "
              f"{shlex.quote(str(Path(args.sweep_dir) / 'rungs'))}/<rung>")  # fmt: skip
        return 0
    spec, state = load_state(args.sweep_dir)
    rows, offline = read_trials(spec, state)
    if offline:
        print(offline, file=sys.stderr)
    flat = sort_rows(flat_rows(spec, rows), args.sort, spec.objective.mode)
    if args.csv or args.json:  # machine-readable: the table alone on stdout
        print(to_csv(flat) if args.csv else to_json(flat), end="" if args.csv else "\n")
        return 0
    render_table(spec, flat)
    storage = spec.storage_dir
    if spec.objectives:
        from ranktune.platform.pareto import format_front, pareto_front

        say(*format_front(spec, pareto_front(spec, rows)))
    if args.max_memory_gib is not None:
        _print_best_within(spec, rows, args.max_memory_gib)
    confirm = load_confirm(storage)
    _print_confirm(confirm)
    plots_dir = storage / "plots"
    if offline:  # plots and the HTML report draw the curves MLflow holds
        print(f"plots: {plots_dir}/ as last drawn" if plots_dir.is_dir() else "plots: none (they need the server)")
    elif not args.no_plots and (args.plots or args.html or not any(plots_dir.glob("*.png"))):
        plots = write_plots(spec, state, rows, plots_dir)  # drawn once; --plots redraws
        say("plots: " + ", ".join(str(p) for p in plots))
    elif plots_dir.is_dir():
        say(f"plots: {plots_dir}/ (--plots redraws them)")
    if args.html and not offline:
        from ranktune.platform.report_html import write_html_report

        say(f"HTML report: {write_html_report(spec, state, rows)}")
    winner = pick_winner(rows, spec.objective.mode, confirm)
    from ranktune.platform.proxy_checks import proxy_check_lines

    say(*winner_lines(spec, winner, str(storage), confirm, running=running_owner(storage)),
        *proxy_check_lines(spec, rows))
    return 0


def _print_best_within(spec, rows: list[dict], max_gib: float) -> None:
    """The best finished trial whose own memory estimate (proxy model, trial's device) fits max_gib."""
    from ranktune.platform.memory import estimate_memory, gib, verdict
    from ranktune.platform.pareto import best_fitting

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
        say(f"best under {max_gib:g} GiB: trial {best['trial_id']} objective {best['objective']:.4f} with "
            f"{best['params']}")  # fmt: skip


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def mlflow_ui_command(state: dict, artifacts: Path, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow ui` sized for one person reading one sweep: one web worker (MLflow's default is 4) and no
    job-execution consumers (MLflow 3's Huey workers run GenAI jobs; together ~3.5 GiB of RAM idle)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", state["tracking_uri"],
           "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip
    if artifacts.is_dir():
        cmd += ["--default-artifact-root", artifacts.as_uri()]
    return cmd, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}


def refresh_sweep_views(spec, state: dict) -> bool:
    """What `ranktune ui` shows, brought up to date: roles on runs tracked before they existed, the
    trials view, the parent's note naming the sweep's directory as it is now (after a copy or move).
    Returns whether the view was stored."""
    from ranktune.platform.confirm import load_confirm
    from ranktune.platform.sweep import parent_note, store_runs_view
    from ranktune.platform.tracking import NOTE_TAG, mlflow_client, tag_roles
    from ranktune.platform.trials import collect_trials

    client = mlflow_client(state["tracking_uri"])
    tag_roles(client, state)
    view = store_runs_view(client, spec, state["experiment_id"])
    trials = collect_trials(spec, state)
    if trials:
        note = parent_note(spec, state, trials, load_confirm(spec.storage_dir))
        client.set_tag(state["parent_run_id"], NOTE_TAG, note)
    return view


def cmd_ui(args: argparse.Namespace) -> int:
    from ranktune.platform.serve import serve_until_stopped
    from ranktune.platform.sweep_state import load_state
    from ranktune.platform.tracking import runs_page_url

    spec, state = load_state(args.sweep_dir)
    warn_if_exposed("MLflow UI", args.host, args.port, "can read and change every run (MLflow has no login)")
    cmd, env = mlflow_ui_command(state, spec.storage_dir / "mlartifacts", args.host, args.port)
    os.environ.update(env)  # inherited by the server
    base = f"http://{url_host(args.host)}:{args.port}"
    view = refresh_sweep_views(spec, state)  # also for sweeps started before the view existed
    return serve_until_stopped(cmd, f"{base}/health", runs_page_url(base, state["experiment_id"], view),
                               f"MLflow UI for {spec.name}", listen=(args.host, args.port))  # fmt: skip


def url_host(host: str) -> str:
    """The host part of a URL reaching a server that listens on `host`: loopback for the wildcard
    addresses, an IPv6 address in brackets (`http://::1:8080` is no URL)."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def cmd_dashboard(args: argparse.Namespace) -> int:
    from ranktune.platform.serve import serve_until_stopped
    from ranktune.platform.sweep_state import load_state

    spec, _ = load_state(args.sweep_dir)
    warn_if_exposed("optuna-dashboard", args.host, args.port, "can read and change the study (it has no login)")
    storage = f"sqlite:///{spec.storage_dir / 'optuna.db'}"
    # optuna-dashboard hands `host:port` to gunicorn, which reads an IPv6 address only in brackets ("::1"
    # failed: "'' is not a valid port number"), and its other server (wsgiref) is IPv4 only.
    host, server = (f"[{args.host}]", ["--server", "gunicorn"]) if ":" in args.host else (args.host, [])
    cmd = [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; sys.exit(main())", storage,
           "--host", host, "--port", str(args.port), *server, "--quiet"]  # fmt: skip
    base = f"http://{url_host(args.host)}:{args.port}"
    return serve_until_stopped(cmd, f"{base}/api/studies", f"{base}/dashboard", f"optuna-dashboard for {spec.name}",
                               listen=(args.host, args.port))  # fmt: skip


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    from ranktune.platform.serve import mlflow_server_command, serve_with_pidfile

    cmd = mlflow_server_command(args.backend_store_uri, args.artifacts_destination, args.host, args.port,
                                args.basic_auth)  # fmt: skip
    print(f"MLflow tracking server: http://{args.host}:{args.port}  (Ctrl-C to stop)", file=sys.stderr)
    return serve_with_pidfile(cmd, args.pidfile)


def cmd_schedule(args: argparse.Namespace) -> int:
    from ranktune.trainables.config import ConfigError, load_config
    from ranktune.trainables.optim.relora_schedule import plot_schedule, restart_steps, schedule_points

    cfg = load_config(args.config, args.overrides)
    points = schedule_points(cfg)
    if args.all:
        print("step,lr")
        print("\n".join(f"{step},{lr:.6g}" for step, lr in points))
    else:
        # The points a reader checks: start, end of warmup, around every restart, the end.
        restarts = restart_steps(cfg)
        warm = cfg.relora.restart_warmup_steps
        marks = {0, cfg.schedule.warmup_steps, len(points) - 1}
        for r in restarts:
            marks |= {r - 1, r, r + 1, r + warm}
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
    from ranktune.platform.export import export_best, load_rules

    card(args.card)
    run_budget = RunBudget(args.tokens, args.days) if args.tokens is not None or args.days is not None else None
    result = export_best(args.sweep_dir, args.target, budget_gib=args.budget_gib, out=args.out,
                         rules=load_rules(args.rules) if args.rules else None, overrides=args.overrides,
                         trial_id=args.trial, max_memory_gib=args.max_memory_gib, fallback=args.fallback,
                         notify=lambda line: print(line, file=sys.stderr), run_budget=run_budget,
                         card_key=args.card)  # fmt: skip
    if result.substitute:
        say(result.substitute)
    say(*result.notices, f"exported trial {result.trial_id} -> {result.config_path}", result.verdict.line(),
        f"Micro-batch: {result.micro_batch.line()}", *([f"Sized: {result.sizing}"] if result.sizing else []),
        *result.duration.lines(), f"launch: {result.command}")
    return 0


def _dump_yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def build_parser() -> argparse.ArgumentParser:
    from ranktune import __version__

    parser = TopLevelParser(
        prog="ranktune",
        description="Find the best low-rank pretraining recipe (GaLore, Fira, APOLLO, ReLoRA, LoRA against full-rank "
                    "AdamW) for LLaMA: sweep on a small proxy, replicate the winner, export it for a 7b run.",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"ranktune {__version__}")
    # The commands' own parsers are plain: only the top-level help lists methods (and imports torch).
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser)

    p = sub.add_parser("train", help="pretrain one model from a config (progress, metrics.jsonl, checkpoints)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output.dir")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in output.dir first")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("config", help="validate a config and print it fully resolved")
    _add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every config key with its type, default and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("schedule", help="print (or plot) the LR schedule of a config, e.g. ReLoRA's sawtooth")
    _add_config_args(p)
    p.add_argument("--plot", metavar="PNG", help="also write a plot of the schedule")
    p.add_argument("--all", action="store_true", help="print every step as CSV")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("models", help="list model presets with parameter counts")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("sweep", help="run a hyperparameter sweep (Ray Tune + Optuna + ASHA, tracked in MLflow)")
    p.add_argument("spec", nargs="?", help="sweep spec YAML (see docs/sweeps.md)")
    _add_set_arg(p, "a spec field", "budget.num_trials=4")
    p.add_argument("--resume", metavar="SWEEP_DIR",
                   help=f"finish a sweep whose driver stopped or was killed; SWEEP_DIR: {SWEEP_DIR_HELP}")  # fmt: skip
    p.add_argument("--no-retry-failed", action="store_true",
                   help="with --resume: leave failed trials and replicates failed (default: run them again, each "
                        "from its last checkpoint)")  # fmt: skip
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--quiet", action="store_true", help="no live progress table")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="ranked table of a sweep's trials, and its plots")
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print the table as CSV (nothing else)")
    out.add_argument("--json", action="store_true", help="print the table as JSON (nothing else)")
    p.add_argument("--sort", default="objective", metavar="KEY",
                   help="order of the rows: objective (default), method, status, optimizer_state, peak, "
                        "tokens_per_s, cost")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="do not write plots")
    p.add_argument("--plots", action="store_true", help="redraw the plots (default: only when there are none)")
    p.add_argument("--html", action="store_true", help="write SWEEP_DIR/report.html (interactive, self-contained)")
    p.add_argument("--max-memory-gib", type=positive_gib, default=None,
                   help="also name the best finished trial whose memory estimate fits this many GiB")  # fmt: skip
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="open the MLflow UI on a sweep's tracking store (127.0.0.1 by default)")
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback is exposed")
    p.add_argument("--port", type=tcp_port, default=5000, help="port to listen on (default 5000)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("dashboard", help="optuna-dashboard on a sweep's Optuna study (127.0.0.1 by default)")
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback is exposed")
    p.add_argument("--port", type=tcp_port, default=8080, help="port to listen on (default 8080)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("mlflow-server", help="a shared MLflow tracking server, e.g. on the cluster head (127.0.0.1)")
    p.add_argument("--backend-store-uri", required=True, help="where runs go: sqlite:///PATH or postgresql://...")
    p.add_argument("--artifacts-destination", required=True, help="artifact store, e.g. a path on shared storage")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback is exposed")
    p.add_argument("--port", type=tcp_port, default=5000)
    p.add_argument("--basic-auth", action="store_true", help="require a login (MLflow's basic-auth app)")
    p.add_argument("--pidfile", help="record the server here; a later start with it replaces that server")
    p.set_defaults(func=cmd_mlflow_server)

    p = sub.add_parser("estimate", help="estimate a config's training memory and check it against a GPU budget")
    _add_config_args(p)
    p.add_argument(
        "--budget-gib", type=positive_gib, default=DEFAULT_BUDGET_GIB,
        help="GPU memory budget in GiB (default %(default)g)",
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda adds the fixed overhead")
    p.add_argument("--overhead-gib", type=float, default=None, help="fixed overhead (default 1 GiB on cuda)")
    _add_card_arg(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("export", help="turn a sweep's best trial into a single-GPU config for a target model")
    p.add_argument("sweep_dir", help=SWEEP_DIR_HELP)
    p.add_argument("--target", default="7b", help="target model preset (default 7b)")
    p.add_argument(
        "--budget-gib", type=positive_gib, default=DEFAULT_BUDGET_GIB,
        help="GPU memory budget in GiB (default %(default)g)",
    )
    p.add_argument("--out", help="config file to write (default SWEEP_DIR/export_<target>.yaml)")
    p.add_argument("--rules", help="scaling rules: published (default: the methods' published target recipes), "
                                   "proxy (map the proxy's values), or a YAML file (see docs/export.md)")
    p.add_argument("--trial", help="export this finished trial instead of the sweep's answer (a baseline such as "
                                   "LoRA from a random init is exported only so)")
    p.add_argument("--fallback", choices=["best-fitting"], default=None,
                   help="when the sweep's answer cannot be exported: export the best trial that can, saying "
                        "what is lost (default: refuse, exit 2)")
    p.add_argument("--max-memory-gib", type=positive_gib, default=None,
                   help="export the best finished trial whose target config's estimate fits this many GiB "
                        "(the budget for the export too)")  # fmt: skip
    _add_set_arg(p, "a field of the exported config", "train.steps=1000")
    _add_card_arg(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tokens", type=_positive_tokens, default=None, metavar="N",
                      help="size the run to N training tokens (e.g. 2e10): train.steps, warmup, intervals and "
                           "data.max_tokens follow")  # fmt: skip
    size.add_argument("--days", type=float, default=None, metavar="D",
                      help="size the run to D days on --card at the duration estimate's throughput")
    p.set_defaults(func=cmd_export)
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
        print("error: out of memory (host RAM) -> lower train.micro_batch_size (the batch is kept by gradient "
              "accumulation), data.seq_len or the model; `ranktune estimate` shows the need",
              file=sys.stderr)  # fmt: skip
        return 1
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: no space left on the device{where} -> free some space and rerun (`--resume` continues a "
              "training run or a sweep from where it stopped)", file=sys.stderr)  # fmt: skip
        return 1
    except RuntimeError as exc:
        if type(exc).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA); torch not imported here
            raise
        print(f"error: out of GPU memory ({str(exc).splitlines()[0][:160]}) -> lower train.micro_batch_size (the "
              "batch is kept by gradient accumulation) or the model; `ranktune estimate` shows the need",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
