"""Servers ranktune starts (MLflow UI and tracking server, optuna-dashboard) and the process sessions
that let them, and a local cluster's Ray nodes, be stopped with every process they forked."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")
POLL_S = 0.5


def warn_if_exposed(what: str, host: str, port: int, consequence: str = "can use it (it has no login)") -> None:
    """The one check of a listening address: anything but loopback is reachable by whoever reaches the host."""
    if host not in LOOPBACK:
        print(
            f"warning: the {what} will listen on {host}:{port}; anyone who can reach that address {consequence}. "
            "Keep it on 127.0.0.1 and reach it through an SSH tunnel instead (docs/cluster.md)",
            file=sys.stderr,
        )


def session_pids(session_id: int) -> list[int]:
    """Every live process in the given session (a server's or a Ray node's processes all share its session id)."""
    pids = []
    for pid, state in _processes():
        if state == "Z":  # exited, waiting to be reaped: nothing left to stop
            continue
        try:
            if os.getsid(pid) == session_id:
                pids.append(pid)
        except OSError:  # exited meanwhile, or not ours to inspect
            continue
    return pids


def _processes() -> list[tuple[int, str]]:
    """(pid, state letter) of every process on the machine."""
    if not Path("/proc").is_dir():  # macOS
        out = subprocess.run(["ps", "-A", "-o", "pid=,stat="], capture_output=True, text=True).stdout
        return [(int(pid), stat[:1]) for pid, stat in (line.split() for line in out.splitlines())]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            found.append((int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()[0]))
        except (OSError, IndexError):
            continue
    return found


def stop_session(session_id: int, first: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Signal every process of the session with `first`, SIGKILL what is left after `grace_s`."""
    for sig, wait_s in ((first, grace_s), (signal.SIGKILL, 10.0)):  # even SIGKILL takes a moment
        for pid in session_pids(session_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + wait_s
        while session_pids(session_id) and time.time() < deadline:
            time.sleep(0.2)
    if left := session_pids(session_id):
        raise RuntimeError(f"processes {left} of session {session_id} survived SIGKILL")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except (urllib.error.URLError, OSError):
        return False


def wait_until_answers(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    """True once `url` answers; False if the server exited first or `timeout_s` passed. A loaded
    machine can take a minute to start `mlflow ui`, so the URL is printed only when it is usable."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if answers(url):
            return True
        time.sleep(POLL_S)
    return False


def run_process_group(cmd: list[str], on_start: Callable[[subprocess.Popen], None] | None = None,
                      grace_s: float = 10.0) -> int:  # fmt: skip
    """Run `cmd` in its own process group until it exits; SIGINT/SIGTERM here stop the whole group
    (`mlflow ui` forks gunicorn/uvicorn workers that would otherwise keep listening). `on_start` runs
    once the process exists, with the signal handlers already in place."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if on_start is not None:
            on_start(proc)
        while True:
            try:
                rc = proc.wait(timeout=grace_s if stopping else None)
                break
            except subprocess.TimeoutExpired:  # asked to stop and still running: no more waiting
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
            os.killpg(proc.pid, signal.SIGKILL)
    return 0 if stopping else rc


def serve_until_stopped(cmd: list[str], probe_url: str, show_url: str, what: str, timeout_s: float = 300) -> int:
    """Run a server (in its own process group, see run_process_group) until it exits or is stopped,
    printing `show_url` once `probe_url` answers."""
    print(f"starting {what} ...", file=sys.stderr)

    def announce(process: subprocess.Popen) -> None:
        if wait_until_answers(probe_url, process, timeout_s):
            print(f"{what}: {show_url}  (Ctrl-C to stop)", flush=True)
        elif process.poll() is None:
            print(f"warning: {what} did not answer at {probe_url} within {timeout_s:g} s; still waiting",
                  file=sys.stderr)  # fmt: skip

    return run_process_group(cmd, on_start=announce)


def mlflow_server_command(backend_store_uri: str, artifacts_destination: str, host: str = "127.0.0.1",
                          port: int = 5000, basic_auth: bool = False) -> list[str]:  # fmt: skip
    """`mlflow server` for a team's sweeps: runs in `backend_store_uri` (sqlite or PostgreSQL), artifacts
    proxied by the server into `artifacts_destination` (shared storage), so clients need no access to it."""
    from ranktune.trainables.errors import ConfigError  # deferred: importing ranktune.trainables imports torch

    if basic_auth and importlib.util.find_spec("flask_wtf") is None:
        raise ConfigError(["--basic-auth: MLflow's basic-auth app needs Flask-WTF -> pip install 'mlflow[auth]'"])
    login = "" if basic_auth else " (no login: see --basic-auth)"
    warn_if_exposed("MLflow tracking server", host, port, f"can read and change every run{login}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", artifacts_destination, "--host", host, "--port", str(port)]  # fmt: skip
    return cmd + (["--app-name", "basic-auth"] if basic_auth else [])


def serve_with_pidfile(cmd: list[str], pidfile: str | Path | None = None) -> int:
    """Run a server in the foreground until it exits or is stopped (see run_process_group).

    With a pidfile, the server an earlier call started with the same pidfile is stopped first, so
    re-running `ray up` (which re-runs the head's start commands) replaces the server instead of
    failing on its port."""
    if pidfile is None:
        return run_process_group(cmd)
    pidfile = Path(pidfile).expanduser()
    previous = pidfile.read_text().strip() if pidfile.is_file() else ""
    if previous.isdigit() and session_pids(int(previous)):  # the server leads its own session
        stop_session(int(previous))
    started: list[int] = []

    def record(process: subprocess.Popen) -> None:
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(str(process.pid))
        started.append(process.pid)

    try:
        return run_process_group(cmd, on_start=record)
    finally:
        if started and pidfile.is_file() and pidfile.read_text().strip() == str(started[0]):
            pidfile.unlink()
