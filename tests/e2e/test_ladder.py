"""The ladder's mechanics without Ray: promotion, the lr re-search, comparisons from known rows, the fitted
rule on synthetic data with a known exponent, export's use of it, the spec key, and the proxy checks."""

from __future__ import annotations

import math

import pytest
from scipy import stats
from support.rows import trial_row

from ranktune.platform.export.fitted_rules import LadderSource, apply_fitted_lr, fit_power_law, fit_rules
from ranktune.platform.report.ladder_analysis import (
    ConfigResult,
    compare,
    lr_points,
    promote,
    rung_results,
    transfer_verdict,
    unique_points,
)
from ranktune.platform.report.proxy_checks import MIN_MATRIX_SHARE, matrix_share, on_edge, sanity_line
from ranktune.search_spaces import spec_from_dict
from ranktune.trainables.config import ConfigError
from ranktune.trainables.model import model_config


def cr(cid: str, method: str, loss: float | None, lr: float = 1e-3, **params) -> ConfigResult:
    return ConfigResult(cid, method, {"optim.name": method, "optim.lr": lr, **params}, lr, loss)


def test_promotion_takes_the_best_per_method_and_skips_unfinished():
    rows = [
        cr("a1", "adamw", 5.0),
        cr("a2", "adamw", 4.0),
        cr("a3", "adamw", 4.5),
        cr("g1", "galore", 4.2),
        cr("g2", "galore", None),
        cr("g3", "galore", math.nan),
    ]
    chosen = promote(rows, per_method=2)
    assert [r.config_id for r in chosen] == ["a2", "g1", "a3"]
    assert [r.config_id for r in promote(rows, per_method=1)] == ["a2", "g1"]


def test_lr_is_re_searched_around_the_transferred_value_and_shared_runs_are_trained_once():
    promoted = [cr("a", "adamw", 4.0, lr=2e-3), cr("b", "adamw", 4.1, lr=4e-3)]
    points = lr_points(promoted, [0.5, 1.0, 2.0])
    assert [(p.config_id, p.params["optim.lr"]) for p in points] == [
        ("a", 1e-3),
        ("a", 2e-3),
        ("a", 4e-3),
        ("b", 2e-3),
        ("b", 4e-3),
        ("b", 8e-3),
    ]
    distinct = unique_points(points)
    assert len(distinct) == 4  # a x2 and b x1 meet at 4e-3, a x1 and b x0.5 at 2e-3
    loss_of = {p.key: {1e-3: 4.3, 2e-3: 3.9, 4e-3: 3.7, 8e-3: 4.4}[p.params["optim.lr"]] for p in points}
    results = {r.config_id: r for r in rung_results(points, loss_of)}
    assert (
        results["a"].loss == 3.7 and results["a"].lr == 4e-3 and results["a"].losses == {"0.5": 4.3, "1": 3.9, "2": 3.7}
    )
    assert results["b"].loss == 3.7 and results["b"].lr == 4e-3  # its factor 1 was best


def test_correlations_and_regret_from_known_rows():
    lower = [
        cr("a1", "adamw", 1.0),
        cr("a2", "adamw", 2.0),
        cr("g1", "galore", 3.0),
        cr("g2", "galore", 4.0),
        cr("x", "lora", 0.5),
    ]  # (x never reached the upper rung)
    upper = [cr("a1", "adamw", 2.2), cr("a2", "adamw", 2.1), cr("g1", "galore", 2.0), cr("g2", "galore", 2.5)]
    c = compare("r1", lower, "r2", upper)
    a, b = [1.0, 2.0, 3.0, 4.0], [2.2, 2.1, 2.0, 2.5]
    assert c.configurations == 4
    assert c.spearman == pytest.approx(stats.spearmanr(a, b).statistic) == pytest.approx(0.2)  # 1 - 6 x 8 / 60
    assert c.kendall == pytest.approx(0.0)  # 3 concordant, 3 discordant pairs
    assert c.lower_winner == "adamw" and c.upper_winner == "galore" and c.same_winner is False
    assert c.method_kendall == pytest.approx(-1.0)
    assert c.best_config_kept == {"adamw": False, "galore": True}
    assert c.lower_pick == "a1" and c.regret == pytest.approx(0.2)  # a1 gets 2.2 above, the best there is 2.0
    assert transfer_verdict(c).startswith("it flipped: adamw won at r1, galore at r2")
    # one configuration per method (promote: 1): whether its best stays its best is not a question
    one_each = compare("r1", lower, "r2", [upper[0], upper[2]])
    assert one_each.best_config_kept == {} and one_each.configurations == 2


