"""A trial restored after the driver died, seen by the trial adapter and by the MLflow callback.

Tune snapshots its experiment state after each trial checkpoint, not when a trial finishes, so a
driver killed between a trial's last report and the next snapshot leaves that trial "running" at
its final checkpoint. On resume it is restored there with nothing left to train.
"""

from __future__ import annotations

from types import SimpleNamespace

from ranktune.platform.store.state import SweepState
from ranktune.platform.sweep.mlflow_callback import MlflowTrials
from ranktune.platform.sweep.trial import ReportTo
from ranktune.platform.tracking.client import RESUMED_TAG, STATUS_TAG, child_runs, mlflow_client
from ranktune.trainables import Trainer


def test_a_trial_restored_at_its_last_step_reports_its_final_state(make_config):
    cfg = make_config("train.steps=10")
    first_reports = []
    Trainer(cfg, [ReportTo(lambda r, c: first_reports.append(r))], progress=False).fit()
    assert [r["step"] for r in first_reports] == [0, 5, 10]  # one per evaluation, nothing extra at the end

    restored_reports = []
    restored = Trainer(cfg, [ReportTo(lambda r, c: restored_reports.append(r))], progress=False)
    assert restored.resume_from_latest() and restored.step == 10
    restored.fit()
    assert len(restored_reports) == 1
    final = restored_reports[0]
    assert final["step"] == 10 and final["start_step"] == 10 and final["log_history"] == "[]"
    assert final["eval_loss"] == first_reports[-1]["eval_loss"]  # same weights, same validation batches


def fake_trial(trial_id: str, last_result: dict | None = None):
    return SimpleNamespace(trial_id=trial_id, config={"optim.lr": 1e-3}, last_result=last_result, error_file=None)


def result(step: int, start_step: int = 0) -> dict:
    return {
        "step": step,
        "start_step": start_step,
        "eval_loss": 5.0 - step / 100,
        "eval_ppl": 100.0,
        "log_history": "[]",
        "timestamp": 1.0,
    }


