"""Sweeps refuse, before Ray starts or anything is written, what would break them; failures are reported as such."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ranktune.platform.cli.sweep import sweep_exit_code
from ranktune.platform.export.select import select_trial
from ranktune.platform.store.locks import DirectoryBusy
from ranktune.platform.sweep import driver as sweep
from ranktune.platform.tracking.client import strip_userinfo
from ranktune.trainables.config import ConfigError


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a sweep gets as far as starting Ray."""

    def refuse(address):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(sweep, "init_ray", refuse)


@pytest.fixture
def holder():
    procs = []

    def hold(directory):
        code = textwrap.dedent(f"""
            import time
            from ranktune.platform.store.locks import own_directory
            with own_directory({str(directory)!r}, "storage", "sweep"):
                print("held", flush=True)
                time.sleep(120)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_driver_on_a_sweep_dir_is_refused_before_writing(make_spec, holder, no_ray):
    spec = make_spec()
    proc = holder(spec.storage_dir)
    with pytest.raises(DirectoryBusy, match=f"storage: .* in use by another sweep, pid {proc.pid}"):
        sweep.run_sweep(spec)
    assert not (spec.storage_dir / "mlflow.db").exists() and not (spec.storage_dir / "sweep.json").exists()
    state = {"spec": json.loads(sweep.spec_json(spec)), "tracking_uri": "x", "experiment_id": "0", "parent_run_id": "p"}
    (spec.storage_dir / sweep.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(DirectoryBusy):
        sweep.resume_sweep(spec.storage_dir)


def test_grace_period_above_the_trial_budget_is_refused_in_the_spec(make_spec):
    with pytest.raises(ConfigError, match=r"scheduler.grace_period: 20 -> at most budget.steps_per_trial \(10\)"):
        make_spec(scheduler={"grace_period": 20})
    with pytest.raises(ConfigError, match=r"scheduler.grace_period: 0 \(one eval period: train.eval_every = 50\)"):
        make_spec(base_overrides={"train": {"eval_every": 50}})


def test_a_sweep_that_cannot_start_leaves_a_directory_a_rerun_can_use(make_spec, monkeypatch):
    spec = make_spec()
    monkeypatch.setattr(sweep, "start_ray", lambda spec, address: 0.0)

    def broken_tuner(*args):
        raise RuntimeError("the tuner could not be built")

    monkeypatch.setattr(sweep.Sweep, "tuner", broken_tuner)
    with pytest.raises(RuntimeError, match="could not be built"):
        sweep.run_sweep(spec)
    assert not (spec.storage_dir / sweep.STATE_FILE).exists()  # a rerun is not refused as an existing sweep


def test_an_unreachable_tracking_server_is_refused_before_ray(make_spec, no_ray):
    spec = make_spec(tracking={"tracking_uri": "http://user:secret@127.0.0.1:9"})
    start = time.monotonic()
    with pytest.raises(ConfigError, match="tracking.tracking_uri: 'http://127.0.0.1:9' -> a reachable MLflow") as exc:
        sweep.run_sweep(spec)
    assert "secret" not in str(exc.value)
    assert time.monotonic() - start < 10


def test_a_non_utf8_data_file_is_refused_before_ray(make_spec, tmp_path, no_ray):
    bad = tmp_path / "corpus.txt"
    bad.write_bytes(b"fine text\n" * 100 + b"\xff\xfe\xfa broken\n")
    spec = make_spec(base_overrides={"data": {"source": "files", "files": [str(bad)], "max_tokens": None}})
    with pytest.raises(ConfigError, match=r"data.files: .*corpus.txt' -> UTF-8 text \(byte 1000 is not valid UTF-8\)"):
        sweep.run_sweep(spec)


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unusable_storage_is_refused_naming_the_field(make_spec, tmp_path, no_ray, where):
    if where == "file":
        storage = tmp_path / "taken"
        storage.write_text("not a directory")
    else:
        storage = "/proc/ranktune-sweep"
    with pytest.raises(ConfigError, match="storage: .* -> a (writable )?directory"):
        sweep.run_sweep(make_spec(storage=str(storage)))


def test_a_sweep_whose_every_trial_failed_exits_nonzero_with_one_line_each(capsys):
    rows = [
        {"trial_id": "a1", "status": "failed", "failure_reason": "UnicodeDecodeError: invalid start byte"},
        {"trial_id": "a2", "status": "pruned_memory", "failure_reason": "needs 30 GiB of 24"},
    ]
    assert sweep_exit_code(rows) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: no trial finished (2 started)",
        "  trial a1 failed: UnicodeDecodeError: invalid start byte",
        "  trial a2 pruned_memory: needs 30 GiB of 24",
    ]
    finished = {"trial_id": "a3", "status": "finished", "failure_reason": None, "objective": 3.2}
    assert sweep_exit_code([*rows, finished]) == 0


def test_export_of_an_all_failed_sweep_does_not_suggest_resume():
    rows = [{"trial_id": "a1", "status": "failed", "objective": None, "peak_memory_bytes": None}]
    with pytest.raises(ConfigError) as exc:
        select_trial(rows, "min", None, "sweeps/x", None)
    assert "--resume" not in str(exc.value) and "start a new sweep" in str(exc.value)


def test_userinfo_is_stripped_from_uris():
    text = "tracking_uri: http://alice:s3cret@mlflow.example:5000/api and postgresql://bob@db/x and /plain/path"
    assert strip_userinfo(text) == "tracking_uri: http://mlflow.example:5000/api and postgresql://db/x and /plain/path"


def test_stopping_the_ui_stops_its_whole_process_group(tmp_path):
    """`ranktune ui` runs `mlflow ui` through run_process_group; its forked workers must not outlive a SIGTERM."""
    pid_file = tmp_path / "worker.pid"
    server = f"import subprocess, time; p = subprocess.Popen(['sleep', '300']); open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(300)"  # noqa: E501
    driver = f"from ranktune.platform.serve.processes import run_process_group; run_process_group([{sys.executable!r}, '-c', {server!r}])"  # noqa: E501
    proc = subprocess.Popen([sys.executable, "-c", driver])
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for _ in range(50):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived the UI")
