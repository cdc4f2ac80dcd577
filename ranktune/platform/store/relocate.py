"""A sweep directory that works wherever it is: copied, moved, or opened from any working directory.

`sweep.json` records the spec (whose `storage` may be relative to the directory the sweep was started
from) and, for the default store, an absolute `sqlite:///.../mlflow.db` URI; MLflow itself records
each run's artifact location as an absolute `file://` URI. When a sweep is loaded, the directory it
was loaded from is the one that counts:

- the spec's `storage` becomes that directory (Optuna db, Tune experiment, trial checkpoints, plots);
- with the default store, the tracking URI is that directory's `mlflow.db`;
- artifact locations that point into the recorded directory are rewritten to the same paths in this
  one, once, and `sweep.json` then records this directory.

A sweep on an explicit `tracking.tracking_uri` (a shared server) keeps it: its runs are not in the
directory.

Ray Tune pickles the searcher (with its Optuna storage) and the callbacks (with the MLflow tracking
URI) into `tune/tuner.pkl` and restores them as they were: `resuming(state)` makes them unpickle as
this directory's instead (study_storage.py, tracking.MlflowTrials), so a resumed copy writes to its
own optuna.db and mlflow.db, not to the original's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ranktune.platform.store.files import write_json_atomic
from ranktune.search_spaces.spec import SweepSpec

if TYPE_CHECKING:  # state.py loads a sweep through relocate()
    from ranktune.platform.store.state import SweepState

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
# (table, column) pairs of MLflow's sqlite schema that hold absolute artifact URIs.
ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
)


def recorded_dir(spec: SweepSpec, state: SweepState) -> Path | None:
    """Where the sweep was when it last ran or was loaded."""
    if state.storage_dir:
        return Path(state.storage_dir)
    uri = state.tracking_uri
    if spec.tracking.tracking_uri is None and uri.startswith(SQLITE_PREFIX):  # sweeps older than `storage_dir`
        return Path(uri[len(SQLITE_PREFIX) :]).parent
    return None


def relocate(spec: SweepSpec, state: SweepState, sweep_dir: Path) -> tuple[SweepSpec, SweepState]:
    """(spec, state) with every path inside the sweep resolved against `sweep_dir`."""
    sweep_dir = sweep_dir.resolve()
    spec = spec.model_copy(update={"storage": str(sweep_dir)})
    state = dataclasses.replace(state, spec={**state.spec, "storage": str(sweep_dir)})
    if spec.tracking.tracking_uri is not None:
        return spec, state
    old = recorded_dir(spec, state)
    state.tracking_uri = spec.tracking_uri
    if old is not None and old != sweep_dir:
        try:
            rewrite_artifact_uris(sweep_dir / "mlflow.db", old, sweep_dir)
            state_file = sweep_dir / "sweep.json"
            saved = json.loads(state_file.read_text())
            write_json_atomic(state_file, {**saved, "storage_dir": str(sweep_dir)})
        except (OSError, sqlite3.Error) as exc:  # e.g. a read-only copy: runs still read, artifacts may not
            log.warning("could not point %s's artifact locations at %s: %s", sweep_dir, sweep_dir, exc)
    state.storage_dir = str(sweep_dir)
    return spec, state


def rewrite_artifact_uris(db: Path, old: Path, new: Path) -> int:
    """Rewrite artifact URIs under `old` to the same paths under `new`; returns rows changed."""
    if not db.is_file():
        return 0
    changed = 0
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}
        for table, column in ARTIFACT_COLUMNS:
            if table not in tables:
                continue
            for before, after in ((old.as_uri(), new.as_uri()), (str(old), str(new))):
                cursor = conn.execute(
                    f"update {table} set {column} = ? || substr({column}, ?) where substr({column}, 1, ?) = ?",
                    (after, len(before) + 1, len(before), before),
                )
                changed += cursor.rowcount
    return changed


_resuming: SweepState | None = None  # the relocated state of the sweep being resumed


@contextlib.contextmanager
def resuming(state: SweepState) -> Iterator[None]:
    """Within: what Tune unpickles of this sweep opens the stores of `state` (as `relocate` made it)."""
    global _resuming
    previous, _resuming = _resuming, state
    try:
        yield
    finally:
        _resuming = previous


def resumed_state() -> SweepState | None:
    """The state given to the enclosing `resuming`, or None outside one."""
    return _resuming
