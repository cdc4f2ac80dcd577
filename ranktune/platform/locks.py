"""One owner per directory: a sweep directory or a training run's output.dir is used by one process at a time.

The lock is an OS file lock (`filelock`, flock on Linux) on `DIR/.ranktune.lock`, so the kernel
releases it when its holder dies, however it dies. Beside it, `DIR/.ranktune.owner` names the holder
(host, pid, start time) for the refusal message; an owner file left by a holder that died without
cleaning up (its lock released by the kernel) is taken over with a warning naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ranktune.trainables.config import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".ranktune.lock"
OWNER_FILE = ".ranktune.owner"


class DirectoryBusy(ConfigError):
    """Another live process owns the directory."""


def describe_owner(directory: Path) -> str:
    try:
        owner = json.loads((directory / OWNER_FILE).read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"]))
        return f"pid {owner['pid']} on {owner['host']} (since {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def make_directory(directory: Path, field: str) -> None:
    """Create `directory` (and parents), or refuse naming the config field when that is impossible."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError([f"{field}: {str(directory)!r} -> a directory (it is an existing file)"])
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".ranktune.write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError([f"{field}: {str(directory)!r} -> a writable directory ({exc.strerror or exc})"]) from None


@contextlib.contextmanager
def own_directory(directory: str | Path, field: str, what: str) -> Iterator[Path]:
    """Hold `directory` for the duration; a second owner is refused with a `DirectoryBusy` naming the holder.

    `field` names the setting that chose the directory (`storage`, `output.dir`), `what` the use
    (`sweep`, `training run`) in the messages."""
    directory = Path(directory)
    make_directory(directory, field)
    lock = FileLock(str(directory / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DirectoryBusy(
            [
                f"{field}: {str(directory)!r} is in use by another {what}, {describe_owner(directory)}; "
                "wait for it to finish or stop it"
            ]  # fmt: skip
        ) from None
    owner_file = directory / OWNER_FILE
    host = socket.gethostname()
    if owner_file.exists():  # we hold the lock, so its previous holder died without cleaning up
        log.warning("taking over %s from %s, which is no longer running", directory, describe_owner(directory))
    owner_file.write_text(json.dumps({"host": host, "pid": os.getpid(), "started": time.time()}))
    try:
        yield directory
    finally:
        owner_file.unlink(missing_ok=True)
        lock.release()
