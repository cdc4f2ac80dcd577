"""The sweep's Optuna study as optuna-dashboard shows it: the same trials, states and verdict as ranktune's report.

Ray Tune's OptunaSearch tells Optuna every trial Tune stopped as COMPLETE with its last value, so a trial
the scheduler stopped at step 20 fed the dashboard's history, Pareto front and importances as if it were
a result. `SweepOptunaSearch` changes what Optuna is told, nothing else:

    intermediate values   the primary objective at every evaluation, keyed by optimizer step (Tune's
                          iteration count is not a step), so the dashboard draws learning curves
    state                 PRUNED for a trial stopped before the full budget (its intermediate values say
                          where), FAIL for an error, COMPLETE only for the full budget: what MLflow's
                          `ranktune.status` says (finished / stopped_early / failed / pruned_memory)
    user attributes       `ray_trial_id`, `mlflow_run_id`, `status` and, for stopped trials, `stop_reason`
    metric names          the objectives' metric names (`eval_loss`, `optimizer_state_bytes`), not
                          "Objective 0/1"

After the sweep, `annotate_study` writes the ranked table and the verdicts into the study's note
(optuna-dashboard's note panel) and its user attributes `ranked_table` and `verdict`.
"""

from __future__ import annotations

import logging
import math
import warnings

from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class SweepOptunaSearch(OptunaSearch):
    def __init__(
        self, *args, full_budget_step: int, metric_names: list[str], tracking: tuple[str, str] | None = None, **kwargs
    ) -> None:
        # Set first: OptunaSearch.__init__ creates the study (_setup_study) when it has metric and mode.
        self.full_budget_step = full_budget_step  # a trial that reached this step ran its whole budget
        self.metric_names = metric_names
        self.tracking = tracking  # (tracking_uri, experiment_id): where the trials' MLflow runs are
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore")
            self._ot_study.set_metric_names(list(self.metric_names))

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and "ray_trial_id" not in ot_trial.user_attrs:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict | None) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or not result:
            return
        if len(self.metric_names) > 1:
            # Optuna keeps no curves in a multi-objective study (Trial.report refuses them), and TPE scores a
            # pruned trial that has intermediate values by `study.direction`, which raises there: the
            # sampler's next suggestion would end the sweep. Their curves are in MLflow.
            return
        value, step = result.get(self.metric_names[0]), result.get("step")
        if not isinstance(value, (int, float)) or not math.isfinite(value) or step is None:
            return
        ot_trial = self._ot_trials[trial_id]
        ot_trial.storage.set_trial_intermediate_value(ot_trial._trial_id, int(step), float(value))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self.on_trial_result(trial_id, result)  # Tune hands the last result to on_trial_complete alone
        ot_trial = self._ot_trials[trial_id]
        step = (result or {}).get("step")
        status = (
            "failed"
            if error
            else "pruned_memory"
            if step is None
            else ("finished" if step >= self.full_budget_step else "stopped_early")
        )
        self._label(trial_id, ot_trial, status)
        if status == "finished":
            return super().on_trial_complete(trial_id, result, error)
        state = TrialState.FAIL if error else TrialState.PRUNED
        try:
            self._ot_study.tell(ot_trial, state=state)
        except Exception as exc:  # as OptunaSearch does: a refused tell must not end the sweep
            log.warning("optuna: could not record trial %s as %s: %s", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)

    def _label(self, trial_id: str, ot_trial, status: str) -> None:
        """The trial's user attributes (written while it is still running: Optuna freezes a told trial)."""
        from ranktune.platform.sweep.milestones import stop_reasons

        try:
            ot_trial.set_user_attr("status", status)
            if status == "stopped_early" and trial_id in stop_reasons:
                ot_trial.set_user_attr("stop_reason", stop_reasons[trial_id])
            run_id = self._mlflow_run(trial_id)
            if run_id:
                ot_trial.set_user_attr("mlflow_run_id", run_id)
        except Exception as exc:  # labels are for reading; never lose the trial's result over one
            log.warning("optuna: could not label trial %s: %s", trial_id, exc)

    def _mlflow_run(self, trial_id: str) -> str | None:
        from ranktune.platform.store.relocate import resumed_state
        from ranktune.platform.tracking.client import TRIAL_TAG, mlflow_client

        if self.tracking is None:
            return None
        resumed = resumed_state()  # a copied or moved sweep tracks into its own store (relocate.py)
        uri = resumed.tracking_uri if resumed is not None else self.tracking[0]
        found = mlflow_client(uri).search_runs(
            [self.tracking[1]], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1
        )
        return found[0].info.run_id if found else None


def annotate_study(spec, note: str, verdict: str | None) -> None:
    """The study's note (optuna-dashboard's note panel) and user attributes: the ranked table, the verdicts."""
    import optuna

    from ranktune.platform.store.study_storage import SweepStudyStorage

    try:
        study = optuna.load_study(study_name=spec.name, storage=SweepStudyStorage(spec.storage_dir))
    except KeyError:  # no study (e.g. the sweep never sampled a trial)
        return
    study.set_user_attr("ranked_table", note)
    if verdict:
        study.set_user_attr("verdict", verdict)
    from optuna_dashboard import save_note

    save_note(study, note)
