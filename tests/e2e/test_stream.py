"""Streamed data (trainables/stream.py): step 1 before tokenization ends, exact resume, a fixed held-out set."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from support.corpus import write_documents
from support.paths import REPO
from support.tiny import tiny_config_dict

from ranktune.trainables import stream
from ranktune.trainables.callbacks import Callback
from ranktune.trainables.config import DataSection, config_from_dict
from ranktune.trainables.data import Tokenizer, prepare_tokens
from ranktune.trainables.stream import StreamedBlocks, open_stream, streaming_enabled
from ranktune.trainables.trainer import Trainer


def data_section(tmp_path, n_docs: int = 120, **extra) -> DataSection:
    path, _ = write_documents(tmp_path, "json", n_docs)
    return DataSection(
        source="files",
        files=[str(path)],
        text_field="body",
        seq_len=8,
        val_fraction=0.2,
        cache_dir=str(tmp_path / "cache"),
        streaming="on",
        val_documents=5,
        **extra,
    )


def take(blocks: StreamedBlocks, batches: int) -> list[np.ndarray]:
    return [blocks.next_rows() for _ in range(batches)]


@pytest.mark.parametrize("max_tokens", [None, 200])  # 200: an epoch ends on the budget, not the corpus
def test_resume_at_any_batch_gives_exactly_the_uninterrupted_blocks(tmp_path, max_tokens):
    cfg = data_section(tmp_path, 40, max_tokens=max_tokens)
    tok = Tokenizer()
    whole = StreamedBlocks(cfg, tok, rows_per_batch=3)
    expected = take(whole, 60)  # several epochs of the 32 training documents (~16 tokens each)
    whole.close()
    assert whole.position.epoch >= 2
    for stop in (1, 7, 23, 41):
        first = StreamedBlocks(cfg, tok, rows_per_batch=3)
        got = take(first, stop)
        state = first.state_dict()
        first.close()
        resumed = StreamedBlocks(cfg, tok, rows_per_batch=3)
        resumed.load_state_dict(state)
        got += take(resumed, 60 - stop)
        resumed.close()
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True)), f"differs after stop {stop}"


def test_stream_holds_out_the_validation_documents_and_packs_like_the_cache(tmp_path):
    """One epoch of streamed blocks is the cached training stream cut the same way; the held-out set is the
    cached validation stream's first val_documents documents."""
    cfg = data_section(tmp_path, 60)
    tok = Tokenizer()
    cached = prepare_tokens(cfg.model_copy(update={"streaming": "off"}), progress=False)
    blocks = StreamedBlocks(cfg, tok, rows_per_batch=1)
    L = cfg.seq_len
    n = (len(cached.train) - 1) // L
    rows = np.concatenate(take(blocks, n))
    blocks.close()
    assert np.array_equal(rows, np.stack([cached.train[i * L : i * L + L + 1] for i in range(n)]).astype(np.int64))
    data = open_stream(cfg, rows_per_batch=1)
    assert np.array_equal(np.asarray(data.val), np.asarray(cached.val[: len(data.val)]))
    assert (np.asarray(data.val) == tok.bos_id).sum() == cfg.val_documents


def test_streaming_threshold():
    assert streaming_enabled(DataSection(source="c4", max_tokens=19_660_800_000))
    assert not streaming_enabled(DataSection(source="c4", max_tokens=50_000_000))
    assert streaming_enabled(DataSection(max_tokens=1000, streaming="on"))
    assert not streaming_enabled(DataSection(source="c4", max_tokens=10**10, streaming="off"))
    assert not streaming_enabled(DataSection(source="synthetic", max_tokens=10**10))


class FirstStep(Callback):
    def __init__(self, trainer_ref: list) -> None:
        self.trainer_ref, self.seen = trainer_ref, None

    def on_step(self, metrics) -> None:
        if self.seen is None:
            data = self.trainer_ref[0].train_data
            self.seen = (data.producer_done.is_set(), data.documents_read)


