"""Local web UIs of a sweep (MLflow UI, optuna-dashboard): start the server, say its URL once it answers."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

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


def serve_until_stopped(cmd: list[str], probe_url: str, show_url: str, what: str, timeout_s: float = 300) -> int:
    """Run a server until it exits or Ctrl-C, printing `show_url` once `probe_url` answers."""
    print(f"starting {what} ...", file=sys.stderr)
    process = subprocess.Popen(cmd)
    try:
        if wait_until_answers(probe_url, process, timeout_s):
            print(f"{what}: {show_url}  (Ctrl-C to stop)", flush=True)
        elif process.poll() is None:
            print(f"warning: {what} did not answer at {probe_url} within {timeout_s:g} s; still waiting",
                  file=sys.stderr)  # fmt: skip
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
