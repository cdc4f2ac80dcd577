"""Duration estimate (platform/duration.py): FLOPs, throughput, micro-batch choice and --tokens / --days sizing,
on the 7b export of a GaLore proxy (mapped and fitted without a sweep: seconds, no training)."""

from __future__ import annotations

import pytest

from ranktune.platform.cards import CARDS
from ranktune.platform.duration import (
    MeasuredThroughput,
    RunBudget,
    estimate_duration,
    fastest_micro_batch,
    load_measured,
    record_measured,
    run_flops,
    sized_steps,
)
from ranktune.platform.export.fit import fit_micro_batch_choice, fitting_micro_batches, size_to_budget
from ranktune.platform.export.mapping import map_to_target
from ranktune.platform.export.rules import ScalingRules
from ranktune.trainables.config import ConfigError, config_from_dict
from ranktune.trainables.model import build_model, count_parameters, model_config

RULES = ScalingRules()


def galore_proxy():
    return config_from_dict(
        {
            "model": {"name": "60m"},
            "optim": {"name": "galore_adamw"},
            "galore": {"rank": 128},
            "train": {"steps": 1000},
            "schedule": {"warmup_steps": 100},
        }
    )


@pytest.fixture(scope="module", autouse=True)
def no_user_measurements(tmp_path_factory):
    """Measured figures in the user's own cache would change the choices: point it at an empty directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANKTUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def export_7b(no_user_measurements):
    proxy = galore_proxy()
    cfg, _, choice = fit_micro_batch_choice(map_to_target(proxy, "7b", RULES), [], RULES, 24.0)
    return proxy, cfg, choice


def test_7b_export_flops_are_6nt_plus_recompute_plus_the_projections(export_7b):
    _, cfg, _ = export_7b
    n = count_parameters(build_model(model_config("7b"), device="meta"))
    assert 6.7e9 < n < 6.8e9
    tokens = 150_000 * 512 * 256
    f = run_flops(cfg)
    assert f.tokens == tokens == cfg.data.max_tokens
    # 6 N T, plus the recompute of activation checkpointing: one more forward of the decoder layers (2 N_layers T).
    hidden, inter, layers = 4096, 11008, 32
    per_layer = 4 * hidden * hidden + 3 * hidden * inter  # q k v o, gate up down (norms are 8k values)
    expected = 6 * n * tokens + 2 * layers * per_layer * tokens
    assert f.model + f.attention + f.recompute == pytest.approx(expected, rel=0.05)
    assert f.model == 6 * n * tokens
    # GaLore's own: every micro-batch's gradient projected (2 r m n), the update projected back once per step.
    assert cfg.galore.rank == 1024 and cfg.grad_accum_steps == 256
    projection = 2 * 1024 * layers * per_layer
    svds = (150_000 // cfg.galore.update_proj_gap) * f.method_flops.per_refresh
    assert f.method == pytest.approx(150_000 * (256 * projection + projection) + svds, rel=1e-9)
    # The derivation: at 512 tokens per micro-batch, projecting costs ~half the forward + backward.
    assert 0.3 < projection / (6 * n * 512) < 0.7

    d = estimate_duration(cfg, "rtx4090", measured=[])
    card = CARDS["rtx4090"]
    assert d.source == "assumed" and d.seconds == pytest.approx(f.total / (card.peak_bf16_tflops * 1e12 * 0.4))
    text = "\n".join(d.lines())
    assert "165.2 TFLOPS peak bf16 x 40% utilisation (assumed)" in text and "days" in text
    assert "compute-optimal" in text and f"~{20 * n / 1e9:.0f}B" in text


def test_micro_batch_is_the_fastest_that_fits_not_merely_the_largest(export_7b):
    proxy, cfg, choice = export_7b
    fits = [c for c, _ in fitting_micro_batches(map_to_target(proxy, "7b", RULES), [], RULES, 24.0)]
    assert sorted(c.train.micro_batch_size for c in fits) == [1, 2]
    # By the FLOP model: fewer micro-batches = fewer gradient projections, so 2 beats 1; the runner-up is shown.
    assert choice.chosen.train.micro_batch_size == 2 and choice.runner_up.train.micro_batch_size == 1
    assert choice.runner_up_step_s > choice.chosen_step_s
    assert "runner-up micro-batch 1" in choice.line()
    # A measurement that makes the smaller micro-batch faster turns the choice around.
    measured = [
        MeasuredThroughput("rtx4090", "test card", "7b", "galore_adamw8bit", mb, 256, True, tps, "2026-12-06")
        for mb, tps in ((1, 900.0), (2, 600.0))
    ]
    flipped = fastest_micro_batch(fits, "rtx4090", measured)
    assert flipped.chosen.train.micro_batch_size == 1 and flipped.runner_up.train.micro_batch_size == 2
    # Equal times (no per-micro-batch cost): the larger micro-batch.
    equal = [MeasuredThroughput("rtx4090", "t", "7b", "galore_adamw8bit", mb, 256, True, 700.0, "d") for mb in (1, 2)]
    assert fastest_micro_batch(fits, "rtx4090", equal).chosen.train.micro_batch_size == 2


def test_tokens_budget_gives_steps_times_tokens_per_step_equal_to_it(export_7b):
    proxy, _, _ = export_7b
    budget = 20_000 * 512 * 256
    raw, rules, line = size_to_budget(
        proxy, "7b", RULES, map_to_target(proxy, "7b", RULES), [], 24.0, RunBudget(tokens=budget), "rtx4090"
    )
    cfg, _, _ = fit_micro_batch_choice(raw, [], rules, 24.0)
    assert cfg.train.steps * cfg.tokens_per_step == budget == cfg.data.max_tokens
    assert cfg.schedule.warmup_steps == 2_000  # the proxy's 10% by the `fraction` rule
    assert line.startswith(f"--tokens {budget:,}: 20,000 steps")
    # A budget that is not whole steps rounds down, and says so.
    steps, why = sized_steps(cfg, RunBudget(tokens=budget + 5))
    assert steps == 20_000 and "rounded down" in why


def test_days_budget_fills_the_days_at_the_estimated_step_time(export_7b):
    proxy, _, _ = export_7b
    raw, rules, line = size_to_budget(
        proxy, "7b", RULES, map_to_target(proxy, "7b", RULES), [], 24.0, RunBudget(days=14), "rtx4090"
    )
    cfg, _, _ = fit_micro_batch_choice(raw, [], rules, 24.0)
    d = estimate_duration(cfg, "rtx4090", measured=[])
    assert cfg.train.steps * cfg.tokens_per_step == cfg.data.max_tokens == d.flops.tokens
    assert 14 * 86_400 - 2 * d.step_seconds < d.seconds <= 14 * 86_400
    assert "--days 14 on NVIDIA GeForce RTX 4090" in line


def test_bad_budgets_are_refused():
    with pytest.raises(ConfigError, match="exactly one"):
        RunBudget()
    with pytest.raises(ConfigError, match="--days: -1"):
        RunBudget(days=-1)
    cfg = galore_proxy()
    with pytest.raises(ConfigError, match="less than one step"):
        sized_steps(cfg, RunBudget(tokens=10))


def test_measured_throughput_replaces_the_assumption(tmp_path, export_7b):
    _, cfg, _ = export_7b
    path = tmp_path / "measured.json"
    record = MeasuredThroughput(
        "rtx4090", "NVIDIA GeForce RTX 4090", "7b", "galore_adamw8bit", 2, 256, True, 1234.0, "2026-12-06"
    )
    record_measured(path, record)
    record_measured(path, record)  # the same configuration again replaces, not duplicates
    measured = load_measured([path])
    assert measured == [record]
    d = estimate_duration(cfg, "rtx4090", measured)
    f = d.flops
    assert d.source == "measured"
    assert d.seconds == pytest.approx(f.tokens / 1234.0 + f.method_refresh / d.flops_per_s)
    assert "measured 1,234 tokens/s" in "\n".join(d.lines())
    assert estimate_duration(cfg, "h100", measured).source == "assumed"  # another card: not this measurement
