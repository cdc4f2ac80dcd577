"""A server's lifetime tied to the command that started it.

    python -m ranktune.platform.serve.guard PARENT_PID -- CMD...

`ranktune ui`, `dashboard` and `mlflow-server` run their server in its own session (so one signal
reaches every worker it forks) with this guard as the session leader. The guard starts CMD in that
session and stops the whole session when PARENT_PID dies, however it dies: SIGKILL, or SIGHUP from a
closed terminal or dropped SSH connection, which would otherwise leave the server listening with no
one to stop it (issue 24.7). Linux tells the guard at once (prctl PR_SET_PDEATHSIG); elsewhere it
notices within POLL_S that it was re-parented. Kept free of heavy imports: it starts with the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.2
GRACE_S = 10.0
PR_SET_PDEATHSIG = 1


def ask_for_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send `sig` to this process when its parent exits (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def stop_others_in_session(grace_s: float = GRACE_S) -> None:
    """SIGTERM every other process of this session, SIGKILL what is left after `grace_s`."""
    from ranktune.platform.serve.processes import session_pids

    me, session = os.getpid(), os.getsid(0)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in session_pids(session):
            if pid != me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while [p for p in session_pids(session) if p != me] and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap the server itself, so it does not linger as a zombie
                os.waitpid(-1, os.WNOHANG)
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    parent, cmd = int(argv[0]), argv[argv.index("--") + 1 :]
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    ask_for_parent_death_signal()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 1
    server = subprocess.Popen(cmd)
    while not stopping and server.poll() is None:
        if os.getppid() != parent:  # re-parented: whoever started us is gone
            stopping.append(0)
            break
        time.sleep(POLL_S)
    stop_others_in_session()
    rc = server.wait()
    return 0 if stopping else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
