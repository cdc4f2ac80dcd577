#!/usr/bin/env bash
# A Ray head and worker nodes on this one machine, to try multi-node sweeps without a cluster
# (docs/cluster.md). Uses the project's .venv (run scripts/setup.sh first).
#
#   scripts/local_cluster.sh start --workers 1      # prints the address and the env for `ranktune sweep`
#   scripts/local_cluster.sh status                 # node names and Ray node ids
#   scripts/local_cluster.sh kill worker1           # SIGKILL one node, as if its machine died
#   scripts/local_cluster.sh stop                   # stop every node this script started
#
# Options before the action: --dir DIR (default /tmp/ranktune-local-cluster) for a second cluster.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$repo/.venv/bin/python" ]; then
  echo "error: $repo/.venv is missing; run scripts/setup.sh first" >&2
  exit 2
fi
exec "$repo/.venv/bin/python" "$repo/scripts/local_cluster.py" "$@"
