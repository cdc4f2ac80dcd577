"""Nothing lost, nothing cryptic: one owner per directory, recoverable damage, refusals in one line (exit 2)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ranktune.platform.cli.main import main
from ranktune.platform.store.locks import OWNER_FILE, DirectoryBusy, own_directory
from ranktune.trainables.callbacks import JsonlMetrics


@pytest.fixture
def cli(capsys):
    """Run `ranktune ARGS` in this process: (exit code, stdout, stderr). Restores the SIGINT handler train sets."""
    handler = signal.getsignal(signal.SIGINT)

    def run(*argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    yield run
    signal.signal(signal.SIGINT, handler)


@pytest.fixture
def config_file(make_config, tmp_path):
    """Factory: write a tiny config (make_config overrides) to a YAML file and return its path."""

    def write(*overrides, name="config.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(make_config(*overrides).model_dump(mode="json")))
        return path

    return write


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]


@pytest.fixture
def holder(tmp_path):
    """Factory: a second, live process that owns a directory until the test ends."""
    procs = []

    def hold(directory, field="output.dir", what="training run"):
        code = textwrap.dedent(f"""
            import sys, time
            from ranktune.platform.store.locks import own_directory
            with own_directory({str(directory)!r}, {field!r}, {what!r}):
                print("held", flush=True)
                time.sleep(120)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------- one owner per directory (items 2, 3)


def test_a_second_train_into_a_busy_output_dir_is_refused(cli, config_file, holder, tmp_path):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    rc, _, err = cli("train", config_file(), "--quiet")
    assert rc == 2
    [line] = error_lines(err)
    assert "output.dir" in line and "in use by another training run" in line and f"pid {proc.pid}" in line
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    d = tmp_path / "sweep"
    d.mkdir()
    (d / OWNER_FILE).write_text(json.dumps({"host": "somehost", "pid": 999999, "started": 0}))
    with caplog.at_level(logging.WARNING), own_directory(d, "storage", "sweep"):
        assert json.loads((d / OWNER_FILE).read_text())["pid"] != 999999
    assert "pid 999999 on somehost" in caplog.text and "no longer running" in caplog.text
    assert not (d / OWNER_FILE).exists()  # released on exit


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path, holder):
    proc = holder(tmp_path / "d")
    with pytest.raises(DirectoryBusy, match=f"pid {proc.pid}"):
        with own_directory(tmp_path / "d", "output.dir", "training run"):
            pass
    proc.kill()
    proc.wait()
    with own_directory(tmp_path / "d", "output.dir", "training run"):
        pass


# ----------------------------------------------------------------------- resume (items 5, 6, 14)


def test_resume_drops_a_partial_last_metrics_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    records = [{"event": "log", "step": s, "train_loss": 1.0} for s in (5, 10, 15)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "log", "step": 2')
    with caplog.at_level(logging.WARNING):
        JsonlMetrics(path).truncate_after(10)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10]
    assert "partial last line" in caplog.text


def test_a_refused_resume_exits_2_in_one_line_and_writes_nothing(cli, config_file, tmp_path):
    path = config_file("train.steps=4", "output.checkpoint_every=2")
    assert cli("train", path, "--quiet")[0] == 0
    run_dir = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    rc, _, err = cli("train", path, "--resume", "--quiet", "--set", "model.num_layers=3")
    assert rc == 2
    [line] = error_lines(err)
    assert line.startswith("error: model: differs from the one checkpoint")
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # config.yaml and metrics.jsonl untouched


def test_resume_without_a_checkpoint_says_it_starts_at_step_0(cli, config_file):
    rc, _, err = cli("train", config_file("train.steps=3", "output.checkpoint_every=0"), "--resume", "--quiet")
    assert rc == 0
    assert "no checkpoint in" in err and "starting at step 0" in err


