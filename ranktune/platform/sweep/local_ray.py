"""A local sweep's Ray listens on loopback only.

Ray (2.60 here) binds every server of a node (GCS, raylet node manager and object manager, the
driver's and workers' gRPC ports, the dashboard agent's gRPC and HTTP ports with its Prometheus
`/metrics`, the runtime-env agent, and the monitor's and API server's Prometheus ports) to loopback
exactly when the node's IP is loopback; otherwise to every interface. `ray.init(_node_ip_address=
"127.0.0.1")` alone does not get there: `ray._private.services.resolve_ip_for_localhost` rewrites a
loopback address to the machine's routable one, unless Ray clusters are disabled
(`ray_constants.ENABLE_RAY_CLUSTER`, read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is
imported), which is how Ray keeps a single machine on loopback on macOS and Windows.

So a local sweep starts Ray with clusters disabled: the variable for the Ray processes it starts
(they inherit the driver's environment), the already-imported constant for the driver itself. Both
are restored once Ray runs, so the same process can later join a real cluster (`--address`), whose
nodes need their routable addresses. Afterwards the node's address is checked, so a Ray that
stops honouring this fails the sweep's start instead of quietly listening everywhere.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager

RAY_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, and an IPv4 loopback mapped into IPv6 (::ffff:127.0.0.1, as a dual-stack
    socket bound to 127.0.0.1 reports itself)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@contextmanager
def ray_clusters_disabled() -> Iterator[None]:
    """While Ray starts a local node: every address it resolves for this machine is loopback."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(RAY_CLUSTERS_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_CLUSTERS_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(RAY_CLUSTERS_ENV, None)
        else:
            os.environ[RAY_CLUSTERS_ENV] = saved_env


def init_local_ray(**init_kwargs) -> None:
    """`ray.init` of a new local node bound to loopback; raises if Ray bound it elsewhere."""
    import ray

    with ray_clusters_disabled():
        ray.init(_node_ip_address="127.0.0.1", **init_kwargs)
    node_ip = ray.util.get_node_ip_address()
    if not is_loopback(node_ip):
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray node came up on {node_ip}, not loopback: its ports would listen on every "
            f"interface (this Ray {ray.__version__} no longer honours {RAY_CLUSTERS_ENV}=0); see docs/cluster.md"
        )
