"""Run (or resume) a sweep: Ray Tune drives, Optuna samples, ASHA prunes, MLflow records.

Sweep directory layout (`spec.storage`):
    sweep.json      spec, MLflow parent run and experiment ids (what `--resume` needs)
    optuna.db       Optuna study (sqlite RDB storage: the sampler's history survives a restart)
    mlflow.db       default MLflow tracking store (any tracking URI may be given instead)
    (everything above is found relative to the directory: a copied or moved sweep works; relocate.py)
    mlartifacts/    default MLflow artifact root
    tune/           Ray Tune experiment: trial dirs (results), experiment state
    trials/<id>/    a trial's newest checkpoint (`checkpoints/step_N.pt`), where it continues from
    train/<id>/     a multi-worker trial's Ray Train run and its checkpoints
    best_config.yaml, results.json, plots/   written when the sweep ends
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ranktune.platform.store.state import STATE_FILE, SweepState, check_sweep_store, load_state
from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.config import ConfigError

log = logging.getLogger(__name__)

TRAIN_DRIVER_CPUS = 0.01  # what the Tune trial that drives a multi-worker Ray Train run holds
TUNE_DIR = "tune"
SNAPSHOT_PERIOD_S = 2


def resolved_config_yaml(spec_json: str, params: dict[str, Any]) -> str:
    from ranktune.platform.export.target import proxy_config

    spec = SweepSpec.model_validate_json(spec_json)
    return yaml.safe_dump(proxy_config(spec, params).model_dump(mode="json"), sort_keys=False)


def best_config_yaml(
    spec: SweepSpec, trials: list[dict[str, Any]], best: dict[str, Any], confirm: dict[str, Any] | None
) -> str:
    """best_config.yaml: the winner's training config, led by a comment header naming the sweep, the
    trial, its method and objective, and how it was chosen.

    With replicates (platform/sweep/confirm.py) the winner is the configuration with the best replicate
    mean: the search's single best trial was picked for being lowest, so its value is biased low.
    Sections that only other methods read (GaLore's for an AdamW winner) are left out; absent sections
    take their defaults when the file is loaded, and the winner's method reads none of them.
    """
    from ranktune.platform.report.ranking import confirmed_configuration
    from ranktune.platform.report.table import method_of
    from ranktune.trainables.optim import foreign_sections

    metric, mode = spec.objective.metric, spec.objective.mode
    confirmed = confirmed_configuration(confirm, trials)
    if confirmed is not None:
        trial_id, params = confirmed["trial_id"], confirmed["params"]
        std = "-" if confirmed["std"] is None else f"{confirmed['std']:.4f}"
        value = (
            f"{confirmed['mean']:.4f} +/- {std} over {confirmed['n']} replicates "
            f"(its search trial: {confirmed['search_objective']:.4f})"
        )
        single = (
            "also the search's single best trial"
            if trial_id == best["trial_id"]
            else f"preferred to the search's single best trial {best['trial_id']} "
            f"({method_of(spec, best['params'])}, {metric} {best['objective']:.4f})"
        )
        chosen = [
            f"chosen by the replicates: the best {metric} mean of {confirmed['n']} replicates with new seeds "
            f"(verdict: {confirm['verdict']}, {confirm['why']});",
            f"{single}",
        ]
    else:
        trial_id, params = best["trial_id"], best["params"]
        value = f"{best['objective']:.4f} at the full budget ({spec.budget.steps_per_trial} steps)"
        full = [t for t in trials if t["status"] == "finished" and t["objective"] is not None]
        chosen = [
            f"chosen by the search: the {'lowest' if mode == 'min' else 'highest'} {metric} of the trials "
            f"that ran the whole budget ({len(full)} of {len(trials)}; no replicates)"
        ]
    cfg = spec.trial_config(params)
    method = cfg.optim.name
    dropped = sorted(foreign_sections(method))
    held_out = "held-out " if metric.startswith("eval_") else ""
    lines = [
        f"best config of sweep {spec.name!r}: trial {trial_id} ({method}), {held_out}{metric} {value}",
        *chosen,
        f"left out, as {method} does not read them: {', '.join(dropped)}" if dropped else None,
        "train it: ranktune train <this file>",
    ]
    raw = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in dropped}
    head = "".join(f"# {line}\n" for line in lines if line)
    return head + yaml.safe_dump(raw, sort_keys=False)


def spec_json(spec: SweepSpec) -> str:
    return json.dumps({**spec.model_dump(mode="json"), "spec_dir": spec.spec_dir})


# Ray (2.60 here) turns token authentication on for every new local cluster and says so in a warning
# on the driver's console, where it lands inside the sweep's live progress. Only that notice is
# dropped: the logger's other records pass, e.g. the warning that authentication is *disabled*.
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster."


class _DropTokenAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_TOKEN_AUTH_NOTICE)


def quiet_token_auth_notice() -> None:
    """Filter the notice at the logger that emits it. Setting RAY_AUTH_MODE=token would also silence
    it, but only before Ray caches its config at import: set later, the driver and the cluster it
    starts disagree on the mode and the GCS refuses the driver."""
    logger = logging.getLogger(RAY_AUTH_LOGGER)
    if not any(isinstance(f, _DropTokenAuthNotice) for f in logger.filters):
        logger.addFilter(_DropTokenAuthNotice())


def init_ray(address: str | None) -> None:
    import os

    import ray

    # Tune's experiment snapshot (trial statuses, searcher state) is what `--resume` restores. Its
    # "auto" period is at least 10 s; a trial started after the last snapshot is unknown to a resumed
    # sweep, so snapshot more often (a small JSON file and the searcher's state: 3.5 ms median on
    # the 2-core CPU for a 3-trial sweep).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_PERIOD_S))
    # Tune's new console output prints its own banner and a TensorBoard hint even at verbose=0; the
    # sweep has its own progress lines and result table, so use the output that verbose=0 silences.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    quiet_token_auth_notice()
    # The dashboard stays off for local runs; on a cluster it is the cluster's (bound by `ray start`).
    options = {"include_dashboard": False, "configure_logging": False, "log_to_driver": False}
    if address or os.environ.get("RAY_ADDRESS"):  # a cluster's nodes listen where their `ray start` put them
        ray.init(address=address, **options)
    else:  # a local sweep's Ray listens on loopback only
        from ranktune.platform.sweep.local_ray import init_local_ray

        init_local_ray(**options)


def gpus_per_trial(spec: SweepSpec) -> float:
    import ray

    if spec.resources.gpus_per_trial != "auto":
        return float(spec.resources.gpus_per_trial)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def check_cluster_versions() -> None:
    from ranktune.platform.sweep.versions import check_cluster_versions as check

    check()


def check_cluster_fits(spec: SweepSpec, gpus_per_trial: float) -> None:
    """Refuse a trial that no node could ever run: Tune would otherwise wait for it forever."""
    import ray

    total = ray.cluster_resources()
    r = spec.resources
    cpus = r.cpus_per_trial * r.num_workers + (TRAIN_DRIVER_CPUS if r.num_workers > 1 else 0)
    gpus = gpus_per_trial * r.num_workers
    problems = []
    if cpus > total.get("CPU", 0):
        problems.append(
            f"resources.cpus_per_trial: {r.cpus_per_trial} x {r.num_workers} workers (+{TRAIN_DRIVER_CPUS} for a "
            f"multi-worker trial's driver) -> at most the cluster's {total.get('CPU', 0):g} CPUs"
        )
    if gpus > total.get("GPU", 0):
        problems.append(
            f"resources.gpus_per_trial: {gpus / r.num_workers:g} x {r.num_workers} workers -> at most "
            f"the cluster's {total.get('GPU', 0):g} GPUs (or 0 / auto on CPU-only machines)"
        )
    if problems:
        raise ConfigError(problems)


def build_searcher(spec: SweepSpec, storage: Path, state: SweepState | None = None):
    import optuna

    from ranktune.platform.store.study_storage import SweepStudyStorage
    from ranktune.platform.sweep.feasible_search import FeasibleSearch
    from ranktune.platform.sweep.study_view import SweepOptunaSearch

    space = spec.search_space()
    points = stratified_startup(spec)
    if spec.search.algorithm == "tpe":
        # multivariate: lr and warmup (rank and scale, ...) interact, so model them jointly.
        # constant_liar: trials still running count as bad guesses, so concurrent trials spread out
        # instead of all sampling the same promising point.
        # A target-aware sweep's infeasible draws are PRUNED trials with a violated constraint
        # (platform/export/target.py, trial.set_constraint): TPE ranks them below every feasible trial.
        sampler = optuna.samplers.TPESampler(
            seed=spec.seed, n_startup_trials=spec.search.n_startup_trials, multivariate=True, constant_liar=True
        )
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
        if spec.search.algorithm == "grid":
            points = space.grid()  # enqueued in order; define-by-run then takes the enqueued values
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = SweepStudyStorage(storage)  # found in the sweep's directory again after a move (study_storage.py)
    # Several objectives: Optuna searches them jointly (TPE handles both cases); Tune's scheduler
    # still prunes on the primary one (TuneConfig.metric).
    metric: str | list[str] = spec.objective.metric
    mode: str | list[str] = spec.objective.mode
    if spec.objectives:
        metric, mode = [o.metric for o in spec.all_objectives()], [o.mode for o in spec.all_objectives()]
    num_trials = len(points) if spec.search.algorithm == "grid" else spec.budget.num_trials
    # Optuna hears what MLflow records: stopped trials PRUNED with their curves, metric names (study_view.py).
    kwargs = dict(
        space=space.sample,
        metric=metric,
        mode=mode,
        sampler=sampler,
        study_name=spec.name,
        storage=rdb,
        points_to_evaluate=points,
        full_budget_step=spec.budget.steps_per_trial,
        metric_names=[o.metric for o in spec.all_objectives()],
        tracking=(state.tracking_uri, state.experiment_id) if state else None,
    )
    if spec.target is None:
        return SweepOptunaSearch(**kwargs), num_trials
    searcher = FeasibleSearch(**kwargs, target_spec_json=spec.model_dump_json(), num_trials=num_trials)
    if spec.search.algorithm == "grid":  # each grid point once: an infeasible one is not replaced
        return searcher, num_trials
    return searcher, num_trials + spec.target.infeasible_draws(num_trials)


def stratified_startup(spec: SweepSpec) -> list[dict[str, Any]] | None:
    """`search.min_trials_per_branch` enqueued trials per branch, round-robin, before the sampler
    chooses: only the branch key is fixed, the branch's other parameters are sampled."""
    branches = spec.search_space().branches
    if branches is None or spec.search.algorithm == "grid" or spec.search.min_trials_per_branch == 0:
        return None
    return [{branches.key: choice} for _ in range(spec.search.min_trials_per_branch) for choice in branches.choices]


def build_scheduler(spec: SweepSpec, eval_every: int):
    from ray.tune.schedulers import FIFOScheduler

    from ranktune.platform.sweep.milestones import build_method_aware_scheduler

    s, steps = spec.scheduler, spec.budget.steps_per_trial
    grace = s.grace_period or eval_every
    if s.name == "asha":
        brackets = 1
    elif s.name == "hyperband":
        # Asynchronous Hyperband (Li et al., "A System for Massively Parallel Hyperparameter
        # Tuning"): ASHA over brackets whose grace periods grow by the reduction factor, up to the
        # budget. Tune's synchronous HyperBandScheduler pauses trials at each milestone until their
        # bracket catches up; here a trial paused at its last step was once left paused, the sweep
        # waiting for it (1 of 4 runs of a 4-trial grid), and the pauses only cost time.
        brackets = 1 + max(0, int(math.log(max(steps / grace, 1.0)) / math.log(s.reduction_factor) + 1e-9))
    else:
        return FIFOScheduler()
    # Milestones in optimizer updates, the same for every method; see milestones.py for when a
    # trial is judged (never inside a warm start or a restart's re-warm) and which trials never are.
    return build_method_aware_scheduler(
        spec,
        spec_json(spec),
        time_attr="step",
        max_t=steps,
        grace_period=grace,
        reduction_factor=s.reduction_factor,
        brackets=brackets,
    )


def _token_budget(max_tokens: int | None):
    if max_tokens is None:
        return None
    from ray.tune import Stopper

    class TokenBudget(Stopper):
        """Ends the sweep once all trials together have trained on `max_tokens` tokens."""

        def __init__(self) -> None:
            self.tokens: dict[str, int] = {}

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.tokens[trial_id] = int(result.get("tokens", 0))
            return False

        def stop_all(self) -> bool:
            return sum(self.tokens.values()) >= max_tokens

    return TokenBudget()


def all_trials_ended(results) -> bool:
    """False when Tune's run was interrupted (Ctrl-C) with trials still pending or running: the
    replicates then wait for `--resume`, which finishes the search first."""
    return results.num_terminated + results.num_errors == len(results)


def store_runs_view(client, spec: SweepSpec, experiment_id: str) -> bool:
    """The experiment's trials view (tracking.runs_view_state) with this sweep's methods and their params."""
    from ranktune.platform.tracking.client import set_runs_view

    space = spec.search_space()
    if space.branches is not None and space.branches.key == "optim.name":
        methods = list(space.branches.choices)
    else:
        methods = [spec.trial_config({}).optim.name]
    return set_runs_view(
        client, experiment_id, spec.objective.metric, spec.objective.mode, sorted(space.all_params()), methods
    )


def parent_note(
    spec: SweepSpec, state: SweepState, trials: list[dict[str, Any]], confirm, proxy_checks: list[str] | None = None
) -> str:
    """The parent run's description in the MLflow UI: who won, the next commands (naming the sweep's
    directory as it is now, also after a copy), whether the proxy's answer is worth much, the ranked table."""
    from ranktune.platform.report.proxy_checks import proxy_check_lines
    from ranktune.platform.report.ranking import pick_winner
    from ranktune.platform.report.table import flat_rows, to_markdown, winner_lines

    winner = pick_winner(trials, spec.objective.mode, confirm)
    checks = proxy_check_lines(spec, trials) if proxy_checks is None else proxy_checks
    said = "  \n".join([*winner_lines(spec, winner, str(spec.storage_dir), confirm), *checks])
    return f"{said}\n\n{to_markdown(spec, flat_rows(spec, trials))}"


def start_tracking(spec: SweepSpec) -> dict[str, Any]:
    from ranktune.platform.tracking.client import (
        SWEEP_TAG,
        get_or_create_experiment,
        log_text_artifact,
        mlflow_client,
        strip_userinfo,
    )

    storage = spec.storage_dir
    client = mlflow_client(spec.tracking_uri)
    artifact_root = None if spec.tracking.tracking_uri else (storage / "mlartifacts").as_uri()
    experiment_id = get_or_create_experiment(client, spec.tracking.experiment or spec.name, artifact_root)
    store_runs_view(client, spec, experiment_id)
    parent = client.create_run(experiment_id, run_name=spec.name, tags={SWEEP_TAG: spec.name})
    run_id = parent.info.run_id
    for key, value in {
        "preset": spec.space.preset,
        "search.algorithm": spec.search.algorithm,
        "scheduler": spec.scheduler.name,
        "num_trials": spec.budget.num_trials,
        "steps_per_trial": spec.budget.steps_per_trial,
        "objective": f"{spec.objective.mode} {spec.objective.metric}",
        "max_concurrent": spec.max_concurrent,
        "seed": spec.seed,
    }.items():
        client.log_param(run_id, key, strip_userinfo(str(value)))
    log_text_artifact(client, run_id, "sweep_spec.yaml", yaml.safe_dump(json.loads(spec_json(spec)), sort_keys=False))
    return {
        "tracking_uri": spec.tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": run_id,
        "storage_dir": str(storage),
    }


def check_before_start(spec: SweepSpec) -> None:
    """What would fail every trial, or hang the driver, refused before Ray starts."""
    from ranktune.platform.export.target import check_target_spec
    from ranktune.platform.tracking.client import check_tracking_store
    from ranktune.trainables.data import check_data_inputs

    check_tracking_store(spec.tracking_uri)
    check_data_inputs(spec.trial_config({}).data)
    check_target_spec(spec)


@dataclass
class Sweep:
    """One sweep as the driver runs it: its spec and state (sweep.json), and what every part of the run
    derives from them once: the spec as JSON (what each trial is handed) and the devices a trial holds
    (which asks Ray). The search, the replicates and the end of the sweep are its methods."""

    spec: SweepSpec
    state: SweepState
    gpus_per_trial: float
    prepare: Callable | None = None  # called in each trial before it trains (tests inject faults here)
    progress: bool = True

    @functools.cached_property
    def spec_json(self) -> str:
        return spec_json(self.spec)

    def trainable(self):
        """The Tune trainable of the search and the replicates: `run_trial` with the spec, and its resources."""
        from ray import tune

        from ranktune.platform.sweep.trial import run_trial

        spec = self.spec
        if spec.memory_budget_gib is not None or spec.objectives or spec.target is not None:
            import os

            # A trial over the memory budget returns before training, without a result (Optuna then
            # records it as PRUNED); and the step-0 evaluation carries no memory or throughput metrics
            # yet (the trade-off objectives), which the searcher reads only from the final result. Tune's
            # strict check would refuse both. Read by Tune in this (driver) process at each result.
            os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        trainable = tune.with_parameters(
            run_trial, spec_json=self.spec_json, gpus_per_trial=self.gpus_per_trial, prepare=self.prepare
        )
        if spec.resources.num_workers > 1:
            # The trial only drives a Ray Train run; its workers request their own CPUs/GPUs.
            return tune.with_resources(trainable, {"cpu": TRAIN_DRIVER_CPUS})
        return tune.with_resources(trainable, {"cpu": spec.resources.cpus_per_trial, "gpu": self.gpus_per_trial})

    def callbacks(self, num_trials: int, parent_of: Callable | None = None) -> list:
        """MLflow runs (nested under the sweep's parent, or `parent_of(params)`) and console progress."""
        from ranktune.platform.sweep.mlflow_callback import MlflowTrials
        from ranktune.platform.sweep.progress import SweepProgress
        from ranktune.platform.sweep.trial import trial_memory_rejection

        spec, state = self.spec, self.state
        return [
            MlflowTrials(
                state.tracking_uri,
                state.experiment_id,
                state.parent_run_id,
                spec.name,
                spec.budget.steps_per_trial,
                functools.partial(resolved_config_yaml, self.spec_json),
                functools.partial(trial_memory_rejection, self.spec_json, self.gpus_per_trial),
                parent_of,
            ),
            SweepProgress(
                num_trials,
                spec.objective.metric,
                spec.budget.steps_per_trial,
                enabled=self.progress,
                mode=spec.objective.mode,
            ),
        ]

    def tuner(self):
        """The search's Tune run, new."""
        from ray import tune

        spec = self.spec
        storage = spec.storage_dir
        searcher, num_trials = build_searcher(spec, storage, self.state)
        eval_every = spec.trial_config({}).train.eval_every
        return tune.Tuner(
            self.trainable(),
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric,
                mode=spec.objective.mode,
                search_alg=searcher,
                scheduler=build_scheduler(spec, eval_every),
                num_samples=num_trials,
                max_concurrent_trials=spec.max_concurrent,
                time_budget_s=spec.budget.time_budget_s,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=str(storage),
                callbacks=self.callbacks(num_trials),
                stop=_token_budget(spec.budget.max_tokens),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                verbose=0,
            ),
        )

    def restored_tuner(self, retry_failed: bool):
        """The search's Tune run as its last snapshot left it (a new one when it was killed before any)."""
        from ray import tune

        tune_dir = self.spec.storage_dir / TUNE_DIR
        if not tune.Tuner.can_restore(str(tune_dir)):  # killed before Tune saved any state: the same parent run
            return self.tuner()
        return tune.Tuner.restore(
            str(tune_dir), trainable=self.trainable(), resume_unfinished=True, resume_errored=retry_failed
        )

    def replicate(self, retry_failed: bool = False) -> None:
        """The `confirm` phase after the search (platform/sweep/confirm.py): replicates of the best configurations."""
        from ranktune.platform.sweep.confirm import run_confirm

        run_confirm(self, retry_failed=retry_failed)

    def fit_and_finish(self, tuner, retry_failed: bool = False) -> dict[str, Any]:
        """The search, then the replicates, then the results. Stopped early (Ctrl-C: Tune returns with trials
        unfinished), the results so far are written and the sweep is left for `--resume`. Anything else that
        ends the driver (a full disk, a bug) marks the parent run FAILED rather than leaving it RUNNING."""
        from ranktune.platform.report.replicates import CONFIRM_FILE, FAILED_FILE
        from ranktune.platform.tracking.client import mlflow_client

        spec, state = self.spec, self.state
        try:
            interrupted = not all_trials_ended(tuner.fit())
            if not interrupted:
                self.replicate(retry_failed=retry_failed)
                # The replicates, once started (their runs are in the state), stopped before all ended; ended
                # with failures (FAILED_FILE) they are not interrupted but failed, and say so (confirm_failures).
                ended = any((spec.storage_dir / name).is_file() for name in (CONFIRM_FILE, FAILED_FILE))
                interrupted = spec.confirm is not None and bool(state.confirm_runs) and not ended
            return self.finish(interrupted)
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            try:
                mlflow_client(state.tracking_uri).set_terminated(state.parent_run_id, status=status)
            except Exception as err:  # noqa: BLE001 - the original error is the one to report
                log.warning("could not mark the sweep's MLflow run %s: %s", status, err)
            raise

    def finish(self, interrupted: bool = False) -> dict[str, Any]:
        """Rank trials, write best config, results and plots, log them on the MLflow parent run.

        `interrupted` (Ctrl-C before every trial ended): the same files from what has run so far, the open
        trial runs tagged `interrupted`, and the parent run KILLED, not FINISHED: `--resume` continues it."""
        from ranktune.platform.report.figures import write_plots
        from ranktune.platform.report.ranking import pick_best, pick_winner
        from ranktune.platform.report.replicates import load_confirm
        from ranktune.platform.report.trials import collect_trials
        from ranktune.platform.tracking.client import log_text_artifact, mlflow_client, results_json

        spec, state = self.spec, self.state
        storage = spec.storage_dir
        client = mlflow_client(state.tracking_uri)
        parent = state.parent_run_id
        close_lost_runs(client, state, interrupted)
        trials = collect_trials(spec, state)
        (storage / "results.json").write_text(results_json(trials))
        client.log_artifact(parent, str(storage / "results.json"))
        best = pick_best(trials, spec.objective.mode)
        confirm = load_confirm(storage)
        winner = pick_winner(trials, spec.objective.mode, confirm)  # the replicates' choice when there are any
        summary: dict[str, Any] = {"trials": len(trials), "best": winner, "storage": str(storage)}
        if best is not None:
            best_yaml = best_config_yaml(spec, trials, best, confirm)
            (storage / "best_config.yaml").write_text(best_yaml)
            log_text_artifact(client, parent, "best_config.yaml", best_yaml)
            client.set_tag(parent, "ranktune.best_trial_id", winner["trial_id"])
            client.log_metric(parent, f"best_{spec.objective.metric}", winner["objective"])
        summary["pareto"] = log_pareto_front(spec, client, parent, trials)
        from ranktune.platform.report.proxy_checks import proxy_check_lines
        from ranktune.platform.tracking.client import NOTE_TAG

        # Whether the proxy's answer is worth much (matrix share, sanity baseline, edges): in the note too.
        summary["proxy_checks"] = proxy_check_lines(spec, trials)
        note = parent_note(spec, state, trials, confirm, summary["proxy_checks"])
        client.set_tag(parent, NOTE_TAG, note)
        from ranktune.platform.report.replicates import format_confirm
        from ranktune.platform.sweep.study_view import annotate_study

        verdicts = "\n".join(format_confirm(confirm)) if confirm else None
        annotate_study(spec, note + (f"\n\n```\n{verdicts}\n```" if verdicts else ""), verdicts)
        plots = write_plots(spec, state, trials, confirm, storage / "plots")
        for plot in plots:
            client.log_artifact(parent, str(plot), "plots")
        summary["plots"] = [str(p) for p in plots]
        summary["confirm"] = confirm
        # Replicates that did not all run are no result (an interrupted sweep is not done yet: no verdict either).
        summary["confirm_failures"] = None if (confirm or interrupted) else confirm_failures(spec)
        summary["interrupted"] = interrupted
        client.set_terminated(parent, status="KILLED" if interrupted else "FINISHED")
        return summary


