"""One recorder of what the trainer reports, for every test that trains."""

from __future__ import annotations

from typing import Any

from ranktune.trainables.callbacks import Callback


class Recorder(Callback):
    """Every callback of a run, in order; with `stop_at`, asks the trainer (the test sets `recorder.trainer`)
    to stop after those steps, as the CLI's SIGINT handler does."""

    def __init__(self, stop_at: tuple[int, ...] | set[int] = ()) -> None:
        self.trainer = None
        self.stop_at = set(stop_at)
        self.steps: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None

    def on_train_start(self, info):
        self.start = info

    def on_step(self, metrics):
        self.steps.append(dict(metrics))
        if metrics["step"] in self.stop_at:
            self.trainer.stop_requested = True

    def on_log(self, metrics):
        self.logs.append(dict(metrics))

    def on_eval(self, metrics):
        self.evals.append(dict(metrics))

    def on_train_end(self, summary):
        self.end = summary

    def by_step(self) -> dict[int, dict[str, Any]]:
        """The step records by step number (a resumed run's start after the checkpoint's step)."""
        return {s["step"]: s for s in self.steps}

    def logs_by_step(self) -> dict[int, dict[str, Any]]:
        return {s["step"]: s for s in self.logs}


# How close the memory estimate must come to what the trainer's own tensor accounting reports.
ESTIMATE_TOLERANCE = 0.10


def measured_tensor_bytes(cfg) -> dict[str, float]:
    """Bytes by category (weights, gradients, each optimizer state) as the trainer accounts them at its last log."""
    from ranktune.trainables.trainer import Trainer

    recorder = Recorder()
    Trainer(cfg, [recorder], progress=False).fit()
    m = recorder.logs[-1]
    categories = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("optimizer_state_bytes/")}
    return {"weights": m["parameter_bytes"], "gradients": m["gradient_bytes"], **categories}
