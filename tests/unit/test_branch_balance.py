"""Balanced branches: every method of a conditional space gets its start-up trials. No Ray cluster."""

import pytest

from ranktune.platform.sweep.driver import build_searcher
from ranktune.search_spaces import spec_from_dict
from ranktune.trainables.config import ConfigError

BASE = {"model": {"name": "tiny"}, "train": {"batch_size": 8, "micro_batch_size": 8}}
METHODS = {"adamw", "adamw8bit", "galore_adamw", "fira_adamw", "apollo_adamw", "apollo_mini", "relora", "lora"}


def compare_spec(tmp_path, **search):
    return spec_from_dict(
        {
            "base_overrides": BASE,
            "space": {"preset": "compare"},
            "storage": str(tmp_path / "s"),
            "budget": {"num_trials": 10, "steps_per_trial": 5000},
            "search": search,
        }
    )


@pytest.mark.parametrize("algorithm", ["tpe", "random"])
def test_each_branch_is_sampled_first_once(tmp_path, algorithm):
    spec = compare_spec(tmp_path, algorithm=algorithm, min_trials_per_branch=1)
    spec.storage_dir.mkdir(parents=True)
    searcher, num_trials = build_searcher(spec, spec.storage_dir)
    assert num_trials == 10
    first = [searcher.suggest(f"t{i}") for i in range(len(METHODS))]
    assert {p["optim.name"] for p in first} == METHODS
    # only the branch is fixed: its own parameters are still sampled
    galore = next(p for p in first if p["optim.name"] == "galore_adamw")
    assert "galore.rank" in galore and "optim.lr" in galore


def test_start_up_per_branch_must_fit_the_trial_budget(tmp_path):
    with pytest.raises(ConfigError, match=r"search.min_trials_per_branch: 3 x 8 branches = 24 trials"):
        compare_spec(tmp_path, min_trials_per_branch=3)
