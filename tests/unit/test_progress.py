"""Live progress in logs (no terminal): steps as done/total, elapsed, ETA, best so far, params with sections."""

from __future__ import annotations

from types import SimpleNamespace

from ranktune.platform.sweep.progress import SweepProgress


def test_log_lines_say_steps_of_total_eta_and_best_so_far(capsys):
    progress = SweepProgress(3, "eval_loss", 80)
    galore = SimpleNamespace(
        trial_id="t1",
        config={"optim.name": "galore_adamw", "galore.rank": 64, "optim.lr": 6e-3},
        last_result={"step": 80},
    )
    relora = SimpleNamespace(
        trial_id="t2", config={"optim.name": "relora", "relora.rank": 16, "optim.lr": 1e-2}, last_result={"step": 20}
    )
    for trial, step, loss in ((galore, 80, 6.39), (relora, 20, 7.36)):
        progress.on_trial_start(0, [], trial)
        progress.on_trial_result(0, [], trial, {"step": step, "train_loss": loss + 0.1, "eval_loss": loss})
        progress.on_trial_complete(0, [], trial)
    out = capsys.readouterr().out
    assert "t1 galore_adamw finished at step 80/80: eval_loss 6.3900  (galore.rank=64 optim.lr=6e-3)" in out
    assert "t2 relora stopped early at step 20/80" in out and "relora.rank=16" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("[sweep] trials 2/3 done, 0:0") and "ETA 0:0" in last
    assert last.endswith("best eval_loss 6.3900 (galore_adamw t1)")  # a stopped trial is not a result
