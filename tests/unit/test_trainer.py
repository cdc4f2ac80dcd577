import json

import pytest
import torch
from support.recorder import Recorder

from ranktune.trainables import Trainer, TrainingDiverged
from ranktune.trainables.callbacks import JsonlMetrics
from ranktune.trainables.checkpoint import list_checkpoints


def losses(rec: Recorder) -> list[float]:
    return [m["train_loss"] for m in rec.steps]


def test_resume_is_exact(make_config, tmp_path):
    straight = Recorder()
    Trainer(make_config("train.steps=20", f"output.dir={tmp_path}/a"), [straight], progress=False).fit()

    first = Recorder()
    cfg_b = make_config("train.steps=20", f"output.dir={tmp_path}/b", "output.checkpoint_every=10")
    trainer = Trainer(cfg_b, [first], progress=False)
    # Interrupt the 20-step run right after its step-10 checkpoint, as a crash or Ctrl-C would.
    original_save = trainer.save

    def save_and_stop():
        path = original_save()
        if trainer.step == 10:
            trainer.stop_requested = True
        return path

    trainer.save = save_and_stop
    summary = trainer.fit()
    assert not summary["completed"] and trainer.step == 10

    second = Recorder()
    resumed = Trainer(cfg_b, [second], progress=False)
    assert resumed.resume_from_latest() and resumed.step == 10
    resumed.fit()
    assert losses(first) + losses(second) == losses(straight)  # bit-identical on CPU
    assert second.evals[-1]["eval_loss"] == straight.evals[-1]["eval_loss"]


def test_metrics_and_checkpoints(make_config):
    rec = Recorder()
    cfg = make_config("train.steps=10", "output.keep_checkpoints=1")
    summary = Trainer(cfg, [rec, JsonlMetrics(cfg.output.dir + "/metrics.jsonl")], progress=False).fit()
    assert rec.start["start_step"] == 0 and rec.start["trainable_parameters"] == rec.start["parameters"]
    assert [m["step"] for m in rec.steps] == list(range(1, 11))
    assert [m["tokens"] for m in rec.steps][-1] == 10 * 8 * 32
    log = rec.logs[-1]
    for key in (
        "tokens_per_s",
        "wall_time",
        "optimizer_state_bytes",
        "parameter_bytes",
        "gradient_bytes",
        "peak_memory_bytes",
        "lr",
        "grad_norm",
    ):
        assert log[key] > 0, key
    # AdamW keeps two fp32 moments per parameter (plus step counters).
    assert 2 * log["parameter_bytes"] <= log["optimizer_state_bytes"] < 2 * log["parameter_bytes"] + 4096
    assert log["gradient_bytes"] == log["parameter_bytes"]
    assert [e["step"] for e in rec.evals] == [0, 5, 10]
    assert "checkpoint" in rec.evals[-1] and rec.evals[-1]["eval_ppl"] > 1
    assert len(list_checkpoints(cfg.output.dir)) == 1  # keep_checkpoints
    records = [json.loads(line) for line in open(cfg.output.dir + "/metrics.jsonl")]
    assert {r["event"] for r in records} == {"log", "eval"}
    assert summary["final_eval_loss"] == rec.evals[-1]["eval_loss"] < summary["initial_eval_loss"]


def test_gradient_accumulation_matches_one_big_batch(make_config, tmp_path):
    runs = []
    for micro in (8, 4, 2):
        rec = Recorder()
        cfg = make_config("train.steps=4", f"train.micro_batch_size={micro}", f"output.dir={tmp_path}/{micro}")
        Trainer(cfg, [rec], progress=False).fit()
        runs.append(losses(rec))
    for other in runs[1:]:
        assert other == pytest.approx(runs[0], rel=1e-5)


def test_nan_loss_stops_with_diverged_at_step(make_config):
    trainer = Trainer(make_config("train.steps=5"), progress=False)
    trainer.evaluate = lambda: {"eval_loss": 1.0, "eval_ppl": 2.7}
    with torch.no_grad():
        trainer.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="diverged at step 1"):
        trainer.fit()


# torch's Adafactor scales its step by the parameter RMS (relative step size): it wants a larger lr.
@pytest.mark.parametrize("name,lr", [("adamw8bit", 3e-3), ("adafactor", 0.1)])
def test_baseline_optimizers_train_on_cpu(make_config, name, lr):
    rec = Recorder()
    summary = Trainer(
        make_config(f"optim.name={name}", f"optim.lr={lr}", "train.steps=12"), [rec], progress=False
    ).fit()
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.5
    assert rec.logs[-1]["optimizer_state_bytes"] < rec.logs[-1]["parameter_bytes"]  # both save state memory


def test_bf16_mixed_precision_trains_on_cpu(make_config):
    summary = Trainer(make_config("train.precision=bf16-mixed", "train.steps=10"), progress=False).fit()
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.5


def test_seeded_runs_are_identical_and_seed_matters(make_config, tmp_path):
    def run(seed, name):
        rec = Recorder()
        Trainer(
            make_config("train.steps=3", f"train.seed={seed}", f"output.dir={tmp_path}/{name}"), [rec], progress=False
        ).fit()
        return losses(rec)

    assert run(0, "a") == run(0, "b")
    assert run(0, "c") != run(1, "d")


def test_resume_refuses_a_different_model(make_config, tmp_path):
    Trainer(make_config("train.steps=5", f"output.dir={tmp_path}/r"), progress=False).fit()
    other = Trainer(make_config("train.steps=10", f"output.dir={tmp_path}/r", "model.num_layers=3"), progress=False)
    with pytest.raises(ValueError, match="model: differs from the one checkpoint"):
        other.resume_from_latest()


def test_a_non_finite_evaluation_is_a_divergence(make_config, tmp_path):
    """Issue 24.4: a finite train loss with a NaN final evaluation ended `completed`, train exited 0."""
    rec = Recorder()
    cfg = make_config(
        "train.steps=4", "train.eval_every=2", "output.checkpoint_every=2", f"output.dir={tmp_path / 'run'}"
    )
    trainer = Trainer(cfg, [rec], progress=False)
    trainer.evaluate = lambda: {"eval_loss": float("nan") if trainer.step == 4 else 1.0, "eval_ppl": 2.7}
    with pytest.raises(TrainingDiverged, match="diverged at step 4: eval loss is nan"):
        trainer.fit()
    assert [e["step"] for e in rec.evals] == [0, 2] and rec.end is None  # the NaN is never reported
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000002.pt"]  # nor saved
