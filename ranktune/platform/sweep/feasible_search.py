"""The Optuna searcher of a target-aware sweep (platform/export/target.py): every suggestion is checked against
the sweep's target before Tune starts it. A module of its own so that Ray is imported only by sweeps."""

from __future__ import annotations

from ray.tune.search import Searcher

from ranktune.platform.export.target import CONSTRAINT, INFEASIBLE_ATTR, infeasible_reason
from ranktune.platform.sweep.study_view import SweepOptunaSearch
from ranktune.search_spaces.spec import SweepSpec


class FeasibleSearch(SweepOptunaSearch):
    """The study view's searcher (study_view.py) that also marks each suggestion's feasibility in Optuna
    (a constraint, > 0 when infeasible, and the reason as a user attribute; an infeasible trial then ends
    PRUNED, with no value), counts the draws and finishes the search after `num_trials` feasible ones.
    Tune's num_samples (num_trials + the infeasible allowance) bounds the rest. Its counters are in
    __dict__, which OptunaSearch's save/restore pickle: a resumed sweep keeps them."""

    def __init__(self, *args, target_spec_json: str, num_trials: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.target_spec_json = target_spec_json
        self.num_trials = num_trials
        self.feasible_drawn = 0
        self.infeasible_drawn = 0

    def suggest(self, trial_id: str):
        if self.feasible_drawn >= self.num_trials:
            return Searcher.FINISHED
        params = super().suggest(trial_id)
        if not isinstance(params, dict):
            return params
        reason = infeasible_reason(SweepSpec.model_validate_json(self.target_spec_json), params)
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_constraint(CONSTRAINT, 0.0 if reason is None else 1.0)
        if reason is None:
            self.feasible_drawn += 1
        else:
            self.infeasible_drawn += 1
            ot_trial.set_user_attr(INFEASIBLE_ATTR, reason)
        return params
