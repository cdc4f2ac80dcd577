"""The Optuna study a sweep keeps (platform/sweep/study_view.py) while TPE samples from it."""

from __future__ import annotations

from support.tiny import TINY_MODEL

from ranktune.platform.sweep.driver import build_searcher
from ranktune.search_spaces import spec_from_dict


def test_tpe_keeps_sampling_a_multi_objective_study_with_stopped_trials(tmp_path):
    """The README demo's study has two objectives: TPE scored its stopped (PRUNED) trials' curves by
    `study.direction`, which Optuna refuses there, and the demo's driver died at its 6th suggestion."""
    spec = spec_from_dict(
        {
            "base_overrides": {"model": TINY_MODEL},
            "storage": str(tmp_path / "s"),
            "space": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
            "objectives": [{"metric": "optimizer_state_bytes", "mode": "min"}],
            "search": {"algorithm": "tpe", "n_startup_trials": 2},
            "budget": {"num_trials": 10, "steps_per_trial": 100},
        }
    )
    spec.storage_dir.mkdir(parents=True)
    searcher, _ = build_searcher(spec, spec.storage_dir)
    for i in range(6):
        assert isinstance(searcher.suggest(f"t{i}"), dict)
        last = {"eval_loss": 5.0 - 0.1 * i, "optimizer_state_bytes": 1e6, "step": 20}
        searcher.on_trial_result(f"t{i}", last)
        # every other trial stopped at step 20 (PRUNED), the rest ran the whole budget
        searcher.on_trial_complete(f"t{i}", {**last, "step": 20 if i % 2 else 100})
    assert isinstance(searcher.suggest("t6"), dict)
    states = sorted(t.state.name for t in searcher._ot_study.trials)
    assert states[:6] == ["COMPLETE"] * 3 + ["PRUNED"] * 3
