"""GaLore: parity with galore-torch, per-layer mode, resume, 8-bit and Adafactor inners, state bytes, bad input."""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings

import pytest
import torch
from support.recorder import Recorder

from ranktune.trainables import Trainer
from ranktune.trainables.config import ConfigError
from ranktune.trainables.model import build_model
from ranktune.trainables.optim import build_method
from ranktune.trainables.optim.galore import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit
from ranktune.trainables.optim.galore.method import targeted_linears
from ranktune.trainables.optim.galore.projector import top_singular_vectors

RANK, GAP = 8, 3
GALORE = ("galore.rank=8", "galore.update_proj_gap=3")


def random_batches(vocab: int, n: int, seq_len: int = 32, batch: int = 4):
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (batch, seq_len + 1), generator=gen) for _ in range(n)]


def train_method(cfg, batches, dtype: torch.dtype = torch.float32):
    """Our loop's calls (begin_step / backward / step / end_step) on fixed batches; returns the model."""
    torch.manual_seed(0)
    model = build_model(cfg.model.llama_config(vocab_size=256)).to(dtype)
    method = build_method(model, cfg)
    for step, x in enumerate(batches, start=1):
        method.begin_step(cfg.optim.lr)
        method.begin_micro_batch(is_last=True)
        model(x[:, :-1], x[:, 1:])[1].backward()
        method.step()
        method.end_step(step)
    return model, method


