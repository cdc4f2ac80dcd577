"""The CLI end to end, as a user runs it (subprocesses, real embedded corpus, tiny model)."""

import json
import os
import subprocess
import sys

import pytest
from support.paths import REPO

TINY = [
    "--set",
    "model.hidden_size=64",
    "--set",
    "model.intermediate_size=172",
    "--set",
    "data.seq_len=32",
    "--set",
    "data.max_tokens=300000",
    "--set",
    "train.steps=12",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.micro_batch_size=8",
    "--set",
    "train.eval_every=6",
    "--set",
    "train.eval_blocks=16",
    "--set",
    "train.log_every=3",
    "--set",
    "output.checkpoint_every=6",
    "--set",
    "schedule.warmup_steps=2",
]


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
    probe = (
        "import sys\nfrom ranktune.platform.cli.main import main\ntry:\n    main(['sweep', '--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_train_end_to_end_then_resume(tiny_args, tmp_path):
    out = ranktune("train", "configs/tiny.yaml", *tiny_args, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    assert "final eval loss" in out.stdout
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["final_eval_loss"] < summary["initial_eval_loss"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "eval"] == [0, 6, 12]
    assert (run / "config.yaml").is_file() and list((run / "checkpoints").glob("step_*.pt"))

    # Running again into the same directory is refused unless asked to resume or overwrite.
    again = ranktune("train", "configs/tiny.yaml", *tiny_args, cwd=str(REPO))
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr

    longer = ranktune(
        "train",
        "configs/tiny.yaml",
        *tiny_args,
        "--set",
        "train.steps=15",
        "--resume",
        cwd=str(REPO),
    )
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
        "schedule",
        "--set",
        "optim.name=relora",
        "--set",
        "train.steps=100",
        "--set",
        "relora.relora_every=30",
        "--set",
        "relora.restart_warmup_steps=5",
        "--set",
        "relora.rank=16",
        "--set",
        "schedule.warmup_steps=10",
        "--plot",
        str(tmp_path / "lr.png"),
    )
    assert out.returncode == 0, out.stderr
    assert "restarts after [30, 60, 90]" in out.stdout
    assert "step      30  lr 0  <- restart" in out.stdout
    assert (tmp_path / "lr.png").stat().st_size > 1000


def test_version_and_top_level_help_names_every_registered_method():
    from ranktune import __version__
    from ranktune.trainables.optim import OPTIMIZERS

    out = ranktune("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"ranktune {__version__}"
    out = ranktune("--help")
    assert out.returncode == 0
    methods = out.stdout.split("methods (optim.name", 1)[1]
    assert all(f"  {name} " in methods for name in OPTIMIZERS), methods


def test_every_command_that_takes_a_sweep_dir_says_what_it_is():
    for command in ("report", "ui", "dashboard", "export"):
        out = ranktune(command, "--help")
        text = " ".join(out.stdout.split())
        assert "sweep_dir a sweep's directory: its spec's `storage`" in text, (command, out.stdout)
    assert "SWEEP_DIR: a sweep's directory" in " ".join(ranktune("sweep", "--help").stdout.split())


def test_export_refuses_an_unknown_target_before_anything_else(tmp_path):
    out = ranktune("export", str(tmp_path / "no-such-sweep"), "--target", "13b")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --target: '13b' -> one of ['130m', '1b', '350m', '60m', '7b', 'tiny', 'tiny4'] (model presets: "
        "ranktune models)"
    ]


def test_printed_lines_fold_at_spaces_within_the_width():
    from ranktune.platform.cli.common import wrapped

    line = (
        "verdict, apollo_adamw vs galore_adamw (runner-up): add seeds (gap 0.0551, 95% interval [-0.0315, "
        "0.142]; Welch t 1.98, df 3.1, p 0.14; about 7 seeds per arm needed) sweeps/compare-tiny-1765000000/"
        "plots/a_very_long_path_that_cannot_be_broken.png"
    )
    text = wrapped(["  " + line], width=60)
    lines = text.splitlines()
    assert text.split() == line.split()  # every word whole, in order
    assert all(len(ln) <= 60 for ln in lines if " " in ln.strip())  # only a lone unbreakable word may be wider
    assert all(ln.startswith("      ") for ln in lines[1:])  # continuations indented under their line
