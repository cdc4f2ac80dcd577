"""The sweep directory's own JSON files (sweep.json, confirm.json) and its default MLflow store, read and
written safely.

Writes are atomic (a temporary file in the same directory, then `os.replace`): a driver killed or a
disk filled mid-write leaves the previous file, never a truncated one. Reads refuse a damaged file in
one line naming it and what it should hold, instead of a traceback deep in a command; a missing or
damaged `mlflow.db` is refused before MLflow would quietly create a fresh, empty store in its place.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from ranktune.trainables.config import ConfigError

# Tables every MLflow sqlite store has (its schema since MLflow 1.x).
MLFLOW_TABLES = frozenset({"experiments", "runs", "metrics", "params", "tags"})


def write_json_atomic(path: Path, data: Any) -> None:
    """`path` holds the JSON of `data`, or (on any failure) what it held before."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_object(path: Path, what: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in `path` holding the `required` keys; anything else is a one-line ConfigError."""
    damaged = f"{str(path)!r} is damaged"
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError([f"{str(path)!r} cannot be read ({exc.strerror or exc})"]) from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError([f"{damaged} (not JSON: {first_line}) -> {what}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{damaged} (holds a JSON {type(data).__name__}, not an object) -> {what}"])
    missing = [key for key in required if key not in data]
    if missing:
        raise ConfigError([f"{damaged} (no {', '.join(missing)}) -> {what}"])
    return data


def check_mlflow_store(db: Path) -> None:
    """The sweep's default tracking store is an MLflow sqlite database; MLflow would otherwise create a
    new empty one (a missing or empty file) or fail with a traceback (garbage, truncation)."""
    restore = "restore it from a copy of the sweep (its runs, and so the trials' results, are recorded there)"
    if not db.is_file():
        raise ConfigError([f"{str(db)!r} is missing -> {restore}"])
    if db.stat().st_size == 0:
        raise ConfigError([f"{str(db)!r} is empty -> {restore}"])
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}
            conn.execute("pragma quick_check").fetchall()
    except sqlite3.Error as exc:
        raise ConfigError([f"{str(db)!r} is damaged (sqlite: {exc}) -> {restore}"]) from None
    if not MLFLOW_TABLES <= tables:
        raise ConfigError(
            [f"{str(db)!r} is not an MLflow store (no {', '.join(sorted(MLFLOW_TABLES - tables))} table) -> {restore}"]
        )