def max_relative_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest relative difference ||a - b|| / ||b|| over the parameter tensors.

    Per tensor rather than per element: the two runs round differently (our projectors are compact
    copies, galore-torch multiplies strided views of the SVD factors), and Adam divides by sqrt(v),
    so an embedding row of a token seen once can differ by ~1e-5 of the tensor's largest value.
    """
    return max(((pa - pb).norm() / pb.norm()).item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


# ---------------------------------------------------------------------------------------------- parity


# std projects the right side of the tall matrices and the left side of the wide ones (down_proj),
# reverse_std the other way round, full both: every projection path is compared.
#
# Both sides run in float64 (both still take the SVD of an fp32 copy of the gradient, so the two
# runs see the same projectors). In fp32 the runs differ by rounding alone, and by how much depends
# on the CPU's kernels: reverse_std measured 1.10e-5 on an AMD EPYC machine. In float64 the largest
# differences measured (AMD EPYC, torch 2.13) were std 1.5e-16, reverse_std 1.5e-16, full 2.0e-15;
# the tolerance is 10x the largest of them.
PARITY_TOLERANCE = 2e-14


@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "full"])
def test_matches_public_galore_adamw_across_projector_updates(make_config, proj_type):
    from galore_torch import GaLoreAdamW as PublicGaLoreAdamW

    # galore-torch's AdamW: eps default 1e-6, and weight decay applied after the update; match both.
    cfg = make_config(
        "optim.name=galore_adamw",
        *GALORE,
        f"galore.proj_type={proj_type}",
        "optim.eps=1e-6",
        "optim.weight_decay=0",
        "optim.lr=1e-2",
        "train.grad_clip=0",
    )
    batches = random_batches(256, 2 * GAP + 3)  # projector updates at updates 0, 3, 6
    ours, _ = train_method(cfg, batches, dtype=torch.float64)

    torch.manual_seed(0)
    ref = build_model(cfg.model.llama_config(vocab_size=256)).to(torch.float64)
    projected = [m.weight for m in targeted_linears(ref, cfg.galore.target_modules).values()]
    rest = [p for p in ref.parameters() if all(p is not q for q in projected)]
    groups = [
        {"params": projected, "rank": RANK, "update_proj_gap": GAP, "scale": 0.25, "proj_type": proj_type},
        {"params": rest},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = PublicGaLoreAdamW(groups, lr=1e-2, eps=1e-6, weight_decay=0.0, no_deprecation_warning=True)
    for x in batches:
        ref(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad()

    torch.manual_seed(0)
    initial = build_model(ref.cfg).to(torch.float64)
    assert max_relative_difference(ref, initial) > 1e-1  # the runs did train, so the parity below means something
    assert max_relative_difference(ours, ref) < PARITY_TOLERANCE


def step_side_by_side(tensors, make_ours, make_ref, steps: int = 4):
    """Two copies of `tensors`, each stepped `steps` times by its optimizer on the same random gradients."""
    ours = [t.clone().requires_grad_() for t in tensors]
    ref = [t.clone().requires_grad_() for t in tensors]
    opt_ours, opt_ref = make_ours(ours), make_ref(ref)
    for _ in range(steps):
        grads = [torch.randn_like(t) for t in tensors]
        for params, opt in ((ours, opt_ours), (ref, opt_ref)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    return ours, ref, opt_ours


def test_adafactor_inner_is_torch_adafactor_on_unprojected_parameters():
    torch.manual_seed(0)
    ours, ref, _ = step_side_by_side(
        [torch.randn(40, 24, dtype=torch.float64), torch.randn(17, dtype=torch.float64)],
        lambda ps: GaLoreAdafactor(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: torch.optim.Adafactor(ps, lr=1e-2, weight_decay=0.1, foreach=False),
    )
    # Measured: bit-identical in float64 (and in fp32) on AMD EPYC; the same operations in the same
    # order. 1e-13 leaves room for a CPU whose vector kernels reassociate a reduction.
    for p, q in zip(ours, ref, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=0)


def test_8bit_inner_is_bitsandbytes_adamw8bit_on_unprojected_parameters():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    ours, ref, opt_ours = step_side_by_side(
        [torch.randn(64, 128), torch.randn(64)],  # 8-bit moments; fp32 moments (< 4096 values)
        lambda ps: GaLoreAdamW8bit(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-2, weight_decay=0.1),
    )
    for p, q in zip(ours, ref, strict=True):
        assert torch.equal(p, q)
    assert opt_ours.state[ours[0]]["state1"].dtype == torch.uint8
    assert opt_ours.state[ours[1]]["state1"].dtype == torch.float32


# ------------------------------------------------------------------------------ per-layer mode, resume


def test_per_layer_equals_whole_model_and_reports_metrics(make_config, caplog):
    common = (
        "optim.name=galore_adamw",
        *GALORE,
        "galore.per_tensor_clip=0.5",
        "train.grad_clip=0",
        f"train.steps={2 * GAP + 3}",
        "train.log_every=3",
    )
    whole, per_layer = Recorder(), Recorder()
    with caplog.at_level(logging.INFO, logger="ranktune.trainables.optim.galore.method"):
        a = Trainer(make_config(*common), callbacks=[whole], progress=False)
    assert "projecting 14 matrices" in caplog.text  # 2 layers x (q, k, v, o, gate, up, down)
    # accumulation: full clips the full gradient per tensor, as the whole-model run does (low_rank
    # clips what the inner optimizer sees; tests/test_galore_accumulation.py covers it).
    b = Trainer(
        make_config(*common, "galore.per_layer=true", "galore.accumulation=full"), callbacks=[per_layer], progress=False
    )
    a.fit()
    b.fit()
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert [s["train_loss"] for s in whole.steps] == [s["train_loss"] for s in per_layer.steps]
    # 14 projectors at updates 0, 3 and 6 (counted in optimizer updates), in the trainer's metrics.
    updates = [s["galore/projector_updates"] for s in per_layer.steps]
    assert updates == [14, 14, 14, 28, 28, 28, 42, 42, 42]
    assert per_layer.steps[-1]["galore/svd_seconds"] > 0
    assert per_layer.logs[-1]["optimizer_state_bytes/projectors"] > 0
    assert per_layer.logs[-1]["gradient_bytes"] == 0  # freed inside the hooks
    assert whole.logs[-1]["optimizer_state_bytes"] == per_layer.logs[-1]["optimizer_state_bytes"]


def test_per_layer_with_accumulation_updates_on_last_micro_batch_only(make_config):
    common = ("optim.name=galore_adamw", *GALORE, "train.grad_clip=0", "train.batch_size=8", "train.micro_batch_size=4")
    batches = random_batches(256, 2 * (2 * GAP + 1))
    # Full-size accumulation in .grad (low-rank accumulation: tests/test_galore_accumulation.py).
    layer_cfg = make_config(*common, "galore.per_layer=true", "galore.accumulation=full")
    whole_cfg = make_config(*common)
    models = []
    for cfg in (whole_cfg, layer_cfg):
        torch.manual_seed(0)
        model = build_model(cfg.model.llama_config(vocab_size=256))
        method = build_method(model, cfg)
        for step in range(len(batches) // 2):
            method.begin_step(cfg.optim.lr * (0.5 if step % 2 else 1.0))  # the LR schedule reaches every optimizer
            for micro in range(2):
                before = [p.detach().clone() for p in model.parameters()]
                x = batches[2 * step + micro]
                method.begin_micro_batch(is_last=micro == 1)
                (model(x[:, :-1], x[:, 1:])[1] / 2).backward()
                if cfg.galore.per_layer:
                    changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True)]
                    has_grad = [p.grad is not None for p in model.parameters()]
                    assert (not any(changed) and all(has_grad)) if micro == 0 else (all(changed) and not any(has_grad))
            method.step()
            method.end_step(step + 1)
        models.append(model)
    for pa, pb in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(
    "overrides",
    [
        ("optim.name=galore_adamw",),
        ("optim.name=galore_adamw8bit", "galore.per_layer=true", "galore.svd=randomized"),
        # Low-rank accumulators over 2 micro-batches, the update deferred for global clipping.
        ("optim.name=galore_adamw", "galore.per_layer=true", "train.micro_batch_size=4", "train.grad_clip=0.5"),
    ],
    ids=["adamw", "adamw8bit-per-layer-randomized", "adamw-per-layer-low-rank-accumulation-clipped"],
)
def test_resume_mid_gap_continues_exactly(make_config, tmp_path, overrides):
    gap, steps = 4, 11  # projector updates at 0, 4, 8; stop after update 6, in the middle of a gap
    common = (
        "galore.rank=8",
        f"galore.update_proj_gap={gap}",
        "train.grad_clip=0",
        f"train.steps={steps}",
        "output.checkpoint_every=0",
        "train.eval_every=100",
        *overrides,
    )
    straight = Recorder()
    a = Trainer(make_config(*common, f"output.dir={tmp_path / 'a'}"), callbacks=[straight], progress=False)
    a.fit()

    first, second = Recorder(), Recorder()
    stop = Recorder(stop_at={6})
    b = Trainer(make_config(*common, f"output.dir={tmp_path / 'b'}"), callbacks=[first, stop], progress=False)
    stop.trainer = b
    b.fit()
    assert b.step == 6
    c = Trainer(make_config(*common, f"output.dir={tmp_path / 'b'}"), callbacks=[second], progress=False)
    assert c.resume_from_latest()
    c.fit()

    losses = [s["train_loss"] for s in straight.steps]
    assert [s["train_loss"] for s in first.steps + second.steps] == losses
    assert second.steps[-1]["galore/projector_updates"] == straight.steps[-1]["galore/projector_updates"]
    for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True):
        assert torch.equal(pa, pc)


def test_state_dict_round_trip_keeps_projectors_and_8bit_moments():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(96, 160))
    opt = GaLoreAdamW8bit([{"params": [w], "rank": 8, "update_proj_gap": 2}], lr=1e-2)
    w.grad = torch.randn_like(w)
    opt.step()
    sd = opt.state_dict()
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = GaLoreAdamW8bit([{"params": [w2], "rank": 8, "update_proj_gap": 2}], lr=1e-2)
    opt2.load_state_dict(sd)
    for key, value in opt.state[w].items():
        other = opt2.state[w2][key]
        assert (torch.equal(value, other) and value.dtype == other.dtype) if torch.is_tensor(value) else value == other
    assert opt2.state[w2]["proj_left"].shape == (96, 8)  # std: the smaller side (m < n) is projected
    assert opt2.projector_updates == 1


# ------------------------------------------------------------------------------------ other inners, SVD


# bitsandbytes' 8-bit AdamW runs its CPU fallback: 40+ s on 2 cores, so it is in the slow run.
@pytest.mark.parametrize("name", [pytest.param("galore_adamw8bit", marks=pytest.mark.slow), "galore_adafactor"])
def test_other_inners_train_on_cpu(make_config, name):
    # Adafactor's lr is relative to the weight's RMS (0.02 here), so it needs a larger value than Adam.
    lr = "optim.lr=0.1" if name == "galore_adafactor" else "optim.lr=3e-3"
    summary = Trainer(make_config(f"optim.name={name}", *GALORE, lr, "train.steps=20"), progress=False).fit()
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.5


def test_randomized_svd_finds_the_full_svd_subspace():
    torch.manual_seed(0)
    m, n, r = 200, 120, 16
    u = torch.linalg.qr(torch.randn(m, n)).Q
    v = torch.linalg.qr(torch.randn(n, n)).Q
    s = 0.8 ** torch.arange(n, dtype=torch.float32)  # a gradient-like decaying spectrum
    g = u @ torch.diag(s) @ v.T
    u_full, vh_full = top_singular_vectors(g, r, svd="full")
    u_rand, vh_rand = top_singular_vectors(g, r, svd="randomized", oversample=8, power_iters=2, seed=3)
    # Cosines of the principal angles between the subspaces; 1 means the same subspace.
    assert torch.linalg.svdvals(u_full.T @ u_rand).min() > 0.99
    assert torch.linalg.svdvals(vh_full @ vh_rand.T).min() > 0.99
    again, _ = top_singular_vectors(g, r, svd="randomized", oversample=8, power_iters=2, seed=3)
    assert torch.equal(u_rand, again)  # seeded: a resumed run recomputes the same projector


# ---------------------------------------------------------------------------------------- state bytes


def test_state_bytes_match_the_analytic_count(make_config):
    cfg = make_config("optim.name=galore_adamw", *GALORE, "galore.target_modules=[q_proj,gate_proj,down_proj]")
    model, method = train_method(cfg, random_batches(256, 1))
    shapes = [m.weight.shape for m in targeted_linears(model, cfg.galore.target_modules).values()]
    assert len(shapes) == 6
    by_category = method.state_bytes()
    fp32 = 4
    assert by_category["moments"] == sum(2 * RANK * max(s) * fp32 for s in shapes)
    assert by_category["projectors"] == sum(RANK * min(s) * fp32 for s in shapes)
    n_projected = sum(math.prod(s) for s in shapes)
    n_rest = sum(p.numel() for p in model.parameters()) - n_projected
    assert by_category["regular_params"] == 2 * n_rest * fp32


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, field",
    [
        (("galore.rank=0",), "galore.rank: 0"),
        (("galore.rank=65",), "galore.rank: 65 -> at most 64"),  # hidden 64: q_proj is 64x64
        (("galore.update_proj_gap=0",), "galore.update_proj_gap: 0"),
        (("galore.proj_type=diagonal",), "galore.proj_type: 'diagonal'"),
        (
            ("galore.per_layer=true", "galore.accumulation=full", "train.grad_clip=1.0"),
            "train.grad_clip: 1.0 -> 0 with galore.per_layer",
        ),
        (("galore.target_modules=[attention]",), "galore.target_modules: ['attention'] -> patterns matching"),
    ],
)
def test_bad_galore_config_is_refused_with_the_field(make_config, overrides, field):
    with pytest.raises(ConfigError) as err:
        make_config("optim.name=galore_adamw", *overrides)
    assert any(p.startswith(field) for p in err.value.problems), err.value.problems


def test_8bit_without_bitsandbytes_is_refused(make_config, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError) as err:
        make_config("optim.name=galore_adamw8bit", *GALORE)
    assert any("bitsandbytes" in p for p in err.value.problems)
    make_config("optim.name=galore_adamw", *GALORE)  # the fp32 variant does not need it


@pytest.mark.parametrize(
    "group, message",
    [
        ({"rank": 0}, "rank: 0 -> an integer >= 1"),
        ({"rank": 20}, "rank: 20 -> at most 16"),
        ({"rank": 4, "update_proj_gap": 0}, "update_proj_gap: 0"),
        ({"rank": 4, "proj_type": "diagonal"}, "proj_type: 'diagonal'"),
        ({"rank": 4, "svd": "approximate"}, "svd: 'approximate'"),
    ],
)
def test_bad_param_group_is_refused_by_the_optimizer(group, message):
    w = torch.nn.Parameter(torch.zeros(16, 32))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        GaLoreAdamW([{"params": [w], **group}])
