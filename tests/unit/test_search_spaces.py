"""Sweep specs and search spaces: validation against the model and budget, sampling, grid. No Ray."""

import optuna
import pytest

from ranktune.search_spaces import PRESETS, SearchSpace, load_spec, spec_from_dict
from ranktune.trainables.config import ConfigError

BASE = {"model": {"name": "tiny"}, "train": {"batch_size": 8, "micro_batch_size": 8}}


def spec(space, **kw):
    return spec_from_dict({"base_overrides": BASE, "space": space, **kw})


def problems(space, **kw) -> str:
    with pytest.raises(ConfigError) as exc:
        spec(space, **kw)
    return str(exc.value)


def test_shipped_presets_validate_against_60m_at_paper_like_budgets():
    for preset in PRESETS:
        s = spec_from_dict(
            {
                "base_overrides": {"model": {"name": "60m"}},
                "space": {"preset": preset},
                "budget": {"steps_per_trial": 5000},
            }
        )
        assert s.search_space().all_params()


def test_shipped_default_sweep_spec_is_valid():
    s = load_spec("configs/sweeps/compare_tiny.yaml")
    assert s.space.preset == "compare" and s.budget.num_trials >= 8
    assert s.base is None and s.base_overrides["model"]["name"] == "tiny"  # base file inlined
    # The README's demo answers for every method of `compare`, each with at least one trial.
    compare = PRESETS["compare"]["branches"]["choices"]
    assert list(s.search_space().branches.choices) == [*compare, "adamw_frozen_blocks"]  # + the sanity baseline
    assert s.budget.num_trials >= len(compare) * s.search.min_trials_per_branch
    # It is searched for the run it exports: every trained trial is launchable at 7b on 24 GiB.
    assert s.target is not None and (s.target.model, s.target.budget_gib) == ("7b", 24.0)


def test_rank_above_smallest_targeted_dimension_is_named():
    msg = problems(
        {"fixed": {"optim.name": "galore_adamw"}, "params": {"galore.rank": {"type": "choice", "values": [64, 512]}}}
    )
    assert "space galore.rank: with galore.rank=512" in msg and "64" not in msg.split("galore.rank=512")[0]


def test_warmup_longer_than_budget_is_named():
    msg = problems(
        {"params": {"schedule.warmup_steps": {"type": "int", "low": 10, "high": 300, "step": 10}}},
        budget={"steps_per_trial": 100},
    )
    assert "schedule.warmup_steps=300" in msg and "fewer than train.steps (100)" in msg


def test_restart_interval_not_above_restart_warmup_is_named():
    msg = problems(
        {
            "fixed": {"optim.name": "relora"},
            "params": {
                "relora.relora_every": {"type": "int", "low": 10, "high": 50, "step": 10},
                "relora.restart_warmup_steps": {"type": "choice", "values": [20]},
            },
        }
    )
    assert "relora.relora_every=10" in msg and "relora.restart_warmup_steps" in msg
    assert "relora_every=50" not in msg  # the valid end of the range is not blamed


def test_unknown_parameter_name_is_named():
    assert "galore.rnak: unknown key" in problems({"params": {"galore.rnak": {"type": "choice", "values": [8]}}})


@pytest.mark.parametrize(
    "param,expected",
    [
        ({"type": "uniform", "low": 0.5, "high": 0.5}, "for a constant setting put it under space.fixed"),
        ({"type": "uniform", "low": 0.6, "high": 0.5}, "empty range"),
        ({"type": "loguniform", "low": 0.0, "high": 1.0}, "loguniform needs low > 0"),
        ({"type": "choice", "values": []}, "non-empty `values`"),
        ({"type": "int", "low": 1.5, "high": 4}, "integer low and high"),
        ({"type": "normal", "low": 0, "high": 1}, "params.optim.lr.type"),
    ],
)
def test_bad_distributions(param, expected):
    assert expected in problems({"params": {"optim.lr": param}})


def test_unknown_spec_key_and_bad_values():
    assert "budgett: unknown key" in problems({"preset": "compare"}, budgett={})
    assert "budget.num_trials: 0" in problems({"preset": "galore"}, budget={"num_trials": 0})
    assert "scheduler.name: 'median'" in problems({"preset": "galore"}, scheduler={"name": "median"})


def test_batch_must_split_over_workers():
    msg = problems(
        {"params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}, resources={"num_workers": 3}
    )
    assert "resources.num_workers" in msg


def test_define_by_run_suggests_branch_params_only_in_their_branch():
    space = SearchSpace.model_validate(PRESETS["compare"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(40):
        trial = study.ask()
        values = space.sample(trial)
        study.tell(trial, 0.0)
        seen.setdefault(values["optim.name"], set()).update(values)
        assert set(trial.params) == set(values)
    assert seen["adamw"] == {"optim.lr", "optim.name"}
    assert {"galore.rank", "galore.update_proj_gap"} <= seen["galore_adamw"]
    assert not any(k.startswith("galore.") for k in seen["relora"])
    assert 1e-4 <= min(study.trials, key=lambda t: t.params["optim.lr"]).params["optim.lr"]


def test_grid_enumerates_each_branch():
    space = SearchSpace.model_validate(
        {
            "params": {"optim.lr": {"type": "choice", "values": [1e-3, 1e-2]}},
            "branches": {
                "key": "optim.name",
                "choices": {
                    "adamw": {},
                    "galore_adamw": {"galore.rank": {"type": "int", "low": 8, "high": 24, "step": 8}},
                },
            },
        }
    )
    points = space.grid()
    assert len(points) == 2 + 2 * 3
    assert {"optim.lr": 1e-2, "optim.name": "galore_adamw", "galore.rank": 24} in points


def test_grid_refuses_continuous_ranges():
    msg = problems(
        {"params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}, search={"algorithm": "grid"}
    )
    assert "search.algorithm: grid" in msg


def test_cli_sweep_with_bad_spec_exits_2(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("space: {params: {galore.rank: {type: choice, values: [4096]}}, fixed: {optim.name: galore_adamw}}")
    out = subprocess.run(
        [sys.executable, "-m", "ranktune.platform.cli", "sweep", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "galore.rank" in out.stderr and "Traceback" not in out.stderr
