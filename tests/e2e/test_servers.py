"""Servers ranktune starts (issue 24.2, 24.6, 24.7): a pidfile stops only the process it recorded, a busy
port or a stranger answering on it is refused, and no signal to the command orphans its server."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from support.paths import SWEEP_BEFORE_MOVE

from ranktune.platform.serve import processes as serve
from ranktune.trainables.config import ConfigError


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def bystander():
    """A `setsid sleep`: an unrelated session whose pid lands in a pidfile."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


QUICK_SERVER = [sys.executable, "-c", "pass"]


@pytest.mark.parametrize("record", ["bare pid", "another start time", "another command"])
def test_a_pidfile_naming_another_process_stops_nothing(bystander, tmp_path, capsys, record):
    pidfile = tmp_path / "server.pid"
    identity = serve.process_identity(bystander.pid)
    pidfile.write_text(
        {
            "bare pid": str(bystander.pid),
            "another start time": json.dumps(
                {"pid": bystander.pid, "started": "x:1", "cmdline": list(identity.cmdline)}
            ),
            "another command": json.dumps({"pid": bystander.pid, "started": identity.started, "cmdline": ["mlflow"]}),
        }[record]
    )
    assert serve.serve_with_pidfile(QUICK_SERVER, pidfile) == 0
    assert alive(bystander.pid), "a process the pidfile did not record was killed"
    assert f"{pidfile}" in capsys.readouterr().err  # said why it was left alone
    assert not pidfile.exists()  # the quick server's own record, removed when it ended


def test_a_pidfile_still_stops_the_server_it_recorded(bystander, tmp_path):
    pidfile = tmp_path / "server.pid"
    pidfile.write_text(serve.process_identity(bystander.pid).to_json())
    assert serve.serve_with_pidfile(QUICK_SERVER, pidfile) == 0
    assert wait_gone(bystander.pid, 15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def other_server():
    """Another HTTP server (another sweep's UI) on 127.0.0.1:PORT."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_a_busy_port_is_refused_before_anything_starts(other_server, tmp_path):
    marker = tmp_path / "started"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    with pytest.raises(ConfigError, match=rf"--port: {other_server} on 127.0.0.1 -> a free port \(.*in use"):
        serve.serve_until_stopped(
            cmd, f"http://127.0.0.1:{other_server}/", "x", "MLflow UI for k2", listen=("127.0.0.1", other_server)
        )
    assert not marker.exists()


def test_a_stranger_answering_on_the_port_is_not_announced(other_server, monkeypatch, capsys):
    """The port was free when checked, then another process answered there: not our server's URL."""
    monkeypatch.setattr(serve, "check_port_free", lambda host, port: None)
    cmd = [sys.executable, "-c", "import time; time.sleep(300)"]  # a server that never listens
    start = time.monotonic()
    rc = serve.serve_until_stopped(
        cmd, f"http://127.0.0.1:{other_server}/", "http://shown", "MLflow UI for k2", listen=("127.0.0.1", other_server)
    )
    out, err = capsys.readouterr()
    assert rc == 2 and "http://shown" not in out
    assert f"error: port {other_server} answers, but not from the MLflow UI for k2 started here" in err
    assert time.monotonic() - start < 60


def test_our_own_server_answering_is_announced(capsys):
    port = free_port()
    server = f"import http.server as h; h.ThreadingHTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"  # noqa: E501
    cmd = [sys.executable, "-c", server]

    def stop_when_announced():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    time.sleep(1.5)  # past the identity check
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            except OSError:
                time.sleep(0.2)

    threading.Thread(target=stop_when_announced, daemon=True).start()
    rc = serve.serve_until_stopped(cmd, f"http://127.0.0.1:{port}/", "http://shown", "UI", listen=("127.0.0.1", port))
    assert rc == 0 and "UI: http://shown" in capsys.readouterr().out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_no_signal_to_the_command_orphans_its_server(tmp_path, sig):
    """Issue 24.7: closing the terminal (SIGHUP) or SIGKILL of `ranktune ui` left the servers listening."""
    pid_file = tmp_path / "worker.pid"
    server = f"import subprocess, time; p = subprocess.Popen(['sleep', '300']); open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(300)"  # noqa: E501
    driver = f"from ranktune.platform.serve.processes import run_process_group; run_process_group([{sys.executable!r}, '-c', {server!r}])"  # noqa: E501
    proc = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    proc.send_signal(sig)
    proc.wait(timeout=30)
    if not wait_gone(worker, 20):
        os.killpg(os.getsid(worker), signal.SIGKILL)
        pytest.fail(f"the server's worker outlived {sig.name} of the command")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_dashboard_listens_on_ipv6_loopback(tmp_path):
    """Issue 24.18: `ranktune dashboard DIR --host ::1` failed ("'' is not a valid port number")."""
    import shutil
    import urllib.request

    sweep_dir = tmp_path / "sweep"
    shutil.copytree(SWEEP_BEFORE_MOVE, sweep_dir)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ranktune.platform.cli",
        "dashboard",
        str(sweep_dir),
        "--host",
        "::1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        announced = ""
        deadline = time.monotonic() + 120
        while "(Ctrl-C to stop)" not in announced and time.monotonic() < deadline and proc.poll() is None:
            announced += proc.stdout.readline()
        assert f"http://[::1]:{port}/dashboard" in announced, announced
        with urllib.request.urlopen(f"http://[::1]:{port}/api/studies", timeout=10) as response:
            [study] = json.loads(response.read())["study_summaries"]
        assert response.status == 200 and study["study_name"] == "premove"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
