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

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ranktune.platform.serve.processes import stop_session, warn_if_exposed

DEFAULT_DIR = "/tmp/ranktune-local-cluster"  # short: Ray's socket paths under it must fit in 107 bytes
STATE_FILE = "cluster.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        state = {
            "address": self.address,
            "dashboard_url": self.dashboard_url,
            "nodes": {name: asdict(node) for name, node in self.nodes.items()},
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _ray_start(self, name: str, args: list[str], cpus: float, object_store_mib: int) -> None:
        temp_dir = self.root / name
        resource = f"node_{name}"
        temp_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            *args,
            f"--num-cpus={cpus:g}",
            "--num-gpus=0",
            f"--resources={json.dumps({resource: 1})}",
            f"--object-store-memory={object_store_mib * 2**20}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            # The defaults of these are fixed port numbers: two nodes on one machine would collide.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
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
        stop_session(self.nodes[name].session_id, first=sig, grace_s=5.0)

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


def start_cluster(
    root: str | Path,
    workers: int = 1,
    cpus_per_node: float = 1,
    object_store_mib: int = 256,
    dashboard_host: str | None = None,
) -> LocalCluster:
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
