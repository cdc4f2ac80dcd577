"""Shared fixtures: the tiny training config (tests/tiny.py) with a per-session token cache."""

from __future__ import annotations

import os

import pytest
import torch
from support.tiny import tiny_config_dict

from ranktune.search_spaces.spec import spec_from_dict
from ranktune.trainables.config import apply_overrides, config_from_dict

# Keep CPU runs deterministic and bounded on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> str:
    """One token cache per test session: the embedded corpus is tokenized once for all tests."""
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture
def make_config(token_cache, tmp_path):
    """Factory: a tiny, fast TrainConfig (embedded corpus capped at 300k tokens), plus overrides."""

    def make(*overrides: str, **sections):
        raw = tiny_config_dict(str(tmp_path / "run"), token_cache, **sections)
        return config_from_dict(apply_overrides(raw, list(overrides)))

    return make


@pytest.fixture
def make_spec(make_config, tmp_path, request):
    """Factory: a one-trial sweep spec over the tiny config (lr searched), named after the test module;
    keyword sections update the spec's (dicts merged one level deep)."""

    def make(**sections):
        raw = {
            "name": request.module.__name__.removeprefix("test_").replace("_", "-"),
            "base_overrides": make_config().model_dump(mode="json"),
            "space": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
            "budget": {"num_trials": 1, "steps_per_trial": 10},
            "storage": str(tmp_path / "sweep"),
        }
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        return spec_from_dict(raw)

    return make
