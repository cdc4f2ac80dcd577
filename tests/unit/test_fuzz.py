"""Random mutations of a valid config and spec, and (issue 24) of storage templates, numeric flags, sweep files,
metrics records and checkpoint files: every outcome is success or a refusal (exit 2, one line per problem), never
a traceback. In-process, a few hundred cases in about a minute."""

from __future__ import annotations

import copy
import io
import random

import pytest
import yaml
from support.tiny import TINY_MODEL

from ranktune.platform.cli.main import main
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
    0,
    -1,
    1,
    2**63,
    -(2**63),
    1e308,
    -1e-308,
    float("nan"),
    float("inf"),
    0.5,
    True,
    None,
    "",
    "x",
    "1e9",
    "\x00\xff",
    "ü" * 3,
    [],
    [1, 2, 3],
    [0.9],
    {},
    {"a": 1},
    "[0.9,",
    "{{",
    ":",
    "- a",
]


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


# ---------------------------------------------------------------- issue 24: the new input classes
# storage templates, numeric CLI flags, damaged sweep files, metrics.jsonl records, checkpoint files.

STORAGE_PIECES = [
    "sweeps",
    "{name}",
    "{",
    "}",
    "{{",
    "}}",
    "{0}",
    "{foo}",
    "{name!r}",
    "{name:>5}",
    "?",
    "#",
    "%",
    "%20",
    " ",
    "a",
    "/",
    "..",
    "~",
    "ü",
    "",
]


def test_random_storage_values_are_accepted_safely_or_refused_in_one_line(tmp_path):
    import string

    rng = random.Random(SEED + 1)
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(120):
        storage = "".join(rng.choice(STORAGE_PIECES) for _ in range(rng.randint(0, 5)))
        raw = {**VALID_SPEC, "storage": str(tmp_path / storage) if rng.random() < 0.7 else storage}
        try:
            spec = spec_from_dict(raw, spec_dir=tmp_path)
        except ConfigError as exc:
            [problem] = exc.problems
            assert problem.startswith("storage: ") and "\n" not in problem, problem
            outcomes["refused"] += 1
            continue
        outcomes["accepted"] += 1
        # An accepted storage names a directory whose sqlite URIs mean that directory.
        assert not set(str(spec.storage_dir)) & set("?#%"), spec.storage_dir
        fields = [f for _, f, _, _ in string.Formatter().parse(raw["storage"]) if f is not None]
        assert set(fields) <= {"name"}, raw["storage"]
    assert outcomes["accepted"] and outcomes["refused"], outcomes


NUMBER_TEXTS = [
    "0",
    "-0",
    "1",
    "-1",
    "24",
    "1e9",
    "1e400",
    "-1e400",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "+inf",
    "0x10",
    "1_000",
    "",
    " ",
    "ten",
    "65535",
    "65536",
    "99999",
    "2.5",
    "-2.5",
    "1e-320",
]


@pytest.mark.parametrize("flag", ["--budget-gib", "--max-memory-gib", "--port"])
def test_random_numeric_flags_are_refused_or_accepted_never_a_traceback(flag, tmp_path, capsys):
    import math

    rng = random.Random(SEED + len(flag))
    for _ in range(25):
        text = rng.choice(NUMBER_TEXTS)
        command = {"--budget-gib": "export", "--max-memory-gib": "report", "--port": "ui"}[flag]
        capsys.readouterr()
        try:
            rc = main([command, str(tmp_path / "no-sweep"), f"{flag}={text}"])
        except SystemExit as exc:  # argparse's refusal of the value
            rc = exc.code
            err = capsys.readouterr().err
            assert rc == 2 and f"argument {flag}: " in err and "-> a " in err, (text, err)
            continue
        err = capsys.readouterr().err
        # Accepted values only: then the (missing) sweep directory is what is refused.
        assert rc == 2 and "is not a sweep directory" in err, (text, err)
        value = float(text) if flag != "--port" else int(text)
        assert math.isfinite(value) and value > 0 and (flag != "--port" or value <= 65535), text


def corrupt_bytes(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return data[: rng.randint(0, len(data))]  # truncated
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 256)))  # garbage
    if kind == 2:
        i = rng.randrange(max(1, len(data)))
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]  # one byte changed
    return b""