def test_resume_after_a_truncated_newest_checkpoint_falls_back(cli, config_file, tmp_path):
    path = config_file("train.steps=4", "output.checkpoint_every=2")
    assert cli("train", path, "--quiet")[0] == 0
    newest = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    rc, _, err = cli("train", path, "--resume", "--quiet", "--set", "train.steps=6")
    assert rc == 0, err
    assert "at step 2 from step_00000002.pt" in err


# ----------------------------------------------------------------------- bad input: exit 2, one line (items 12, 14)


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "fake.model").write_bytes(b"not a sentencepiece model")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "spec_list_base.yaml").write_text("base: list.yaml\nspace: {preset: galore}\n")
    (tmp_path / "spec_binary_base.yaml").write_text("base: binary.yaml\nspace: {preset: galore}\n")
    (tmp_path / "empty_spec.yaml").write_text("")
    (tmp_path / "branch_typo.yaml").write_text(
        "space:\n  params: {optim.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}}\n"
        "  branches: {key: optim.nmae, choices: {adamw: {}}}\n"
    )
    (tmp_path / "branch_lr.yaml").write_text("space:\n  preset: galore\n  branches: {key: optim.lr, choices: {a: {}}}")
    return tmp_path


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["config", "{d}/binary.yaml"], "config file '{d}/binary.yaml' is not UTF-8 text"),
        (["config", "{d}"], "config file '{d}' is a directory -> a YAML file"),
        (["config", "--set", "optim.betas=[0.9,"], "override optim.betas: value '[0.9,' is not valid YAML"),
        (["config", "--set", "optim.betas=[2,0.9]"], "optim.betas.0: 2 -> Input should be less than 1"),
        (["estimate", "--set", "model.hidden_size=1000000000"], "model.hidden_size: 1000000000 -> Input"),
        (
            ["train", "--set", "data.source=files", "--set", "data.files=[{d}/latin1.txt]"],
            "data.files: '{d}/latin1.txt' -> UTF-8 text (byte 3 is not valid UTF-8)",
        ),
        (["train", "--set", "data.tokenizer={d}/fake.model"], "data.tokenizer: '{d}/fake.model' -> a SentencePiece"),
        (["train", "--set", "output.dir={d}/afile"], "output.dir: '{d}/afile' -> a directory (it is an existing file)"),
        (["train", "--set", "output.dir=/proc/ranktune-run"], "output.dir: '/proc/ranktune-run' -> a writable"),
        (["sweep", "{d}/spec_list_base.yaml"], "base config '{d}/list.yaml' holds a list -> a mapping of sections"),
        (["sweep", "{d}/spec_binary_base.yaml"], "base config '{d}/binary.yaml' is not UTF-8 text"),
        (["sweep", "{d}/empty_spec.yaml"], "space: missing -> required"),
        (["sweep", "{d}/branch_typo.yaml"], "space branches.key optim.nmae: optim.nmae: unknown key"),
        (["sweep", "{d}/branch_lr.yaml"], "space: ['optim.lr'] appear more than once among fixed"),
    ],
)
def test_bad_input_is_refused_with_exit_2_in_one_line(cli, bad_files, argv, expected, token_cache):
    argv = [a.format(d=bad_files) for a in argv]
    if argv[0] == "train":
        argv += ["--set", f"data.cache_dir={token_cache}/bad-input", "--quiet"]
    rc, _, err = cli(*argv)
    assert rc == 2, err
    [line] = error_lines(err)
    assert line.startswith("error: ") and expected.format(d=bad_files) in line
    assert not list(Path(token_cache).rglob("*.tmp"))  # no half-written token files


def test_an_empty_config_file_says_every_setting_is_a_default(cli, tmp_path, caplog):
    (tmp_path / "empty.yaml").write_text("")
    with caplog.at_level(logging.WARNING):
        rc, _, _ = cli("config", tmp_path / "empty.yaml")
    assert rc == 0 and "is empty: every setting takes its default" in caplog.text
