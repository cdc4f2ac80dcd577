"""Servers ranktune starts (MLflow UI and tracking server, optuna-dashboard) and the process sessions
that let them, and a local cluster's Ray nodes, be stopped with every process they forked."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
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


def run_process_group(
    cmd: list[str], on_start: Callable[[subprocess.Popen], None] | None = None, grace_s: float = 10.0
) -> int:
    """Run `cmd` in its own process group until it exits; SIGINT/SIGTERM here stop the whole group
    (`mlflow ui` forks gunicorn/uvicorn workers that would otherwise keep listening). `on_start` runs
    once the process exists, with the signal handlers already in place."""
    # The guard leads the server's session and stops it when this process dies (server_guard.py).
    guarded = [sys.executable, "-m", "ranktune.platform.serve.guard", str(os.getpid()), "--", *cmd]
    proc = subprocess.Popen(guarded, start_new_session=True)
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    # SIGHUP (terminal closed) stops the server too, unless the caller ignores it (`nohup`).
    handled = [signal.SIGINT, signal.SIGTERM] + (
        [signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else []
    )
    previous = {sig: signal.signal(sig, stop) for sig in handled}
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


def serve_until_stopped(
    cmd: list[str],
    probe_url: str,
    show_url: str,
    what: str,
    timeout_s: float = 300,
    listen: tuple[str, int] | None = None,
) -> int:
    """Run a server (in its own process group, see run_process_group) until it exits or is stopped,
    printing `show_url` once `probe_url` answers.

    With `listen` (host, port): a port already in use is refused before anything starts, and the
    server that answers must be the one started here (issue 24.6: a UI on a busy port printed the URL
    of another sweep's UI, which answered there). Exit 2 for either, with one line."""
    if listen is not None:
        check_port_free(*listen)
    print(f"starting {what} ...", file=sys.stderr)
    taken: list[str] = []

    def announce(process: subprocess.Popen) -> None:
        if wait_until_answers(probe_url, process, timeout_s):
            stranger = listen is not None and not listened_by_session(listen[1], process.pid)
            if stranger:
                taken.append(
                    f"error: port {listen[1]} answers, but not from the {what} started here (another "
                    "process took the port meanwhile) -> choose another --port"
                )
                os.kill(os.getpid(), signal.SIGTERM)  # stop it the way Ctrl-C does
            else:
                print(f"{what}: {show_url}  (Ctrl-C to stop)", flush=True)
        elif process.poll() is None:
            print(
                f"warning: {what} did not answer at {probe_url} within {timeout_s:g} s; still waiting", file=sys.stderr
            )

    rc = run_process_group(cmd, on_start=announce)
    if taken:
        print(taken[0], file=sys.stderr)
        return 2
    return rc


def check_port_free(host: str, port: int) -> None:
    """Refuse (ConfigError, one line) a port something already listens on at `host`."""
    import socket

    from ranktune.trainables.errors import ConfigError  # deferred: importing ranktune.trainables imports torch

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1" if host == "localhost" else host, port))
        except OSError as exc:
            raise ConfigError(
                [
                    f"--port: {port} on {host} -> a free port ({exc.strerror or exc}: another server, "
                    "e.g. another sweep's UI, listens there)"
                ]
            ) from None


def listening_socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (Linux /proc/net; empty elsewhere)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def listened_by_session(port: int, session_id: int) -> bool:
    """Whether a process of the session holds the socket listening on `port`; True where /proc cannot tell."""
    if not Path("/proc/net/tcp").exists():
        return True
    wanted = {f"socket:[{inode}]" for inode in listening_socket_inodes(port)}
    for pid in session_pids(session_id):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return True
    return False


def mlflow_server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    basic_auth: bool = False,
) -> list[str]:
    """`mlflow server` for a team's sweeps: runs in `backend_store_uri` (sqlite or PostgreSQL), artifacts
    proxied by the server into `artifacts_destination` (shared storage), so clients need no access to it."""
    from ranktune.trainables.errors import ConfigError  # deferred: importing ranktune.trainables imports torch

    if basic_auth and importlib.util.find_spec("flask_wtf") is None:
        raise ConfigError(["--basic-auth: MLflow's basic-auth app needs Flask-WTF -> pip install 'mlflow[auth]'"])
    login = "" if basic_auth else " (no login: see --basic-auth)"
    warn_if_exposed("MLflow tracking server", host, port, f"can read and change every run{login}")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
    ]
    return cmd + (["--app-name", "basic-auth"] if basic_auth else [])


@dataclasses.dataclass(frozen=True)
class ProcessIdentity:
    """What tells a process apart from a later one given the same pid: its start and its command line."""

    pid: int
    started: str  # Linux: boot id + start time in clock ticks since boot; elsewhere `ps`'s start time
    cmdline: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "started": self.started, "cmdline": list(self.cmdline)})


def process_identity(pid: int) -> ProcessIdentity | None:
    """The identity of the live process `pid`, None when there is none."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self/stat").exists():
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except (OSError, IndexError):
            return None
        # Field 22 of stat (starttime) is the 20th after the command name.
        return ProcessIdentity(pid, f"{boot}:{stat[19]}", tuple(c.decode(errors="replace") for c in cmdline))
    out = subprocess.run(["ps", "-o", "lstart=,command=", "-p", str(pid)], capture_output=True, text=True).stdout
    if not out.strip():
        return None
    return ProcessIdentity(pid, out[:24].strip(), tuple(out[24:].split()))


def recorded_server(pidfile: Path) -> tuple[ProcessIdentity | None, str | None]:
    """(the server `pidfile` records if that very process still runs, else None; a line saying why a
    recorded pid is left alone, or None)."""
    try:
        raw = json.loads(pidfile.read_text())
        recorded = ProcessIdentity(int(raw["pid"]), str(raw["started"]), tuple(raw["cmdline"]))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError):
        return None, (
            f"warning: {pidfile} is not a record this command wrote (pid, start time, command line); "
            "not stopping any process it names"
        )
    now = process_identity(recorded.pid)
    if now is None:
        return None, None  # that server is gone
    if now != recorded:
        command = " ".join(now.cmdline)[:80]
        return None, f"warning: pid {recorded.pid} in {pidfile} is now another process ({command}); not stopping it"
    return recorded, None


def serve_with_pidfile(cmd: list[str], pidfile: str | Path | None = None) -> int:
    """Run a server in the foreground until it exits or is stopped (see run_process_group).

    With a pidfile, the server an earlier call started with the same pidfile is stopped first, so
    re-running `ray up` (which re-runs the head's start commands) replaces the server instead of
    failing on its port. Only that very process is stopped: the pidfile records its start time and
    command line, and a pid now naming any other process (after a reboot, or reused) is left alone
    (issue 24.2: a stale pidfile made a root server kill an unrelated session)."""
    if pidfile is None:
        return run_process_group(cmd)
    pidfile = Path(pidfile).expanduser()
    previous, why_not = recorded_server(pidfile)
    if why_not:
        print(why_not, file=sys.stderr)
    if previous is not None:
        stop_session(previous.pid)  # the server leads its own session
    started: list[str] = []

    def record(process: subprocess.Popen) -> None:
        identity = process_identity(process.pid)
        if identity is None:  # exited at once: nothing to record
            return
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(identity.to_json())
        started.append(identity.to_json())

    try:
        return run_process_group(cmd, on_start=record)
    finally:
        if started and pidfile.is_file() and pidfile.read_text() == started[0]:
            pidfile.unlink()