def test_verdict_says_when_the_order_held():
    lower = [cr("a", "adamw", 1.0), cr("g", "galore", 2.0), cr("l", "lora", 3.0)]
    upper = [cr("a", "adamw", 0.5), cr("g", "galore", 0.6), cr("l", "lora", 0.9)]
    c = compare("tiny", lower, "big", upper)
    assert c.spearman == pytest.approx(1.0) and c.regret == 0.0
    assert transfer_verdict(c).startswith("the ranking of methods held from tiny to big (3 methods in the same order")


def test_power_law_recovers_a_known_exponent_with_its_uncertainty():
    widths = [64, 128, 256, 512]
    exact = fit_power_law([(w, 0.3 * w**-0.5) for w in widths])
    assert exact.exponent == pytest.approx(-0.5, abs=1e-12) and exact.coefficient == pytest.approx(0.3)
    assert exact.exponent_stderr == pytest.approx(0.0, abs=1e-12)
    noisy = fit_power_law([(w, 0.3 * w**-0.5 * f) for w, f in zip(widths, [1.1, 0.9, 1.05, 0.95], strict=True)])
    assert noisy.exponent_stderr > 0 and abs(noisy.exponent + 0.5) < 3 * noisy.exponent_stderr
    with pytest.raises(ValueError, match="at least|>= 3 rungs"):
        fit_power_law([(64, 1.0), (128, 0.5)])


def rung(width: int, configs: list[dict]) -> dict:
    return {"width": width, "configurations": configs}


def test_fitted_rules_per_method_and_export_using_them():
    rungs = [
        rung(
            w,
            [
                {"method": "galore_adamw", "loss": 3.0, "step_size": 0.25 * 0.02 * (w / 64) ** -1.0, "rank": 16},
                {"method": "galore_adamw", "loss": 3.5, "step_size": 1.0, "rank": 32},  # not its best
                {"method": "adamw", "loss": 3.1, "step_size": 0.004, "rank": None},
            ],
        )
        for w in (64, 128, 256)
    ]
    rules = fit_rules(rungs)
    assert rules["galore_adamw"].step_size.exponent == pytest.approx(-1.0)
    assert "rank 16 won at every rung" in rules["galore_adamw"].rank_note
    assert rules["adamw"].step_size.exponent == pytest.approx(0.0, abs=1e-12)
    source = LadderSource(ladder_dir=None, sweep_dir=None, rules=rules, widths=[64, 128, 256])
    raw = {"optim": {"lr": 123.0}}
    lines = apply_fitted_lr(raw, "galore_adamw", 4096, source, knob=0.25)
    assert raw["optim"]["lr"] == pytest.approx(0.02 * 64 / 4096)  # eta(4096) / knob
    assert lines[0].startswith("Rules: fitted") and "extrapolates 16x beyond the widest rung" in lines[1]
    raw = {"optim": {"lr": 1.0}}
    assert len(apply_fitted_lr(raw, "galore_adamw", 512, source, knob=0.25)) == 1  # 2x the widest: no warning
    assert "not for relora" in apply_fitted_lr(raw, "relora", 512, source, knob=1.0)[0]


