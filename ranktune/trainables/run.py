"""One training run in its own directory: what `ranktune train` and every sweep trial do around `Trainer.fit`.

    output.dir/
        config.yaml      the full config of the run (written before training starts)
        metrics.jsonl    one record per log and evaluation, cut back to the checkpoint on resume
        checkpoints/     the newest `output.keep_checkpoints` checkpoints
        summary.json     written when `fit` returns (finished, stopped, or out of budget)

A directory that already holds checkpoints is continued only when asked (`resume`) and only with a
compatible config; `overwrite` deletes what a run wrote there first, and refuses a directory that
holds anything else (an `output.dir` pointed at a folder of the user's would otherwise be emptied).
Everything a resume needs is checked before anything in the directory is written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ranktune.trainables.callbacks import Callback, JsonlMetrics, finite_or_null
from ranktune.trainables.checkpoint import check_resume_compatible, latest_checkpoint, load_latest_checkpoint
from ranktune.trainables.config import TrainConfig
from ranktune.trainables.errors import ConfigError
from ranktune.trainables.trainer import Trainer

RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "checkpoints", "summary.json")  # what a run writes in output.dir
SHOWN_FOREIGN = 5  # entries named in the refusal; the rest are counted


def check_output_dir(output_dir: str | Path, field: str = "output.dir") -> None:
    """Refuse an output directory a run must never own: empty (an unset `$OUT`), the current directory
    or one above it, the home directory or one above it, or a filesystem root."""
    text = str(output_dir)
    if not text.strip():
        raise ConfigError(
            [f"{field}: {text!r} -> a directory path (empty means the current directory, which a run must not own)"]
        )
    path = Path(os.path.expanduser(text)).resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if path == path.parent:
        why = "a filesystem root"
    elif path == cwd or path in cwd.parents:
        why = "the current directory" if path == cwd else "a directory above the current one"
    elif path == home or path in home.parents:
        why = "the home directory" if path == home else "a directory above the home directory"
    else:
        return
    raise ConfigError([f"{field}: {text!r} is {why} -> a directory of its own, e.g. runs/NAME"])


def clear_run_directory(out: Path, keep: Sequence[str] = ()) -> None:
    """Delete what a run wrote in `out` for `overwrite`, keeping the entries named in `keep` (a
    caller's lock). A directory holding anything else is refused, untouched: it is not only a run's."""
    foreign = sorted(
        e.name + ("/" if e.is_dir() and not e.is_symlink() else "")
        for e in out.iterdir()
        if e.name not in RUN_ENTRIES and e.name not in keep
    )
    if foreign:
        shown = ", ".join(foreign[:SHOWN_FOREIGN]) + (
            f" and {len(foreign) - SHOWN_FOREIGN} more" if len(foreign) > SHOWN_FOREIGN else ""
        )
        raise ConfigError(
            [
                f"output.dir {str(out)!r} holds files a run does not write ({shown}); --overwrite "
                f"deletes only {', '.join(RUN_ENTRIES)} -> move those files or choose another "
                "output.dir"
            ]
        )
    for name in RUN_ENTRIES:
        entry = out / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def start_run(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    notify: Callable[[str], None] | None = None,
    keep_on_overwrite: Sequence[str] = (),
) -> Trainer:
    """The run's trainer, with its directory prepared and, with `resume`, its newest checkpoint loaded.

    `notify` receives the one-line messages a user should see (resumed at step N, no checkpoint to
    resume); `keep_on_overwrite` names entries `overwrite` leaves in place (the caller's lock files).
    """
    check_output_dir(cfg.output.dir)
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    if latest_checkpoint(out) is not None and not resume:
        if not overwrite:
            raise ConfigError(
                [
                    f"output.dir {str(out)!r} already holds checkpoints; pass --resume to continue "
                    "that run or --overwrite to start again"
                ]
            )
        clear_run_directory(out, keep_on_overwrite)
    resumed = load_latest_checkpoint(out) if resume else None
    if resumed is not None:
        problems = check_resume_compatible(cfg.model_dump(mode="json"), resumed[1]["config"], resumed[0])
        if problems:
            raise ConfigError(problems)
    elif resume and notify is not None:
        notify(f"--resume: no checkpoint in {out / 'checkpoints'}; starting at step 0")

    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    metrics_file = JsonlMetrics(out / "metrics.jsonl")
    trainer = Trainer(cfg, callbacks=[metrics_file, *callbacks], progress=progress)
    if resumed is not None:
        trainer.load_state_dict(resumed[1])
        metrics_file.truncate_after(trainer.step)
        if notify is not None:
            notify(f"resuming {out} at step {trainer.step} from {resumed[0].name}")
    elif metrics_file.path.exists():
        metrics_file.path.unlink()
    return trainer


def finish_run(trainer: Trainer) -> dict[str, Any]:
    """`fit` the trainer and write its summary next to its metrics."""
    summary = trainer.fit()
    (trainer.output_dir / "summary.json").write_text(json.dumps(finite_or_null(summary), indent=2, allow_nan=False))
    return summary


def train_run(cfg: TrainConfig, **start: Any) -> dict[str, Any]:
    """Prepare the run directory, train, write the summary: `start_run` then `finish_run`."""
    return finish_run(start_run(cfg, **start))
