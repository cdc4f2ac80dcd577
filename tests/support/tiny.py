"""The tiny training setup every test shares: a 64-wide LLaMA on the embedded corpus, 32-token blocks.

`TINY_SWEEP_BASE` is what a sweep spec's `base_overrides` holds; `tiny_config_dict` is a whole
training config (the `make_config` fixture in conftest.py builds on it). Copies are returned, so a
test may change what it gets.
"""

from __future__ import annotations

import copy
from typing import Any

TINY_MODEL = {"name": "tiny", "hidden_size": 64, "intermediate_size": 172, "num_heads": 4}
TINY_MODEL_ARGS = {k: v for k, v in TINY_MODEL.items() if k != "name"}  # model_config("tiny", **TINY_MODEL_ARGS)

TINY_SWEEP_BASE = {
    "model": TINY_MODEL,
    "data": {"seq_len": 32, "max_tokens": 300_000},
    "train": {"batch_size": 8, "micro_batch_size": 8, "eval_every": 5, "eval_blocks": 16, "log_every": 5},
    "schedule": {"warmup_steps": 2},
}


def merge(raw: dict[str, Any], sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def tiny_sweep_base(token_cache: str | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    """A sweep spec's `base_overrides`: the tiny setup (with the session's token cache) plus `sections`."""
    raw = copy.deepcopy(TINY_SWEEP_BASE)
    if token_cache is not None:
        raw["data"]["cache_dir"] = token_cache
    return merge(raw, sections)


def tiny_config_dict(output_dir: str, token_cache: str | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    """A whole training config: 10 AdamW steps on CPU, evaluated and checkpointed every 5."""
    raw = tiny_sweep_base(
        token_cache,
        data={"source": "embedded"},
        optim={"name": "adamw", "lr": 3e-3},
        schedule={"name": "cosine"},
        train={"steps": 10, "device": "cpu"},
        output={"dir": output_dir, "checkpoint_every": 5},
    )
    return merge(raw, sections)


def tiny_spec(tmp_path, token_cache: str, name: str, **sections: Any) -> dict[str, Any]:
    """A whole sweep spec (as a dict) on the tiny setup, one trial at a time, stored under `tmp_path / name`."""
    base = tiny_sweep_base(token_cache)
    return {"name": name, "base_overrides": base, "storage": str(tmp_path / name), "max_concurrent": 1, **sections}
