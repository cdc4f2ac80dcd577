"""Live sweep progress in the terminal: one row per trial with its params, step, loss and status."""

from __future__ import annotations

import sys
from typing import Any

from ray.tune import Callback


class SweepProgress(Callback):
    def __init__(self, num_trials: int, metric: str, steps_per_trial: int, enabled: bool = True) -> None:
        self.num_trials, self.metric, self.enabled = num_trials, metric, enabled
        self.steps_per_trial = steps_per_trial
        self.rows: dict[str, dict[str, Any]] = {}
        self._live = None

    def __getstate__(self) -> dict[str, Any]:  # pickled into Tune's experiment state
        return {**self.__dict__, "_live": None}

    def _table(self):
        from rich.table import Table

        done = sum(r["status"] != "running" for r in self.rows.values())
        table = Table(title=f"trials {done}/{self.num_trials} done")
        for col in ("trial", "params", "step", "train loss", self.metric, "status"):
            table.add_column(col, overflow="fold")
        for trial_id, r in self.rows.items():
            table.add_row(trial_id, r["params"], str(r["step"]), r["loss"], r["objective"], r["status"])
        return table

    def _update(self, trial, **changes) -> None:
        if not self.enabled:
            return
        row = self.rows.setdefault(
            trial.trial_id,
            {"params": _short(trial.config), "step": 0, "loss": "-", "objective": "-", "status": "running"},
        )
        row.update(changes)
        if sys.stdout.isatty():
            from rich.live import Live

            if self._live is None:
                self._live = Live(self._table(), refresh_per_second=2, transient=False)
                self._live.start()
            self._live.update(self._table())
        elif changes.get("status") not in (None, "running"):  # logs and CI: one line per finished trial
            print(f"[sweep] {trial.trial_id} {row['status']} at step {row['step']}: {self.metric} {row['objective']}"
                  f"  ({row['params']})", flush=True)  # fmt: skip

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._update(trial, status="running")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        loss = result.get("train_loss")
        self._update(trial, step=result.get("step", 0), loss=f"{loss:.3f}" if loss is not None else "-",
                     objective=f"{result.get(self.metric, float('nan')):.4f}")  # fmt: skip

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        if "step" not in last:  # returned before training: over the sweep's memory budget
            self._update(trial, status="pruned (memory)")
        elif last["step"] < self.steps_per_trial:  # stopped by the scheduler
            self._update(trial, status="stopped early")
        else:
            self._update(trial, status="finished")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._update(trial, status="failed")

    def on_experiment_end(self, trials, **info) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _short(params: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in sorted(params.items()))
