"""Sweeps end to end on a local Ray: MLflow runs, ASHA, a diverging trial, driver kill + resume, DDP."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.tiny import tiny_spec

from ranktune.platform.report.trials import collect_trials
from ranktune.platform.store.state import load_state
from ranktune.platform.tracking.client import PARAMS_TAG, REASON_TAG, RESUMED_TAG, STATUS_TAG, child_runs, mlflow_client
from ranktune.search_spaces import spec_from_dict
from ranktune.trainables.config import load_config

POISONED_LR = 5e-3


def poison_one_trial(trainer, params):
    """Fault injection for the test: NaN weights make this trial's loss NaN at step 1."""
    import torch

    if params.get("optim.lr") == POISONED_LR:
        with torch.no_grad():
            trainer.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))


@pytest.fixture
def local_ray():
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # so Ray workers get poison_one_trial
    yield
    ray.shutdown()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_sweep_end_to_end_mlflow_asha_and_a_diverging_trial(tmp_path, token_cache, local_ray, capfd):
    from ranktune.platform.sweep.driver import RAY_AUTH_LOGGER, RAY_TOKEN_AUTH_NOTICE, run_sweep

    # What Ray's token-auth logger lets through: its handlers (Ray's own, on the `ray` logger) print
    # whatever reaches them to the console, inside the live progress.
    ray_auth = _Records()
    logging.getLogger(RAY_AUTH_LOGGER).addHandler(ray_auth)

    raw = tiny_spec(
        tmp_path,
        token_cache,
        "e2e",
        # Grid order is the run order (one at a time): a good trial first, then two with hopeless
        # learning rates that ASHA must stop at its first rung, then one that diverges.
        space={"params": {"optim.lr": {"type": "choice", "values": [3e-3, 1e-6, 2e-6, POISONED_LR]}}},
        search={"algorithm": "grid"},
        scheduler={"name": "asha", "grace_period": 5, "reduction_factor": 2},
        budget={"steps_per_trial": 20},
    )
    spec = spec_from_dict(raw)
    try:
        summary = run_sweep(spec, prepare=poison_one_trial, progress=False)
    finally:
        logging.getLogger(RAY_AUTH_LOGGER).removeHandler(ray_auth)
    assert not [m for m in ray_auth.messages if m.startswith(RAY_TOKEN_AUTH_NOTICE)]
    assert "Token authentication is enabled" not in "".join(capfd.readouterr())

    _, state = load_state(spec.storage_dir)
    client = mlflow_client(state.tracking_uri)
    parent = client.get_run(state.parent_run_id)
    children = child_runs(client, state.experiment_id, state.parent_run_id)
    assert len(children) == 4
    by_lr = {json.loads(c.data.tags[PARAMS_TAG])["optim.lr"]: c for c in children}

    good = by_lr[3e-3]
    assert good.data.tags[STATUS_TAG] == "finished" and good.info.status == "FINISHED"
    assert good.data.params["optim.lr"] == "0.003"
    evals = client.get_metric_history(good.info.run_id, "eval_loss")
    assert [m.step for m in sorted(evals, key=lambda m: m.step)] == [0, 5, 10, 15, 20]
    assert sorted(evals, key=lambda m: m.step)[-1].value < sorted(evals, key=lambda m: m.step)[0].value - 0.5
    for curve in ("train_loss", "lr", "tokens_per_s", "peak_memory_bytes", "optimizer_state_bytes", "eval_ppl"):
        assert client.get_metric_history(good.info.run_id, curve), curve
    assert "final_eval_loss" in good.data.metrics
    artifacts = {a.path for a in client.list_artifacts(good.info.run_id)}
    assert "config.yaml" in artifacts

    for lr in (1e-6, 2e-6):  # ASHA stopped both at the first rung
        stopped = by_lr[lr]
        assert stopped.data.tags[STATUS_TAG] == "stopped_early"
        assert max(m.step for m in client.get_metric_history(stopped.info.run_id, "eval_loss")) == 5

    failed = by_lr[POISONED_LR]
    assert failed.info.status == "FAILED" and failed.data.tags[STATUS_TAG] == "failed"
    assert failed.data.tags[REASON_TAG].startswith("diverged at step 1")
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}

    assert parent.info.status == "FINISHED"
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_spec.yaml", "best_config.yaml", "results.json", "plots"} <= parent_artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"optimization_history.png", "parallel_coordinates.png", "loss_curves.png"} <= plots
    assert parent.data.tags["ranktune.best_trial_id"] == good.data.tags["ranktune.trial_id"]

    assert summary["best"]["params"] == {"optim.lr": 3e-3}
    best = load_config(spec.storage_dir / "best_config.yaml")  # a self-contained training config
    assert best.optim.lr == 3e-3 and best.train.steps == 20
    best_text = (spec.storage_dir / "best_config.yaml").read_text()
    assert best_text.startswith(f"# best config of sweep 'e2e': trial {good.data.tags['ranktune.trial_id']} (adamw)")
    assert not {"galore", "relora", "apollo", "apollo_mini", "fira"} & yaml.safe_load(best_text).keys()

    # The Optuna study says what MLflow says (optuna-dashboard reads it): stopped trials PRUNED with their
    # curves by step, the diverged one FAIL, metric names, the MLflow run and status on each trial.
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{spec.storage_dir / 'optuna.db'}")
    assert study.metric_names == ["eval_loss"]
    by_run = {t.user_attrs.get("mlflow_run_id"): t for t in study.trials}
    assert set(by_run) == {c.info.run_id for c in children}
    assert by_run[good.info.run_id].state == TrialState.COMPLETE
    assert sorted(by_run[good.info.run_id].intermediate_values) == [0, 5, 10, 15, 20]
    for lr in (1e-6, 2e-6):
        pruned = by_run[by_lr[lr].info.run_id]
        assert pruned.state == TrialState.PRUNED and sorted(pruned.intermediate_values) == [0, 5]
        assert pruned.user_attrs["status"] == "stopped_early" and "milestone" in pruned.user_attrs["stop_reason"]
    assert by_run[failed.info.run_id].state == TrialState.FAIL
    assert [t.user_attrs["status"] for t in sorted(study.trials, key=lambda t: t.number)] == [
        "finished",
        "stopped_early",
        "stopped_early",
        "failed",
    ]
    assert "| adamw |" in study.user_attrs["ranked_table"]
    from optuna_dashboard._note import get_note_from_system_attrs

    note = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), None)["body"]
    assert note.startswith("winner: adamw") and "| adamw |" in note
    # the history's order is the order the trials started (grid order here), whatever their ids
    rows = collect_trials(spec, state)
    from ranktune.platform.report.plots import start_order

    assert [rows[i]["params"]["optim.lr"] for i in start_order(rows)] == [3e-3, 1e-6, 2e-6, POISONED_LR]

    # MLflow's shared trials view: the method and its params as columns, every run in the charts, MiB,
    # runs found by their role (replicates nested under their configuration)
    from ranktune.platform.tracking.client import ROLE_TAG, SHARED_VIEW_TAG

    view = json.loads(client.get_experiment(state.experiment_id).tags[SHARED_VIEW_TAG])
    assert view["selectedColumns"][:2] == ["params.`optim.name`", "params.`optim.lr`"]
    assert view["runsHiddenMode"] == "SHOW_ALL" and "metrics.`final_optimizer_state_MiB`" in view["selectedColumns"]
    listed = client.search_runs([state.experiment_id], filter_string=view["searchFilter"])
    assert {r.info.run_id for r in listed} == {c.info.run_id for c in children}
    assert {c.data.tags[ROLE_TAG] for c in children} == {"trial"}
    assert good.data.metrics["final_optimizer_state_MiB"] == pytest.approx(
        good.data.metrics["final_optimizer_state_bytes"] / 2**20
    )


