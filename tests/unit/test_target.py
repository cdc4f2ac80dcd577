"""Target-aware search (platform/export/target.py) and export's transfer rules, without a Ray cluster.

The end-to-end sweep with a target is in tests/test_export.py."""

from __future__ import annotations

import pytest
from support.tiny import TINY_MODEL

from ranktune.platform.export.fit import fit_to_target
from ranktune.platform.export.mapping import map_to_target
from ranktune.platform.export.rules import RULE_SETS, ScalingRules, load_rules
from ranktune.platform.export.target import INFEASIBLE_ATTR, check_target, infeasible_reason, proxy_config
from ranktune.platform.sweep.driver import build_searcher
from ranktune.search_spaces import spec_from_dict
from ranktune.trainables.config import ConfigError

BASE = {"model": TINY_MODEL, "train": {"batch_size": 8, "micro_batch_size": 8}}


def target_spec(tmp_path, branches=None, **extra):
    branches = branches or {
        "lora": {"relora.rank": {"type": "choice", "values": [8]}},
        "galore_adamw": {"galore.rank": {"type": "choice", "values": [16, 32]}},
    }
    raw = {
        "base_overrides": BASE,
        "storage": str(tmp_path / "s"),
        "target": {"model": "7b", "budget_gib": 24},
        "space": {
            "params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
            "branches": {"key": "optim.name", "choices": branches},
        },
        "budget": {"num_trials": 3, "steps_per_trial": 100},
        **extra,
    }
    return spec_from_dict(raw)


def test_each_method_is_feasible_at_7b_by_the_estimator(tmp_path):
    spec = target_spec(tmp_path)
    assert infeasible_reason(spec, {"optim.name": "galore_adamw", "optim.lr": 4e-3, "galore.rank": 32}) is None
    # AdamW is a reference: trained to compare with, though its 7b run does not fit (and export refuses it).
    assert infeasible_reason(spec, {"optim.name": "adamw", "optim.lr": 4e-3}) is None
    assert check_target(spec, {"optim.name": "adamw", "optim.lr": 4e-3}).problems[0].startswith("memory:")
    # APOLLO per-layer keeps its full-gradient sums in host memory: it fits at the paper's batch.
    assert infeasible_reason(spec, {"optim.name": "apollo_adamw", "optim.lr": 4e-3, "apollo.rank": 16}) is None
    # ReLoRA rank 32 of 64 becomes 2048 at 7b by the relative rank rule: it does not fit, so it is not trained.
    wide = {
        "optim.name": "relora",
        "optim.lr": 4e-3,
        "relora.rank": 32,
        "relora.relora_every": 20,
        "relora.restart_warmup_steps": 2,
        "relora.warm_start_steps": 10,
    }
    assert "memory:" in infeasible_reason(spec, wide)
    lora = infeasible_reason(spec, {"optim.name": "lora", "optim.lr": 4e-3, "relora.rank": 8})
    assert "baseline, not a pretraining recipe" in lora
    relora = {
        "optim.name": "relora",
        "optim.lr": 4e-3,
        "relora.rank": 8,
        "relora.relora_every": 20,
        "relora.restart_warmup_steps": 2,
        "relora.warm_start_steps": 10,
    }
    assert infeasible_reason(spec, relora) is None  # its warm start comes from a checkpoint at 7b


