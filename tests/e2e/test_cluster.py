"""cluster.yaml against Ray's own schema; sweeps over two Ray nodes on this machine, and over the loss of one."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from support.paths import REPO
from support.tiny import tiny_sweep_base

from ranktune.platform.serve.cluster import LocalCluster, start_cluster
from ranktune.platform.serve.processes import session_pids
from ranktune.platform.store.state import load_state
from ranktune.platform.tracking.client import NODES_TAG, RESUMED_TAG, STATUS_TAG, TRIAL_TAG, child_runs, mlflow_client

REPO = REPO
CLUSTER_YAML = REPO / "cluster.yaml"


# --- cluster.yaml -------------------------------------------------------------------------------------------


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(CLUSTER_YAML.read_text())
    # The file as written, against the schema: no misspelled or unknown keys.
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    # What `ray up` does before it touches a machine: merge the local provider's defaults, check the
    # head/worker IPs are there, validate the result.
    prepared = prepare_config(raw)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == len(raw["provider"]["worker_ips"])


def _ray_start_flags(command: str) -> list[list[str]]:
    """The `--flag` names of each `ray start` in a shell command line."""
    found = []
    for segment in re.split(r"&&|;|\|\|", command):
        words = shlex.split(segment.replace("$(", "").replace(")", ""))
        if "start" in words and any(Path(w).name == "ray" for w in words[: words.index("start")]):
            found.append([w.split("=")[0] for w in words if w.startswith("--")])
    return found


def test_cluster_yaml_commands_use_real_flags_and_safe_defaults():
    from ray.scripts.scripts import start

    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    known = {opt for param in start.params for opt in param.opts}
    head = [f for c in cfg["head_start_ray_commands"] for f in _ray_start_flags(c)]
    workers = [f for c in cfg["worker_start_ray_commands"] for f in _ray_start_flags(c)]
    assert len(head) == 1 and len(workers) == 1, "one `ray start` on the head, one on every worker"
    for flags in head + workers:
        assert set(flags) <= known, f"not `ray start` options: {set(flags) - known}"
        assert "--num-gpus" in flags  # each node declares its own GPU count
    assert "--head" in head[0] and "--address" in workers[0]
    head_text = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_text

    # The MLflow server on the head: loopback only, sqlite/PostgreSQL store, artifacts on shared storage.
    (server,) = [c for c in cfg["head_start_ray_commands"] if "mlflow-server" in c]
    from ranktune.platform.cli.main import build_parser

    parsed = build_parser().parse_args(shlex.split(server[server.index("mlflow-server") :].split(" > ")[0]))
    assert parsed.host == "127.0.0.1" and parsed.pidfile
    assert parsed.backend_store_uri.startswith(("sqlite:", "postgresql:"))
    assert parsed.artifacts_destination.startswith("$RANKTUNE_SHARED/")
    setup = " ".join(cfg["setup_commands"])
    assert re.search(r"export RANKTUNE_SHARED=/\S+", setup) and "scripts/setup.sh" in setup

    # No secrets: the SSH key is a path to the user's own file, never key material.
    text = CLUSTER_YAML.read_text()
    assert "PRIVATE KEY" not in text and cfg["auth"]["ssh_private_key"].startswith("~/")


# --- a local multi-node cluster -----------------------------------------------------------------------------


@pytest.fixture
def two_nodes():
    """A head and a worker node on this machine, one CPU each (so two concurrent trials must spread out).
    Everything they started is gone afterwards, whatever the test did."""
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    cluster = start_cluster(root, workers=1, cpus_per_node=1, object_store_mib=128)
    sessions = [n.session_id for n in cluster.nodes.values()]
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not [pid for sid in sessions for pid in session_pids(sid)], "Ray processes left running"


def sweep_spec(tmp_path: Path, token_cache: str, name: str, lrs: list[float], steps: int) -> tuple[Path, Path]:
    """A two-trial grid sweep whose storage (results, checkpoints, MLflow) is one 'shared' directory."""
    base = tiny_sweep_base(token_cache)
    storage = tmp_path / "shared" / name
    raw = {
        "name": name,
        "base_overrides": base,
        "storage": str(storage),
        "max_concurrent": 2,
        "space": {"params": {"optim.lr": {"type": "choice", "values": lrs}}},
        "search": {"algorithm": "grid"},
        "scheduler": {"name": "none"},
        "budget": {"steps_per_trial": steps},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "max_failures": 2,
    }
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    return spec_file, storage


class SweepDriver:
    """`ranktune sweep SPEC --address ...` in its own session, killed with everything it started on exit."""

    def __init__(self, cluster: LocalCluster, spec_file: Path, log: Path) -> None:
        env = {**os.environ, **cluster.driver_env(), "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [
            sys.executable,
            "-m",
            "ranktune.platform.cli",
            "sweep",
            str(spec_file),
            "--address",
            cluster.address,
            "--quiet",
        ]
        self.log = log
        self.proc = subprocess.Popen(
            cmd, start_new_session=True, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"sweep did not finish in {timeout:.0f}s:\n{self.log.read_text()[-3000:]}") from None

    def __enter__(self) -> SweepDriver:
        return self

    def __exit__(self, *exc) -> None:
        for pid in session_pids(self.proc.pid):
            os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def trial_runs(storage: Path) -> tuple[object, list]:
    _, state = load_state(storage)
    client = mlflow_client(state.tracking_uri)
    return client, child_runs(client, state.experiment_id, state.parent_run_id)


def nodes_of(run) -> list[str]:
    return [n for n in run.data.tags.get(NODES_TAG, "").split(",") if n]


def assert_in_shared_storage(storage: Path, client, runs) -> None:
    """Results, checkpoints and MLflow runs (store and artifacts) all under the sweep's storage dir."""
    assert (storage / "results.json").is_file() and (storage / "best_config.yaml").is_file()
    assert (storage / "mlflow.db").is_file()
    tune_trials = [d for d in (storage / "tune").iterdir() if d.is_dir() and (d / "result.json").is_file()]
    assert len(tune_trials) == len(runs)
    for run in runs:
        trial_dir = storage / "trials" / run.data.tags[TRIAL_TAG]
        assert list(trial_dir.glob("checkpoints/step_*.pt")), f"no checkpoint in {trial_dir}"
    for run in runs:
        assert run.info.artifact_uri.startswith((storage / "mlartifacts").as_uri())
        assert (Path(urlparse(run.info.artifact_uri).path) / "config.yaml").is_file()


