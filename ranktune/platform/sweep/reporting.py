"""Trainer events to Ray results, shared by the one-worker trial (trial.py) and the DDP workers
(distributed.py)."""

from __future__ import annotations

import json
from collections.abc import Callable

from ranktune.trainables.callbacks import Callback, Metrics


class ReportTo(Callback):
    """Turns trainer events into Tune results: one result per evaluation (`report` also gets the path
    of the checkpoint written with it).

    Each result carries the `log` records since the previous one (`log_history`, a JSON string so
    Tune's CSV/TensorBoard loggers pass it through), so the driver can draw step-indexed training
    curves without a result per step (ASHA only sees evaluations).
    """

    def __init__(self, report: Callable[[Metrics, str | None], None]) -> None:
        self.report = report
        self.pending: list[Metrics] = []
        self.last_log: Metrics = {}
        self.start_step = 0
        self.eval_set = ""
        self.reported = False

    def on_train_start(self, info: Metrics) -> None:
        self.start_step = info["start_step"]  # > 0 when this run continues from a checkpoint
        self.eval_set = info["eval_set"]  # the held-out set's identity, recorded on the MLflow run

    def on_log(self, metrics: Metrics) -> None:
        keep = (
            "step",
            "tokens",
            "train_loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "peak_memory_bytes",
            "optimizer_state_bytes",
            "parameter_bytes",
            "gradient_bytes",
            "wall_time",
        )
        record = {k: metrics[k] for k in keep if k in metrics}
        self.pending.append(record)
        self.last_log = record

    def on_eval(self, metrics: Metrics) -> None:
        result = {**self.last_log, **{k: v for k, v in metrics.items() if k != "checkpoint"}}
        result["log_history"] = json.dumps(self.pending)
        result["start_step"] = self.start_step
        result["eval_set"] = self.eval_set
        self.pending = []
        self.reported = True
        self.report(result, metrics.get("checkpoint"))

    def on_train_end(self, summary: Metrics) -> None:
        # Restored from a checkpoint taken at the very last step (the driver died after the trial's
        # final report but before Tune recorded it as finished): nothing was left to train, so no
        # evaluation was reported. Report the final state once, or Tune would end the trial with an
        # empty result and the sweep would count a finished trial as stopped early.
        if self.reported or not summary["completed"]:
            return
        self.reported = True
        final = {
            "step": summary["steps"],
            "tokens": summary["tokens"],
            "eval_loss": summary["final_eval_loss"],
            "eval_ppl": summary["final_eval_ppl"],
            "wall_time": summary["wall_time"],
        }
        self.report({**final, "log_history": "[]", "start_step": self.start_step, "eval_set": self.eval_set}, None)


def with_node_id(result: Metrics) -> Metrics:
    """The result plus the Ray node it was computed on: MLflow then shows where each trial ran, and
    where it continued after its node failed."""
    import ray

    return {**result, "node_id": ray.get_runtime_context().get_node_id()}
