"""The typed core the platform's parts share: SweepState (sweep.json) and SweepResults (a sweep loaded once)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from support.paths import SWEEP_BEFORE_MOVE

from ranktune.platform.report.trials import SweepResults
from ranktune.platform.store.state import SweepState, load_state

BEFORE_MOVE = SWEEP_BEFORE_MOVE  # written by main at c93933a


def test_sweep_json_is_written_back_byte_for_byte(tmp_path):
    """Reading sweep.json and writing it again changes nothing: the keys keep the file's order, keys of
    other versions are kept, and a fresh sweep writes the keys in the order older versions did."""
    written = (BEFORE_MOVE / "sweep.json").read_bytes()
    state = SweepState.from_json(json.loads(written))
    state.write(tmp_path)
    assert (tmp_path / "sweep.json").read_bytes() == written

    shuffled = {
        "parent_run_id": "p",
        "future_key": [1, 2],
        "spec": {"name": "x"},
        "tracking_uri": "t",
        "experiment_id": "1",
    }
    state = SweepState.from_json(shuffled)
    assert state.other == {"future_key": [1, 2]} and list(state.to_json()) == list(shuffled)
    state.confirm_runs = {"trial": "run"}
    assert list(state.to_json()) == [*shuffled, "confirm_runs"]

    fresh = SweepState(spec={}, tracking_uri="t", experiment_id="1", parent_run_id="p", storage_dir="/s")
    assert list(fresh.to_json()) == ["spec", "tracking_uri", "experiment_id", "parent_run_id", "storage_dir"]


def test_a_sweep_from_before_the_move_loads_once_into_typed_results(tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(BEFORE_MOVE, copy)
    results = SweepResults.load(copy)
    spec, state = load_state(copy)
    assert results.spec == spec and results.state == state and results.storage == copy.resolve()
    assert state.storage_dir == str(copy.resolve())  # relocated to where it now is
    assert results.offline is None and results.confirm is not None
    finished = [row for row in results.trials if row["status"] == "finished"]
    assert finished and all(isinstance(row["objective"], float) for row in finished)
    replicated = {c["trial_id"] for c in results.confirm["configurations"]}
    assert {row["replicate_of"] for row in results.replicates} == replicated


@pytest.mark.slow
def test_a_sweep_written_before_the_move_resumes_reports_and_exports(tmp_path):
    """The directory main wrote before platform/ had subpackages: `sweep --resume` restores Tune's pickled
    searcher, scheduler and callbacks by their old module paths (the shims), then report and export read it."""
    copy = tmp_path / "sweep"
    shutil.copytree(BEFORE_MOVE, copy)
    cli = [sys.executable, "-m", "ranktune.platform.cli"]
    resumed = subprocess.run([*cli, "sweep", "--resume", str(copy)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "winner: galore_adamw (trial e5e0d78b" in resumed.stdout
    report = subprocess.run([*cli, "report", str(copy), "--no-plots"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and "winner: galore_adamw (trial e5e0d78b" in report.stdout, report.stderr[-3000:]
    out = tmp_path / "7b.yaml"
    export = subprocess.run(
        [*cli, "export", str(copy), "--target", "7b", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert "trial e5e0d78b" in out.read_text() and "optim:" in out.read_text()