@pytest.mark.slow
def test_sweep_spreads_over_two_nodes_into_shared_storage(tmp_path, token_cache, two_nodes):
    node_ids = two_nodes.node_ids()
    assert set(node_ids) == {"head", "worker1"}
    spec_file, storage = sweep_spec(tmp_path, token_cache, "spread", [3e-3, 2e-3], steps=20)
    with SweepDriver(two_nodes, spec_file, tmp_path / "driver.log") as driver:
        assert driver.wait(timeout=600) == 0, driver.log.read_text()[-3000:]

    client, runs = trial_runs(storage)
    assert len(runs) == 2 and all(r.data.tags[STATUS_TAG] == "finished" for r in runs)
    # One CPU per node and two concurrent one-CPU trials: one trial on each node, start to end.
    assert sorted(nodes_of(r)[0] for r in runs) == sorted(node_ids.values())
    assert all(len(nodes_of(r)) == 1 for r in runs)
    assert_in_shared_storage(storage, client, runs)


@pytest.mark.slow  # about 2 minutes on 2 cores: `pytest -m slow`
def test_worker_node_dies_mid_sweep_and_its_trial_resumes_on_the_head(tmp_path, token_cache, two_nodes):
    node_ids = two_nodes.node_ids()
    spec_file, storage = sweep_spec(tmp_path, token_cache, "nodefail", [3e-3, 2e-3], steps=60)

    def worker_trial_past_first_checkpoint():
        """The trial running on the worker node once it has reported (and checkpointed) step >= 10."""
        if not (storage / "sweep.json").exists():
            return None
        client, runs = trial_runs(storage)
        for r in runs:
            if nodes_of(r) == [node_ids["worker1"]] and STATUS_TAG not in r.data.tags:
                if any(m.step >= 10 for m in client.get_metric_history(r.info.run_id, "eval_loss")):
                    return r.data.tags[TRIAL_TAG]
        return None

    with SweepDriver(two_nodes, spec_file, tmp_path / "driver.log") as driver:
        deadline = time.time() + 300
        while not (interrupted := worker_trial_past_first_checkpoint()):
            assert driver.proc.poll() is None, driver.log.read_text()[-3000:]
            assert time.time() < deadline, "no trial reached step 10 on the worker node"
            time.sleep(1.0)
        two_nodes.stop_node("worker1", signal.SIGKILL)  # the machine is gone: no goodbye to the head
        assert driver.wait(timeout=600) == 0, driver.log.read_text()[-3000:]

    client, runs = trial_runs(storage)
    by_trial = {r.data.tags[TRIAL_TAG]: r for r in runs}
    assert len(runs) == 2 and len(by_trial) == 2  # every trial exactly once in MLflow
    assert all(r.data.tags[STATUS_TAG] == "finished" and r.info.status == "FINISHED" for r in runs)
    for r in runs:  # no step logged twice, every curve reaches the budget
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval_loss")]
        assert sorted(steps) == sorted(set(steps)) and max(steps) == 60
    moved = by_trial[interrupted]
    assert nodes_of(moved) == [node_ids["worker1"], node_ids["head"]]  # rescheduled on the surviving node
    assert int(moved.data.tags[RESUMED_TAG]) >= 10  # from its checkpoint, not from scratch
    (other,) = [r for t, r in by_trial.items() if t != interrupted]
    assert nodes_of(other) == [node_ids["head"]] and RESUMED_TAG not in other.data.tags
    assert_in_shared_storage(storage, client, runs)