def streamed_config(tmp_path, token_cache, steps: int, **data):
    raw = tiny_config_dict(str(tmp_path / "run"), token_cache)
    raw["data"].update(streaming="on", max_tokens=None, val_documents=4, cache_dir=str(tmp_path / "cache"), **data)
    raw["train"].update(steps=steps, batch_size=4, micro_batch_size=2, eval_every=10**6, eval_blocks=4)
    raw["output"].update(checkpoint_every=0)
    raw["schedule"].update(warmup_steps=0)
    return config_from_dict(raw)


def test_first_step_happens_before_tokenization_finishes(tmp_path, token_cache, monkeypatch):
    """The embedded corpus (249 documents) through a tokenizer slowed to 0.1 s per 2 documents: ~12 s to
    tokenize it all; a streamed run's first step needs a few blocks of the first document."""
    encode = Tokenizer.encode_documents

    def slow(self, texts):
        time.sleep(0.1)
        return encode(self, texts)

    monkeypatch.setattr(Tokenizer, "encode_documents", slow)
    monkeypatch.setattr(stream, "DOCUMENTS_PER_BATCH", 2)
    ref: list = []
    first = FirstStep(ref)
    trainer = Trainer(streamed_config(tmp_path, token_cache, steps=2), callbacks=[first], progress=False)
    ref.append(trainer)
    assert trainer.fit()["completed"]
    done, read = first.seen
    assert not done and read < 100, f"first step after the producer ended ({done}) or read {read} of 249 documents"


def test_streamed_run_resumes_exactly(tmp_path, token_cache):
    class StopAfter(Callback):
        def __init__(self, ref: list, step: int) -> None:
            self.ref, self.step = ref, step

        def on_step(self, metrics) -> None:
            if metrics["step"] == self.step:
                self.ref[0].stop_requested = True

    path, _ = write_documents(tmp_path, "json", 400)  # small documents: blocks cross document boundaries
    files = {"source": "files", "files": [str(path)], "text_field": "body", "val_fraction": 0.2}
    whole = Trainer(streamed_config(tmp_path / "a", token_cache, steps=6, **files), progress=False)
    whole_summary = whole.fit()
    ref: list = []
    cfg = streamed_config(tmp_path / "b", token_cache, steps=6, **files)
    stopped = Trainer(cfg, callbacks=[StopAfter(ref, 3)], progress=False)
    ref.append(stopped)
    assert not stopped.fit()["completed"]
    resumed = Trainer(cfg, progress=False)
    assert resumed.resume_from_latest() and resumed.step == 3
    summary = resumed.fit()
    assert summary["completed"] and summary["eval_set"] == whole_summary["eval_set"]
    assert summary["final_eval_loss"] == whole_summary["final_eval_loss"]
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


PREPARE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from ranktune.trainables.config import DataSection
from ranktune.trainables.data import Tokenizer, prepare_tokens
from ranktune.trainables.stream import validation_tokens, iter_documents
cfg = DataSection(source="files", files=[sys.argv[1]], text_field="body", seq_len=8, cache_dir=sys.argv[2],
                  val_documents=5)
prepare_tokens(cfg, progress=False)
validation_tokens(cfg, Tokenizer(), lambda: iter_documents(cfg))
"""


@pytest.mark.slow  # two fresh Python processes importing torch: ~15 s idle, minutes on a loaded machine
def test_processes_sharing_a_cache_directory_tokenize_once(tmp_path):
    """Two trials on two nodes with the token cache on shared storage (docs/cluster.md): one tokenizes the
    corpus and the streamed held-out set, the other waits on the file lock and reuses them."""
    import os
    import subprocess
    import sys

    path, _ = write_documents(tmp_path, "json", 300)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", PREPARE, str(path), str(tmp_path / "shared")]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    logs = "".join(p.communicate(timeout=300)[0] for p in procs)
    assert all(p.returncode == 0 for p in procs), logs
    assert logs.count("ranktune.trainables.data: tokenized files") == 1, logs
    assert logs.count("streamed validation set:") == 1, logs
