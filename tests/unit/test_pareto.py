"""Memory as an objective: spec validation, the Pareto front, the best trial under a memory limit."""

import pytest
from support.rows import trial_row

from ranktune.platform.export.rules import ScalingRules
from ranktune.platform.export.select import select_within_memory
from ranktune.platform.report.pareto import pareto_front
from ranktune.search_spaces import spec_from_dict
from ranktune.trainables.config import ConfigError

BASE = {"model": {"name": "tiny"}, "train": {"batch_size": 8, "micro_batch_size": 8}}
MEMORY = [{"metric": "optimizer_state_bytes", "mode": "min"}]


def spec(**kw):
    budget = {"steps_per_trial": 5000}  # the compare preset's intervals fit thousands of steps
    return spec_from_dict({"base_overrides": BASE, "space": {"preset": "compare"}, "budget": budget, **kw})


def row(trial_id, loss, state_bytes, status="finished", **params):
    return trial_row(trial_id, params, loss, status, optimizer_state_bytes=state_bytes)


def test_front_keeps_only_undominated_full_budget_trials():
    rows = [
        row("adamw", 3.0, 400),
        row("galore", 3.1, 100),
        row("worse", 3.2, 200),
        row("lora", 3.5, 50),
        row("early", 2.0, 10, status="stopped_early"),
    ]
    assert [r["trial_id"] for r in pareto_front(spec(objectives=MEMORY), rows)] == ["adamw", "galore", "lora"]


def test_trade_off_metric_is_validated():
    with pytest.raises(ConfigError, match=r"objectives\[0\].metric: 'memory'"):
        spec(objectives=[{"metric": "memory", "mode": "min"}])


def test_max_memory_picks_the_best_trial_whose_export_fits():
    s = spec()
    rows = [
        row("full", 3.0, 0, **{"optim.name": "adamw", "optim.lr": 1e-3}),
        row("galore", 3.1, 0, **{"optim.name": "galore_adamw", "optim.lr": 1e-3, "galore.rank": 64}),
    ]
    # at 7b with the default export rules: AdamW's full-rank states need 64 GiB, GaLore 37 GiB
    assert select_within_memory(s, rows, "7b", ScalingRules(), [], 40.0)["trial_id"] == "galore"
    assert select_within_memory(s, rows, "7b", ScalingRules(), [], 70.0)["trial_id"] == "full"
    with pytest.raises(ConfigError, match="--max-memory-gib: 4 -> no finished trial's 7b export fits"):
        select_within_memory(s, rows, "7b", ScalingRules(), [], 4.0)


def test_messages_name_a_fixed_method_not_none():
    """Issue 24.18: with the method fixed in base_overrides (not searched), export's lines read
    "trial X (None)" or "trial X ()": the method comes from the trial's config, as in the report."""
    from ranktune.platform.export.select import what_is_lost
    from ranktune.platform.report.pareto import format_front

    s = spec_from_dict(
        {
            "base_overrides": {**BASE, "optim": {"name": "adamw"}},
            "budget": {"steps_per_trial": 50},
            "space": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
            "objectives": MEMORY,
        }
    )
    rows = [row("a1", 3.0, 400, **{"optim.lr": 1e-3}), row("a2", 3.1, 100, **{"optim.lr": 2e-3})]
    with pytest.raises(ConfigError) as refused:
        select_within_memory(s, rows, "7b", ScalingRules(), [], 4.0)
    passed_over = refused.value.problems[1:]
    assert len(passed_over) == 2 and all(
        line.startswith(("trial a1 (adamw): ", "trial a2 (adamw): ")) for line in passed_over
    ), passed_over
    assert what_is_lost(s, rows[0], rows[1]).startswith("trial a2 (adamw, eval_loss 3.1000")
    assert [line.split()[0] for line in format_front(s, rows)[1:]] == ["adamw", "adamw"]
