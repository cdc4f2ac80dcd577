"""ReLoRA / LoRA: merge and re-init, frozen-base precisions, moment pruning, schedule, resume, config checks."""

from __future__ import annotations

import math

import pytest
import torch
from support.recorder import Recorder
from support.tiny import TINY_MODEL_ARGS

from ranktune.trainables import Trainer
from ranktune.trainables.config import ConfigError
from ranktune.trainables.model import build_model
from ranktune.trainables.optim import build_method
from ranktune.trainables.optim.lora import (
    LoRALinear,
    dequantize_int8_rows,
    lora_layers,
    merge_lora_into_base,
    quantize_int8_rows,
    wrap_lora,
)
from ranktune.trainables.optim.relora_reset import keep_count, prune_, prune_moments_
from ranktune.trainables.optim.relora_schedule import restart_steps, schedule_points

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def randomize_lora_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every B a non-zero value, as training would, so that a merge changes W."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.05)


# ------------------------------------------------------------------ merge and re-init


def test_merge_and_reinit_keep_logits_fp32():
    torch.manual_seed(0)
    model = build_model(build_model_cfg())
    gen = torch.Generator().manual_seed(1)
    assert len(wrap_lora(model, TARGETS, rank=8, alpha=32.0, base_precision="same", generator=gen)) == 14
    randomize_lora_(model)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    q = model.layers[0].attn.q_proj
    w_before, a_before = q.weight.clone(), q.lora_A.clone()
    with torch.no_grad():
        before = model(idx)
        for layer in lora_layers(model):
            merge_lora_into_base(layer, gen)
        after = model(idx)
    assert not torch.equal(q.weight, w_before)  # the update went into W ...
    assert not torch.equal(q.lora_A, a_before)  # ... A was re-drawn ...
    assert torch.count_nonzero(q.lora_B) == 0  # ... and B zeroed
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def build_model_cfg():
    from ranktune.trainables.model import model_config

    return model_config("tiny", **TINY_MODEL_ARGS)


def lora_linear(base_precision: str, out_features=48, in_features=40, seed=0) -> LoRALinear:
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(base.weight.shape, generator=gen))
    layer = LoRALinear(base, rank=4, alpha=8.0, base_precision=base_precision, generator=gen)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.01)
    return layer


def test_bf16_base_merges_in_fp32():
    layer = lora_linear("bf16")
    assert layer.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    with torch.no_grad():  # an update of the size of W, where bf16 products and sums lose most
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=torch.Generator().manual_seed(3)))
    w, a, b = layer.weight.clone(), layer.lora_A.clone(), layer.lora_B.clone()
    merge_lora_into_base(layer)
    exact = (w.double() + layer.scale * (b.double() @ a.double())).to(torch.bfloat16)
    bf16_arithmetic = w + layer.scale * (b.bfloat16() @ a.bfloat16())
    assert layer.weight.dtype == torch.bfloat16
    # Rounded once from fp32: equal to the float64 result rounded, bar the rare double-rounding tie.
    assert (layer.weight != exact).float().mean() < 0.01
    assert (bf16_arithmetic != exact).float().mean() > 0.05  # the test tells the two apart


def test_int8_base_merge_dequantizes_and_requantizes():
    layer = lora_linear("int8")
    assert layer.weight.dtype == torch.int8 and layer.weight_absmax.dtype == torch.float32
    w_fp32 = dequantize_int8_rows(layer.weight, layer.weight_absmax)
    delta = layer.scale * (layer.lora_B.float() @ layer.lora_A.float())
    merge_lora_into_base(layer)
    codes, absmax = quantize_int8_rows(w_fp32 + delta)
    assert torch.equal(layer.weight, codes) and torch.equal(layer.weight_absmax, absmax)
    # A merge with B = 0 (just re-initialised) must not drift the stored codes.
    merge_lora_into_base(layer)
    assert torch.equal(layer.weight, codes)