def test_infeasible_draws_are_pruned_with_a_violated_constraint_and_bounded(tmp_path):
    import optuna

    spec = target_spec(tmp_path, search={"algorithm": "tpe", "n_startup_trials": 2, "min_trials_per_branch": 1})
    spec.storage_dir.mkdir(parents=True)
    searcher, num_samples = build_searcher(spec, spec.storage_dir)
    assert num_samples == 3 + 3  # num_trials feasible, and at most as many infeasible draws (target default)
    drawn = {}
    for i in range(40):
        params = searcher.suggest(f"t{i}")
        if params == searcher.FINISHED:
            break
        drawn[f"t{i}"] = params
        result = None if params["optim.name"] == "lora" else {"eval_loss": 5.0 - i, "step": 100}  # full budget
        searcher.on_trial_complete(f"t{i}", result)
    assert searcher.feasible_drawn == 3 and len(drawn) == 3 + searcher.infeasible_drawn
    assert searcher.infeasible_drawn >= 1  # the lora branch's start-up draw (a baseline, not a recipe)
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{spec.storage_dir / 'optuna.db'}")
    for t in study.trials:
        infeasible = t.params["optim.name"] == "lora"
        assert (INFEASIBLE_ATTR in t.user_attrs) == infeasible
        assert t.state.name == ("PRUNED" if infeasible else "COMPLETE")
        # trial.set_constraint's storage: > 0 marks an infeasible trial for TPE
        assert t.system_attrs["constraints:target"] == (1.0 if infeasible else 0.0)


def test_the_proxy_trains_the_target_update_rule(tmp_path):
    spec = target_spec(tmp_path)
    params = {"optim.name": "galore_adamw", "optim.lr": 4e-3, "galore.rank": 16}
    cfg = proxy_config(spec, params)
    # what the 7b export runs: 8-bit inner optimizer, per-layer, low-rank accumulation, int8 projectors
    assert cfg.optim.name == "galore_adamw8bit" and cfg.galore.per_layer and cfg.galore.accumulation == "low_rank"
    assert cfg.galore.projector_dtype == "int8"
    assert cfg.galore.rank == 16 and cfg.model.hidden_size == 64  # the proxy's own shape and rank
    off = target_spec(tmp_path, target={"model": "7b", "proxy_update_rule": False})
    assert proxy_config(off, params).optim.name == "galore_adamw"


def test_bad_target_is_refused_before_the_sweep(tmp_path):
    from ranktune.platform.export.target import check_target_spec

    with pytest.raises(ConfigError, match=r"target.model: '8b' -> one of"):
        check_target_spec(target_spec(tmp_path, target={"model": "8b"}))
    with pytest.raises(ConfigError, match=r"target.rules: 'papers' -> one of \['proxy', 'published'\]"):
        check_target_spec(target_spec(tmp_path, target={"rules": "papers"}))


# ------------------------------------------------------------------------------------ transfer rules


@pytest.mark.parametrize(
    "name, proxy, section, expected",
    [  # the public 7b recipes (reference.md); lr: published x proxy lr / published small-model lr
        (
            "galore_adamw",
            ("galore.rank=32", "galore.update_proj_gap=20"),
            "galore",
            {"rank": 1024, "scale": 0.25, "update_proj_gap": 500},
        ),
        (
            "apollo_adamw",
            ("apollo.rank=16", "apollo.update_proj_gap=10"),
            "apollo",
            {"rank": 256, "scale": 1.0, "update_proj_gap": 200},
        ),
        ("apollo_mini", (), "apollo_mini", {"rank": 1, "scale": 128.0, "update_proj_gap": 200}),
        ("fira_adamw", ("fira.rank=16",), "fira", {"rank": 64, "scale": 0.0625, "update_proj_gap": 500}),
    ],
)
def test_published_rule_starts_from_the_public_7b_recipe(make_config, name, proxy, section, expected):
    cfg = make_config(f"optim.name={name}", "optim.lr=0.02", *proxy)
    raw = map_to_target(cfg, "7b", ScalingRules())
    assert {k: raw[section][k] for k in expected} == expected
    published_lr = {"galore": 0.005, "apollo": 0.01, "apollo_mini": 0.01, "fira": 0.005}[section]
    assert raw["optim"]["lr"] == pytest.approx(published_lr * 2.0)  # 0.02 / 0.01 = 2, the top of the clamp
    low = map_to_target(make_config(f"optim.name={name}", "optim.lr=0.001", *proxy), "7b", ScalingRules())
    assert low["optim"]["lr"] == pytest.approx(published_lr * 0.5)  # 0.1 clamped to 0.5


