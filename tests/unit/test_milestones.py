"""Pruning that respects each method: settling windows are skipped, start-up trials per branch are kept."""

from types import SimpleNamespace

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from ranktune.platform.sweep.milestones import MethodAwareASHA, settling_windows

RELORA = ("optim.name=relora", "relora.rank=8", "relora.relora_every=30", "relora.restart_warmup_steps=4")


def fake_trial(trial_id: str, **config):
    return SimpleNamespace(trial_id=trial_id, config=config)


def asha(windows: dict[str, list], **kw) -> MethodAwareASHA:
    # rungs at steps 20 and 40 of an 80-step budget
    return MethodAwareASHA(
        windows_for=lambda params: windows.get(params.get("name"), []),
        time_attr="step",
        metric="eval_loss",
        mode="min",
        max_t=80,
        grace_period=20,
        reduction_factor=2,
        **kw,
    )


def report(scheduler, trial, step: int, loss: float) -> str:
    return scheduler.on_trial_result(None, trial, {"step": step, "eval_loss": loss})


def test_relora_windows_cover_warm_start_and_each_restart_warmup(make_config):
    cfg = make_config(*RELORA, "relora.warm_start_steps=30", "train.steps=120")
    # wrap after update 30, re-warm to 34; restarts after 60 and 90, re-warm 4 updates each
    assert settling_windows(cfg) == [(1, 34), (61, 64), (91, 94)]
    assert settling_windows(make_config("optim.name=adamw")) == []


def test_relora_warm_start_longer_than_first_rung_is_not_stopped_there(make_config):
    windows = {"relora": settling_windows(make_config(*RELORA, "relora.warm_start_steps=30", "train.steps=80"))}
    for scheduler_cls, expected_at_20 in (
        (MethodAwareASHA, TrialScheduler.CONTINUE),
        (AsyncHyperBandScheduler, TrialScheduler.STOP),
    ):
        kw = {"windows_for": lambda p: windows.get(p.get("name"), [])} if scheduler_cls is MethodAwareASHA else {}
        s = scheduler_cls(
            time_attr="step", metric="eval_loss", mode="min", max_t=80, grace_period=20, reduction_factor=2, **kw
        )
        trials = [fake_trial("a", name="adamw"), fake_trial("b", name="adamw"), fake_trial("r", name="relora")]
        for t in trials:
            s.on_trial_add(None, t)
        report(s, trials[0], 20, 3.0)
        report(s, trials[1], 20, 3.1)
        # still full rank at 20 (warm start to 30): its loss says nothing about low-rank training yet
        assert report(s, trials[2], 20, 5.0) == expected_at_20, scheduler_cls.__name__
    # judged at the next rung instead, against the trials there
    s = asha(windows)
    a, b, r = fake_trial("a", name="adamw"), fake_trial("b", name="adamw"), fake_trial("r", name="relora")
    for t in (a, b, r):
        s.on_trial_add(None, t)
    report(s, a, 20, 3.0)
    report(s, b, 20, 3.1)
    assert report(s, r, 20, 5.0) == TrialScheduler.CONTINUE
    assert s.skipped == [("r", 20)]
    report(s, a, 40, 2.5)
    report(s, b, 40, 2.6)
    assert report(s, r, 40, 4.0) == TrialScheduler.STOP
    # its skipped rung holds no value, so a later trial's cutoff at 20 is that of a and b alone (3.05);
    # had r's warm-start loss counted there, the cutoff would have been 3.1 and 3.08 would pass
    c = fake_trial("c", name="adamw")
    s.on_trial_add(None, c)
    assert report(s, c, 20, 3.08) == TrialScheduler.STOP


def test_first_trial_of_each_branch_runs_its_full_budget():
    s = asha({}, branch_key="name", protected_per_branch=1)
    first_lora, first_adamw = fake_trial("l1", name="lora"), fake_trial("a1", name="adamw")
    second_lora = fake_trial("l2", name="lora")
    for t in (first_adamw, first_lora, second_lora):
        s.on_trial_add(None, t)
    report(s, first_adamw, 20, 3.0)
    assert report(s, first_lora, 20, 9.0) == TrialScheduler.CONTINUE  # protected: the lora reference
    assert report(s, second_lora, 20, 9.0) == TrialScheduler.STOP  # the rest compete as usual
    assert report(s, first_lora, 80, 8.0) == TrialScheduler.STOP  # the budget's end still ends it


def test_a_stopped_trial_says_at_which_milestone_with_what_value_against_what_cutoff():
    from ranktune.platform.sweep.milestones import stop_reasons

    s = asha({})
    a, b, c = fake_trial("x1", name="adamw"), fake_trial("x2", name="adamw"), fake_trial("x3", name="adamw")
    for t in (a, b, c):
        s.on_trial_add(None, t)
    report(s, a, 20, 3.2)
    assert report(s, b, 20, 3.0) == TrialScheduler.CONTINUE and "x2" not in stop_reasons
    assert report(s, c, 20, 4.0) == TrialScheduler.STOP
    # cutoff: the 50th percentile of the two before it (3.2, 3.0) -> 3.1, in the metric's own sign
    assert stop_reasons["x3"] == (
        "milestone 20 (step 20): eval_loss 4 > cutoff 3.1, the best 1/2 of the 2 trials that reached it"
    )
