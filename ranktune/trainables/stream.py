"""Streamed training data: documents tokenized in a background thread just ahead of training.

A run over `STREAM_THRESHOLD_TOKENS` (`data.streaming: auto`), or any run with `data.streaming: on`,
does not tokenize its corpus before step 1 (19.66B tokens of the 7b export would take hours, and ~39 GB
of disk). Instead:

- validation: the first `data.val_documents` documents that the split rule (data.is_validation_document,
  the same hash as the cached path) holds out, tokenized once into a small cache under the file lock;
  reading stops there, so this costs those documents and the ones between them, never the corpus;
- training: a background thread reads documents from where the run stands, skips the held-out ones,
  tokenizes the rest and packs them into blocks of seq_len + 1 tokens (inputs and shifted targets, as
  TokenBlocks), at most `prefetch_blocks` ahead of training (a bounded buffer: memory stays flat).
  Blocks come in stream order; at the end of the corpus, or after `data.max_tokens` training tokens,
  the next epoch reads the corpus again from its first document.

The position (epoch, next document, training tokens read this epoch, and the tokens read but not yet in a
block) is the data state of a checkpoint: a resumed run reads on from the next document, so it sees
exactly the blocks the uninterrupted run would have, and it never re-tokenizes what it skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranktune.trainables.config import ConfigError
from ranktune.trainables.data import (
    CACHE_FORMAT_VERSION,
    Tokenizer,
    corpus_fingerprint,
    is_validation_document,
    iter_documents,
)

log = logging.getLogger(__name__)

# Above this many tokens (data.max_tokens) a run streams under `data.streaming: auto`: tokenizing it up
# front would take over ~5 minutes on one core (0.34M tokens/s measured) before the first step.
STREAM_THRESHOLD_TOKENS = 100_000_000
DOCUMENTS_PER_BATCH = 32  # tokenizer call size: small, so the first blocks arrive within a second


def streaming_enabled(data_cfg) -> bool:
    if data_cfg.source == "synthetic" or data_cfg.streaming == "off":
        return False
    if data_cfg.streaming == "on":
        return True
    return data_cfg.max_tokens is not None and data_cfg.max_tokens > STREAM_THRESHOLD_TOKENS


# --------------------------------------------------------------------------- validation


def stream_cache_key(data_cfg, tok: Tokenizer) -> tuple[str, dict]:
    fields = {
        "version": CACHE_FORMAT_VERSION,
        "kind": "streamed-validation",
        "corpus": corpus_fingerprint(data_cfg),
        "tokenizer": tok.fingerprint(),
        "val_fraction": data_cfg.val_fraction,
        "val_documents": data_cfg.val_documents,
    }
    return "stream-" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20], fields


def validation_tokens(data_cfg, tok: Tokenizer, documents: Callable[[], Iterator[str]]) -> tuple[np.ndarray, Path]:
    """The first `val_documents` held-out documents, tokenized once under `cache_dir` (file-locked, so runs
    and trials sharing the cache directory, on one machine or on shared storage, do it once)."""
    from filelock import FileLock

    key, fields = stream_cache_key(data_cfg, tok)
    root = Path(data_cfg.cache_dir).expanduser() / "tokens" / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if not (root / "meta.json").is_file():
            texts, scanned = [], 0
            for index, text in enumerate(documents()):
                scanned = index + 1
                if is_validation_document(index, data_cfg.val_fraction):
                    texts.append(text)
                    if len(texts) == data_cfg.val_documents:
                        break
            if not texts:
                raise ConfigError(
                    [
                        f"data: {scanned} documents hold out none for validation -> add documents or "
                        f"raise data.val_fraction ({data_cfg.val_fraction})"
                    ]
                )
            ids = [np.asarray(d, dtype=np.uint16) for d in tok.encode_documents(texts)]
            tmp = root / "val.bin.tmp"
            np.concatenate(ids).tofile(tmp)
            os.replace(tmp, root / "val.bin")
            meta = {
                **fields,
                "documents": {"val": len(texts), "scanned": scanned},
                "tokens": {"val": int(sum(len(i) for i in ids))},
                "vocab_size": tok.vocab_size,
            }
            (root / "meta.json.tmp").write_text(json.dumps(meta, indent=2))
            os.replace(root / "meta.json.tmp", root / "meta.json")
            log.info("streamed validation set: %d documents (of the first %d) -> %s", len(texts), scanned, root)
    return np.memmap(root / "val.bin", dtype=np.uint16, mode="r"), root


# --------------------------------------------------------------------------- training blocks


@dataclass
class StreamPosition:
    """Where training stands in the document stream (the checkpoint's data state)."""

    epoch: int = 0
    next_document: int = 0  # index (held-out documents included) of the next document to read
    epoch_tokens: int = 0  # training tokens read in this epoch (data.max_tokens ends an epoch)
    leftover: list[int] = field(default_factory=list)  # read, not yet in a block
    blocks: int = 0  # blocks handed to training so far


@dataclass
class _Chunk:
    """The blocks one document completed: rows[j] = tokens[offset + j L : offset + (j + 1) L + 1]."""

    rows: np.ndarray  # (k, L + 1) uint16
    tokens: np.ndarray  # the buffer the rows were cut from
    offset: int
    epoch: int
    next_document: int
    epoch_tokens: int


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class StreamedBlocks:
    """Training blocks from a background tokenizer thread; `next_rows()` gives one global micro-batch."""

    def __init__(
        self,
        data_cfg,
        tok: Tokenizer,
        rows_per_batch: int,
        prefetch_blocks: int | None = None,
        documents: Callable[[], Iterator[str]] | None = None,
    ) -> None:
        self.cfg, self.tok, self.rows_per_batch = data_cfg, tok, rows_per_batch
        self.seq_len = data_cfg.seq_len
        self.prefetch_blocks = prefetch_blocks or max(4 * rows_per_batch, 1024)
        self.documents = documents or (lambda: iter_documents(data_cfg))
        self._start = StreamPosition()  # where the producer begins (a checkpoint's position on resume)
        self._blocks = 0
        self.num_blocks = None  # unknown: the stream is not counted up front
        self._chunks: deque[_Chunk | _Failure] = deque()
        self._buffered = 0  # blocks in self._chunks
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._current: _Chunk | None = None
        self._row = 0
        self.documents_read = 0  # by the producer (counted for tests and progress)
        self.producer_done = threading.Event()  # set when the producer thread has ended

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        p = self.position
        return {
            "streamed": True,
            "epoch": p.epoch,
            "next_document": p.next_document,
            "epoch_tokens": p.epoch_tokens,
            "leftover": list(p.leftover),
            "blocks": p.blocks,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state.get("streamed"):
            raise ValueError("checkpoint was written with cached (not streamed) data: resume with data.streaming: off")
        if state["seq_len"] != self.seq_len:
            raise ValueError(f"checkpoint was written at seq_len {state['seq_len']}, this run has {self.seq_len}")
        if self._thread is not None:
            raise RuntimeError("load_state_dict after the stream started")
        self._start = StreamPosition(
            state["epoch"], state["next_document"], state["epoch_tokens"], list(state["leftover"]), state["blocks"]
        )
        self._blocks = state["blocks"]

    # ------------------------------------------------------------------ consumer

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._produce, args=(self._start,), daemon=True, name="ranktune-tokenizer"
            )
            self._thread.start()

    def next_rows(self) -> np.ndarray:
        """(rows_per_batch, seq_len + 1) int64 token rows, in stream order; waits for the tokenizer when needed."""
        self.start()
        rows = np.empty((self.rows_per_batch, self.seq_len + 1), dtype=np.int64)
        for i in range(self.rows_per_batch):
            if self._current is None or self._row == len(self._current.rows):
                self._current, self._row = self._take(), 0
            rows[i] = self._current.rows[self._row]
            self._row += 1
        self._blocks += self.rows_per_batch
        return rows

    @property
    def position(self) -> StreamPosition:
        """After the last row handed out: the rest of its chunk's buffer is read but not yet in a block."""
        c = self._current
        if c is None:
            return self._start
        leftover = c.tokens[c.offset + self._row * self.seq_len :].tolist()
        return StreamPosition(c.epoch, c.next_document, c.epoch_tokens, leftover, self._blocks)

    def _take(self) -> _Chunk:
        with self._cond:
            while not self._chunks:
                if self.producer_done.is_set():
                    raise RuntimeError("the tokenizer thread ended without a failure or blocks")
                self._cond.wait(timeout=1.0)
            chunk = self._chunks.popleft()
            if isinstance(chunk, _Failure):
                raise chunk.exc
            self._buffered -= len(chunk.rows)
            self._cond.notify_all()
            return chunk

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ producer

    def _put(self, item: _Chunk | _Failure) -> bool:
        with self._cond:
            while not self._stop and self._buffered >= self.prefetch_blocks:
                self._cond.wait(timeout=1.0)
            if self._stop:
                return False
            self._chunks.append(item)
            self._buffered += len(item.rows) if isinstance(item, _Chunk) else 0
            self._cond.notify_all()
            return True

    def _produce(self, start: StreamPosition) -> None:
        try:
            self._produce_blocks(start)
        except BaseException as exc:  # hand it to training, which raises it at its next batch
            self._put(_Failure(exc))
        finally:
            self.producer_done.set()

    def _produce_blocks(self, start: StreamPosition) -> None:
        L, budget, val_fraction = self.seq_len, self.cfg.max_tokens, self.cfg.val_fraction
        tokens = np.asarray(start.leftover, dtype=np.uint16)
        epoch, first, epoch_tokens = start.epoch, start.next_document, start.epoch_tokens
        while True:
            index, trained = first, 0
            docs = itertools.islice(self.documents(), first, None)  # skipped documents are read, not tokenized
            while not (budget is not None and epoch_tokens >= budget):
                batch = list(itertools.islice(docs, DOCUMENTS_PER_BATCH))
                if not batch:
                    break
                kept = [
                    (index + i, text)
                    for i, text in enumerate(batch)
                    if not is_validation_document(index + i, val_fraction)
                ]
                encoded = self.tok.encode_documents([t for _, t in kept]) if kept else []
                ids_by_index = {i: ids for (i, _), ids in zip(kept, encoded, strict=True)}
                for i in range(index, index + len(batch)):
                    self.documents_read += 1
                    ids = ids_by_index.get(i)
                    if ids is None:
                        continue
                    if budget is not None and epoch_tokens >= budget:
                        break
                    tokens = np.concatenate([tokens, np.asarray(ids, dtype=np.uint16)])
                    epoch_tokens += len(ids)
                    trained += 1
                    k = (len(tokens) - 1) // L
                    if k:
                        rows = np.lib.stride_tricks.sliding_window_view(tokens, L + 1)[: k * L : L].copy()
                        if not self._put(_Chunk(rows, tokens, 0, epoch, i + 1, epoch_tokens)):
                            return
                        tokens = tokens[k * L :]
                index += len(batch)
            if trained == 0 and first == 0:
                raise ConfigError(
                    [
                        f"data: no training document in the stream ({index} documents read) -> add "
                        "documents or lower data.val_fraction"
                    ]
                )
            epoch, first, epoch_tokens = epoch + 1, 0, 0


@dataclass
class StreamedData:
    val: np.ndarray
    vocab_size: int
    corpus_key: str  # names the held-out set (eval_set_id), like TokenStreams.corpus_key
    train: StreamedBlocks


def open_stream(data_cfg, rows_per_batch: int, documents: Callable[[], Iterator[str]] | None = None) -> StreamedData:
    """The held-out set (tokenized now, once per cache) and the training stream (started at its first batch)."""
    tok = Tokenizer(data_cfg.tokenizer)
    docs = documents or (lambda: iter_documents(data_cfg))
    val, root = validation_tokens(data_cfg, tok, docs)
    return StreamedData(val, tok.vocab_size, root.name, StreamedBlocks(data_cfg, tok, rows_per_batch, documents=docs))
