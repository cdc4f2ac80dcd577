"""The finished target-aware sweep (`target_sweep`, tests/conftest.py) as its users meet it: copied
elsewhere with the original gone, every command still works; `ranktune ui` opens on its trials."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from support.browser import dump_dom, needs_chromium, page_text

from ranktune.platform.report.trials import collect_trials
from ranktune.platform.store.state import load_state
from ranktune.platform.tracking.client import PARAMS_TAG, child_runs, mlflow_client


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ranktune.platform.cli", *args]


def _start_ui(sweep_dir, cwd, port: int) -> tuple[subprocess.Popen, queue.Queue]:
    """`ranktune ui` in its own session (so the test can stop all of it), its output lines in a queue."""
    proc = subprocess.Popen(
        _cli("ui", str(sweep_dir), "--port", str(port)),
        cwd=cwd,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return proc, lines


def _wait_for_line(lines: queue.Queue, seen: list[str], start: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith(start):
            return line
    raise AssertionError(f"no line starting {start!r} within {timeout_s:g} s:\n{''.join(seen)[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # ranktune ui stops mlflow ui and its workers on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # report, export, ui and --resume on the copy: about two minutes on 2 cores
def test_a_copied_sweep_works_from_another_directory_with_the_original_gone(target_sweep, tmp_path):
    """The session's finished sweep, copied; the original renamed away (restored after, for the other
    tests); every command run from an unrelated working directory must use the copy alone."""
    from ranktune.platform.serve.cluster import free_port

    original = target_sweep.storage_dir
    copy, elsewhere = tmp_path / "moved" / original.name, tmp_path / "elsewhere"
    shutil.copytree(original, copy)
    elsewhere.mkdir()
    parked = original.with_name(original.name + "-parked")
    original.rename(parked)
    outputs: dict[str, str] = {}
    try:
        for name, args in {
            "report": ("report", str(copy)),
            "export": ("export", str(copy), "--target", "7b"),
            "resume": ("sweep", "--resume", str(copy), "--quiet"),
        }.items():
            done = subprocess.run(_cli(*args), cwd=elsewhere, capture_output=True, text=True, timeout=600)
            outputs[name] = done.stdout + done.stderr
            assert done.returncode == 0, f"{name}:\n{outputs[name][-3000:]}"
        assert (copy / "export_7b.yaml").is_file() and "winner:" in outputs["report"]

        _, state = load_state(copy)
        port, seen = free_port(), []
        ui, lines = _start_ui(copy, elsewhere, port)
        try:
            _wait_for_line(lines, seen, "MLflow UI for", timeout_s=300)
            base = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(
                f"{base}/api/2.0/mlflow/runs/get?run_id={state.parent_run_id}", timeout=30
            ) as response:
                artifact_uri = json.load(response)["run"]["info"]["artifact_uri"]
            assert artifact_uri.startswith(copy.resolve().as_uri()), artifact_uri
            # Served from the copy: the original is gone, so these bytes can only come from there.
            url = f"{base}/get-artifact?path=results.json&run_uuid={state.parent_run_id}"
            with urllib.request.urlopen(url, timeout=30) as response:
                assert json.loads(response.read()) == json.loads((copy / "results.json").read_text())
        finally:
            _stop(ui)
        outputs["ui"] = "".join(seen)
        assert not original.exists()  # nothing recreated the old place
    finally:
        if not original.exists():
            parked.rename(original)
    for name, text in outputs.items():
        assert str(original) not in text, f"{name} names the old place:\n{text[-3000:]}"
    assert list(elsewhere.iterdir()) == []  # no stray ./sweeps (or anything else) in the working directory
    rows = collect_trials(*load_state(copy))
    # 4 finished (GaLore x2, ReLoRA, and AdamW as the reference): resume re-ran nothing
    assert len(rows) == 10 and sum(r["status"] == "finished" for r in rows) == 4


@needs_chromium
@pytest.mark.slow  # `mlflow ui` takes 20-60 s to answer on 2 cores, Chromium 15 s more
def test_mlflow_ui_opens_on_the_trials_in_the_training_view(target_sweep, tmp_path):
    """The URL `ranktune ui` prints, in headless Chromium: the training view (not GenAI's traces), the
    trials listed (not folded under the sweep's parent) by their method-prefixed names, with status."""
    from ranktune.platform.serve.cluster import free_port

    spec, state = load_state(target_sweep.storage_dir)
    client = mlflow_client(state.tracking_uri)
    trials = child_runs(client, state.experiment_id, state.parent_run_id)
    port, seen = free_port(), []
    ui, lines = _start_ui(target_sweep.storage_dir, tmp_path, port)
    try:
        line = _wait_for_line(lines, seen, "MLflow UI for", timeout_s=300)
        url = line.split(": ", 1)[1].split()[0]
        text = page_text(dump_dom(url, size="2400,1200"))
    finally:
        _stop(ui)
    assert "Training runs" not in text and "Observability" not in text, text[:1500]  # GenAI's navigation
    assert f"{len(trials)} matching runs" in text, text[:1500]  # the trials, without their parent
    for run in trials:
        method = json.loads(run.data.tags[PARAMS_TAG])["optim.name"]
        assert run.info.run_name.startswith(f"{method}-") and run.info.run_name in text, (run.info.run_name, text)
    assert "finished" in text and "pruned_memory" in text  # the ranktune.status column