@pytest.mark.parametrize("base_precision", ["bf16", "int8"])
def test_low_precision_base_forward_and_backward(base_precision):
    layer = lora_linear(base_precision)
    reference = torch.nn.Linear(40, 48, bias=False)
    with torch.no_grad():
        reference.weight.copy_(layer.base_weight_fp32())
    x = torch.randn(3, 40, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    grad_x, grad_b = x.grad.clone(), layer.lora_B.grad.clone()
    x.grad = None
    expected = reference(x) + layer.scale * (x @ layer.lora_A.T @ layer.lora_B.T)
    expected.square().sum().backward()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_x, x.grad, atol=1e-5, rtol=1e-5)
    assert grad_b.abs().sum() > 0 and layer.weight.grad is None


# ------------------------------------------------------------------ moment pruning


def test_magnitude_pruning_keeps_exactly_the_largest_fraction():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(1000, generator=gen)
    pruned = values.clone()
    prune_(pruned, reset_ratio=0.9, mode="magnitude", generator=gen)
    kept = pruned != 0
    assert kept.sum() == keep_count(1000, 0.9) == 100
    assert torch.equal(kept, values.abs() >= values.abs().topk(100).values.min())
    assert torch.equal(pruned[kept], values[kept])


def test_random_and_full_reset():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(1000, generator=gen) + 5.0  # no zeros
    rand = values.clone()
    prune_(rand, reset_ratio=0.75, mode="random", generator=gen)
    assert (rand != 0).sum() == 250 and torch.equal(rand[rand != 0], values[rand != 0])
    assert not torch.equal(rand != 0, values >= values.topk(250).values.min())  # not the magnitude rule
    full = values.clone()
    prune_(full, reset_ratio=0.5, mode="full", generator=gen)
    assert torch.count_nonzero(full) == 0


def adam_with_state(optimizer_cls, shapes, steps=3):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = optimizer_cls(params, lr=1e-3)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return params, opt


def test_prune_moments_touches_only_the_given_parameters():
    (lora, other), opt = adam_with_state(torch.optim.AdamW, [(32, 16), (16,)])
    other_before = {k: v.clone() for k, v in opt.state[other].items()}
    step_before = opt.state[lora]["step"].clone()
    prune_moments_(opt, [lora], reset_ratio=0.99, mode="magnitude", generator=torch.Generator())
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(opt.state[lora][name]) == keep_count(32 * 16, 0.99) == 5
        assert torch.equal(opt.state[other][name], other_before[name])
    assert torch.equal(opt.state[lora]["step"], step_before)  # bias correction continues, as in the reference


def test_8bit_moments_dequantize_prune_requantize():
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    # 64 x 128 = 8192 elements gets 8-bit block-wise moments; 40 x 10 stays fp32 in bitsandbytes.
    (big, small), opt = adam_with_state(bnb.optim.AdamW8bit, [(64, 128), (40, 10)])
    state = opt.state[big]
    assert state["state1"].dtype == torch.uint8 and opt.state[small]["state1"].dtype == torch.float32

    def moment(key, absmax, qmap):
        return bnbf.dequantize_blockwise(state[key], absmax=state[absmax], code=state[qmap], blocksize=256)

    before = [moment("state1", "absmax1", "qmap1"), moment("state2", "absmax2", "qmap2")]
    prune_moments_(opt, [big, small], reset_ratio=0.9, mode="magnitude", generator=torch.Generator())
    after = [moment("state1", "absmax1", "qmap1"), moment("state2", "absmax2", "qmap2")]
    keep = keep_count(big.numel(), 0.9)
    for b, a in zip(before, after, strict=True):
        largest = b.abs() >= b.abs().flatten().topk(keep).values.min()
        survivors = a != 0
        assert survivors.sum() > 0.98 * keep and not (survivors & ~largest).any()  # only the largest survive
        torch.testing.assert_close(a[survivors], b[survivors], rtol=0.05, atol=0)  # up to 8-bit rounding
    assert torch.count_nonzero(opt.state[small]["state1"]) == keep_count(400, 0.9)
    big.grad = torch.randn_like(big)
    opt.step()  # the requantized state is still a valid 8-bit state
    assert torch.isfinite(big).all()


# ------------------------------------------------------------------ schedule


