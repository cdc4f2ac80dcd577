"""One set of versions on every node: the driver and each Ray node must run the same ranktune, Ray, torch
and Python, or a sweep fails in ways far from the cause (unpicklable trials, state that does not load).

    check_cluster_versions()     # after ray.init(address=...); raises ConfigError naming the node

Each node reports its versions from a zero-CPU task pinned to it (NodeAffinitySchedulingStrategy); the
comparison (`version_mismatches`) is a pure function of the reports. ranktune is compared by version
and by a fingerprint of its source files (the tree is rsynced to the nodes, so one stale node would
otherwise pass); torch by its public version (2.13.0+cpu and 2.13.0+cu128 are the same torch on a CPU
head and a GPU worker, the build that fits each machine, from the same constraints.txt pin).
"""

from __future__ import annotations

import hashlib
import platform
import socket
from dataclasses import dataclass, fields
from pathlib import Path

from ranktune.trainables.errors import ConfigError

REPORT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class NodeVersions:
    node: str  # host name and address, for the refusal
    python: str
    ranktune: str  # version + source fingerprint
    ray: str
    torch: str  # public version

    def compared(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "node"}


def source_fingerprint() -> str:
    """Hash of ranktune's Python sources (names and bytes), 12 hex digits."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def local_versions(node: str | None = None) -> NodeVersions:
    from importlib.metadata import version

    import ray
    import torch

    import ranktune

    try:
        ranktune_version = version("ranktune")
    except Exception:  # not installed (PYTHONPATH checkout)
        ranktune_version = getattr(ranktune, "__version__", "unknown")
    host = node or f"{socket.gethostname()} ({ray.util.get_node_ip_address() if ray.is_initialized() else 'driver'})"
    return NodeVersions(
        node=host,
        python=platform.python_version(),
        ranktune=f"{ranktune_version} (source {source_fingerprint()})",
        ray=ray.__version__,
        torch=torch.__version__.split("+")[0],
    )


def version_mismatches(driver: NodeVersions, nodes: list[NodeVersions]) -> list[str]:
    """One line per node that differs from the driver, naming every differing package."""
    lines = []
    want = driver.compared()
    for n in nodes:
        diffs = [f"{key} {value} (driver: {want[key]})" for key, value in n.compared().items() if value != want[key]]
        if diffs:
            lines.append(f"ray node {n.node}: {', '.join(diffs)}")
    return lines


def report_versions(label: str) -> NodeVersions:
    """The task each node runs: module level, so the node imports its own ranktune to run it (a closure
    would be pickled with the driver's code)."""
    return local_versions(label)


def node_reports() -> list[NodeVersions]:
    """Every alive node's versions, from a task pinned to it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    report = ray.remote(num_cpus=0, max_retries=0)(report_versions)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        report.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            n.get("NodeManagerHostname", "?") + f" ({n.get('NodeManagerAddress', '?')})"
        )
        for n in alive
    ]
    return ray.get(refs, timeout=REPORT_TIMEOUT_S)


def check_cluster_versions() -> None:
    """Refuse to start when a node's versions differ from the driver's (one line per node)."""
    problems = version_mismatches(local_versions(), node_reports())
    if problems:
        raise ConfigError(
            [
                f"{p} -> the same versions everywhere: run scripts/setup.sh on that node "
                "(constraints.txt pins them; `ray up cluster.yaml` does it on every node)"
                for p in problems
            ]
        )