def test_report_ranks_methods_and_configurations_per_rung():
    from ranktune.platform.report.ladder import ladder_lines

    def config(cid, method, loss):
        return {"config_id": cid, "method": method, "loss": loss}

    rung_row = {
        "index": 1,
        "name": "w64",
        "width": 64,
        "num_layers": 2,
        "parameters": 360_000,
        "matrix_share": 0.27,
        "steps": 60,
        "configurations": [
            config("g1", "galore_adamw", 5.5),
            config("a2", "adamw", 5.6),
            config("a1", "adamw", 5.9),
            config("g2", "galore_adamw", None),
        ],
        "method_ranking": [{"method": "galore_adamw", "loss": 5.5}, {"method": "adamw", "loss": 5.6}],
    }
    ladder = {
        "name": "lad",
        "complete": False,
        "promote": 1,
        "lr_factors": [0.5, 1.0, 2.0],
        "rungs": [rung_row],
        "comparisons": [],
        "verdict": "fewer than two rungs finished",
        "rules": {},
    }
    lines = ladder_lines(ladder)
    assert "  methods: galore_adamw 5.5000, adamw 5.6000" in lines
    assert "  configurations: g1 (galore_adamw) 5.5000, a2 (adamw) 5.6000, a1 (adamw) 5.9000" in lines
    comparison = {
        "lower": "w64",
        "upper": "w96",
        "spearman": 1.0,
        "kendall": 1.0,
        "configurations": 2,
        "methods": 2,
        "method_kendall": 1.0,
        "lower_winner": "adamw",
        "upper_winner": "adamw",
        "regret": 0.0,
    }
    ladder["comparisons"] = [
        {**comparison, "best_config_kept": {}},
        {**comparison, "best_config_kept": {"adamw": True, "galore_adamw": False}},
    ]
    lines = ladder_lines(ladder)
    assert "best configuration kept: n/a (one configuration per method)" in lines[-3]
    assert "best configuration kept by 1 of 2 methods" in lines[-2]


# ---------------------------------------------------------------------------------- spec


BASE = {
    "model": {"name": "tiny"},
    "data": {"seq_len": 32},
    "train": {"batch_size": 4, "micro_batch_size": 4, "eval_every": 5},
    "schedule": {"warmup_steps": 2},
}


def ladder_spec(tmp_path, **ladder):
    raw = {
        "name": "lad",
        "base_overrides": BASE,
        "storage": str(tmp_path / "lad"),
        "space": {
            "params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
            "branches": {
                "key": "optim.name",
                "choices": {"adamw": {}, "galore_adamw": {"galore.rank": {"type": "choice", "values": [8, 32]}}},
            },
        },
        "budget": {"num_trials": 2, "steps_per_trial": 10},
        "ladder": {"rungs": [{"name": "a", "model": {"hidden_size": 64}}, {"name": "b"}], **ladder},
    }
    return spec_from_dict(raw)


def test_ladder_spec_refuses_a_rung_its_space_cannot_train(tmp_path):
    from ranktune.platform.sweep.ladder import rung_spec

    spec = ladder_spec(tmp_path)
    assert rung_spec(spec, 1).trial_config({}).model.llama_config().hidden_size == 128
    assert rung_spec(spec, 1).scheduler.name == "none" and rung_spec(spec, 0).scheduler.name == "asha"
    with pytest.raises(ConfigError, match=r"ladder.rungs\[1\] \(b\): space galore.rank: .*galore.rank: 32"):
        ladder_spec(
            tmp_path,
            rungs=[{"name": "a"}, {"name": "b", "model": {"hidden_size": 16, "num_heads": 2, "intermediate_size": 24}}],
        )
    with pytest.raises(ConfigError, match=r"ladder.rungs: .*at least 2"):
        ladder_spec(tmp_path, rungs=[{"name": "a"}])
    with pytest.raises(ConfigError, match=r"lr_factors: \[0.0\] -> positive factors"):
        ladder_spec(tmp_path, lr_factors=[0.0])


