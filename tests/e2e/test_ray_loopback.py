"""A local sweep's Ray listens on loopback only (issue 24, item 10).

One real local sweep (the `ranktune sweep` CLI, one tiny trial) runs while the test reads, from
/proc, every listening TCP socket of the processes the driver started (GCS, raylet, monitor, API
server, dashboard agent, runtime-env agent, the trial's worker, ...), then kills that session.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support.tiny import tiny_sweep_base

from ranktune.platform.sweep.local_ray import is_loopback


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str  # the process's command line, shortened
    host: str
    port: int


def _children(root: int) -> list[int]:
    """`root` and all its descendants (by parent pid, as /proc has them now)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += kids.get(pid, [])
    return tree


def _listening_sockets() -> dict[int, tuple[str, int]]:
    """Socket inode -> (host, port) of every TCP socket in LISTEN state, IPv4 and IPv6."""
    found = {}
    for family in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{family}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_host, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_host)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = (str(ipaddress.ip_address(raw)), int(hex_port, 16))
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def listeners_of_tree(root: int) -> list[Listener]:
    sockets, found = _listening_sockets(), []
    for pid in _children(root):
        command = _command(pid)
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in sockets:
                found.append(Listener(pid, command[:160], *sockets[int(target[8:-1])]))
    return sorted(set(found), key=lambda x: (x.command, x.port))


def routable_address() -> str | None:
    """This machine's non-loopback address, if it has one (the one Ray would pick for a cluster)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
            host = s.getsockname()[0]
        except OSError:
            return None
    return None if is_loopback(host) or host == "0.0.0.0" else host


def _refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


@dataclass
class RunningSweep:
    listeners: list[Listener]
    commands: list[str]  # of every process in the driver's tree


def _session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def _trial_worker(listeners: list[Listener]) -> bool:
    return any("ImplicitFunc" in x.command or "_Inner" in x.command for x in listeners)


@pytest.fixture(scope="module")
def running_sweep(tmp_path_factory) -> RunningSweep:
    """A local sweep whose one trial is training; its Ray's listening sockets, read from /proc."""
    tmp = tmp_path_factory.mktemp("loopback")
    raw = {
        "name": "loopback",
        "base_overrides": tiny_sweep_base(str(tmp / "tokens")),
        "space": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
        "budget": {"num_trials": 1, "steps_per_trial": 100_000},  # still training when the test looks
        "scheduler": {"name": "none"},
        "storage": str(tmp / "sweep"),
    }
    spec_file = tmp / "loopback.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    log = tmp / "driver.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    driver = subprocess.Popen(
        [sys.executable, "-m", "ranktune.platform.cli", "sweep", str(spec_file), "--quiet"],
        start_new_session=True,
        env={**env, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )
    try:
        deadline, listeners = time.monotonic() + 240, []
        while time.monotonic() < deadline and driver.poll() is None:
            listeners = listeners_of_tree(driver.pid)
            if _trial_worker(listeners):
                time.sleep(2)  # let the trial's worker finish opening its ports
                listeners = listeners_of_tree(driver.pid)
                break
            time.sleep(0.5)
        assert _trial_worker(listeners), f"no trial started (exit {driver.poll()}):\n{log.read_text()[-3000:]}"
        yield RunningSweep(listeners, [_command(pid) for pid in _children(driver.pid)])
    finally:
        for pid in _session_pids(os.getsid(driver.pid)):  # the driver and every Ray process it started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        driver.wait()


def _describe(listeners: list[Listener]) -> str:
    return "\n".join(f"  {x.host}:{x.port}  pid {x.pid}  {x.command[:100]}" for x in listeners)


def test_every_listening_socket_of_a_local_sweep_is_loopback(running_sweep):
    listeners = running_sweep.listeners
    # Not vacuous: the node's servers and the trial's worker were all seen listening.
    for part in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::ImplicitFunc"):
        assert any(part in x.command for x in listeners), f"{part} not seen listening:\n{_describe(listeners)}"
    # The monitor's and the API server's Prometheus ports are fixed (44217, 44227): they listen when
    # no other Ray on the machine holds them, so they are checked only when they do.
    for part in ("autoscaler/_private/monitor.py", "dashboard/dashboard.py"):
        assert any(part in command for command in running_sweep.commands), part
    exposed = [x for x in listeners if not is_loopback(x.host)]
    assert not exposed, f"listening beyond loopback:\n{_describe(exposed)}"


def test_no_ray_port_answers_on_the_routable_address_and_metrics_only_on_loopback(running_sweep):
    host = routable_address()
    if host is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    listeners = running_sweep.listeners
    answering = [x for x in listeners if not _refused(host, x.port)]
    assert not answering, f"answering on {host}:\n{_describe(answering)}"
    # Ray's Prometheus /metrics (the dashboard agent's export port) is served, on loopback only.
    metrics = []
    for x in listeners:
        if "DashboardAgent" in x.command:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{x.port}/metrics", timeout=3) as response:
                    metrics.append((x.port, response.status))
            except (OSError, http.client.HTTPException):  # the agent's gRPC port speaks no HTTP/1
                continue
    assert any(status == 200 for _, status in metrics), f"no /metrics on loopback:\n{_describe(listeners)}"
    assert all(_refused(host, port) for port, _ in metrics)


def test_the_ray_dashboard_ui_is_off_in_a_local_sweep(running_sweep):
    """`include_dashboard=False`: what runs of dashboard.py serves no UI and no HTTP API, only its metrics."""
    from ray.dashboard.consts import DASHBOARD_METRIC_PORT

    api_server = [c for c in running_sweep.commands if "dashboard/dashboard.py" in c]
    assert api_server and all("--disable-frontend" in c and "--modules-to-load=UsageStatsHead" in c for c in api_server)
    ports = {x.port for x in running_sweep.listeners if "dashboard/dashboard.py" in x.command}
    assert ports <= {DASHBOARD_METRIC_PORT}, _describe(running_sweep.listeners)


@pytest.mark.xfail(
    strict=True,
    reason="Ray 2.60 always starts dashboard/dashboard.py on the head as its API server: "
    "ray/_private/node.py Node.start_head_processes calls start_api_server unconditionally; "
    "include_dashboard=False only loads fewer modules (services.start_api_server: "
    "--modules-to-load=UsageStatsHead --disable-frontend)",
)
def test_no_dashboard_process_runs_in_a_local_sweep(running_sweep):
    assert not any("dashboard/dashboard.py" in command for command in running_sweep.commands)
