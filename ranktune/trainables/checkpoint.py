"""Checkpoints: one file per saved step, written atomically, so a crash never leaves a torn file.

Each `step_N.pt` has a `step_N.pt.sha256` sidecar written with it; loading verifies it, and a
resume falls back to the newest checkpoint that verifies. Files are read with
`torch.load(weights_only=True)`: a checkpoint holds tensors and plain Python values only, so a
crafted file cannot run code when loaded.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranktune.trainables.optim.base import tensor_bytes

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d+)\.pt$")
CHECKSUM_SUFFIX = ".sha256"
MIB = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written (disk full) or read (damaged, or holds more than tensors)."""


class UnsafeCheckpoint(CheckpointError):
    """A file that would run code to load: refused, never skipped past as if it were damage."""


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    d = checkpoint_dir(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (what `weights_only` loading accepts)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def _write_durably(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(output_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as step_{step}.pt (temp file + fsync + rename) with its checksum, and keep the
    newest `keep` files. On a full disk the temp file is removed and older checkpoints stay."""
    d = checkpoint_dir(output_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    sidecar_tmp = sidecar.with_name(sidecar.name + ".tmp")
    try:
        _write_durably(tmp, lambda f: torch.save(state, f))
        digest = file_sha256(tmp)
        _write_durably(sidecar_tmp, lambda f: f.write(f"{digest}  {path.name}\n".encode()))
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)
        # torch's zip writer reports a full disk as "unexpected pos ..."; the free space tells.
        need = tensor_bytes(state)
        full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        if full or shutil.disk_usage(d).free < need:
            raise CheckpointError(
                f"no space left on {d}: need ~{max(1, round(need / MIB))} MiB for the step {step} checkpoint "
                "(older checkpoints are kept)"
            ) from None
        raise
    # The sidecar first: a checkpoint file never exists without its checksum.
    os.replace(sidecar_tmp, sidecar)
    os.replace(tmp, path)
    for old in list_checkpoints(output_dir)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + CHECKSUM_SUFFIX).unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint, verifying its checksum when it has one; refuses anything but tensors and plain values."""
    path = Path(path)
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    if sidecar.is_file():
        recorded = sidecar.read_text().split()[:1]
        if recorded != [file_sha256(path)]:
            raise CheckpointError(f"checkpoint {path} is damaged: its sha256 does not match {sidecar.name}")
    return load_tensors_file(path)


# What Trainer.state_dict writes; a file without them (another tool's .pt, a bare tensor) is not resumable.
CHECKPOINT_KEYS = {
    "step": int,
    "tokens_seen": int,
    "elapsed": float,
    "method": dict,
    "model": dict,
    "data": dict,
    "rng": dict,
    "config": dict,
}


def checkpoint_shape_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a mapping"
    missing = sorted(CHECKPOINT_KEYS.keys() - state.keys())
    if missing:
        return f"no {', '.join(missing)}"
    wrong = [
        f"{key} is a {type(state[key]).__name__}"
        for key, kind in CHECKPOINT_KEYS.items()
        if not isinstance(state[key], (int, float) if kind is float else kind)
    ]
    return "; ".join(wrong) or None


def load_tensors_file(path: str | Path) -> Any:
    """`torch.load` with `weights_only=True`: a file that would need to run code to load is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # The weights-only unpickler names the global it refused; any other unpickling error (e.g.
        # "invalid load key" from random bytes) is a damaged file, not a dangerous one.
        if "global" not in str(exc).lower():
            raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a checkpoint): {first}") from None
        raise UnsafeCheckpoint(
            f"refusing to load {path}: it holds objects other than tensors and plain values, which could run "
            f"code when loaded ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a checkpoint): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch's weights-only unpickler fails on random bytes with
        # IndexError ("pop from empty list"), KeyError, ...: all mean the file is no checkpoint
        raise CheckpointError(
            f"checkpoint {path} is unreadable (not a checkpoint: {type(exc).__name__}: {str(exc)[:120]})"
        ) from None


def load_latest_checkpoint(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies, with its state; damaged newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            state = load_checkpoint(path)
            problem = checkpoint_shape_problem(state)
            if problem:
                raise CheckpointError(f"checkpoint {path} is unreadable (not a ranktune checkpoint: {problem})")
            return path, state
        except UnsafeCheckpoint:
            raise
        except CheckpointError as exc:
            log.warning("%s; falling back to the previous checkpoint", exc)
    return None


def check_resume_compatible(current: dict[str, Any], saved: dict[str, Any], path: str | Path) -> list[str]:
    """Problems resuming the run `saved` (a checkpoint's config) with the config `current` (both as JSON dicts)."""
    return [
        f"{section}: differs from the one checkpoint {path} was written with -> resume with the same {section} "
        "section, or start a fresh output.dir"
        for section in ("model", "data")
        if saved.get(section) != current.get(section)
    ]
