"""A training run in its directory (trainables/run.py): what `ranktune train` and every sweep trial call."""

import json
import re

import pytest

from ranktune.trainables.callbacks import Callback
from ranktune.trainables.config import ConfigError
from ranktune.trainables.run import finish_run, start_run, train_run


class StopAtStep(Callback):
    """Ask the trainer to stop after `step`, as Ctrl-C or a scheduler pause would."""

    def __init__(self, step: int):
        self.step, self.trainer = step, None

    def on_step(self, metrics):
        if metrics["step"] == self.step:
            self.trainer.stop_requested = True


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_its_config_metrics_and_summary(make_config, tmp_path):
    cfg = make_config(f"output.dir={tmp_path / 'run'}")
    summary = train_run(cfg)
    out = tmp_path / "run"
    assert json.loads((out / "summary.json").read_text()) == summary and summary["completed"]
    assert (out / "config.yaml").is_file() and [r["step"] for r in records(out) if r["event"] == "eval"] == [0, 5, 10]
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        start_run(cfg)


def test_a_stopped_run_resumes_where_it_stopped_and_ends_like_a_straight_run(make_config, tmp_path):
    straight = train_run(make_config(f"output.dir={tmp_path / 'straight'}"))

    cfg = make_config(f"output.dir={tmp_path / 'stopped'}")
    stop = StopAtStep(5)
    trainer = start_run(cfg, callbacks=[stop])
    stop.trainer = trainer
    assert not finish_run(trainer)["completed"]

    said = []
    resumed = start_run(cfg, resume=True, notify=said.append)
    assert resumed.step == 5 and said == [f"resuming {tmp_path / 'stopped'} at step 5 from {said[0].split()[-1]}"]
    summary = finish_run(resumed)
    assert summary["final_eval_loss"] == straight["final_eval_loss"]  # bit-identical on CPU
    steps = [r["step"] for r in records(tmp_path / "stopped") if r["event"] == "eval"]
    assert steps == [0, 5, 10]  # the resumed run logs each evaluation once


def test_overwrite_deletes_what_a_run_wrote_and_keeps_what_the_caller_names(make_config, tmp_path):
    cfg = make_config(f"output.dir={tmp_path / 'run'}", "train.steps=5")
    train_run(cfg)
    (tmp_path / "run" / "lock").write_text("held")
    trainer = start_run(cfg, overwrite=True, keep_on_overwrite=("lock",))
    assert trainer.step == 0 and (tmp_path / "run" / "lock").read_text() == "held"
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "summary.json").exists()


def test_overwrite_refuses_a_directory_holding_anything_a_run_does_not_write(make_config, tmp_path):
    """Issue 24.1: `--overwrite` emptied output.dir whole, the user's files with it."""
    cfg = make_config(f"output.dir={tmp_path / 'run'}", "train.steps=5")
    train_run(cfg)
    for name in ("notes.txt", "my.yaml", "a", "b", "c", "d"):
        (tmp_path / "run" / name).write_text("mine")
    (tmp_path / "run" / "data").mkdir()
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(ConfigError) as refused:
        start_run(cfg, overwrite=True)
    message = str(refused.value)
    assert "holds files a run does not write (a, b, c, d, data/ and 2 more)" in message
    assert "--overwrite deletes only config.yaml, metrics.jsonl, checkpoints, summary.json" in message
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before  # nothing deleted


@pytest.mark.parametrize("where", ["", ".", "./", "..", "~/", "/", "CWD", "HOME"])
def test_an_output_dir_a_run_must_not_own_is_refused(make_config, tmp_path, monkeypatch, where):
    """Issue 24.1: an empty output.dir (an unset $OUT) was the current directory, which --overwrite emptied."""
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "work"))
    value = {"CWD": str(work), "HOME": str(tmp_path / "work")}.get(where, where)
    with pytest.raises(ConfigError) as refused:
        start_run(make_config(f"output.dir={value}", "train.steps=5"))
    [problem] = refused.value.problems
    assert re.match(r"output\.dir: .* (is (the|a) .* -> a directory of its own|-> a directory path)", problem)
    assert list(work.iterdir()) == []


def test_resume_refuses_a_different_model(make_config, tmp_path):
    train_run(make_config(f"output.dir={tmp_path / 'run'}", "train.steps=5"))
    with pytest.raises(ConfigError, match="model: differs"):
        start_run(make_config(f"output.dir={tmp_path / 'run'}", "model.num_layers=3"), resume=True)


def test_train_with_an_empty_output_dir_refuses_and_writes_nothing(make_config, tmp_path, monkeypatch, capsys):
    """Issue 24.1 as reported: `ranktune train my.yaml --set output.dir=` (an unset $OUT), then again with
    --overwrite, deleted the folder's notes.txt, data/ and my.yaml."""
    import signal

    import yaml

    from ranktune.platform.cli.main import main

    work = tmp_path / "folder"
    (work / "data").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (work / "my.yaml").write_text(yaml.safe_dump(make_config("train.steps=5").model_dump(mode="json")))
    monkeypatch.chdir(work)
    handler = signal.getsignal(signal.SIGINT)
    try:
        for extra in ([], ["--overwrite"]):
            assert main(["train", "my.yaml", "--set", "output.dir=", "--quiet", *extra]) == 2
            assert capsys.readouterr().err.strip() == (
                "error: output.dir: '' -> a directory path (empty means the "
                "current directory, which a run must not own)"
            )
    finally:
        signal.signal(signal.SIGINT, handler)
    assert sorted(p.name for p in work.iterdir()) == ["data", "my.yaml", "notes.txt"]