def mutate_json(data, rng: random.Random):
    """A structurally changed copy: a value replaced by an odd one, or a key dropped, somewhere inside."""
    data = copy.deepcopy(data)
    node, path = data, []
    while isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(list(node))
        if not isinstance(node[key], dict):
            break
        path.append(key)
        node = node[key]
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        if rng.random() < 0.3:
            del node[key]
        else:
            node[key] = rng.choice([v for v in ODD_VALUES if not isinstance(v, float) or v == v])
    return data


def test_damaged_sweep_files_are_refused_in_one_line_or_still_read(tmp_path_factory, token_cache, capsys):
    import json
    import shutil

    from support.tiny import tiny_sweep_base

    from ranktune.platform.store.files import write_json_atomic
    from ranktune.platform.sweep import driver as sweep

    template = tmp_path_factory.mktemp("fuzz-sweep") / "sweep"
    spec = spec_from_dict({**VALID_SPEC, "base_overrides": tiny_sweep_base(token_cache), "storage": str(template)})
    template.mkdir()
    state = {"spec": json.loads(sweep.spec_json(spec)), **sweep.start_tracking(spec)}
    write_json_atomic(template / sweep.STATE_FILE, state)
    pristine = {name: (template / name).read_bytes() for name in ("sweep.json", "mlflow.db")}
    rng = random.Random(SEED + 24)
    outcomes = {"read": 0, "refused": 0}
    work = tmp_path_factory.mktemp("fuzz-sweep-copy") / "sweep"
    for case in range(40):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work)
        target = rng.choice(["sweep.json", "sweep.json", "sweep.json", "mlflow.db", "confirm.json"])
        if target == "sweep.json" and rng.random() < 0.5:
            (work / target).write_text(json.dumps(mutate_json(json.loads(pristine[target]), rng), default=str))
        elif target == "confirm.json":
            (work / target).write_bytes(corrupt_bytes(b'{"configurations": [], "verdict": "x", "why": "y"}', rng))
        else:
            (work / target).write_bytes(corrupt_bytes(pristine[target], rng))
        capsys.readouterr()
        rc = main(["report", str(work), "--no-plots"])
        err = capsys.readouterr().err
        assert rc in (0, 2), (case, target, err)
        if rc == 2:
            assert_refusal_lines(err)
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1
    assert outcomes["refused"], outcomes


def test_garbage_metrics_records_never_break_a_resume(tmp_path):
    import json

    from ranktune.trainables.callbacks import JsonlMetrics

    rng = random.Random(SEED + 5)
    path = tmp_path / "metrics.jsonl"
    for _ in range(50):
        lines = []
        for _ in range(rng.randint(0, 8)):
            record = rng.choice(
                [
                    {"event": "log", "step": rng.randint(0, 20)},
                    {"step": rng.choice(ODD_VALUES)},
                    {},
                    [1, 2],
                    "text",
                    7,
                    None,
                ]
            )
            line = json.dumps(record, default=str)
            lines.append(line[: rng.randint(0, len(line))] if rng.random() < 0.1 else line)
        path.write_text("\n".join(lines) + ("\n" if rng.random() < 0.5 else ""))
        JsonlMetrics(path).truncate_after(10)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            assert isinstance(record["step"], int) and not isinstance(record["step"], bool) and record["step"] <= 10


def test_random_checkpoint_files_are_skipped_as_unreadable(tmp_path):
    import torch

    from ranktune.trainables.checkpoint import CheckpointError, checkpoint_dir, load_latest_checkpoint

    rng = random.Random(SEED + 6)
    checkpoint_dir(tmp_path).mkdir(parents=True)
    path = checkpoint_dir(tmp_path) / "step_00000001.pt"
    for _ in range(40):
        kind = rng.randrange(3)
        if kind == 0:
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 2048))))
        elif kind == 1:
            choices = [torch.zeros(2), {"model": {}}, {"step": 1}, [1, 2], "x", {"w": torch.ones(1)}]
            torch.save(rng.choice(choices), path)
        else:
            buffer = io.BytesIO()
            torch.save({"step": 1, "model": {"w": torch.ones(4)}}, buffer)
            path.write_bytes(corrupt_bytes(buffer.getvalue(), rng))
        try:
            assert load_latest_checkpoint(tmp_path) is None
        except CheckpointError as exc:  # only a file that needs code to load is refused outright
            assert "could run code" in str(exc), exc
