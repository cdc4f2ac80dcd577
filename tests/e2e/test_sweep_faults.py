"""Sweeps under faults (issue 24): unschedulable resources, non-finite evaluations, failed trials and a
full disk, an unreachable tracking server for the reading commands."""

from __future__ import annotations

import json
import math

import pytest
from support.rows import trial_row

from ranktune.platform.cli.main import main
from ranktune.platform.cli.sweep import sweep_exit_code
from ranktune.platform.sweep import driver as sweep
from ranktune.search_spaces.spec import spec_from_dict
from ranktune.trainables.config import ConfigError


@pytest.mark.parametrize("gpus", [-1, -0.5, 1.5, math.nan, math.inf, "many", True])
def test_unschedulable_gpus_per_trial_is_refused_in_one_line(make_spec, gpus):
    """Issue 24.3: gpus_per_trial -1 passed validation and the sweep waited forever for a GPU."""
    with pytest.raises(ConfigError) as refused:
        make_spec(resources={"gpus_per_trial": gpus})
    [problem] = refused.value.problems
    assert problem.startswith(f"resources.gpus_per_trial: {gpus!r} -> 'auto', 0 (CPU only), a fraction")


@pytest.mark.parametrize("gpus", ["auto", 0, 0.25, 1, 2])
def test_schedulable_gpus_per_trial_is_accepted(make_spec, gpus):
    assert make_spec(resources={"gpus_per_trial": gpus}).resources.gpus_per_trial == gpus


