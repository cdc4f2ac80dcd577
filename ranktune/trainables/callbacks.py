"""Metric callbacks: the trainer's only way of telling the outside world what happens.

Ray Tune and MLflow subscribe through the same interface (in `ranktune.platform`), so the trainer
never imports them. Metric names are the ones used everywhere else (config, MLflow, docs).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Metrics = dict[str, Any]


class Callback:
    def on_train_start(self, info: Metrics) -> None:
        """Once, with the run's facts: parameter counts, tokens per step, resume step, data sizes."""

    def on_step(self, metrics: Metrics) -> None:
        """Every optimizer step: step, tokens, train_loss, lr (cheap; for progress bars)."""

    def on_log(self, metrics: Metrics) -> None:
        """Every `train.log_every` steps: the full set (tokens_per_s, memory, optimizer-state bytes...)."""

    def on_eval(self, metrics: Metrics) -> None:
        """After each evaluation: eval_loss, eval_ppl, and `checkpoint` (a path) when one was written."""

    def on_train_end(self, summary: Metrics) -> None:
        """Once, at a normal end."""


def finite_or_null(value: Any) -> Any:
    """NaN and +/-inf as JSON null: Python's json writes them as bare NaN / Infinity, which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(finite_or_null(record), allow_nan=False)


class JsonlMetrics(Callback):
    """Appends `{"event": "log"|"eval", ...}` records to a jsonl file, one line each, flushed at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """On resume from `step`, drop records a crashed run logged after its last checkpoint, and a
        last line it was killed while writing (with a warning)."""
        if not self.path.is_file():
            return
        lines = [line for line in self.path.read_text(errors="replace").splitlines() if line]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append((json.loads(line), line))
            except json.JSONDecodeError:
                where = (
                    "a partial last line (the run was stopped while writing it)"
                    if number == len(lines)
                    else (f"line {number}, which is not a JSON record")
                )
                log.warning("%s: dropped %s", self.path, where)
        kept = []
        for record, line in records:
            recorded_step = record.get("step") if isinstance(record, dict) else None
            if isinstance(recorded_step, bool) or not isinstance(recorded_step, int):
                log.warning("%s: dropped a record without an integer step: %s", self.path, line[:80])
            elif recorded_step <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def _write(self, event: str, metrics: Metrics) -> None:
        with self.path.open("a") as f:
            f.write(json_line({"event": event, **metrics}) + "\n")

    def on_log(self, metrics: Metrics) -> None:
        self._write("log", metrics)

    def on_eval(self, metrics: Metrics) -> None:
        self._write("eval", metrics)


class RichProgress(Callback):
    """A progress bar with the latest train / eval loss, tokens/s and LR."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.task = None
        self.info = {"loss": "-", "eval": "-", "tok/s": "-", "lr": "-"}

    def _render(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.info.items())

    def on_train_start(self, info: Metrics) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=info["total_steps"], completed=info["start_step"], info="")

    def on_step(self, metrics: Metrics) -> None:
        self.info["loss"] = f"{metrics['train_loss']:.3f}"
        self.info["lr"] = f"{metrics['lr']:.2e}"
        self.progress.update(self.task, completed=metrics["step"], info=self._render())

    def on_log(self, metrics: Metrics) -> None:
        self.info["tok/s"] = f"{metrics['tokens_per_s']:.0f}"

    def on_eval(self, metrics: Metrics) -> None:
        self.info["eval"] = f"{metrics['eval_loss']:.3f}"
        self.progress.update(self.task, info=self._render())

    def on_train_end(self, summary: Metrics) -> None:
        self.progress.stop()

    def close(self) -> None:
        self.progress.stop()
