"""Shared fixtures: the tiny training config (tests/support/tiny.py) with a per-session token cache, and
the one finished sweep the tests that read a sweep directory share."""

from __future__ import annotations

import os

import pytest
import torch
from support.tiny import tiny_config_dict, tiny_sweep_base

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


TARGET_SWEEP_BUDGET_GIB = 0.5  # on CPU: seq_len 32 trials estimate ~0.17 GiB, seq_len 256 ones ~0.83 GiB


@pytest.fixture(scope="session")
def target_sweep(tmp_path_factory, token_cache):
    """One finished sweep for every test that reads a sweep directory (export, copy and relocation, UI):
    memory- and target-aware (7b on 24 GiB), 10 grid points of GaLore, ReLoRA, AdamW and LoRA on the tiny
    setup, a memory budget that prunes seq_len 256. About a minute on a local Ray, built once per session."""
    import ray

    from ranktune.platform.sweep.driver import run_sweep

    tmp = tmp_path_factory.mktemp("export")
    raw = {
        "name": "mem",
        "storage": str(tmp / "mem"),
        "max_concurrent": 1,
        "memory_budget_gib": TARGET_SWEEP_BUDGET_GIB,
        "target": {"model": "7b", "budget_gib": 24},
        "base_overrides": tiny_sweep_base(
            token_cache, relora={"rank": 8, "relora_every": 5, "restart_warmup_steps": 1}
        ),
        "space": {
            "params": {"data.seq_len": {"type": "choice", "values": [32, 256]}},
            "branches": {
                "key": "optim.name",
                "choices": {
                    "galore_adamw": {"galore.rank": {"type": "choice", "values": [8, 16]}},
                    "relora": {},
                    "adamw": {},
                    "lora": {},
                },
            },
        },
        "search": {"algorithm": "grid"},
        "scheduler": {"name": "none"},
        "budget": {"steps_per_trial": 10},
    }
    spec = spec_from_dict(raw)
    try:
        run_sweep(spec, progress=False)
    finally:
        ray.shutdown()
    return spec
