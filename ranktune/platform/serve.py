"""Local web UIs of a sweep (MLflow UI, optuna-dashboard): start the server, say its URL once it answers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

LOOPBACK = ("127.0.0.1", "localhost", "::1")
POLL_S = 0.5


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
