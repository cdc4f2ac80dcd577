import pytest
import torch
from support.tiny import TINY_MODEL_ARGS

from ranktune.trainables.model import MODEL_PRESETS, build_model, count_parameters, model_config


def llama_param_count(h: int, i: int, layers: int, vocab: int = 32000) -> int:
    per_layer = 4 * h * h + 3 * h * i + 2 * h  # q,k,v,o + gate,up,down + two RMSNorms
    return 2 * vocab * h + layers * per_layer + h  # untied embedding + head, final norm


@pytest.mark.parametrize("name", ["60m", "130m", "350m", "1b", "7b"])
def test_paper_configs_parameter_counts_on_meta(name):
    cfg = MODEL_PRESETS[name]
    model = build_model(cfg, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    n = count_parameters(model)
    assert n == llama_param_count(cfg.hidden_size, cfg.intermediate_size, cfg.num_layers)
    assert cfg.vocab_size == 32000 and cfg.max_seq_len == 1024


def test_7b_is_about_6_7_billion_parameters():
    n = count_parameters(build_model(MODEL_PRESETS["7b"], device="meta"))
    assert 6.6e9 < n < 6.8e9


def test_paper_shapes_match_the_table():
    shapes = {n: (c.hidden_size, c.intermediate_size, c.num_heads, c.num_layers) for n, c in MODEL_PRESETS.items()}
    assert shapes["60m"] == (512, 1376, 8, 8)
    assert shapes["130m"] == (768, 2048, 12, 12)
    assert shapes["350m"] == (1024, 2736, 16, 24)
    assert shapes["1b"] == (2048, 5461, 32, 24)
    assert shapes["7b"] == (4096, 11008, 32, 32)


def small_model(**overrides):
    torch.manual_seed(0)
    cfg = model_config("tiny", **TINY_MODEL_ARGS, vocab_size=97, **overrides)
    return build_model(cfg)


def test_shapes_and_loss():
    model = small_model()
    idx = torch.randint(0, 97, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 97)
    logits2, loss = model(idx, idx)
    assert torch.equal(logits, logits2)
    assert loss.ndim == 0 and abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5


def test_causal_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = small_model().eval()
    idx = torch.randint(0, 97, (2, 24))
    changed = idx.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 97
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=0, atol=0)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_no_biases_untied_embeddings():
    model = small_model()
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()


def test_sequence_longer_than_max_is_refused():
    model = small_model(max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_activation_checkpointing_gives_the_same_gradients():
    idx = torch.randint(0, 97, (2, 16))
    grads = []
    for ac in (False, True):
        model = small_model()
        model.activation_checkpointing = ac
        model(idx, idx)[1].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_overfits_one_batch():
    model = small_model()
    idx = torch.randint(0, 97, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.3


def test_a_bf16_model_is_built_in_bf16_with_llama_init():
    torch.manual_seed(0)
    model = build_model(model_config("tiny", **TINY_MODEL_ARGS, vocab_size=97), dtype=torch.bfloat16)
    assert {t.dtype for t in [*model.parameters(), *model.buffers()]} == {torch.bfloat16}
    q = model.layers[0].attn.q_proj.weight.float()
    assert abs(q.std().item() - 0.02) < 0.002 and abs(q.mean().item()) < 0.002  # normal(0, 0.02), 4096 draws
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    logits, loss = model(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
