"""Live sweep progress in the terminal: one row per trial with its params, step, loss and status."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback


class SweepProgress(Callback):
    def __init__(
        self, num_trials: int, metric: str, steps_per_trial: int, enabled: bool = True, mode: str = "min"
    ) -> None:
        self.num_trials, self.metric, self.enabled, self.mode = num_trials, metric, enabled, mode
        self.steps_per_trial = steps_per_trial
        self.rows: dict[str, dict[str, Any]] = {}
        self._live = None
        self.started = time.monotonic()
        self.best: tuple[float, str] | None = None  # (objective, "method trial") of the best full-budget trial

    def __getstate__(self) -> dict[str, Any]:  # pickled into Tune's experiment state
        return {**self.__dict__, "_live": None}

    def headline(self) -> str:
        """`trials 3/10 done, 4:12 elapsed, ETA 9:48, best eval_loss 6.3926 (galore_adamw f2e8fa84)`."""
        done = sum(r["status"] != "running" for r in self.rows.values())
        elapsed = time.monotonic() - self.started
        parts = [f"trials {done}/{self.num_trials} done", f"{_clock(elapsed)} elapsed"]
        if 0 < done < self.num_trials:  # trials stopped early make this an upper bound
            parts.append(f"ETA {_clock(elapsed / done * (self.num_trials - done))}")
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best[0]:.4f} ({self.best[1]})")
        return ", ".join(parts)

    def _table(self):
        from rich.table import Table

        table = Table(title=self.headline())
        for col in ("trial", "method", "params", "step", "train loss", self.metric, "status"):
            table.add_column(col, overflow="fold")
        for trial_id, r in self.rows.items():
            table.add_row(
                trial_id,
                r["method"],
                r["params"],
                f"{r['step']}/{self.steps_per_trial}",
                r["loss"],
                r["objective"],
                r["status"],
            )
        return table

    def _update(self, trial, **changes) -> None:
        if not self.enabled:
            return
        from ranktune.platform.report.table import params_text

        row = self.rows.setdefault(
            trial.trial_id,
            {
                "method": str(trial.config.get("optim.name", "")),
                "params": params_text(trial.config),
                "step": 0,
                "loss": "-",
                "objective": "-",
                "status": "running",
            },
        )
        row.update(changes)
        if row["status"] == "finished" and row["objective"] != "-":
            value = float(row["objective"])
            if self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0]):
                self.best = (value, f"{row['method']} {trial.trial_id}".strip())
        if sys.stdout.isatty():
            from rich.live import Live

            if self._live is None:
                self._live = Live(self._table(), refresh_per_second=2, transient=False)
                self._live.start()
            self._live.update(self._table())
        elif changes.get("status") not in (None, "running"):  # logs and CI: one line per finished trial
            print(
                f"[sweep] {trial.trial_id} {row['method']} {row['status']} at step {row['step']}/"
                f"{self.steps_per_trial}: {self.metric} {row['objective']}  ({row['params']})\n"
                f"[sweep] {self.headline()}",
                flush=True,
            )

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._update(trial, status="running")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        loss = result.get("train_loss")
        self._update(
            trial,
            step=result.get("step", 0),
            loss=f"{loss:.3f}" if loss is not None else "-",
            objective=f"{result.get(self.metric, float('nan')):.4f}",
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        if "step" not in last:  # returned before training: over the memory budget, or infeasible at the target
            self._update(trial, status="not trained")
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


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