def start_ray(spec: SweepSpec, address: str | None) -> float:
    """Ray started (or joined) for this sweep, its versions checked on a cluster and its resources against
    the trial's; returns the GPUs a trial holds."""
    init_ray(address)
    if address:  # a cluster: its nodes must run the driver's versions
        check_cluster_versions()
    gpus = gpus_per_trial(spec)
    check_cluster_fits(spec, gpus)
    return gpus


def run_sweep(
    spec: SweepSpec, address: str | None = None, prepare: Callable | None = None, progress: bool = True
) -> dict[str, Any]:
    """Start a new sweep in `spec.storage_dir` and run it to the end; returns the summary."""
    from ranktune.platform.store.locks import own_directory
    from ranktune.platform.tracking.client import mlflow_client

    check_before_start(spec)
    with own_directory(spec.storage_dir, "storage", "sweep") as storage:
        if (storage / STATE_FILE).exists():
            raise ConfigError(
                [
                    f"storage: {str(storage)!r} already holds a sweep -> `ranktune sweep --resume "
                    f"{shlex.quote(str(storage))}` continues it; choose another name or storage to start "
                    "a new one"
                ]
            )
        gpus = start_ray(spec, address)
        state = SweepState(spec=json.loads(spec_json(spec)), **start_tracking(spec))
        sweep = Sweep(spec, state, gpus, prepare, progress)
        # sweep.json makes the directory a sweep that --resume continues: written only once the
        # tuner is built, so a sweep that cannot start leaves a directory a rerun can use.
        try:
            tuner = sweep.tuner()
        except BaseException:
            mlflow_client(state.tracking_uri).set_terminated(state.parent_run_id, status="FAILED")
            raise
        state.write(storage)
        return sweep.fit_and_finish(tuner)