def test_jagged_schedule_values(make_config):
    peak = 1e-2
    cfg = make_config(
        "optim.name=relora",
        f"optim.lr={peak}",
        "relora.rank=4",
        "relora.relora_every=30",
        "relora.restart_warmup_steps=5",
        "schedule.warmup_steps=10",
        "schedule.min_lr_ratio=0.1",
        "train.steps=100",
    )
    assert restart_steps(cfg) == [30, 60, 90]
    lr = dict(schedule_points(cfg))

    def envelope(step):
        progress = (step - 10) / 90
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    assert lr[0] == pytest.approx(peak / 10)
    assert lr[9] == pytest.approx(peak)  # end of the first warmup
    for r in (30, 60, 90):
        assert lr[r - 1] == pytest.approx(envelope(r - 1))  # just before: on the cosine
        assert lr[r] == 0.0  # at the restart
        assert lr[r + 1] == pytest.approx(envelope(r + 5) / 5)  # re-warming linearly ...
        assert lr[r + 5] == pytest.approx(envelope(r + 5))  # ... back to the envelope
    assert lr[99] == pytest.approx(envelope(99))
    assert lr[99] > 0.1 * peak and envelope(100) == pytest.approx(0.1 * peak)


def test_lora_schedule_rewarms_only_at_the_wrap(make_config):
    common = ["relora.rank=4", "relora.relora_every=10", "relora.restart_warmup_steps=4", "train.steps=40"]
    common += ["relora.warm_start_steps=8"]
    lora = dict(schedule_points(make_config("optim.name=lora", *common)))
    relora = dict(schedule_points(make_config("optim.name=relora", *common)))
    assert lora[8] == relora[8] == 0.0  # fresh LoRA moments after the warm start: re-warm
    assert lora[18] > 0 and relora[18] == 0.0  # restarts at 18, 28, 38 for relora only
    assert [s for s, v in relora.items() if v == 0.0] == [8, 18, 28, 38]


# ------------------------------------------------------------------ through the trainer


def run(cfg, stop_at=(), resume=False) -> Recorder:
    rec = Recorder(stop_at)
    trainer = Trainer(cfg, [rec], progress=False)
    rec.trainer = trainer
    if resume:
        assert trainer.resume_from_latest()
    trainer.fit()
    return rec


RESUME_RUN = [
    "optim.name=relora",
    "relora.rank=4",
    "relora.warm_start_steps=1",
    "relora.relora_every=3",
    "relora.restart_warmup_steps=1",
    "relora.reset_ratio=0.9",
    "train.steps=10",  # two steps after the last restart: its re-drawn A shows in the loss of step 10
    "train.batch_size=4",
    "train.micro_batch_size=4",
    "train.eval_every=100",
    "train.log_every=1",
    "output.checkpoint_every=0",
]


def test_state_shrinks_to_lora_only_after_warm_start(make_config):
    rec = run(make_config(*RESUME_RUN, "train.steps=3"))

    def adamw_bytes(numels):  # exp_avg + exp_avg_sq in fp32, plus a 4-byte step per tensor
        return sum(8 * n + 4 for n in numels)

    model = build_model(build_model_cfg())
    full = [p.numel() for p in model.parameters()]
    wrap_lora(model, TARGETS, rank=4, alpha=32.0, base_precision="same")
    after_wrap = [p.numel() for p in model.parameters() if p.requires_grad]
    assert rec.by_step()[1]["trainable_parameters"] < sum(full)  # wrapped at the end of step 1
    assert rec.by_step()[3]["trainable_parameters"] == sum(after_wrap)
    # Step 1's log comes after the wrap: no moments for the LoRA factors yet, none for the frozen W.
    assert rec.logs_by_step()[1]["optimizer_state_bytes/lora_moments"] == 0
    assert rec.logs_by_step()[1]["optimizer_state_bytes"] < adamw_bytes(full)
    assert rec.logs_by_step()[3]["optimizer_state_bytes"] == adamw_bytes(after_wrap)
    lora_numels = [p.numel() for layer in lora_layers(model) for p in (layer.lora_A, layer.lora_B)]
    assert rec.logs_by_step()[3]["optimizer_state_bytes/lora_moments"] == adamw_bytes(lora_numels)


