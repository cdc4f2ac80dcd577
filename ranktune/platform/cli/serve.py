"""`ranktune ui | dashboard | mlflow-server`: the servers that show a sweep (127.0.0.1 by default)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ranktune.platform.cli.common import SWEEP_DIR_HELP, tcp_port
from ranktune.platform.serve.processes import warn_if_exposed


def mlflow_ui_command(tracking_uri: str, artifacts: Path, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow ui` sized for one person reading one sweep: one web worker (MLflow's default is 4) and no
    job-execution consumers (MLflow 3's Huey workers run GenAI jobs; together ~3.5 GiB of RAM idle)."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts.is_dir():
        cmd += ["--default-artifact-root", artifacts.as_uri()]
    return cmd, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}


def refresh_sweep_views(spec, state: dict) -> bool:
    """What `ranktune ui` shows, brought up to date: roles on runs tracked before they existed, the
    trials view, the parent's note naming the sweep's directory as it is now (after a copy or move).
    Returns whether the view was stored."""
    from ranktune.platform.report.replicates import load_confirm
    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.sweep.driver import parent_note, store_runs_view
    from ranktune.platform.tracking.client import NOTE_TAG, mlflow_client, tag_roles

    client = mlflow_client(state.tracking_uri)
    tag_roles(client, state)
    view = store_runs_view(client, spec, state.experiment_id)
    trials = collect_trials(spec, state)
    if trials:
        note = parent_note(spec, state, trials, load_confirm(spec.storage_dir))
        client.set_tag(state.parent_run_id, NOTE_TAG, note)
    return view


def cmd_ui(args: argparse.Namespace) -> int:
    from ranktune.platform.serve.processes import serve_until_stopped
    from ranktune.platform.store.state import load_state
    from ranktune.platform.tracking.client import runs_page_url

    spec, state = load_state(args.sweep_dir)
    warn_if_exposed("MLflow UI", args.host, args.port, "can read and change every run (MLflow has no login)")
    cmd, env = mlflow_ui_command(state.tracking_uri, spec.storage_dir / "mlartifacts", args.host, args.port)
    os.environ.update(env)  # inherited by the server
    base = f"http://{url_host(args.host)}:{args.port}"
    view = refresh_sweep_views(spec, state)  # also for sweeps started before the view existed
    return serve_until_stopped(
        cmd,
        f"{base}/health",
        runs_page_url(base, state.experiment_id, view),
        f"MLflow UI for {spec.name}",
        listen=(args.host, args.port),
    )


def url_host(host: str) -> str:
    """The host part of a URL reaching a server that listens on `host`: loopback for the wildcard
    addresses, an IPv6 address in brackets (`http://::1:8080` is no URL)."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def cmd_dashboard(args: argparse.Namespace) -> int:
    from ranktune.platform.serve.processes import serve_until_stopped
    from ranktune.platform.store.state import load_state

    spec, _ = load_state(args.sweep_dir)
    warn_if_exposed("optuna-dashboard", args.host, args.port, "can read and change the study (it has no login)")
    storage = f"sqlite:///{spec.storage_dir / 'optuna.db'}"
    # optuna-dashboard hands `host:port` to gunicorn, which reads an IPv6 address only in brackets ("::1"
    # failed: "'' is not a valid port number"), and its other server (wsgiref) is IPv4 only.
    host, server = (f"[{args.host}]", ["--server", "gunicorn"]) if ":" in args.host else (args.host, [])
    cmd = [
        sys.executable,
        "-c",
        "import sys; from optuna_dashboard._cli import main; sys.exit(main())",
        storage,
        "--host",
        host,
        "--port",
        str(args.port),
        *server,
        "--quiet",
    ]
    base = f"http://{url_host(args.host)}:{args.port}"
    return serve_until_stopped(
        cmd,
        f"{base}/api/studies",
        f"{base}/dashboard",
        f"optuna-dashboard for {spec.name}",
        listen=(args.host, args.port),
    )


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    from ranktune.platform.serve.processes import mlflow_server_command, serve_with_pidfile

    cmd = mlflow_server_command(
        args.backend_store_uri, args.artifacts_destination, args.host, args.port, args.basic_auth
    )
    print(f"MLflow tracking server: http://{args.host}:{args.port}  (Ctrl-C to stop)", file=sys.stderr)
    return serve_with_pidfile(cmd, args.pidfile)


def add_parsers(sub) -> None:
    """The parsers of this group's commands, on the top-level parser's subparsers."""
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