def _session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the command: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def _wait_for(predicate, timeout: float, what: str, poll_s: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kill_the_driver_then_resume_accounts_for_every_trial_once(tmp_path, token_cache):
    raw = tiny_spec(
        tmp_path,
        token_cache,
        "killed",
        space={"params": {"optim.lr": {"type": "choice", "values": [3e-3, 2e-3, 1e-3]}}},
        search={"algorithm": "grid"},
        scheduler={"name": "none"},
        budget={"steps_per_trial": 40},
    )
    spec_file = tmp_path / "killed.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    storage = tmp_path / "killed"
    cli = [sys.executable, "-m", "ranktune.platform.cli"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    driver = subprocess.Popen(
        [*cli, "sweep", str(spec_file), "--quiet"],
        start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "driver.log", "w"),
    )

    def second_trial_mid_way():
        if not (storage / "sweep.json").exists():
            return None
        _, state = load_state(storage)
        client = mlflow_client(state.tracking_uri)
        runs = child_runs(client, state.experiment_id, state.parent_run_id)
        done = [r for r in runs if r.data.tags.get(STATUS_TAG) == "finished"]
        running = [r for r in runs if STATUS_TAG not in r.data.tags]
        if done and any(m.step >= 10 for r in running for m in client.get_metric_history(r.info.run_id, "eval_loss")):
            return True
        return None

    try:
        # Polled fast, so the kill lands right after the step-10 report: while Tune is still
        # replacing the trial's step-5 checkpoint. A resume that trusted Tune's snapshot failed
        # there in 3 of 4 runs ("checkpoint does not exist on storage anymore").
        _wait_for(second_trial_mid_way, 300, "one finished trial and one past its step-10 checkpoint", poll_s=0.05)
    finally:
        sid = os.getsid(driver.pid)
        for pid in _session_pids(sid):  # the driver and every Ray process it started: a hard crash
            os.kill(pid, signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL

    resumed = subprocess.run(
        [*cli, "sweep", "--resume", str(storage), "--quiet"], capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    spec, state = load_state(storage)
    client = mlflow_client(state.tracking_uri)
    runs = child_runs(client, state.experiment_id, state.parent_run_id)
    trial_ids = [r.data.tags["ranktune.trial_id"] for r in runs]
    assert len(runs) == 3 and len(set(trial_ids)) == 3  # every trial exactly once in MLflow
    statuses = {r.data.tags["ranktune.trial_id"]: (r.data.tags[STATUS_TAG], r.data.tags.get(REASON_TAG)) for r in runs}
    assert all(status == "finished" for status, _ in statuses.values()), statuses
    for r in runs:  # no step logged twice, every curve reaches the budget
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "eval_loss")]
        assert sorted(steps) == sorted(set(steps)) and max(steps) == 40
    resumed_runs = [r for r in runs if RESUMED_TAG in r.data.tags]
    assert len(resumed_runs) == 1 and int(resumed_runs[0].data.tags[RESUMED_TAG]) >= 10  # from its checkpoint
    rows = collect_trials(spec, state)
    assert len(rows) == 3 and json.loads((storage / "results.json").read_text())[0]["status"] == "finished"


@pytest.mark.slow
def test_two_worker_ray_train_trial_on_cpu(tmp_path, token_cache, local_ray):
    from ranktune.platform.sweep.driver import run_sweep

    raw = tiny_spec(
        tmp_path,
        token_cache,
        "ddp",
        space={"params": {"optim.lr": {"type": "choice", "values": [3e-3]}}},
        search={"algorithm": "grid"},
        scheduler={"name": "none"},
        budget={"steps_per_trial": 10},
        resources={"num_workers": 2, "cpus_per_trial": 0.9},
    )
    raw["base_overrides"]["train"]["micro_batch_size"] = 4  # 4 per worker x 2 workers = batch 8
    spec = spec_from_dict(raw)
    summary = run_sweep(spec, progress=False)
    assert summary["best"] is not None and summary["best"]["status"] == "finished"
    assert math.isfinite(summary["best"]["objective"])
    _, state = load_state(spec.storage_dir)
    client = mlflow_client(state.tracking_uri)
    (run,) = child_runs(client, state.experiment_id, state.parent_run_id)
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")) == 10


def test_hyperband_is_asynchronous_with_brackets_up_to_the_budget(tmp_path, token_cache):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from ranktune.platform.sweep.driver import build_scheduler

    raw = tiny_spec(
        tmp_path,
        token_cache,
        "hb",
        scheduler={"name": "hyperband", "reduction_factor": 3},
        space={"params": {"optim.lr": {"type": "choice", "values": [3e-3]}}},
        budget={"steps_per_trial": 90},
    )
    scheduler = build_scheduler(spec_from_dict(raw), eval_every=10)
    # Grace periods 10, 30, 90: every bracket fits the 90-step budget, and no trial is ever paused.
    assert isinstance(scheduler, AsyncHyperBandScheduler) and len(scheduler._brackets) == 3
    asha = build_scheduler(spec_from_dict({**raw, "scheduler": {"name": "asha", "reduction_factor": 3}}), 10)
    assert len(asha._brackets) == 1