def resume_sweep(
    storage_dir: str | Path,
    address: str | None = None,
    prepare: Callable | None = None,
    progress: bool = True,
    retry_failed: bool = True,
) -> dict[str, Any]:
    """Continue a sweep whose driver died: finished trials stay, interrupted ones resume from checkpoints.

    `retry_failed`: failed trials and replicates run again too, each from its last checkpoint (a
    failure may have been the machine's: a full disk, a lost node), instead of replaying the failure."""
    from ranktune.platform.store.locks import own_directory
    from ranktune.platform.store.relocate import resuming

    spec, state = load_state(storage_dir, check_store=False)  # a running sweep is refused as such first
    check_before_start(spec)
    # Tune's pickled searcher and callbacks open this directory's stores, not those of where the sweep ran.
    with own_directory(spec.storage_dir, "storage", "sweep"), resuming(state):
        check_sweep_store(spec)
        sweep = Sweep(spec, state, start_ray(spec, address), prepare, progress)
        return sweep.fit_and_finish(sweep.restored_tuner(retry_failed), retry_failed=retry_failed)


def close_lost_runs(client, state: SweepState, interrupted: bool = False) -> list[str]:
    """Tag the trial runs that the ended sweep left open. After an interrupted search (Ctrl-C) they are
    `interrupted`: Tune's snapshot holds them and `--resume` continues them. After a complete one they
    are `lost`: the driver died before any Tune snapshot recorded them, so the resumed sweep could not
    continue them (a run tagged `interrupted` earlier and not continued is lost then too)."""
    from ranktune.platform.tracking.client import CONFIRM_OF_TAG, INTERRUPTED, LOST, REASON_TAG, STATUS_TAG, child_runs

    closed = []
    quoted = shlex.quote(state.storage_dir) if state.storage_dir else "SWEEP_DIR"
    for run in child_runs(client, state.experiment_id, state.parent_run_id):
        if run.data.tags.get(STATUS_TAG, INTERRUPTED) != INTERRUPTED or CONFIRM_OF_TAG in run.data.tags:
            continue
        if interrupted:
            client.set_tag(run.info.run_id, STATUS_TAG, INTERRUPTED)
            client.set_tag(
                run.info.run_id,
                REASON_TAG,
                "the sweep was interrupted while this trial ran; "
                f"`ranktune sweep --resume {quoted}` continues it from its last checkpoint",
            )
        else:
            client.set_tag(run.info.run_id, STATUS_TAG, LOST)
            client.set_tag(
                run.info.run_id,
                REASON_TAG,
                "the sweep's driver died before Ray Tune's experiment "
                "snapshot recorded this trial, so the resumed sweep did not continue it",
            )
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def log_pareto_front(spec: SweepSpec, client, parent: str, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With several objectives: pareto.json in storage and on the parent run, its trials as a tag."""
    if not spec.objectives:
        return []
    from ranktune.platform.report.pareto import pareto_front

    front = pareto_front(spec, trials)
    path = spec.storage_dir / "pareto.json"
    path.write_text(json.dumps(front, indent=2, default=str))
    client.log_artifact(parent, str(path))
    client.set_tag(parent, "ranktune.pareto_trials", ",".join(r["trial_id"] for r in front))
    return front


def confirm_failures(spec: SweepSpec) -> str | None:
    """One line when the replicate phase ended with failed replicates (and so wrote no confirm.json)."""
    from ranktune.platform.report.replicates import FAILED_FILE

    path = spec.storage_dir / FAILED_FILE
    return path.read_text().strip() if path.is_file() else None
