"""Issue 24 items 11, 17, 18 (trainer side): non-finite weights are never checkpointed, so the last good
checkpoint survives for `--resume --set optim.lr=...`; metrics.jsonl is valid JSON and a damaged record
does not break a resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ranktune.trainables.callbacks import Callback, JsonlMetrics
from ranktune.trainables.checkpoint import latest_checkpoint, load_latest_checkpoint
from ranktune.trainables.run import finish_run, start_run
from ranktune.trainables.trainer import TrainingDiverged


class BlowUpAfter(Callback):
    """Fault injection: after update `step` the weights hold NaN while that step's loss (computed before the
    update) was finite, what a too-large learning rate does to a run without gradient clipping."""

    def __init__(self, step: int) -> None:
        self.step, self.trainer = step, None

    def on_step(self, metrics) -> None:
        if metrics["step"] == self.step:
            with torch.no_grad():
                next(self.trainer.model.parameters()).fill_(float("nan"))


def test_non_finite_weights_are_not_saved_and_the_last_good_checkpoint_resumes(make_config):
    # No evaluation at step 3, so the checkpoint's own weight check catches it (a non-finite evaluation is a
    # divergence before any save: tests/test_trainer.py).
    overrides = ("train.steps=6", "train.eval_every=2", "output.checkpoint_every=1", "output.keep_checkpoints=1")
    cfg = make_config(*overrides)
    blow_up = BlowUpAfter(3)
    trainer = start_run(cfg, callbacks=[blow_up])
    blow_up.trainer = trainer
    with pytest.raises(
        TrainingDiverged,
        match=r"diverged at step 3: weight .* is not finite; not saved, the last "
        r"good checkpoint \(step_00000002.pt\) is kept",
    ):
        finish_run(trainer)
    path, state = load_latest_checkpoint(cfg.output.dir)
    assert path.name == "step_00000002.pt"
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # The advice after a divergence: resume with a lower learning rate, from the last good step.
    resumed = start_run(make_config(*overrides, "optim.lr=1e-4"), resume=True)
    assert resumed.step == 2
    summary = finish_run(resumed)
    assert summary["completed"] and math.isfinite(summary["final_eval_loss"])
    assert latest_checkpoint(cfg.output.dir).name == "step_00000006.pt"


def test_metrics_jsonl_is_json_even_for_non_finite_values(tmp_path):
    metrics = JsonlMetrics(tmp_path / "metrics.jsonl")
    metrics.on_eval({"step": 5, "eval_loss": float("nan"), "eval_ppl": float("inf"), "x": [float("-inf"), 1.0]})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in {line}")) == {
        "event": "eval",
        "step": 5,
        "eval_loss": None,
        "eval_ppl": None,
        "x": [None, 1.0],
    }


def test_resume_drops_records_without_an_integer_step(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"event": "log", "step": s}) for s in (1, 2, 3)]
    path.write_text("\n".join([good[0], "{}", "[1, 2]", '{"step": "x"}', '"text"', "7", good[1], good[2]]) + "\n")
    JsonlMetrics(path).truncate_after(2)
    assert path.read_text().splitlines() == good[:2]
    assert sum("without an integer step" in r.message for r in caplog.records) == 5
