"""A training run in its directory (trainables/run.py): what `ranktune train` and every sweep trial call."""

import json

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


def test_overwrite_empties_the_directory_but_keeps_what_the_caller_names(make_config, tmp_path):
    cfg = make_config(f"output.dir={tmp_path / 'run'}", "train.steps=5")
    train_run(cfg)
    (tmp_path / "run" / "lock").write_text("held")
    (tmp_path / "run" / "stray.txt").write_text("old")
    trainer = start_run(cfg, overwrite=True, keep_on_overwrite=("lock",))
    assert trainer.step == 0 and (tmp_path / "run" / "lock").read_text() == "held"
    assert not (tmp_path / "run" / "stray.txt").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_a_different_model(make_config, tmp_path):
    train_run(make_config(f"output.dir={tmp_path / 'run'}", "train.steps=5"))
    with pytest.raises(ConfigError, match="model: differs"):
        start_run(make_config(f"output.dir={tmp_path / 'run'}", "model.num_layers=3"), resume=True)