def test_a_sweep_json_with_unschedulable_resources_is_refused_on_resume(make_spec, capsys):
    spec = make_spec()
    spec.storage_dir.mkdir(parents=True)
    raw = json.loads(sweep.spec_json(spec))
    raw["resources"]["gpus_per_trial"] = -1
    ids = {"tracking_uri": "sqlite:///unused.db", "experiment_id": "1", "parent_run_id": "0" * 32}
    (spec.storage_dir / sweep.STATE_FILE).write_text(json.dumps({"spec": raw, **ids}))
    assert main(["sweep", "--resume", str(spec.storage_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()  # one line, naming the file and the field
    assert err.startswith("error: ") and "sweep.json': spec.resources.gpus_per_trial: -1 -> 'auto'" in err, err


def test_a_finished_trial_without_a_finite_objective_is_not_a_result(capsys):
    """Issue 24.4: a trial 'finished' with a NaN final evaluation made the sweep exit 0."""
    rows = [{"trial_id": "t1", "status": "finished", "objective": None, "failure_reason": None}]
    assert sweep_exit_code(rows) == 1
    err = capsys.readouterr().err
    assert "no trial finished (1 started)" in err and "t1 finished: no final objective" in err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture
def sweep_with_server_away(make_spec):
    """A sweep tracked on a server that no longer answers, with the results.json its end wrote."""
    spec = make_spec(tracking={"tracking_uri": f"http://127.0.0.1:{_closed_port()}"})
    spec.storage_dir.mkdir(parents=True)
    state = {
        "spec": json.loads(sweep.spec_json(spec)),
        "tracking_uri": spec.tracking.tracking_uri,
        "experiment_id": "1",
        "parent_run_id": "p",
        "storage_dir": str(spec.storage_dir),
    }
    (spec.storage_dir / sweep.STATE_FILE).write_text(json.dumps(state))

    def row(trial_id, status, objective, lr):
        return trial_row(
            trial_id,
            {"optim.lr": lr},
            objective,
            status,
            run_id=f"run-{trial_id}",
            step=10,
            peak_memory_bytes=1e6,
            optimizer_state_bytes=1e5,
            tokens_per_s=1e4,
            wall_time=3.0,
            device_hours=0.001,
        )

    rows = [row("good_1", "finished", 4.25, 3e-3), row("worse_2", "finished", 5.5, 1e-3)]
    return spec, rows


def _ranktune(*args, timeout=120):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "ranktune.platform.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_report_and_export_read_results_json_when_the_tracking_server_is_away(sweep_with_server_away, tmp_path):
    """Issue 24.8: `report` on a sweep whose server was down hung 4 min 15 s, then gave 5 tracebacks."""
    from ranktune.platform.tracking.client import results_json

    spec, rows = sweep_with_server_away
    (spec.storage_dir / "results.json").write_text(results_json(rows))
    report = _ranktune("report", spec.storage_dir, "--no-plots")
    assert report.returncode == 0, report.stderr
    notes = [line for line in report.stderr.splitlines() if "does not answer" in line]
    assert len(notes) == 1 and "using" in notes[0] and "results.json" in notes[0]
    assert "Traceback" not in report.stderr and "good_1" in report.stdout and "worse_2" in report.stdout
    export = _ranktune("export", spec.storage_dir, "--out", tmp_path / "7b.yaml", "--budget-gib", 80)
    assert export.returncode == 0, export.stderr
    assert "exported trial good_1" in export.stdout and (tmp_path / "7b.yaml").is_file()
    assert "does not answer" in export.stderr and "Traceback" not in export.stderr


def test_report_without_a_server_or_results_json_says_so_in_one_line(sweep_with_server_away):
    spec, _ = sweep_with_server_away
    report = _ranktune("report", spec.storage_dir, "--no-plots")
    assert report.returncode == 2
    [line] = [ln for ln in report.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: tracking.tracking_uri: 'http://127.0.0.1:") and "nothing to read offline" in line


# ----------------------------------------------------------------- chaos: a full disk in the replicate phase

NAN_EVAL_LR = 5e-3
DISK_FULL = "DISK_FULL"  # while this file is in the sweep directory, the disk is full for the replicates


def disk_fills_during_replicates(trainer, params):
    """Fault injection through run_trial's `prepare` hook (the sweep's documented test hook):

    - the search trial with NAN_EVAL_LR evaluates to NaN at its last step (finite train loss);
    - a replicate (its params carry a new train.seed) finds the disk full at its last checkpoint
      while DISK_FULL exists: after the checkpoint at the first evaluation, the write fails with ENOSPC,
      as torch.save does on a full disk."""
    import errno
    from pathlib import Path

    if params.get("optim.lr") == NAN_EVAL_LR:
        evaluate = trainer.evaluate

        def nan_at_the_end():
            metrics = evaluate()
            return {**metrics, "eval_loss": float("nan")} if trainer.step == trainer.cfg.train.steps else metrics

        trainer.evaluate = nan_at_the_end
    if "train.seed" in params:
        full, save = Path(trainer.output_dir).parents[1] / DISK_FULL, trainer.save

        def save_unless_full():
            if full.exists() and trainer.step >= trainer.cfg.train.steps:
                raise OSError(errno.ENOSPC, "No space left on device", str(trainer.output_dir / "checkpoints"))
            return save()

        trainer.save = save_unless_full


@pytest.fixture
def local_ray():
    import sys

    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers get the fault injection
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_full_disk_in_the_replicate_phase_then_resume_ends_complete_and_correct(
    tmp_path, token_cache, local_ray, capsys
):
    """Issue 24.5 and its chaos test, with 24.4 at the sweep level: replicates that all failed on a full
    disk gave `- +/- - (n=0)`, exit 0 and a frozen confirm.json; resume replayed the failures."""
    import optuna
    import ray
    import torch
    from support.tiny import tiny_sweep_base

    from ranktune.platform.cli.sweep import _print_outcome
    from ranktune.platform.report.replicates import CONFIRM_FILE
    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.tracking import client as tracking
    from ranktune.platform.tracking.client import RESUMED_TAG, STATUS_TAG, child_runs, mlflow_client
    from ranktune.trainables.run import train_run

    raw = {
        "name": "chaos",
        "base_overrides": tiny_sweep_base(token_cache),
        "storage": str(tmp_path / "chaos"),
        "max_concurrent": 1,
        "space": {"params": {"optim.lr": {"type": "choice", "values": [3e-3, NAN_EVAL_LR]}}},
        "search": {"algorithm": "grid"},
        "scheduler": {"name": "none"},
        "budget": {"steps_per_trial": 10},
        "confirm": {"top_k": 2, "seeds": 2},
    }
    spec = spec_from_dict(raw)
    spec.storage_dir.mkdir(parents=True)
    (spec.storage_dir / DISK_FULL).write_text("")

    first = sweep.run_sweep(spec, prepare=disk_fills_during_replicates, progress=False)
    assert first["confirm"] is None and not (spec.storage_dir / CONFIRM_FILE).exists()  # nothing frozen
    assert first.get("confirm_failures", "").startswith("replicates: 2 of 2 failed (")
    assert "No space left on device" in first["confirm_failures"] and "sweep --resume" in first["confirm_failures"]
    _, state = sweep.load_state(spec.storage_dir)
    rows = {r["params"]["optim.lr"]: r for r in collect_trials(spec, state)}
    assert rows[NAN_EVAL_LR]["status"] == "failed"
    assert rows[NAN_EVAL_LR]["failure_reason"] == "diverged at step 10: eval loss is nan"
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{spec.storage_dir / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]  # none left RUNNING
    ray.shutdown()

    (spec.storage_dir / DISK_FULL).unlink()  # space is back
    second = sweep.resume_sweep(spec.storage_dir, prepare=disk_fills_during_replicates, progress=False)
    from ranktune.platform.report.replicates import FAILED_FILE

    assert second["confirm_failures"] is None and not (spec.storage_dir / FAILED_FILE).exists()
    confirm = json.loads((spec.storage_dir / CONFIRM_FILE).read_text())
    [config] = confirm["configurations"]
    assert config["params"] == {"optim.lr": 3e-3} and config["n"] == 2

    # Correct: each replicate, resumed from the checkpoint it wrote before the disk filled, ends where a
    # straight run of the same config and seed ends (bit for bit on CPU, one thread as in the trial).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = [
            train_run(spec.trial_config({"optim.lr": 3e-3, "train.seed": seed}, output_dir=tmp_path / f"s{seed}"))[
                "final_eval_loss"
            ]
            for seed in (1, 2)
        ]
    finally:
        torch.set_num_threads(threads)
    assert sorted(config["values"]) == sorted(straight)

    client = mlflow_client(state.tracking_uri)
    replicates = [
        run for config_run in state.confirm_runs.values() for run in child_runs(client, state.experiment_id, config_run)
    ]
    assert len(replicates) == 2
    for run in replicates:
        assert run.data.tags[STATUS_TAG] == "finished" and run.info.status == "FINISHED"
        assert "No space left on device" in run.data.tags[tracking.RETRIED_TAG] and run.data.tags[RESUMED_TAG] == "5"
    nan_trial = {r["params"]["optim.lr"]: r for r in collect_trials(spec, state)}[NAN_EVAL_LR]
    assert nan_trial["status"] == "failed" and nan_trial["failure_reason"].startswith("diverged at step 10")
    capsys.readouterr()
    _print_outcome(spec, second)
    assert "(n=2, baseline;" in capsys.readouterr().out  # AdamW, the tiny base's method, is the baseline


@pytest.mark.parametrize("flags,retry", [([], True), (["--no-retry-failed"], False)])
def test_resume_retries_failed_trials_unless_told_not_to(monkeypatch, tmp_path, flags, retry):
    """Issue 24.5: `--resume` replayed failures; now it runs them again by default (the slow chaos test
    above shows it end to end)."""
    asked = {}

    def resume(storage_dir, **options):
        asked.update(options)
        raise ConfigError(["stop here"])

    monkeypatch.setattr(sweep, "resume_sweep", resume)
    assert main(["sweep", "--resume", str(tmp_path), "--quiet", *flags]) == 2
    assert asked["retry_failed"] is retry