def test_a_finished_trial_stays_finished_across_a_driver_restart(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id

    def callback():  # a fresh instance per driver, as after `ranktune sweep --resume`
        return MlflowTrials(uri, experiment, parent, "s", 40, lambda params: "optim:\n  lr: 0.001\n")

    before_crash = callback()
    finished, cut = fake_trial("t1"), fake_trial("t2")
    for step in (0, 10, 20, 30, 40):
        before_crash.on_trial_result(0, [], finished, result(step))
    before_crash.on_trial_complete(0, [], fake_trial("t1", result(40)))
    for step in (0, 10, 20):
        before_crash.on_trial_result(0, [], cut, result(step))

    after_restart = callback()
    # Restored at step 40 with an empty final result (the failure CI saw before ReportTo reported
    # the final state): MLflow's curve already reaches the budget, so it is still finished.
    after_restart.on_trial_start(0, [], finished)
    after_restart.on_trial_complete(0, [], fake_trial("t1", {"done": True}))
    # Continued from its step-20 checkpoint: re-sent results are not logged twice, and it is tagged.
    for step in (20, 30, 40):
        after_restart.on_trial_result(0, [], cut, result(step, start_step=20))
    after_restart.on_trial_complete(0, [], fake_trial("t2", result(40, start_step=20)))
    # A third trial restored at its last step, re-reporting its final state: not "resumed".
    last = fake_trial("t3")
    after_restart.on_trial_result(0, [], last, result(40, start_step=40))
    stopped = fake_trial("t4")
    after_restart.on_trial_result(0, [], stopped, result(10))
    after_restart.on_trial_complete(0, [], fake_trial("t4", result(10)))

    runs = {r.data.tags["ranktune.trial_id"]: r for r in child_runs(client, experiment, parent)}
    assert runs["t1"].data.tags[STATUS_TAG] == "finished" and runs["t1"].info.status == "FINISHED"
    assert RESUMED_TAG not in runs["t1"].data.tags
    assert runs["t2"].data.tags[STATUS_TAG] == "finished" and runs["t2"].data.tags[RESUMED_TAG] == "20"
    steps = [m.step for m in client.get_metric_history(runs["t2"].info.run_id, "eval_loss")]
    assert steps == [0, 10, 20, 30, 40]
    assert RESUMED_TAG not in runs["t3"].data.tags
    # Stopped by the scheduler, not a crash: the run ends FINISHED, its tag says why.
    assert runs["t4"].data.tags[STATUS_TAG] == "stopped_early" and runs["t4"].info.status == "FINISHED"


def test_runs_left_open_by_a_dead_driver_are_closed_as_lost(tmp_path):
    from ranktune.platform.sweep.driver import close_lost_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id
    callback = MlflowTrials(uri, experiment, parent, "s", 40, lambda params: "optim:\n  lr: 0.001\n")
    callback.on_trial_result(0, [], fake_trial("done"), result(40))
    callback.on_trial_complete(0, [], fake_trial("done", result(40)))
    callback.on_trial_start(0, [], fake_trial("orphan"))  # started, then the driver died unsnapshotted

    state = SweepState(spec={}, tracking_uri=uri, experiment_id=experiment, parent_run_id=parent)
    assert len(close_lost_runs(client, state)) == 1
    runs = {r.data.tags["ranktune.trial_id"]: r for r in child_runs(client, experiment, parent)}
    assert runs["orphan"].data.tags[STATUS_TAG] == "lost" and runs["orphan"].info.status == "KILLED"
    assert "snapshot" in runs["orphan"].data.tags["ranktune.failure_reason"]
    assert runs["done"].data.tags[STATUS_TAG] == "finished"
    assert close_lost_runs(client, state) == []  # nothing left open


def test_run_names_say_method_rank_and_learning_rate():
    from ranktune.platform.tracking.client import run_name

    assert run_name({"optim.name": "galore_adamw", "galore.rank": 64, "optim.lr": 0.003}, "ab12") == (
        "galore_adamw-r64-lr3e-3-ab12"
    )
    assert run_name({"optim.name": "adamw8bit", "optim.lr": 0.0047}, "cd34") == "adamw8bit-lr4.7e-3-cd34"
    assert run_name({"train.steps": 10}, "ef56") == "ef56"


def test_run_names_carry_every_methods_rank_and_a_replicates_seed():
    from ranktune.platform.tracking.client import run_name

    assert run_name({"optim.name": "apollo_adamw", "apollo.rank": 32, "optim.lr": 0.01}, "ab12") == (
        "apollo_adamw-r32-lr1e-2-ab12"
    )
    assert run_name({"optim.name": "fira_adamw", "fira.rank": 16, "optim.lr": 0.002}, "cd34") == (
        "fira_adamw-r16-lr2e-3-cd34"
    )
    assert run_name({"optim.name": "relora", "relora.rank": 8, "train.seed": 2}, "ef56") == "relora-r8-seed2-ef56"
    # a rank of another method's section is not this method's
    assert run_name({"optim.name": "adamw", "galore.rank": 64}, "gh78") == "adamw-gh78"


def test_runs_view_has_method_columns_every_run_in_charts_and_method_groups():
    from ranktune.platform.tracking.client import runs_view_state

    view = runs_view_state("eval_loss", "min", ["galore.rank", "optim.lr", "optim.name"], ["adamw", "galore_adamw"])
    assert view["selectedColumns"][:3] == ["params.`optim.name`", "params.`galore.rank`", "params.`optim.lr`"]
    assert "metrics.`final_peak_memory_MiB`" in view["selectedColumns"]
    assert not any("bytes" in column for column in view["selectedColumns"])
    assert view["runsHiddenMode"] == "SHOW_ALL"  # MLflow's default charts only the first 10 runs
    assert view["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "optim.name"}]
    assert view["groupsExpanded"] == {"param.optim.name.adamw": True, "param.optim.name.galore_adamw": True}
    assert view["searchFilter"] == "tags.`ranktune.role` LIKE '%'" and view["orderByAsc"] is True


def test_roles_are_given_to_runs_of_older_sweeps_and_replicates_say_what_they_replicate(tmp_path):
    from ranktune.platform.tracking.client import CONFIRM_OF_TAG, REPLICATE_OF_TAG, ROLE_TAG, tag_roles

    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id
    trial = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    config = client.create_run(experiment, tags={"mlflow.parentRunId": parent, CONFIRM_OF_TAG: "t1"}).info.run_id
    replicate = client.create_run(experiment, tags={"mlflow.parentRunId": config}).info.run_id
    state = SweepState(spec={}, tracking_uri="unused", experiment_id=experiment, parent_run_id=parent)
    assert tag_roles(client, state) == 3 and tag_roles(client, state) == 0
    tags = {r: client.get_run(r).data.tags for r in (trial, config, replicate)}
    assert [tags[r][ROLE_TAG] for r in (trial, config, replicate)] == ["trial", "configuration", "replicate"]
    assert tags[replicate][REPLICATE_OF_TAG] == "t1"
    assert ROLE_TAG not in client.get_run(parent).data.tags  # the sweep's parent is not listed


def test_mlflow_ui_is_sized_for_one_person(tmp_path):
    from ranktune.platform.cli.serve import mlflow_ui_command

    cmd, env = mlflow_ui_command("sqlite:///x.db", tmp_path / "none", "127.0.0.1", 5000)
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert env == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def test_a_trial_failed_after_its_step_0_evaluation_has_no_objective(tmp_path, make_spec):
    """Issue 24.18: the failed trial's last evaluation (the untrained model's, at step 0) was logged as
    `final_eval_loss`, so the report showed it as the trial's objective (and MLflow's final column, the
    history chart, `--sort objective` used it). It is labelled as its last loss, not a result."""
    import io

    from rich.console import Console

    from ranktune.platform.report.table import flat_rows, render_table
    from ranktune.platform.report.trials import collect_trials

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id
    callback = MlflowTrials(uri, experiment, parent, "s", 40, lambda params: "optim:\n  lr: 0.001\n")
    for step in (0, 10, 20, 30, 40):
        callback.on_trial_result(0, [], fake_trial("good"), result(step))
    callback.on_trial_complete(0, [], fake_trial("good", result(40)))
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback ...\nFloatingPointError: diverged at step 3: train loss nan\n")
    callback.on_trial_result(0, [], fake_trial("bad"), result(0))  # eval_loss 5.0 at step 0, then NaN
    failed = fake_trial("bad", {**result(0), "wall_time": 2.0})
    failed.error_file = str(error_file)
    callback.on_trial_error(0, [], failed)

    runs = {r.data.tags["ranktune.trial_id"]: r for r in child_runs(client, experiment, parent)}
    bad = runs["bad"].data.metrics
    assert "final_eval_loss" not in bad and "final_eval_ppl" not in bad, bad  # MLflow's result column
    assert bad["last_eval_loss"] == 5.0 and bad["final_wall_time"] == 2.0  # its cost is still its cost
    assert [m.step for m in client.get_metric_history(runs["bad"].info.run_id, "last_eval_loss")] == [0]

    spec = make_spec(budget={"num_trials": 2, "steps_per_trial": 40})
    state = SweepState(spec={}, tracking_uri=uri, experiment_id=experiment, parent_run_id=parent)
    rows = {r["trial_id"]: r for r in collect_trials(spec, state)}
    assert rows["bad"]["status"] == "failed" and rows["bad"]["objective"] is None
    assert rows["bad"]["last_objective"] == 5.0 and rows["bad"]["step"] == 0
    assert rows["good"]["objective"] == 4.6 and rows["good"]["last_objective"] is None

    out = io.StringIO()
    render_table(spec, flat_rows(spec, collect_trials(spec, state)), console=Console(file=out, width=160))
    text = out.getvalue()
    bad_line = next(line for line in text.splitlines() if line.rstrip().endswith("bad"))
    assert bad_line.split(" failed ", 1)[1].split()[0] == "-", bad_line  # the objective's cell
    assert "bad failed: diverged at step 3: train loss nan (last eval_loss 5 at step 0, not a result)" in text


def test_a_failed_run_recorded_before_the_fix_shows_no_objective(tmp_path, make_spec):
    """Stores written by older sweeps hold a failed trial's last evaluation as `final_eval_loss`."""
    from ranktune.platform.report.trials import collect_trials

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id
    callback = MlflowTrials(uri, experiment, parent, "s", 40, lambda params: "optim:\n  lr: 0.001\n")
    callback.on_trial_result(0, [], fake_trial("old"), result(0))
    run_id = callback.run_id_for(fake_trial("old"))
    client.log_metric(run_id, "final_eval_loss", 5.0)  # what on_trial_error wrote before
    client.set_tag(run_id, STATUS_TAG, "failed")
    spec = make_spec(budget={"num_trials": 1, "steps_per_trial": 40})
    [row] = collect_trials(spec, SweepState(spec={}, tracking_uri=uri, experiment_id=experiment, parent_run_id=parent))
    assert row["objective"] is None and row["last_objective"] == 5.0
