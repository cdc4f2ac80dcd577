"""Replicates and a verdict: the rule on numbers, then a small sweep that replicates its top 2 (slow)."""

import json

import pytest
from support.rows import trial_row

from ranktune.platform.report.replicates import format_confirm, select_configurations, summarize
from ranktune.platform.sweep.confirm import fixed_points
from ranktune.search_spaces import spec_from_dict

BASE = {"model": {"name": "tiny"}, "train": {"batch_size": 8, "micro_batch_size": 8}}
TWO_METHODS = {
    "params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
    "branches": {
        "key": "optim.name",
        "choices": {"adamw": {}, "lora": {"relora.rank": {"type": "choice", "values": [8]}}},
    },
}


def row(trial_id, name, objective, status="finished"):
    return trial_row(trial_id, {"optim.name": name}, objective, status)


def spec(**kw):
    return spec_from_dict({"base_overrides": BASE, "space": TWO_METHODS, "confirm": {"top_k": 2, "seeds": 3}, **kw})


def test_best_trial_of_each_method_is_replicated():
    rows = [
        row("a1", "adamw", 3.0),
        row("a2", "adamw", 2.9),
        row("l1", "lora", 3.2),
        row("l2", "lora", 1.0, status="stopped_early"),
    ]
    assert [r["trial_id"] for r in select_configurations(spec(), rows)] == ["a2", "l1"]


def test_replicate_searcher_resumes_with_what_is_left(tmp_path):
    from ray.tune.search import Searcher

    points = [{"train.seed": s} for s in (1, 2, 3)]
    searcher = fixed_points(points)
    assert searcher.suggest("t1") == points[0]
    searcher.save(str(tmp_path / "searcher.json"))  # what Tune's experiment snapshot keeps
    resumed = fixed_points(points)
    resumed.restore(str(tmp_path / "searcher.json"))
    assert [resumed.suggest("t2"), resumed.suggest("t3"), resumed.suggest("t4")] == [*points[1:], Searcher.FINISHED]


def test_verdict_is_welchs_test_against_the_runner_up():
    chosen = [row("a", "adamw", 3.0), row("l", "lora", 3.1)]
    clear = summarize(spec(), chosen, {0: [3.00, 3.01, 3.02], 1: [3.20, 3.21, 3.22]})
    assert clear["verdict"] == "resolved" and clear["winner"] == "a" and clear["runner_up"] == "l"
    assert clear["comparisons"][0]["gap"] == pytest.approx(0.2) and clear["comparisons"][0]["p"] < 1e-4
    # a 0.01 difference of means inside a 0.1 seed spread is not a win: more seeds would tell
    noisy = summarize(spec(), chosen, {0: [3.0, 3.1, 3.2], 1: [3.01, 3.11, 3.21]})
    assert noisy["verdict"] == "add seeds" and noisy["configurations"][0]["trial_id"] == "a"
    assert noisy["comparisons"][0]["seeds_per_arm"] > 3
    # ranking is by the replicates' mean, not by the searched run
    flipped = summarize(spec(), chosen, {0: [3.30, 3.31, 3.32], 1: [3.00, 3.01, 3.02]})
    assert flipped["winner"] == "l"
    borderline = summarize(spec(), chosen, {0: [3.00, 3.03, 3.06], 1: [3.07, 3.10, 3.13]})
    assert borderline["verdict"] == "resolved"  # gap 0.07, se 0.0245: t 2.86, p 0.046
    lucky = summarize(spec(), chosen, {0: [3.00, 3.05, 3.10], 1: [3.11, 3.16, 3.21]})
    # the old rule (gap > std + std) called this resolved; Welch's 95% interval contains 0
    assert lucky["verdict"] == "add seeds"  # gap 0.11 > std + std 0.10, but t 2.69, p 0.054


THREE_METHODS = {
    "params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
    "branches": {"key": "optim.name", "choices": {"adamw": {}, "lora": {}, "galore_adamw": {}}},
}


def test_the_best_baseline_is_always_replicated_and_judged():
    three = spec(space=THREE_METHODS)
    rows = [row("g", "galore_adamw", 3.0), row("l", "lora", 3.05), row("a", "adamw", 3.2), row("a2", "adamw", 3.3)]
    chosen = select_configurations(three, rows)
    assert [r["trial_id"] for r in chosen] == ["g", "l", "a"]  # top 2 methods, then the best full-rank baseline
    summary = summarize(three, chosen, {0: [3.00, 3.01, 3.02], 1: [3.04, 3.06, 3.08], 2: [3.20, 3.21, 3.22]})
    assert summary["winner"] == "g" and summary["runner_up"] == "l" and summary["baseline"] == "a"
    assert summary["baseline_verdict"] == "resolved" and len(summary["comparisons"]) == 2
    assert all(c["p_holm"] >= c["p"] for c in summary["comparisons"])  # Holm over the two comparisons
    lines = format_confirm(summary)
    assert any(line.startswith("verdict, galore_adamw vs lora (runner-up):") for line in lines)
    assert any(line.startswith("verdict, galore_adamw vs adamw (baseline): resolved") for line in lines)
    # a baseline already among the top methods is not replicated twice; a baseline winner says so
    rows = [row("a", "adamw", 3.0), row("g", "galore_adamw", 3.1), row("l", "lora", 3.2)]
    chosen = select_configurations(three, rows)
    assert [r["trial_id"] for r in chosen] == ["a", "g"]
    summary = summarize(three, chosen, {0: [3.0, 3.01, 3.02], 1: [3.1, 3.11, 3.12]})
    assert summary["baseline_verdict"] == "winner is the baseline"
    # no baseline method in the sweep: said, not guessed
    no_base = spec(space={"branches": {"key": "optim.name", "choices": {"lora": {}, "galore_adamw": {}}}})
    chosen = select_configurations(no_base, [row("g", "galore_adamw", 3.0), row("l", "lora", 3.1)])
    assert summarize(no_base, chosen, {0: [3.0, 3.01], 1: [3.1, 3.11]})["baseline_verdict"] == "no baseline"


