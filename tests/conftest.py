"""Shared fixtures: a small, fast training config on the embedded corpus with a per-session token cache."""

from __future__ import annotations

import os

import pytest
import torch

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
        raw = {
            "model": {"name": "tiny", "hidden_size": 64, "intermediate_size": 172, "num_heads": 4},
            "data": {"source": "embedded", "seq_len": 32, "max_tokens": 300_000, "cache_dir": token_cache},
            "optim": {"name": "adamw", "lr": 3e-3},
            "schedule": {"name": "cosine", "warmup_steps": 2},
            "train": {
                "steps": 10,
                "batch_size": 8,
                "micro_batch_size": 8,
                "eval_every": 5,
                "eval_blocks": 16,
                "log_every": 5,
                "device": "cpu",
            },
            "output": {"dir": str(tmp_path / "run"), "checkpoint_every": 5},
        }
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        return config_from_dict(apply_overrides(raw, list(overrides)))

    return make
