"""Several Ray nodes on this one machine: try (and test) a multi-node sweep without a cluster.

Each node is its own `ray start` (the head with `--head`, the others with `--address`), with its own
temp dir, its own ports and a custom resource that names it (`node_head`, `node_worker1`, ...), so the
nodes, and anyone else's Ray on the machine, stay apart. Each `ray start` runs in a new session, and
every process it starts (GCS, raylet, agents, the workers that run trials) inherits that session id:
stopping or killing a node means signalling exactly the processes of its session. `ray stop` is never
used here because it stops every Ray process of the user on the machine, not just this cluster's.

    scripts/local_cluster.sh start --workers 1       # prints the address to pass to `ranktune sweep --address`
    scripts/local_cluster.sh status
    scripts/local_cluster.sh kill worker1            # what a machine failure looks like to the sweep
    scripts/local_cluster.sh stop

The cluster's state (address, nodes, their session ids) is kept in `<dir>/cluster.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_DIR = "/tmp/ranktune-local-cluster"  # short: Ray's socket paths under it must fit in 107 bytes
STATE_FILE = "cluster.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(session_id: int) -> list[int]:
    """Every live process in the given session (a node's processes all share its session id)."""
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


def warn_if_exposed(what: str, host: str, port: int, consequence: str = "can use it (it has no login)") -> None:
    if host not in LOOPBACK:
        print(
            f"warning: the {what} will listen on {host}:{port}; anyone who can reach that address {consequence}. "
            "Keep it on 127.0.0.1 and reach it through an SSH tunnel instead (docs/cluster.md)",
            file=sys.stderr,
        )


@dataclass
class LocalNode:
    name: str  # "head", "worker1", ...
    resource: str  # custom resource naming the node: {"node_head": 1}
    session_id: int  # shared by every process of this node
    temp_dir: str


@dataclass
class LocalCluster:
    root: Path
    address: str = ""  # GCS address, what `ranktune sweep --address` takes
    dashboard_url: str | None = None
    nodes: dict[str, LocalNode] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> LocalCluster:
        path = Path(root) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no local cluster in {str(root)!r} (no {STATE_FILE}); start one first")
        raw = json.loads(path.read_text())
        nodes = {name: LocalNode(**node) for name, node in raw.pop("nodes").items()}
        return cls(root=Path(root), nodes=nodes, **{k: v for k, v in raw.items() if k != "root"})

    def save(self) -> None:
        state = {"address": self.address, "dashboard_url": self.dashboard_url,
                 "nodes": {name: asdict(node) for name, node in self.nodes.items()}}  # fmt: skip
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _ray_start(self, name: str, args: list[str], cpus: float, object_store_mib: int) -> None:
        temp_dir = self.root / name
        resource = f"node_{name}"
        temp_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(Path(sys.executable).parent / "ray"), "start", *args,
            f"--num-cpus={cpus:g}", "--num-gpus=0",
            f"--resources={json.dumps({resource: 1})}", f"--object-store-memory={object_store_mib * 2**20}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats",
            # The defaults of these are fixed port numbers: two nodes on one machine would collide.
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
        ]  # fmt: skip
        log_file = self.root / f"{name}.start.log"
        with open(log_file, "w") as log:
            # A new session per node: all of the node's processes carry its id (see `stop_node`).
            proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=self._env())
            # Recorded before waiting, so that a failed start can still be cleaned up.
            self.nodes[name] = LocalNode(name, resource, proc.pid, str(temp_dir))
            self.save()
            if proc.wait(timeout=180) != 0:
                raise RuntimeError(f"`ray start` for node {name} failed:\n{log_file.read_text()}")

    @property
    def token_file(self) -> Path:
        return self.root / "auth_token"

    def driver_env(self) -> dict[str, str]:
        """What a process needs in its environment to join or drive this cluster.

        Ray's token authentication is on, with this cluster's own token (made at start): Ray turns it
        on for a head by itself whenever ~/.ray/auth_token exists, but never for a node or driver given
        an explicit address, so it is set explicitly for all of them here."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.driver_env(), "RAY_USAGE_STATS_ENABLED": "0"}

    def start_head(self, cpus: float = 1, object_store_mib: int = 256, dashboard_host: str | None = None) -> None:
        """The head node; `dashboard_host` (e.g. 127.0.0.1) also starts the Ray dashboard there."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_file.touch(mode=0o600)
        self.token_file.write_text(secrets.token_hex(32))  # 256 random bits, as `ray get-auth-token --generate`
        port = free_port()
        args = ["--head", f"--port={port}", f"--ray-client-server-port={free_port()}"]
        # Even without the dashboard UI, Ray runs a headless dashboard process (job and state APIs) on
        # the dashboard port, 8265 by default: a second cluster on the machine would collide.
        dashboard_port = free_port()
        args.append(f"--dashboard-port={dashboard_port}")
        if dashboard_host is None:
            args.append("--include-dashboard=false")
        else:
            warn_if_exposed("Ray dashboard", dashboard_host, dashboard_port)
            args += ["--include-dashboard=true", f"--dashboard-host={dashboard_host}"]
            self.dashboard_url = f"http://{dashboard_host}:{dashboard_port}"
        self.address = f"127.0.0.1:{port}"
        self._ray_start("head", args, cpus, object_store_mib)

    def add_worker(self, name: str, cpus: float = 1, object_store_mib: int = 256) -> None:
        if not self.address:
            raise RuntimeError("start the head node first")
        self._ray_start(name, [f"--address={self.address}"], cpus, object_store_mib)

    def stop_node(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop every process of the node: SIGTERM first (SIGKILL for what lingers), or SIGKILL at once,
        which is what a machine failure looks like to the rest of the cluster."""
        _stop_session(self.nodes[name].session_id, first=sig, grace_s=5.0)

    def stop(self) -> None:
        """Stop every node (workers first, so they do not report a lost head) and forget the cluster."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            self.stop_node(name)
        (self.root / STATE_FILE).unlink(missing_ok=True)
        self.token_file.unlink(missing_ok=True)

    def node_ids(self) -> dict[str, str]:
        """name -> Ray node id of every live node, asked of the cluster by a short-lived driver (in a
        subprocess, so that the caller's own Ray state is left alone)."""
        script = (
            "import json, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False, configure_logging=False)\n"
            "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=self._env(), check=True
        )
        live = json.loads(out.stdout.strip().splitlines()[-1])
        by_resource = {r: n["id"] for n in live for r in n["resources"]}
        return {name: by_resource[node.resource] for name, node in self.nodes.items() if node.resource in by_resource}


def mlflow_server_command(backend_store_uri: str, artifacts_destination: str, host: str = "127.0.0.1",
                          port: int = 5000, basic_auth: bool = False) -> list[str]:  # fmt: skip
    """`mlflow server` for a team's sweeps: runs in `backend_store_uri` (sqlite or PostgreSQL), artifacts
    proxied by the server into `artifacts_destination` (shared storage), so clients need no access to it."""
    from ranktune.trainables.config import ConfigError

    if basic_auth and importlib.util.find_spec("flask_wtf") is None:
        raise ConfigError(["--basic-auth: MLflow's basic-auth app needs Flask-WTF -> pip install 'mlflow[auth]'"])
    login = "" if basic_auth else " (no login: see --basic-auth)"
    warn_if_exposed("MLflow tracking server", host, port, f"can read and change every run{login}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", artifacts_destination, "--host", host, "--port", str(port)]  # fmt: skip
    return cmd + (["--app-name", "basic-auth"] if basic_auth else [])


def serve(cmd: list[str], pidfile: str | Path | None = None) -> int:
    """Run a server in the foreground, in its own session; Ctrl-C or SIGTERM stop all of its processes.

    With a pidfile, the server an earlier call started with the same pidfile is stopped first, so
    re-running `ray up` (which re-runs the head's start commands) replaces the server instead of
    failing on its port."""
    if pidfile is not None:
        pidfile = Path(pidfile).expanduser()
        previous = int(pidfile.read_text()) if pidfile.is_file() and pidfile.read_text().strip().isdigit() else None
        if previous is not None and session_pids(previous):  # it leads its own session (started below)
            _stop_session(previous)
    server = subprocess.Popen(cmd, start_new_session=True)
    if pidfile is not None:
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(str(server.pid))

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:  # asked to stop: not a failure
        _stop_session(server.pid)
        return 0
    finally:
        if pidfile is not None and pidfile.is_file() and pidfile.read_text().strip() == str(server.pid):
            pidfile.unlink()


def _stop_session(session_id: int, first: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Signal every process of the session with `first`, SIGKILL what is left after `grace_s`."""
    for sig, wait_s in ((first, grace_s), (signal.SIGKILL, 10.0)):  # even SIGKILL takes a moment
        for pid in session_pids(session_id):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while session_pids(session_id) and time.time() < deadline:
            time.sleep(0.2)
    if left := session_pids(session_id):
        raise RuntimeError(f"processes {left} of session {session_id} survived SIGKILL")


def start_cluster(root: str | Path, workers: int = 1, cpus_per_node: float = 1, object_store_mib: int = 256,
                  dashboard_host: str | None = None) -> LocalCluster:  # fmt: skip
    """A head and `workers` worker nodes, named head, worker1, worker2, ...; on failure nothing is left running."""
    root = Path(root)
    if (root / STATE_FILE).exists():
        raise RuntimeError(f"{str(root)!r} already holds a local cluster; stop it first")
    cluster = LocalCluster(root)
    try:
        cluster.start_head(cpus_per_node, object_store_mib, dashboard_host)
        for i in range(1, workers + 1):
            cluster.add_worker(f"worker{i}", cpus_per_node, object_store_mib)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"where the nodes' temp dirs and state go ({DEFAULT_DIR})")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("start", help="start a head and worker nodes")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-node", type=float, default=1)
    p.add_argument("--object-store-mib", type=int, default=256)
    p.add_argument("--dashboard", action="store_true", help="also start the Ray dashboard on 127.0.0.1")
    p.add_argument("--dashboard-host", help="address for the dashboard to listen on (implies --dashboard); "
                   "anything but loopback exposes it")  # fmt: skip
    sub.add_parser("status", help="list the nodes and their Ray node ids")
    p = sub.add_parser("kill", help="SIGKILL every process of one node, like a machine failure")
    p.add_argument("node")
    sub.add_parser("stop", help="stop every node and remove the node temp dirs")
    args = parser.parse_args(argv)

    if args.action == "start":
        host = args.dashboard_host or ("127.0.0.1" if args.dashboard else None)
        cluster = start_cluster(args.dir, args.workers, args.cpus_per_node, args.object_store_mib, host)
        print(f"local Ray cluster with nodes {', '.join(cluster.nodes)} at {cluster.address}")
        if cluster.dashboard_url:
            print(f"Ray dashboard: {cluster.dashboard_url}")
        env = " ".join(f"{k}={v}" for k, v in cluster.driver_env().items())
        print(f"run a sweep on it:  {env} ranktune sweep SPEC --address {cluster.address}")
        print(f"stop it:            scripts/local_cluster.sh --dir {args.dir} stop")
        return 0
    try:
        cluster = LocalCluster.load(args.dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "status":
        ids = cluster.node_ids()
        for name in cluster.nodes:
            print(f"{name:10s} {ids.get(name, 'not running')}")
    elif args.action == "kill":
        if args.node not in cluster.nodes:
            print(f"error: no node {args.node!r}; nodes: {', '.join(cluster.nodes)}", file=sys.stderr)
            return 2
        cluster.stop_node(args.node, signal.SIGKILL)
    else:
        cluster.stop()
        for node in cluster.nodes.values():
            shutil.rmtree(node.temp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
