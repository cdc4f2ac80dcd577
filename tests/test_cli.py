"""The CLI end to end, as a user runs it (subprocesses, real embedded corpus, tiny model)."""

import json
import os
import subprocess
import sys

import pytest

TINY = [
    "--set", "model.hidden_size=64", "--set", "model.intermediate_size=172",
    "--set", "data.seq_len=32", "--set", "data.max_tokens=300000",
    "--set", "train.steps=12", "--set", "train.batch_size=8", "--set", "train.micro_batch_size=8",
    "--set", "train.eval_every=6", "--set", "train.eval_blocks=16", "--set", "train.log_every=3",
    "--set", "output.checkpoint_every=6", "--set", "schedule.warmup_steps=2",
]  # fmt: skip


def ranktune(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "ranktune.platform.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


@pytest.fixture
def tiny_args(token_cache, tmp_path):
    return [*TINY, "--set", f"data.cache_dir={token_cache}", "--set", f"output.dir={tmp_path / 'run'}", "--quiet"]


def test_help_lists_commands():
    out = ranktune("--help")
    assert out.returncode == 0
    for command in ("train", "config", "models"):
        assert command in out.stdout


def test_help_does_not_import_torch():
    probe = ("import sys\nfrom ranktune.platform.cli import main\ntry:\n    main(['sweep', '--help'])\n"
             "except SystemExit:\n    pass\nprint('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_train_end_to_end_then_resume(tiny_args, tmp_path):
    out = ranktune("train", "configs/tiny.yaml", *tiny_args, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert "final eval loss" in out.stdout
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["final_eval_loss"] < summary["initial_eval_loss"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "eval"] == [0, 6, 12]
    assert (run / "config.yaml").is_file() and list((run / "checkpoints").glob("step_*.pt"))

    # Running again into the same directory is refused unless asked to resume or overwrite.
    again = ranktune("train", "configs/tiny.yaml", *tiny_args, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr

    longer = ranktune(
        "train", "configs/tiny.yaml", *tiny_args, "--set", "train.steps=15", "--resume",
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )  # fmt: skip
    assert longer.returncode == 0, longer.stderr
    assert "resuming" in longer.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["event"] == "log"]
    assert steps == sorted(set(steps)) and steps[-1] == 15  # no duplicated records after resume


def test_bad_config_exits_2_without_traceback(tmp_path):
    out = ranktune("train", "--set", "optim.lr=0", "--set", "train.batch_size=3", "--set", "train.micro_batch_size=2")
    assert out.returncode == 2
    assert "optim.lr: 0" in out.stderr and "Traceback" not in out.stderr


def test_models_lists_paper_configs():
    out = ranktune("models")
    assert out.returncode == 0 and "7b" in out.stdout and "6,738.4M" in out.stdout


def test_schedule_shows_relora_sawtooth(tmp_path):
    out = ranktune(
        "schedule", "--set", "optim.name=relora", "--set", "train.steps=100", "--set", "relora.relora_every=30",
        "--set", "relora.restart_warmup_steps=5", "--set", "relora.rank=16", "--set", "schedule.warmup_steps=10",
        "--plot", str(tmp_path / "lr.png"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "restarts after [30, 60, 90]" in out.stdout
    assert "step      30  lr 0  <- restart" in out.stdout
    assert (tmp_path / "lr.png").stat().st_size > 1000
