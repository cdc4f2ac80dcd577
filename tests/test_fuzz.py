"""Random mutations of a valid config and spec: every outcome is success or a refusal (exit 2, one line
per problem), never a traceback. In-process, a few hundred cases in well under a minute."""

from __future__ import annotations

import copy
import random

import pytest
import yaml
from tiny import TINY_MODEL

from ranktune.platform.cli import main
from ranktune.search_spaces.spec import spec_from_dict
from ranktune.trainables.config import ConfigError

SEED = 17
CASES = 300

VALID_CONFIG = {
    "model": TINY_MODEL,
    "data": {"source": "embedded", "seq_len": 32, "max_tokens": 300000},
    "optim": {"name": "galore_adamw", "lr": 3e-3, "betas": [0.9, 0.999]},
    "galore": {"rank": 8, "update_proj_gap": 10},
    "relora": {"rank": 4, "relora_every": 10},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    "train": {"steps": 10, "batch_size": 8, "micro_batch_size": 8, "eval_every": 5, "device": "cpu"},
    "output": {"dir": "runs/fuzz", "checkpoint_every": 5},
}
VALID_SPEC = {
    "name": "fuzz",
    "base_overrides": VALID_CONFIG,
    "space": {
        "fixed": {"optim.name": "adamw"},
        "params": {
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "schedule.warmup_steps": {"type": "int", "low": 0, "high": 4},
        },
    },
    "scheduler": {"name": "asha", "grace_period": 5},
    "budget": {"num_trials": 2, "steps_per_trial": 10},
    "storage": "sweeps/fuzz",
}

ODD_VALUES = [
    0, -1, 1, 2**63, -(2**63), 1e308, -1e-308, float("nan"), float("inf"), 0.5, True, None, "", "x", "1e9",
    "\x00\xff", "ü" * 3, [], [1, 2, 3], [0.9], {}, {"a": 1}, "[0.9,", "{{", ":", "- a",
]  # fmt: skip


def leaves(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*prefix, key))
    yield prefix


def mutate(raw: dict, rng: random.Random) -> dict:
    raw = copy.deepcopy(raw)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice([p for p in leaves(raw) if p])
        node = raw
        for key in path[:-1]:
            node = node[key]
        kind = rng.random()
        if kind < 0.6:
            node[path[-1]] = rng.choice(ODD_VALUES)
        elif kind < 0.8:
            node[f"{path[-1]}_{rng.randint(0, 9)}"] = rng.choice(ODD_VALUES)  # unknown key
        else:
            del node[path[-1]]
    return raw


def assert_refusal_lines(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert lines and all(line.startswith(("error: ", "  - ")) for line in lines), err
    assert "Traceback" not in err


@pytest.mark.parametrize("chunk", range(3))
def test_mutated_configs_through_ranktune_config(chunk, tmp_path, capsys):
    rng = random.Random(SEED * 10 + chunk)
    for case in range(CASES // 3):
        path = tmp_path / f"c{case}.yaml"
        if rng.random() < 0.1:  # garbage bytes instead of YAML
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
            overrides = []
        else:
            path.write_text(yaml.safe_dump(mutate(VALID_CONFIG, rng), allow_unicode=True))
            overrides = ["--set", f"train.steps={rng.choice(ODD_VALUES)!s}"] if rng.random() < 0.2 else []
        capsys.readouterr()
        rc = main(["config", str(path), *overrides])
        _, err = capsys.readouterr()
        assert rc in (0, 2), (case, err)
        if rc == 2:
            assert_refusal_lines(err)


def test_mutated_specs_through_spec_validation(tmp_path):
    rng = random.Random(SEED)
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(CASES // 3):
        raw = mutate(VALID_SPEC, rng)
        try:
            spec_from_dict(raw, spec_dir=tmp_path)
            outcomes["accepted"] += 1
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) and "\n" not in p for p in exc.problems), exc.problems
            outcomes["refused"] += 1
    assert outcomes["accepted"] and outcomes["refused"]  # the mutations exercise both outcomes
