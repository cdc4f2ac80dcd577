"""A Ray head and worker nodes on this one machine, to try (and test) multi-node sweeps without a cluster.

    scripts/local_cluster.sh start --workers 1       # prints the address to pass to `ranktune sweep --address`
    scripts/local_cluster.sh status                  # node names and Ray node ids
    scripts/local_cluster.sh kill worker1            # SIGKILL one node, as if its machine died
    scripts/local_cluster.sh stop                    # stop every node this script started

The nodes themselves are `ranktune.platform.serve.cluster.LocalCluster` (docs/cluster.md); this is its command line.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys

from ranktune.platform.serve.cluster import DEFAULT_DIR, LocalCluster, start_cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"where the nodes' temp dirs and state go ({DEFAULT_DIR})")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("start", help="start a head and worker nodes")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-node", type=float, default=1)
    p.add_argument("--object-store-mib", type=int, default=256)
    p.add_argument("--dashboard", action="store_true", help="also start the Ray dashboard on 127.0.0.1")
    p.add_argument(
        "--dashboard-host",
        help="address for the dashboard to listen on (implies --dashboard); anything but loopback exposes it",
    )
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
