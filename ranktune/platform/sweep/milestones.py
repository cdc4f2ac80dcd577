"""Early stopping that respects each method: when a trial may be judged, and which trials never are.

Milestones (ASHA rungs) are counted in optimizer updates (`step`), the same unit for every method at a
sweep's batch size. Two rules sit on top of Ray's asynchronous successive halving:

- eligibility: a result inside a trial's settling window (its method's registry entry names them;
  ReLoRA/LoRA: the full-rank warm start up to the wrap, and the `restart_warmup_steps` after the wrap
  and after each restart, where the loss rises by design) is not compared at the rung it reaches. The
  trial skips that rung and is judged at the next rung its results reach outside a window. Its value
  never enters a skipped rung's cutoff.
- protected trials: the first `search.min_trials_per_branch` trials of each branch (the stratified
  start-up) are never stopped, so every method of a conditional space has at least that many trials
  at the full budget. Their values still count in the rungs' cutoffs for the other trials.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.config import TrainConfig
from ranktune.trainables.optim.registry import lookup

Window = tuple[int, int]  # (first, last) update count, inclusive, at which a result is not judged

# trial_id -> why the scheduler stopped it ("milestone 20: eval_loss 5.91 > rung cutoff 5.62 ..."),
# read by the MLflow callback in the same (driver) process when the trial completes.
stop_reasons: dict[str, str] = {}


def settling_windows(cfg: TrainConfig) -> list[Window]:
    """Update counts at which the trial's loss is not comparable with other methods' (see module doc):
    the method's registry entry says (`OptimizerEntry.settling_windows`)."""
    windows_of = lookup(cfg.optim.name).settling_windows
    return windows_of(cfg) if windows_of is not None else []


def windows_for_params(spec_json: str, params: dict[str, Any]) -> list[Window]:
    """`settling_windows` of a sampled trial, from what the driver has (spec and params)."""
    spec = SweepSpec.model_validate_json(spec_json)
    try:
        return settling_windows(spec.trial_config(params))
    except ValueError:
        return []  # an invalid config fails in the trial itself, with its own message


def in_window(step: int, windows: list[Window]) -> bool:
    return any(first <= step <= last for first, last in windows)


class MethodAwareASHA(AsyncHyperBandScheduler):
    """Asynchronous successive halving (or Hyperband brackets) with the two rules of this module."""

    def __init__(
        self,
        *,
        windows_for: Callable[[dict[str, Any]], list[Window]],
        branch_key: str | None = None,
        protected_per_branch: int = 0,
        **asha: Any,
    ) -> None:
        super().__init__(**asha)
        self.windows_for = windows_for
        self.branch_key = branch_key
        self.protected_per_branch = protected_per_branch
        self.windows: dict[str, list[Window]] = {}
        self.branch_counts: dict[Any, int] = {}
        self.protected: set[str] = set()
        self.skipped: list[tuple[str, float]] = []  # (trial_id, milestone) judged later: for tests and logs

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self.windows[trial.trial_id] = self.windows_for(trial.config)
        if self.branch_key is not None and self.protected_per_branch > 0:
            branch = trial.config.get(self.branch_key)
            seen = self.branch_counts.get(branch, 0)
            self.branch_counts[branch] = seen + 1
            if seen < self.protected_per_branch:
                self.protected.add(trial.trial_id)

    def _skip_unsettled_rungs(self, trial, step: int) -> None:
        """Mark every rung this result reaches, and the trial was not judged at, as passed without a
        value (NaN: `_Bracket.cutoff` uses nanpercentile, so other trials' cutoffs ignore it)."""
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return
        for milestone, recorded in bracket._rungs:
            if step >= milestone and trial.trial_id not in recorded:
                recorded[trial.trial_id] = math.nan
                self.skipped.append((trial.trial_id, milestone))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr in result and self._metric in result and result[self._time_attr] < self._max_t:
            if in_window(int(result[self._time_attr]), self.windows.get(trial.trial_id, [])):
                self._skip_unsettled_rungs(trial, result[self._time_attr])
                return TrialScheduler.CONTINUE
        cutoffs = self._rung_cutoffs(trial)
        action = super().on_trial_result(tune_controller, trial, result)
        if (
            action == TrialScheduler.STOP
            and trial.trial_id in self.protected
            and result.get(self._time_attr, 0) < self._max_t
        ):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP and self._metric in result:
            stop_reasons[trial.trial_id] = self._stop_reason(trial, result, cutoffs)
        return action

    def _rung_cutoffs(self, trial) -> dict[float, tuple[float | None, int]]:
        """milestone -> (cutoff, trials recorded) of the trial's bracket before this result enters it."""
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return {}
        return {
            milestone: (bracket.cutoff(recorded), len(recorded))
            for milestone, recorded in bracket._rungs
            if trial.trial_id not in recorded
        }

    def _stop_reason(self, trial, result: dict, cutoffs: dict[float, tuple[float | None, int]]) -> str:
        step = result.get(self._time_attr, 0)
        # The rung judged is the highest one this result reached (Ray records a result there first).
        judged = [m for m in cutoffs if m <= step and cutoffs[m][0] is not None]
        value = result[self._metric]
        if not judged:
            return f"stopped by the scheduler at step {step} with {self._metric} {value:.4g}"
        milestone = max(judged)
        cutoff, others = cutoffs[milestone]
        cutoff *= self._metric_op  # Ray stores rewards as metric x (+1 for max, -1 for min)
        worse = ">" if self._metric_op < 0 else "<"
        return (
            f"milestone {milestone:g} (step {step}): {self._metric} {value:.4g} {worse} cutoff {cutoff:.4g}, "
            f"the best 1/{self._reduction_factor:g} of the {others} trials that reached it"
        )


def build_method_aware_scheduler(spec: SweepSpec, spec_json: str, **asha: Any) -> MethodAwareASHA:
    space = spec.search_space()
    branch_key = space.branches.key if space.branches is not None else None
    return MethodAwareASHA(
        windows_for=functools.partial(windows_for_params, spec_json),
        branch_key=branch_key,
        protected_per_branch=spec.search.min_trials_per_branch if branch_key else 0,
        **asha,
    )
