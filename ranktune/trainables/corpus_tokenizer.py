"""A small-vocabulary SentencePiece model trained on the run's own corpus: `data.tokenizer: corpus:<size>`.

Why: with LLaMA's 32,000-piece vocabulary a CPU-sized proxy is mostly embedding and head (the `tiny`
model: 95% of its parameters), while the methods ranktune compares change only the attention and MLP
matrices (96% of a 7b). A vocabulary of a few thousand pieces gives the matrices most of a small
model's parameters (docs/ladder.md).

The model is LLaMA-style BPE with byte fallback, trained on the training split's documents only (the
same document-index hash as the token cache, so no held-out text shapes the vocabulary), one line per
sentence piece input, at most `MAX_TRAINING_LINES` lines sampled with a fixed seed. It takes about 3 s
on one core for the embedded corpus at 4096 pieces. It is cached under
`<data.cache_dir>/tokenizers/<corpus key>-v<size>/sp.model` (the corpus key hashes the corpus
fingerprint and the split), so every trial and every later run reuses it; a file lock makes
concurrent trials wait for the first one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ranktune.trainables.errors import ConfigError

PREFIX = "corpus:"
MIN_PIECES = 260  # byte fallback alone needs 256 pieces, plus unk, bos, eos and a few merges
MAX_PIECES = 65535  # token ids are stored as uint16
MAX_TRAINING_LINES = 200_000
TRAINER_VERSION = 1  # bump when the training settings below change: the cache key includes it


def corpus_vocab_size(spec: str) -> int | None:
    """The size in `corpus:<size>`, None for any other tokenizer spec; refuses a malformed one."""
    if not spec.startswith(PREFIX):
        return None
    m = re.fullmatch(r"corpus:(\d+)", spec)
    size = int(m.group(1)) if m else None
    if size is None or not MIN_PIECES <= size <= MAX_PIECES:
        raise ConfigError(
            [
                f"data.tokenizer: {spec!r} -> corpus:<pieces> with {MIN_PIECES} <= pieces <= {MAX_PIECES} "
                "(e.g. corpus:4096)"
            ]
        )
    return size


def model_dir(data_cfg, size: int, corpus_key: str) -> Path:
    key_fields = {
        "corpus": corpus_key,
        "val_fraction": data_cfg.val_fraction,
        "max_tokens": data_cfg.max_tokens,
        "trainer": TRAINER_VERSION,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
    return Path(data_cfg.cache_dir).expanduser() / "tokenizers" / f"{key}-v{size}"


def corpus_tokenizer_path(data_cfg, size: int, corpus_key: str, lines: Callable[[], Iterator[str]]) -> Path:
    """Train (once) and return the path of the corpus's `size`-piece SentencePiece model. `corpus_key`
    identifies the corpus (data.corpus_fingerprint), `lines` gives its training text when it must be trained
    (data.py passes both: this module reads no corpus itself)."""
    import sentencepiece as spm
    from filelock import FileLock

    root = model_dir(data_cfg, size, corpus_key)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "sp.model"
    with FileLock(str(root / ".lock")):
        if path.is_file():
            return path
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines(),
                model_writer=buf,
                vocab_size=size,
                model_type="bpe",
                byte_fallback=True,
                character_coverage=1.0,
                input_sentence_size=MAX_TRAINING_LINES,
                shuffle_input_sentence=True,
                num_threads=1,
                minloglevel=2,
                max_sentence_length=16384,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=-1,  # LLaMA's special ids
            )
        except RuntimeError as exc:  # e.g. "Vocabulary size is too high": the corpus has too few distinct pieces
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError([f"data.tokenizer: 'corpus:{size}' -> a size this corpus supports ({first})"]) from None
        tmp = root / "sp.model.tmp"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    return path
