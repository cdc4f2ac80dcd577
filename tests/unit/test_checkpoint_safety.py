"""Checkpoints are loaded without running code, verified by checksum, and a full disk loses nothing."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import torch

from ranktune.trainables import Trainer
from ranktune.trainables.checkpoint import (
    CheckpointError,
    UnsafeCheckpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from ranktune.trainables.config import ConfigError


class CreatesFile:
    """A pickle that, when loaded by an unrestricted unpickler, creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def write_malicious(path, marker):
    torch.save({"step": 5, "model": {}, "payload": CreatesFile(marker)}, path)


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    write_malicious(ckpt_dir / "step_00000005.pt", marker)
    with pytest.raises(UnsafeCheckpoint, match="refusing to load .*step_00000005.pt"):
        load_latest_checkpoint(tmp_path / "run")
    assert not marker.exists()


def test_a_crafted_warm_start_checkpoint_is_refused(make_config, tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "warm.pt"
    write_malicious(bad, marker)
    cfg = make_config("optim.name=relora", "relora.rank=4", f"relora.warm_start_checkpoint={bad}")
    with pytest.raises(ConfigError, match="relora.warm_start_checkpoint: refusing to load"):
        Trainer(cfg, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "method",
    [
        ["optim.name=adamw"],
        ["optim.name=galore_adamw", "galore.rank=4", "galore.update_proj_gap=2"],
        ["optim.name=galore_adamw", "galore.rank=4", "galore.per_layer=true", "train.grad_clip=0"],
        ["optim.name=relora", "relora.rank=4", "relora.relora_every=3", "relora.restart_warmup_steps=1"],
    ],
)
def test_every_method_checkpoint_loads_with_weights_only(make_config, tmp_path, method):
    cfg = make_config("train.steps=4", "output.checkpoint_every=2", *method)
    Trainer(cfg, progress=False).fit()
    resumed = Trainer(cfg, progress=False)
    assert resumed.resume_from_latest() and resumed.step == 4


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(make_config, tmp_path, caplog):
    cfg = make_config("train.steps=10", "output.checkpoint_every=5")
    Trainer(cfg, progress=False).fit()
    older, newest = list_checkpoints(cfg.output.dir)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = Trainer(cfg, progress=False)
    with caplog.at_level(logging.WARNING):
        assert resumed.resume_from_latest()
    assert resumed.step == 5
    assert newest.name in caplog.text and "damaged" in caplog.text


def test_a_truncated_checkpoint_without_checksum_is_reported_not_a_traceback(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.save({"x": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_a_full_disk_removes_the_temp_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    state = {"w": torch.zeros(256, 1024)}  # 1 MiB of tensors
    first = save_checkpoint(tmp_path, 1, state, keep=1)

    def save_half_then_fail(obj, f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointError, match=r"no space left on .*checkpoints: need ~1 MiB"):
        save_checkpoint(tmp_path, 2, state, keep=1)
    monkeypatch.undo()
    leftovers = sorted(p.name for p in first.parent.iterdir())
    assert leftovers == [first.name, first.name + ".sha256"]
    assert torch.equal(load_checkpoint(first)["w"], state["w"])


def test_saved_checkpoints_carry_a_checksum_that_catches_a_flipped_byte(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(100)}, keep=1)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)


def test_unsafe_files_are_never_skipped_as_damage(tmp_path):
    d = tmp_path / "checkpoints"
    save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, keep=2)
    write_malicious(d / "step_00000002.pt", tmp_path / "pwned")
    with pytest.raises(UnsafeCheckpoint):
        load_latest_checkpoint(tmp_path)