def test_a_rung_of_fixed_points_has_no_study_and_so_no_importance_plot(tmp_path):
    """Rungs above the first train fixed points (no Optuna study); with >= IMPORTANCE_MIN_TRIALS finished runs
    the sweep's plots asked Optuna for that study's importances and the ladder died with KeyError (ladder_tiny's
    27-run second rung did)."""
    import optuna

    from ranktune.platform.report.figures import _param_importances
    from ranktune.platform.sweep.ladder import rung_spec

    rspec = rung_spec(ladder_spec(tmp_path), 1)
    rspec.storage_dir.mkdir(parents=True)
    assert _param_importances(rspec, tmp_path / "imp.png") is None
    assert not (rspec.storage_dir / "optuna.db").exists()  # not created by looking
    optuna.create_study(study_name="another", storage=f"sqlite:///{rspec.storage_dir / 'optuna.db'}")
    assert _param_importances(rspec, tmp_path / "imp.png") is None and not (tmp_path / "imp.png").exists()
    # a searched sweep (its study under its own name) still gets the chart
    study = optuna.create_study(study_name=rspec.name, storage=f"sqlite:///{rspec.storage_dir / 'optuna.db'}")
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-1, log=True) ** 2 + t.suggest_int("rank", 1, 8), 8)
    assert _param_importances(rspec, tmp_path / "imp.png") == tmp_path / "imp.png" and (tmp_path / "imp.png").is_file()


# ---------------------------------------------------------------------------------- proxy checks


def test_matrix_share_of_tiny_and_7b_and_a_small_vocabulary():
    tiny, big = matrix_share(model_config("tiny")), matrix_share(model_config("7b"))
    assert round(tiny.share, 2) == 0.05 and round(big.share, 2) == 0.96  # the figures
    small_vocab = matrix_share(model_config("tiny4", vocab_size=4096))
    assert small_vocab.share > MIN_MATRIX_SHARE > tiny.share
    # 2 layers x (4 x 128^2 + 3 x 128 x 344) matrices
    assert tiny.matrices == 2 * (4 * 128 * 128 + 3 * 128 * 344)


def test_edges_are_flagged_on_the_scale_of_the_range():
    assert on_edge(1.05e-3, 1e-3, 1e-1, log=True) == "low" and on_edge(0.095, 1e-3, 1e-1, log=True) == "high"
    assert on_edge(1e-2, 1e-3, 1e-1, log=True) is None
    assert on_edge(0.0012, 1e-3, 1e-1, log=False) == "low" and on_edge(0.05, 1e-3, 1e-1, log=False) is None


def test_sanity_baseline_verdict(tmp_path):
    spec = spec_from_dict(
        {
            "base_overrides": BASE,
            "storage": str(tmp_path / "s"),
            "budget": {"steps_per_trial": 10},
            "space": {
                "params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
                "branches": {"key": "optim.name", "choices": {"adamw": {}, "adamw_frozen_blocks": {}}},
            },
        }
    )

    def row(name, loss):
        return trial_row(None, {"optim.name": name, "optim.lr": 1e-3}, loss)

    beaten = sanity_line(spec, [row("adamw", 5.0), row("adamw_frozen_blocks", 4.9)])
    assert "ties or beats the best method, adamw (5.0000): this proxy cannot tell these methods apart" in beaten
    assert "the proxy separates them" in sanity_line(spec, [row("adamw", 4.0), row("adamw_frozen_blocks", 4.9)])
    assert sanity_line(spec, [row("adamw", 4.0)]) is None


# ---------------------------------------------------------------------------------- end to end


def _session_pids(sid: int) -> list[int]:
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