@pytest.mark.slow  # about a minute on 2 cores: 3 search trials and 4 replicates of 10 steps
def test_sweep_replicates_its_top_two_nested_in_mlflow(tmp_path, token_cache):
    import ray
    from support.tiny import tiny_spec

    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.store.state import load_state
    from ranktune.platform.sweep.driver import run_sweep
    from ranktune.platform.tracking.client import CONFIRM_OF_TAG, child_runs, mlflow_client

    raw = tiny_spec(
        tmp_path,
        token_cache,
        "confirm",
        space=TWO_METHODS,
        search={"algorithm": "random"},
        budget={"num_trials": 3, "steps_per_trial": 10},
        scheduler={"name": "none"},
        confirm={"top_k": 2, "seeds": 2},
        objectives=[{"metric": "optimizer_state_bytes", "mode": "min"}],
    )
    raw["max_concurrent"] = 2
    try:
        summary = run_sweep(spec_from_dict(raw), progress=False)
    finally:
        ray.shutdown()
    spec_, state = load_state(summary["storage"])
    confirm = summary["confirm"]
    assert confirm["verdict"] in ("resolved", "tie", "add seeds") and len(confirm["configurations"]) == 2
    assert confirm["baseline_verdict"] in ("winner is the baseline", "resolved", "tie", "add seeds")  # adamw
    assert all(c["n"] == 2 and c["std"] is not None for c in confirm["configurations"])
    client = mlflow_client(state.tracking_uri)
    children = child_runs(client, state.experiment_id, state.parent_run_id)
    config_runs = [c for c in children if CONFIRM_OF_TAG in c.data.tags]
    assert len(config_runs) == 2 and len(collect_trials(spec_, state)) == 3  # replicates are not search trials
    for run in config_runs:
        replicates = child_runs(client, state.experiment_id, run.info.run_id)
        assert len(replicates) == 2
        assert {json.loads(r.data.tags["ranktune.params"])["train.seed"] for r in replicates} == {1, 2}
        assert run.data.tags["ranktune.role"] == "configuration" and run.data.params["optim.name"]
        assert {r.data.tags["ranktune.role"] for r in replicates} == {"replicate"}
        assert {r.data.tags["ranktune.replicate_of"] for r in replicates} == {run.data.tags[CONFIRM_OF_TAG]}
        assert "eval_loss_mean" in run.data.metrics
    parent = client.get_run(state.parent_run_id)
    assert parent.data.tags["ranktune.verdict"].startswith(confirm["verdict"])
    assert parent.data.tags["ranktune.pareto_trials"]
    assert (spec_.storage_dir / "plots" / "pareto.png").is_file()


def test_a_target_aware_sweep_compares_with_its_references_but_never_answers_with_one():
    """AdamW cannot run at 7b on 24 GiB, yet a target-aware sweep trains it as a reference: the winner,
    the replicates' verdict and export's choice are among the configurations the target can launch, and the
    verdict against the reference says when it is better (beaten)."""
    from ranktune.platform.export.target import infeasible_reason
    from ranktune.platform.report.ranking import pick_winner
    from ranktune.platform.report.table import flat_rows, is_reference

    three = spec(space=THREE_METHODS, target={"model": "7b", "budget_gib": 24})
    assert is_reference(three, {"optim.name": "adamw"}) and not is_reference(
        spec(space=THREE_METHODS), {"optim.name": "adamw"}
    )
    assert infeasible_reason(three, {"optim.name": "adamw", "optim.lr": 3e-3}) is None  # trained all the same
    rows = [{**row("a", "adamw", 2.9), "reference": True}, row("g", "galore_adamw", 3.0), row("l", "lora", 3.1)]
    for r in rows:
        r.update(
            peak_memory_bytes=1, optimizer_state_bytes=1, tokens_per_s=1.0, device_hours=0.1, device_kind="CPU", step=10
        )
    chosen = select_configurations(three, rows)
    assert [r["trial_id"] for r in chosen] == ["g", "l", "a"]  # the reference is replicated as the baseline only
    summary = summarize(three, chosen, {0: [3.00, 3.01, 3.02], 1: [3.10, 3.11, 3.12], 2: [2.90, 2.91, 2.92]})
    assert [c["trial_id"] for c in summary["configurations"]] == ["g", "l", "a"]  # the reference ranks last
    assert summary["winner"] == "g" and summary["baseline"] == "a" and summary["baseline_verdict"] == "beaten"
    assert pick_winner(rows, "min", summary)["trial_id"] == "g" and pick_winner(rows, "min", None)["trial_id"] == "g"
    assert flat_rows(three, rows)[0]["reason"].startswith("reference:")