def test_resume_before_and_after_a_restart_continues_exactly(make_config, tmp_path):
    cfg = make_config(*RESUME_RUN, f"output.dir={tmp_path / 'straight'}")
    assert restart_steps(cfg) == [4, 7]
    straight = run(cfg)
    assert straight.by_step()[10]["relora_restarts"] == 2
    # Stop after step 3 (one before the restart at 4) and after step 5 (one after); resume each time.
    split = run(make_config(*RESUME_RUN), stop_at=[3])
    assert max(split.by_step()) == 3
    split2 = run(make_config(*RESUME_RUN), stop_at=[5], resume=True)
    split3 = run(make_config(*RESUME_RUN), resume=True)
    assert sorted(split2.by_step()) == [4, 5] and sorted(split3.by_step()) == [6, 7, 8, 9, 10]
    resumed = {**split.by_step(), **split2.by_step(), **split3.by_step()}
    for step in range(1, 11):
        assert resumed[step]["train_loss"] == straight.by_step()[step]["train_loss"], step
        assert resumed[step]["relora_restarts"] == straight.by_step()[step]["relora_restarts"]


def test_warm_start_from_checkpoint(make_config, tmp_path):
    torch.manual_seed(123)
    full_rank = build_model(build_model_cfg())
    path = tmp_path / "full_rank.pt"
    torch.save({"model": full_rank.state_dict()}, path)
    cfg = make_config(
        "optim.name=relora", "relora.rank=4", "relora.restart_warmup_steps=1", f"relora.warm_start_checkpoint={path}"
    )
    model = build_model(build_model_cfg())
    method = build_method(model, cfg)
    assert method.wrapped and len(lora_layers(model)) == 14
    assert torch.equal(model.layers[1].mlp.down_proj.weight, full_rank.layers[1].mlp.down_proj.weight)
    assert torch.equal(model.embed_tokens.weight, full_rank.embed_tokens.weight)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["relora.relora_every=5", "relora.restart_warmup_steps=5"], "relora.relora_every"),
        (["relora.warm_start_steps=10"], "relora.warm_start_steps"),  # train.steps is 10
        (["relora.rank=0"], "relora.rank"),
        (["relora.rank=65"], "relora.rank"),  # hidden size 64
        (["relora.reset_ratio=1.0"], "relora.reset_ratio"),
        (["relora.reset_ratio=-0.1"], "relora.reset_ratio"),
        (["relora.target_modules=[q_proj, attn_out]"], "relora.target_modules"),
        (["relora.warm_start_checkpoint=/nonexistent/ckpt.pt"], "relora.warm_start_checkpoint"),
    ],
)
def test_bad_input_is_refused_with_the_field(make_config, overrides, field):
    ok = ["optim.name=relora", "relora.rank=4", "relora.relora_every=5", "relora.restart_warmup_steps=1"]
    make_config(*ok)  # the baseline is accepted
    with pytest.raises(ConfigError) as err:
        make_config(*ok, *overrides)
    assert any(p.startswith(field + ":") for p in err.value.problems), err.value.problems


def test_rank_limit_uses_the_smallest_wrapped_dimension(make_config):
    # MLP only, hidden 64 and intermediate 172: rank 64 is the largest that fits.
    base = ["optim.name=lora", "relora.target_modules=[up_proj, down_proj]"]
    make_config(*base, "relora.rank=64")
    with pytest.raises(ConfigError, match="relora.rank: 65"):
        make_config(*base, "relora.rank=65")


def test_int8_base_with_8bit_adamw_under_bf16_autocast_runs_through_a_restart(make_config):
    rec = run(
        make_config(
            *RESUME_RUN,
            "relora.warm_start_steps=0",
            "relora.relora_every=2",
            "relora.base_precision=int8",
            "relora.inner_optimizer=adamw8bit",
            "train.precision=bf16-mixed",
            "train.steps=4",
        )
    )
    assert rec.by_step()[4]["relora_restarts"] == 1  # after update 2 (none at the last step)
    assert all(math.isfinite(m["train_loss"]) for m in rec.steps)
    # The frozen int8 weights hold no moments; the embeddings and head (>= 4096 elements) are 8-bit.
    assert rec.logs_by_step()[4]["optimizer_state_bytes/other_moments"] < 4 * 2 * 2 * 32000 * 64