@pytest.mark.slow
def test_ladder_end_to_end_survives_a_driver_kill_and_exports_with_the_fitted_rule(tmp_path, token_cache):
    """Three rungs (width 32, 48, 64) of AdamW and GaLore on the embedded corpus with a 512-piece corpus
    tokenizer; the driver is killed (with its Ray processes) once rung 2 has started, then resumed."""
    import html
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from support.tiny import tiny_sweep_base

    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.store.state import load_state

    base = tiny_sweep_base(token_cache, data={"tokenizer": "corpus:512"}, train={"device": "cpu"})
    base["model"] = {"name": "tiny", "hidden_size": 32, "intermediate_size": 86, "num_heads": 4}
    storage = tmp_path / "lad"
    raw = {
        "name": "lad",
        "base_overrides": base,
        "storage": str(storage),
        "max_concurrent": 2,
        "space": {
            "params": {"optim.lr": {"type": "choice", "values": [3e-3, 1e-2]}},
            "branches": {
                "key": "optim.name",
                "choices": {
                    "adamw": {},
                    "galore_adamw": {
                        "galore.rank": {"type": "choice", "values": [8]},
                        "galore.update_proj_gap": {"type": "choice", "values": [5]},
                    },
                },
            },
        },
        "search": {"algorithm": "grid"},
        "scheduler": {"name": "none"},
        "budget": {"steps_per_trial": 10},
        "ladder": {
            "promote": 1,
            "rungs": [
                {"name": "w32"},
                {"name": "w48", "model": {"hidden_size": 48, "intermediate_size": 128}},
                {"name": "w64", "model": {"hidden_size": 64, "intermediate_size": 172}, "steps": 12},
            ],
        },
    }
    spec_file = tmp_path / "lad.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    cli = [sys.executable, "-m", "ranktune.platform.cli"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    driver = subprocess.Popen(
        [*cli, "sweep", str(spec_file), "--quiet"],
        start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "driver.log", "w"),
    )
    second_rung = storage / "rungs" / "2-w48" / "sweep.json"
    try:
        deadline = time.monotonic() + 600
        while not second_rung.exists():  # rung 1 done and recorded, rung 2's trials starting
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "rung 2 did not start in 600 s"
            time.sleep(0.2)
    finally:
        for pid in _session_pids(os.getsid(driver.pid)):  # the driver and its Ray processes: a hard crash
            os.kill(pid, signal.SIGKILL)
        driver.wait()
    state = json.loads((storage / "ladder_state.json").read_text())
    assert state["done"] == [0] and not (storage / "ladder.json").exists()

    resumed = subprocess.run(
        [*cli, "sweep", "--resume", str(storage), "--quiet"], capture_output=True, text=True, env=env, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "transfer verdict: " in resumed.stdout
    ladder = json.loads((storage / "ladder.json").read_text())
    assert ladder["complete"] and [r["name"] for r in ladder["rungs"]] == ["w32", "w48", "w64"]
    assert [r["width"] for r in ladder["rungs"]] == [32, 48, 64] and ladder["rungs"][2]["steps"] == 12
    assert len(ladder["rungs"][0]["configurations"]) == 4  # 2 methods x 2 lrs, all finished
    for index, name in ((1, "2-w48"), (2, "3-w64")):
        configs = ladder["rungs"][index]["configurations"]
        assert sorted(c["method"] for c in configs) == ["adamw", "galore_adamw"]  # promote: 1 per method
        assert all(set(c["losses"]) == {"0.5", "1", "2"} for c in configs)  # the lr re-search, each finished
        rspec, rstate = load_state(storage / "rungs" / name)
        rows = collect_trials(rspec, rstate)
        finished = [json.dumps(r["params"], sort_keys=True) for r in rows if r["status"] == "finished"]
        assert len(finished) == len(set(finished)) == 6  # every point trained to the end exactly once
        assert all(r["status"] in ("finished", "lost") for r in rows)  # a run the kill interrupted: lost
    # MLflow: one parent run per rung (the resumed rung kept its own) in the ladder's experiment, and the ladder run
    from ranktune.platform.tracking.client import mlflow_client

    states = [load_state(storage / "rungs" / name)[1] for name in ("1-w32", "2-w48", "3-w64")]
    client = mlflow_client(states[0].tracking_uri)
    assert {s.experiment_id for s in states} == {states[0].experiment_id}
    assert [client.get_run(s.parent_run_id).info.run_name for s in states] == ["lad-w32", "lad-w48", "lad-w64"]
    runs = client.search_runs([states[0].experiment_id], "tags.`ranktune.kind` = 'ladder'")
    assert [(r.info.run_name, r.info.status) for r in runs] == [("lad-ladder", "FINISHED")]
    assert [(c["lower"], c["upper"]) for c in ladder["comparisons"]] == [("w32", "w48"), ("w48", "w64"), ("w32", "w64")]
    assert ladder["verdict"] and set(ladder["rules"]) == {"adamw", "galore_adamw"}
    assert ladder["rules"]["galore_adamw"]["step_size"] is not None  # 3 rungs of distinct widths: a fit
    assert all((storage / "plots" / f"ladder_{p}.png").is_file() for p in ("loss_vs_size", "lr_vs_width"))
    assert html.escape(ladder["verdict"]) in (storage / "ladder.html").read_text()

    report = subprocess.run([*cli, "report", str(storage)], capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0 and "transfer verdict: " + ladder["verdict"] in report.stdout

    from ranktune.platform.export.recipe import export_best

    result = export_best(storage, "60m", out=tmp_path / "export.yaml")
    header = (tmp_path / "export.yaml").read_text()
    assert "# Rules: fitted (ladder " in header and "extrapolates 8x beyond the widest rung (64)" in header
    method = ladder["rungs"][-1]["method_ranking"][0]["method"]  # the top rung's best (export may pick its 8-bit form)
    assert result.config.optim.name.startswith(method.removesuffix("_adamw"))
    law = ladder["rules"][method]["step_size"]
    knob = result.config.galore.scale if method.startswith("galore") else 1.0
    assert result.config.optim.lr == pytest.approx(law["coefficient"] * 512 ** law["exponent"] / knob, rel=1e-9)


# ---------------------------------------------------------------------------------- proxy pieces


def test_frozen_blocks_trains_everything_but_the_block_matrices(make_config):
    import torch

    from ranktune.platform.memory import estimate_run
    from ranktune.trainables import Trainer

    cfg = make_config("optim.name=adamw_frozen_blocks", "train.steps=3", "train.eval_every=3")
    trainer = Trainer(cfg, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    matrices = {n for n in before if n.startswith("layers.") and n.endswith("proj.weight")}
    assert matrices and not moved & matrices  # the 7 projections of each layer stay at init
    assert "embed_tokens.weight" in moved and "lm_head.weight" in moved
    # the estimate counts moments for the trained tensors only, as the optimizer holds them
    held = trainer.method.state_bytes()["moments"]
    (phase,) = estimate_run(cfg, device="cpu").phases
    assert phase.optimizer["moments"] == held > 0


def test_corpus_tokenizer_is_trained_on_the_training_split_once_and_cached(make_config, token_cache):
    from ranktune.platform.memory import vocab_size
    from ranktune.trainables.data import Tokenizer, corpus_tokenizer_file, prepare_tokens

    cfg = make_config("data.tokenizer=corpus:512", "data.max_tokens=100000")
    tok = Tokenizer.for_data(cfg.data)
    assert tok.vocab_size == 512 == vocab_size(cfg) and (tok.bos_id, tok.eos_id) == (1, 2)
    path = corpus_tokenizer_file(cfg.data, 512)
    assert path.is_relative_to(token_cache) and path.stat().st_mtime_ns == tok.path.stat().st_mtime_ns
    assert Tokenizer.for_data(cfg.data).fingerprint() == tok.fingerprint()  # cached, not retrained
    streams = prepare_tokens(cfg.data, progress=False)
    assert streams.vocab_size == 512 and int(streams.train.max()) < 512
    with pytest.raises(ConfigError, match=r"data.tokenizer: 'corpus:12' -> corpus:<pieces> with 260 <= pieces"):
        make_config("data.tokenizer=corpus:12")