def test_proxy_rule_set_keeps_the_previous_rules(make_config):
    cfg = make_config("optim.name=galore_adamw", "galore.rank=32", "galore.update_proj_gap=20", "optim.lr=0.004")
    raw = map_to_target(cfg, "7b", load_rules("proxy"))
    assert raw["galore"]["rank"] == 2048 and raw["galore"]["update_proj_gap"] == 20 and raw["optim"]["lr"] == 0.004
    assert set(RULE_SETS) == {"published", "proxy"}
    with pytest.raises(ConfigError, match=r"--rules: 'nope' -> one of \['proxy', 'published'\], or an existing"):
        load_rules("nope")


def test_galore_at_the_published_rank_fits_24_gib_and_the_proxy_rank_rule_does_not(make_config):
    cfg = make_config("optim.name=galore_adamw", "galore.rank=32")
    fit = fit_to_target(cfg, "7b", ScalingRules(), [], 24.0)
    assert fit.config is not None and fit.config.tokens_per_step == 512 * 256
    assert fit.estimate.total <= 23 * 2**30  # >= 1 GiB headroom
    assert fit_to_target(cfg, "7b", load_rules("proxy"), [], 24.0).problems  # rank 2048: 29.41 GiB


def test_relora_warm_start_asks_for_a_checkpoint(make_config, tmp_path):
    cfg = make_config(
        "optim.name=relora",
        "relora.rank=8",
        "relora.relora_every=4",
        "relora.restart_warmup_steps=1",
        "relora.warm_start_steps=3",
    )
    fit = fit_to_target(cfg, "7b", ScalingRules(), [], 24.0)
    assert fit.config is not None and fit.config.relora.warm_start_steps == 0
    assert fit.inputs and fit.inputs[0].startswith("relora.warm_start_checkpoint: null -> the proxy trained")
    ckpt = tmp_path / "warm.pt"
    ckpt.write_bytes(b"")
    given = fit_to_target(cfg, "7b", ScalingRules(), [f"relora.warm_start_checkpoint={ckpt}"], 24.0)
    assert not given.inputs and given.config is not None
    in_run = fit_to_target(cfg, "7b", load_rules("proxy"), [], 24.0)  # the full-rank phase at 7b: 39 GiB
    assert in_run.problems and "warm start" in in_run.problems[0]


def test_lora_from_a_random_init_is_a_baseline_and_relora_is_not(make_config, tmp_path):
    lora = make_config("optim.name=lora", "relora.rank=8")
    fit = fit_to_target(lora, "7b", ScalingRules(), [], 24.0)
    assert fit.config is not None and fit.baseline.startswith("lora: LoRA without restarts from a random init")
    ckpt = tmp_path / "warm.pt"
    ckpt.write_bytes(b"")
    warm = fit_to_target(lora, "7b", ScalingRules(), [f"relora.warm_start_checkpoint={ckpt}"], 24.0)
    assert warm.baseline is None  # LoRA + warm start: the ReLoRA paper's "LoRA + warm start" recipe
    relora = make_config("optim.name=relora", "relora.rank=8", "relora.relora_every=4", "relora.restart_warmup_steps=1")
    assert fit_to_target(relora, "7b", ScalingRules(), [], 24.0).baseline is None


def test_token_notices_say_what_the_run_now_sees(make_config):
    from ranktune.platform.export.fit import token_notices
    from ranktune.trainables.config import apply_overrides, config_from_dict

    raw = map_to_target(make_config("optim.name=galore_adamw", "galore.rank=16"), "7b", ScalingRules())
    before = config_from_dict(raw)
    assert token_notices(before, before) == ()
    after = config_from_dict(apply_overrides(raw, ["train.batch_size=16"]))
    assert token_notices(before, after) == (
        "the run now sees tokens per step: 4,096 (16 x 256) instead of the rules' 131,072",
        "the run now sees tokens in all: 0.614B (150,000 steps) instead of 19.7B (150,000 steps)",
    )
