"""One owner per directory: a sweep directory or a training run's output.dir is used by one process at a time.

The lock is an OS file lock (`filelock`, flock on Linux) on `DIR/.ranktune.lock`, so the kernel
releases it when its holder dies, however it dies. Beside it, `DIR/.ranktune.owner` names the holder
(host, pid, start time) for the refusal message; an owner file left by a holder that died without
cleaning up (its lock released by the kernel) is taken over with a warning naming it.

Both files are opened without following symbolic links: a link planted in a shared directory would
otherwise have its target overwritten (the owner file) or fail deep inside filelock (the lock).
"""

from __future__ import annotations

import contextlib
import errno
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


def refuse_symlink(path: Path, field: str) -> None:
    if path.is_symlink():
        raise ConfigError(
            [
                f"{field}: {str(path)!r} is a symbolic link (to {os.readlink(path)!r}) -> remove it; "
                "ranktune does not write through links in a directory it owns"
            ]
        )


def write_no_follow(path: Path, text: str, field: str) -> None:
    """Write `path` (created or truncated) unless it is a symbolic link, which is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_symlink(path, field)
        raise
    with os.fdopen(fd, "w") as f:
        f.write(text)


@contextlib.contextmanager
def own_directory(directory: str | Path, field: str, what: str) -> Iterator[Path]:
    """Hold `directory` for the duration; a second owner is refused with a `DirectoryBusy` naming the holder.

    `field` names the setting that chose the directory (`storage`, `output.dir`), `what` the use
    (`sweep`, `training run`) in the messages."""
    directory = Path(directory)
    make_directory(directory, field)
    owner_file = directory / OWNER_FILE
    for path in (directory / LOCK_FILE, owner_file):
        refuse_symlink(path, field)
    lock = FileLock(str(directory / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DirectoryBusy(
            [
                f"{field}: {str(directory)!r} is in use by another {what}, {describe_owner(directory)}; "
                "wait for it to finish or stop it"
            ]
        ) from None
    except OSError as exc:  # a link planted between the check above and the open (filelock uses O_NOFOLLOW)
        if exc.errno == errno.ELOOP:
            refuse_symlink(directory / LOCK_FILE, field)
        raise
    host = socket.gethostname()
    if owner_file.exists():  # we hold the lock, so its previous holder died without cleaning up
        log.warning("taking over %s from %s, which is no longer running", directory, describe_owner(directory))
    try:
        write_no_follow(owner_file, json.dumps({"host": host, "pid": os.getpid(), "started": time.time()}), field)
    except BaseException:
        lock.release()
        raise
    try:
        yield directory
    finally:
        owner_file.unlink(missing_ok=True)
        lock.release()


def running_owner(directory: str | Path) -> str | None:
    """Who holds `directory` now (e.g. a sweep's running driver), or None when nobody does. For reading
    commands, whose advice differs while a sweep runs: `--resume` is refused then."""
    directory = Path(directory)
    lock_file = directory / LOCK_FILE
    if not lock_file.is_file() or lock_file.is_symlink():
        return None
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return describe_owner(directory)
    except OSError:  # unreadable or read-only: nothing to tell
        return None
    lock.release()
    return None
