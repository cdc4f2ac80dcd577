"""Sweeps under faults (issue 24): unschedulable resources, non-finite evaluations, failed trials and a
full disk, an unreachable tracking server for the reading commands."""

from __future__ import annotations

import json
import math

import pytest

from ranktune.platform import sweep
from ranktune.platform.cli import main, sweep_exit_code
from ranktune.search_spaces.spec import spec_from_dict
from ranktune.trainables.config import ConfigError


@pytest.fixture
def make_spec(make_config, tmp_path):
    def make(**sections):
        raw = {
            "name": "faults",
            "base_overrides": make_config().model_dump(mode="json"),
            "space": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
            "budget": {"num_trials": 1, "steps_per_trial": 10},
            "storage": str(tmp_path / "sweep"),
        }
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        return spec_from_dict(raw)

    return make


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
    (spec.storage_dir / sweep.STATE_FILE).write_text(json.dumps({"spec": raw}))
    assert main(["sweep", "--resume", str(spec.storage_dir), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: resources.gpus_per_trial: -1 -> 'auto'")


def test_a_finished_trial_without_a_finite_objective_is_not_a_result(capsys):
    """Issue 24.4: a trial 'finished' with a NaN final evaluation made the sweep exit 0."""
    rows = [{"trial_id": "t1", "status": "finished", "objective": None, "failure_reason": None}]
    assert sweep_exit_code(rows) == 1
    err = capsys.readouterr().err
    assert "no trial finished (1 started)" in err and "t1 finished: no final objective" in err
