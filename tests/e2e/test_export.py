"""Memory- and target-aware sweep and export of its trials to 7b.

One tiny sweep on a local Ray (about a minute; `target_sweep` in tests/conftest.py, shared with the
copied-sweep and UI tests) feeds every export check below. It declares the 7b
target: configurations whose 7b run cannot be exported (AdamW: full-rank state; LoRA from a random
init: a baseline) are not trained, over-budget proxies (seq_len 256) are pruned, and the rest train
the 7b update rule (per-layer 8-bit GaLore with low-rank accumulation and int8 projectors, ReLoRA
with 8-bit moments and an int8 base).
"""

from __future__ import annotations

import json
import sys

import pytest

from ranktune.platform.export.recipe import export_best
from ranktune.platform.export.rules import ScalingRules
from ranktune.platform.export.select import select_trial
from ranktune.platform.memory import GIB
from ranktune.platform.report.ranking import pick_winner
from ranktune.platform.report.trials import collect_trials
from ranktune.platform.store.state import load_state
from ranktune.platform.tracking.client import PARAMS_TAG, REASON_TAG, STATUS_TAG, child_runs, mlflow_client
from ranktune.trainables.config import ConfigError, load_config
from ranktune.trainables.model import build_model, count_parameters, model_config


def test_over_budget_and_infeasible_configs_are_not_trained(target_sweep):
    import optuna

    spec, state = load_state(target_sweep.storage_dir)
    client = mlflow_client(state.tracking_uri)
    runs = child_runs(client, state.experiment_id, state.parent_run_id)
    assert len(runs) == 10
    for run in runs:
        params = json.loads(run.data.tags[PARAMS_TAG])
        if params["optim.name"] == "lora":  # its 7b run cannot be exported (a baseline, not a recipe): never trained
            assert run.data.tags[STATUS_TAG] == "infeasible_target" and run.info.status == "KILLED"
            reason = run.data.tags[REASON_TAG]
            assert reason.startswith("not exportable to 7b on 24 GiB at 512 x 256 tokens per step: ")
            assert "is a baseline" in reason
            assert not client.get_metric_history(run.info.run_id, "train_loss")
        elif params["data.seq_len"] == 256:  # estimate above the budget: never trained
            assert run.data.tags[STATUS_TAG] == "pruned_memory" and run.info.status == "KILLED"
            assert "exceeds memory_budget_gib 0.5" in run.data.tags[REASON_TAG]
            assert not client.get_metric_history(run.info.run_id, "train_loss")
        else:  # AdamW too: its 7b run does not fit, but it is the reference the others are compared with
            assert run.data.tags[STATUS_TAG] == "finished"
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{spec.storage_dir / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE"] * 4 + ["PRUNED"] * 6
    infeasible = [t for t in study.trials if t.params["optim.name"] == "lora"]
    assert len(infeasible) == 2 and all(t.system_attrs["constraints:target"] == 1.0 for t in infeasible)
    # results.json and the report carry the status and the reason; AdamW's row is a reference, never the answer
    results = json.loads((spec.storage_dir / "results.json").read_text())
    assert sum(1 for r in results if r["status"] == "infeasible_target" and r["failure_reason"]) == 2
    assert {r["params"]["optim.name"] for r in results if r.get("reference")} == {"adamw"}
    winner = pick_winner(collect_trials(spec, state), spec.objective.mode, None)
    assert winner["params"]["optim.name"] != "adamw"


def test_proxies_trained_the_7b_update_rule(target_sweep):
    spec, state = load_state(target_sweep.storage_dir)
    client = mlflow_client(state.tracking_uri)
    for row in collect_trials(spec, state):
        if row["status"] == "finished" and row["params"]["optim.name"] == "galore_adamw":
            cfg = load_config(client.download_artifacts(row["run_id"], "config.yaml"))
            assert cfg.optim.name == "galore_adamw8bit" and cfg.galore.per_layer
            assert cfg.galore.accumulation == "low_rank" and cfg.galore.projector_dtype == "int8"


def test_export_writes_the_target_aware_sweeps_winner(target_sweep, tmp_path, capsys):
    from ranktune.platform.cli.main import main
    from ranktune.platform.report.ranking import pick_best

    spec, state = load_state(target_sweep.storage_dir)
    winner = pick_best(collect_trials(spec, state), "min")
    out = tmp_path / "winner_7b.yaml"
    assert main(["export", str(target_sweep.storage_dir), "--target", "7b", "--out", str(out)]) == 0
    assert f"exported trial {winner['trial_id']} ->" in capsys.readouterr().out
    cfg = load_config(out)
    assert cfg.tokens_per_step == 131_072 and cfg.model.name == "7b"
    memory = json.loads(out.with_suffix(".memory.json").read_text())
    assert memory["source_trial"] == winner["trial_id"] and memory["headroom_bytes"] >= 1 * GIB

    # --set that changes what the run sees is said, in the output and the header
    assert main(["export", str(target_sweep.storage_dir), "--out", str(out), "--set", "train.batch_size=16"]) == 0
    said = capsys.readouterr().out
    assert "the run now sees tokens per step: 4,096 (16 x 256) instead of the rules' 131,072" in said
    assert "the run now sees tokens in all: 0.614B (150,000 steps) instead of 19.7B (150,000 steps)" in said
    assert "# the run now sees tokens per step: 4,096" in out.read_text()

    # On 16 GiB nothing of this sweep's answer fits: exit 2, one line per setting, and the fallback's cost.
    assert main(["export", str(target_sweep.storage_dir), "--budget-gib", "16"]) == 2
    err = capsys.readouterr().err
    assert f"trial {winner['trial_id']} (" in err and "memory: " in err and "--budget-gib" in err
    # On 18 GiB ReLoRA's 7b run fits (16.65 GiB), GaLore's does not (22.45 GiB at micro-batch 1): another
    # trial only when asked, with what it loses.
    args = ["export", str(target_sweep.storage_dir), "--budget-gib", "18", "--out", str(out)]
    if winner["params"]["optim.name"] == "galore_adamw":
        assert main(args) == 2
        assert "--fallback best-fitting: exports trial " in capsys.readouterr().err
        assert main([*args, "--fallback", "best-fitting"]) == 0
        said = capsys.readouterr().out
        assert "% vs the sweep's answer " + winner["trial_id"] in said and "(relora," in said
    else:
        assert main(args) == 0


def finished_trial(target_sweep, method: str) -> str:
    spec, state = load_state(target_sweep.storage_dir)
    rows = collect_trials(spec, state)
    return next(r["trial_id"] for r in rows if r["status"] == "finished" and r["params"]["optim.name"] == method)


def tiny_swap(out_dir, token_cache, rank_key: str) -> list[str]:
    """Overrides that run an exported config on CPU with the tiny model; method, schedule shape,
    precision, checkpointing and 8-bit options stay as exported."""
    return [
        "model.name=tiny",
        "data.source=embedded",
        "data.max_tokens=300000",
        f"data.cache_dir={token_cache}",
        "data.seq_len=32",
        "train.steps=4",
        "train.batch_size=8",
        "train.micro_batch_size=4",
        "train.device=cpu",
        "train.eval_every=2",
        "train.eval_blocks=4",
        "schedule.warmup_steps=1",
        f"{rank_key}=8",
        f"output.dir={out_dir}",
    ]


def test_export_relora_to_7b_fits_24_gib_and_runs_tiny(target_sweep, tmp_path, token_cache):
    from ranktune.platform.cli.main import main
    from ranktune.trainables.trainer import Trainer

    trial = finished_trial(target_sweep, "relora")
    out = tmp_path / "relora_7b.yaml"
    assert main(["export", str(target_sweep.storage_dir), "--target", "7b", "--trial", trial, "--out", str(out)]) == 0

    cfg = load_config(out)  # self-contained: loads without the sweep
    assert cfg.model.name == "7b" and cfg.model.activation_checkpointing and cfg.train.precision == "bf16"
    assert cfg.optim.name == "relora" and cfg.relora.base_precision == "int8"
    assert cfg.relora.inner_optimizer == "adamw8bit" and cfg.relora.rank == 512  # 8 / 64 of the hidden size
    assert cfg.train.batch_size * cfg.data.seq_len == 512 * 256 and cfg.train.steps == 150_000
    assert cfg.relora.relora_every == 75_000  # every half of the run, as in the proxy (5 of 10 steps)
    text = out.read_text()
    assert "Verdict: fits:" in text and f"Launch: ranktune train {out}" in text

    meta = build_model(cfg.model.llama_config(), device="meta")
    assert count_parameters(meta) == count_parameters(build_model(model_config("7b"), device="meta"))
    assert 6.7e9 < count_parameters(meta) < 6.8e9

    memory = json.loads(out.with_suffix(".memory.json").read_text())
    assert memory["fits"] and 0 < memory["headroom_bytes"] < 24 * GIB

    _, state = load_state(target_sweep.storage_dir)
    client = mlflow_client(state.tracking_uri)
    exported = {a.path for a in client.list_artifacts(state.parent_run_id, "export")}
    assert {"export/relora_7b.yaml", "export/relora_7b.memory.json"} <= exported
    assert client.get_run(state.parent_run_id).data.tags["ranktune.export.7b.trial_id"] == trial
    source = next(
        r
        for r in child_runs(client, state.experiment_id, state.parent_run_id)
        if r.data.tags["ranktune.trial_id"] == trial
    )
    assert source.data.tags["ranktune.exported_to"].startswith("7b")

    tiny = load_config(out, [*tiny_swap(tmp_path / "run", token_cache, "relora.rank"), "relora.relora_every=2"])
    summary = Trainer(tiny, progress=False).fit()
    assert summary["completed"] and summary["final_eval_loss"] < summary["initial_eval_loss"]


def test_export_galore_keeps_the_paper_batch_and_global_clip(target_sweep, tmp_path, token_cache, capsys):
    from ranktune.platform.cli.main import main
    from ranktune.trainables.trainer import Trainer

    spec, state = load_state(target_sweep.storage_dir)
    trial = next(
        r["trial_id"]
        for r in collect_trials(spec, state)
        if r["status"] == "finished"
        and r["params"]["optim.name"] == "galore_adamw"
        and r["params"]["galore.rank"] == 16
    )
    out = tmp_path / "galore_7b.yaml"
    assert main(["export", str(target_sweep.storage_dir), "--trial", trial, "--out", str(out)]) == 0
    cfg = load_config(out)
    assert cfg.optim.name == "galore_adamw8bit" and cfg.galore.per_layer and cfg.galore.accumulation == "low_rank"
    assert cfg.galore.rank == 1024  # 16 of 64 hidden -> 1/4 of 4096, the paper's 7b rank
    assert cfg.tokens_per_step == 512 * 256 and cfg.grad_accum_steps > 1  # real accumulation
    assert cfg.train.grad_clip == 1.0 and cfg.galore.per_tensor_clip == 0  # the proxy's global clip, unchanged
    assert cfg.data.max_tokens == cfg.train.steps * cfg.tokens_per_step
    capsys.readouterr()
    assert main(["estimate", str(out), "--budget-gib", "24"]) == 0
    assert "fits:" in capsys.readouterr().out
    memory = json.loads(out.with_suffix(".memory.json").read_text())
    assert memory["fits"] and memory["headroom_bytes"] >= 1 * GIB

    # data.max_tokens follows the file's own steps x tokens per step, also after overrides.
    shorter = export_best(
        target_sweep.storage_dir,
        "7b",
        24.0,
        tmp_path / "short.yaml",
        trial_id=trial,
        overrides=["train.steps=1000", "train.batch_size=256", "schedule.warmup_steps=100"],
    )
    assert shorter.config.data.max_tokens == 1000 * 256 * 256

    # The tiny swap keeps accumulation (batch 8 in micro-batches of 4) and the global clip.
    tiny = load_config(out, tiny_swap(tmp_path / "run", token_cache, "galore.rank"))
    assert tiny.grad_accum_steps == 2 and tiny.train.grad_clip == 1.0
    summary = Trainer(tiny, progress=False).fit()
    assert summary["completed"] and summary["final_eval_loss"] < summary["initial_eval_loss"]


def test_export_prints_duration_and_sizes_to_tokens_or_days(target_sweep, tmp_path, capsys):
    from ranktune.platform.cli.main import main

    spec, state = load_state(target_sweep.storage_dir)
    trial = next(
        r["trial_id"]
        for r in collect_trials(spec, state)
        if r["status"] == "finished"
        and r["params"]["optim.name"] == "galore_adamw"
        and r["params"]["galore.rank"] == 16
    )
    out = tmp_path / "tokens.yaml"
    budget = 3000 * 512 * 256
    capsys.readouterr()
    assert (
        main(["export", str(target_sweep.storage_dir), "--trial", trial, "--out", str(out), "--tokens", str(budget)])
        == 0
    )
    printed = capsys.readouterr().out
    cfg = load_config(out)
    assert cfg.train.steps * cfg.tokens_per_step == budget == cfg.data.max_tokens
    header = out.read_text().split("\nmodel:")[0]
    for text in (
        "# Sized: --tokens",
        "# Micro-batch: micro-batch",
        "runner-up",
        "# FLOPs:",
        "# Wall time:",
        "compute-optimal",
        "utilisation (assumed)",
    ):
        assert text in header and text.removeprefix("# ") in printed
    out = tmp_path / "days.yaml"
    assert (
        main(
            [
                "export",
                str(target_sweep.storage_dir),
                "--trial",
                trial,
                "--out",
                str(out),
                "--days",
                "3",
                "--card",
                "h100",
            ]
        )
        == 0
    )
    cfg = load_config(out)
    assert cfg.train.steps * cfg.tokens_per_step == cfg.data.max_tokens
    assert "--days 3 on NVIDIA H100 SXM" in out.read_text()
    capsys.readouterr()
    assert main(["estimate", str(out), "--card", "h100"]) in (0, 1)
    assert "Wall time: 3.0 days" in capsys.readouterr().out
    # The budget decides steps: a --set of them as well is refused.
    assert (
        main(
            [
                "export",
                str(target_sweep.storage_dir),
                "--trial",
                trial,
                "--out",
                str(out),
                "--days",
                "3",
                "--set",
                "train.steps=10",
            ]
        )
        == 2
    )
    assert "--tokens / --days decide it" in capsys.readouterr().err


def test_export_refuses_without_a_finished_trial():
    rows = [{"trial_id": "a", "status": "pruned_memory", "objective": None, "peak_memory_bytes": None}]
    with pytest.raises(ConfigError, match="no trial that finished its budget"):
        select_trial(rows, "min", None, "sweeps/x", None)


def test_relative_rank_rule():
    from ranktune.platform.export.mapping import target_rank

    assert target_rank(128, 512, 4096, ScalingRules()) == 1024  # the paper's 60m -> 7b ranks
    assert target_rank(128, 512, 4096, ScalingRules(rank="absolute")) == 128


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
