"""The ladder: model size as a fidelity. Does the proxy's ranking transfer to a larger model?

    ladder:
      rungs:                              # smallest first
        - {name: r1, model: {hidden_size: 64, num_layers: 2}, steps: 60}
        - {name: r2, model: {hidden_size: 128, num_layers: 3}, steps: 80}
        - {name: r3, model: {hidden_size: 192, num_layers: 4}, steps: 100}
      promote: 2                          # configurations per method moving up
      lr_factors: [0.5, 1.0, 2.0]         # lr re-searched around the transferred value

Rung 1 is the ordinary sweep (search, scheduler, `confirm`) at the first rung's shape. Each next rung
re-trains the promoted configurations (the best `promote` per method at the rung below) at its shape,
each at every factor of the lr it won with below, every run to the full budget (no early stopping:
the comparison needs every loss), through the same trainable, held-out set rules and memory check.

Each rung is a sweep of its own in `<storage>/rungs/<index>-<name>/` (sweep.json, results.json, plots,
best_config.yaml; `ranktune report` works on it), tracked in the ladder's MLflow store and experiment
with a parent run per rung; the ladder adds a `<name>-ladder` run holding ladder.json and the plots.

Resume: `ladder_state.json` records the rungs done and the points of the rung in progress; `ranktune
sweep --resume <storage>` skips finished rungs and continues the interrupted one: the first rung with
the sweep's own resume (Tune's restore, trials from their checkpoints), a later rung by training the
points that have no finished run yet (run_fixed_points).

ladder.json: `rungs` (per rung: shape, width, parameters, matrix share, steps, its sweep directory,
the configurations with their loss, lr and step size, the ranking of methods), `comparisons` (each
pair of consecutive rungs, then first vs last: ladder_analysis.Comparison), `verdict` and `rules`
(ladder_rules.py). `complete` is true once the last rung finished.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ranktune.platform.export.fitted_rules import LADDER_FILE, fit_rules
from ranktune.platform.report.ladder_analysis import (
    ConfigResult,
    RungPoint,
    compare,
    lr_points,
    method_ranking,
    params_key,
    promote,
    rung_results,
    transfer_verdict,
    unique_points,
)
from ranktune.search_spaces.spec import RUNGS_DIR, SweepSpec, rung_dir, rung_spec, validate_rungs  # noqa: F401
from ranktune.trainables.config import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "ladder_state.json"


class LadderInterrupted(RuntimeError):
    """A rung's trials were interrupted (Ctrl-C): nothing above it runs until the ladder is resumed."""


def rung_shape(rspec: SweepSpec) -> dict[str, Any]:
    from ranktune.platform.report.proxy_checks import proxy_share

    cfg = rspec.trial_config({})
    llama = cfg.model.llama_config()
    share = proxy_share(cfg)
    return {
        "hidden_size": llama.hidden_size,
        "intermediate_size": llama.intermediate_size,
        "num_layers": llama.num_layers,
        "num_heads": llama.num_heads,
        "parameters": share.total,
        "matrix_share": share.share,
        "width": llama.hidden_size,
        "steps": rspec.budget.steps_per_trial,
        "tokens_per_step": cfg.tokens_per_step,
    }


# ---------------------------------------------------------------------------------- results


def method_label(spec: SweepSpec, params: dict[str, Any]) -> str:
    from ranktune.platform.report.table import method_of

    return method_of(spec, params)


def annotate(spec: SweepSpec, results: list[ConfigResult]) -> list[ConfigResult]:
    """Step size (lr x the method's knob) and rank, from the registry entry of each configuration's method."""
    from ranktune.trainables.optim.registry import lookup

    for r in results:
        cfg = spec.trial_config(r.params)
        entry = lookup(cfg.optim.name)
        r.step_size = r.lr * (entry.step_size_factor(cfg) if entry.step_size_factor else 1.0)
        if entry.rank_key:
            section, _, key = entry.rank_key.partition(".")
            r.rank = int(getattr(getattr(cfg, section), key))
    return results


def first_rung_results(rspec: SweepSpec, rows: list[dict[str, Any]]) -> list[ConfigResult]:
    """Each finished search trial is a configuration (its own id) at factor 1."""
    return [
        ConfigResult(
            r["trial_id"],
            method_label(rspec, r["params"]),
            r["params"],
            float(r["params"]["optim.lr"]),
            r["objective"],
            {"1": r["objective"]},
        )
        for r in rows
        if r["status"] == "finished" and r["objective"] is not None and "optim.lr" in r["params"]
    ]


def loss_by_params(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {
        params_key(r["params"]): r["objective"]
        for r in rows
        if r["status"] == "finished" and r["objective"] is not None
    }


# ---------------------------------------------------------------------------------- driver


def load_ladder_state(storage: Path) -> dict[str, Any]:
    path = storage / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_ladder_state(storage: Path, state: dict[str, Any]) -> None:
    tmp = storage / f"{STATE_FILE}.{os.getpid()}.tmp"  # written whole, then renamed: never half a file
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(storage / STATE_FILE)


def run_ladder(spec: SweepSpec, address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) every rung, then write ladder.json and its report; returns ladder.json's content."""
    from ranktune.platform.store.locks import own_directory
    from ranktune.platform.sweep.driver import check_before_start, spec_json

    if spec.ladder is None:
        raise ConfigError(["ladder: none -> a spec with a `ladder:` section"])
    check_before_start(spec)
    with own_directory(spec.storage_dir, "storage", "ladder") as storage:
        state = load_ladder_state(storage)
        if not state:
            if (storage / "sweep.json").exists() or (storage / LADDER_FILE).exists():
                raise ConfigError(
                    [
                        f"storage: {str(storage)!r} already holds a sweep -> resume it with `ranktune "
                        f"sweep --resume {shlex.quote(str(storage))}` or choose another name or "
                        "storage"
                    ]
                )
            state = {"spec": json.loads(spec_json(spec)), "done": [], "results": {}, "points": {}}
            _create_experiment(spec)
            save_ladder_state(storage, state)
        for index in range(len(spec.ladder.rungs)):
            if index in state["done"]:
                continue
            _run_rung(spec, state, index, address, progress)
            state["done"].append(index)
            save_ladder_state(storage, state)
        return write_ladder(spec, state)


def resume_ladder(storage_dir: str | Path, address: str | None = None, progress: bool = True) -> dict[str, Any]:
    storage = Path(storage_dir).expanduser().resolve()
    state = load_ladder_state(storage)
    if not state:
        raise ConfigError([f"{str(storage)!r} is not a ladder directory (no {STATE_FILE})"])
    spec = SweepSpec.model_validate(state["spec"])
    return run_ladder(spec, address, progress)


def is_ladder_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / STATE_FILE).is_file()


def _create_experiment(spec: SweepSpec) -> None:
    """The ladder's experiment, with its artifact root in the ladder's directory (each rung's sweep logs to it)."""
    from ranktune.platform.tracking.client import get_or_create_experiment, mlflow_client

    root = None if spec.tracking.tracking_uri else (spec.storage_dir / "mlartifacts").as_uri()
    get_or_create_experiment(mlflow_client(spec.tracking_uri), spec.tracking.experiment or spec.name, root)


def _run_rung(spec: SweepSpec, state: dict[str, Any], index: int, address: str | None, progress: bool) -> None:
    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.store.state import load_state
    from ranktune.platform.sweep.driver import resume_sweep, run_sweep

    rspec = rung_spec(spec, index)
    started = (rspec.storage_dir / "sweep.json").is_file()
    if index == 0:
        summary = (
            resume_sweep(rspec.storage_dir, address, progress=progress)
            if started
            else run_sweep(rspec, address, progress=progress)
        )
        rs, rstate = load_state(summary["storage"])
        rows = collect_trials(rs, rstate)
        if any(r["status"] == "running" for r in rows):
            raise LadderInterrupted(
                f"rung {rs.name} was interrupted; `ranktune sweep --resume "
                f"{shlex.quote(str(spec.storage_dir))}` "
                "continues the ladder"
            )
        results = first_rung_results(rs, rows)
    else:
        key = str(index)
        if key not in state["points"]:  # fixed once, so a resumed rung trains what it started with
            below = [ConfigResult(**r) for r in state["results"][str(index - 1)]]
            points = lr_points(promote(below, spec.ladder.promote), spec.ladder.lr_factors)
            state["points"][key] = [asdict(p) for p in points]
            save_ladder_state(spec.storage_dir, state)
        points = [RungPoint(**p) for p in state["points"][key]]
        run_fixed_points(rspec, unique_points(points), address, progress)
        rs, rstate = load_state(rspec.storage_dir)
        results = rung_results(points, loss_by_params(collect_trials(rs, rstate)))
    state["results"][str(index)] = [asdict(r) for r in annotate(rspec, results)]


def run_fixed_points(
    rspec: SweepSpec, points: list[dict[str, Any]], address: str | None, progress: bool
) -> dict[str, Any]:
    """A sweep of exactly these configurations, each to the full budget.

    A killed one continues by training the points that have no finished run yet, in a new Tune
    experiment (`tune-<attempt>`) under the same MLflow parent run; runs the kill interrupted are tagged
    `lost` when the rung finishes and are trained again from the start. (Not Tune's restore: a driver
    killed before Tune's first snapshot of the fixed-points searcher left a restored rung with one trial.)
    """
    from ray import tune

    from ranktune.platform.report.trials import collect_trials
    from ranktune.platform.store.locks import own_directory
    from ranktune.platform.store.state import STATE_FILE as SWEEP_STATE
    from ranktune.platform.store.state import SweepState, load_state
    from ranktune.platform.sweep.confirm import fixed_points
    from ranktune.platform.sweep.driver import Sweep, spec_json, start_ray, start_tracking

    storage = rspec.storage_dir
    with own_directory(storage, "storage", "sweep"):
        gpus = start_ray(rspec, address)
        if (storage / SWEEP_STATE).is_file():
            rspec, state = load_state(storage)
        else:
            state = SweepState(spec=json.loads(spec_json(rspec)), **start_tracking(rspec))
            state.write(storage)
        sweep = Sweep(rspec, state, gpus, progress=progress)
        done = set(loss_by_params(collect_trials(rspec, state)))
        todo = [p for p in points if params_key(p) not in done]
        if todo:
            attempt = 1 + sum(1 for d in storage.glob("tune-*") if d.is_dir())
            tuner = tune.Tuner(
                sweep.trainable(),
                tune_config=tune.TuneConfig(
                    metric=rspec.objective.metric,
                    mode=rspec.objective.mode,
                    search_alg=fixed_points(todo),
                    num_samples=len(todo),
                    max_concurrent_trials=rspec.max_concurrent,
                ),
                run_config=tune.RunConfig(
                    name=f"tune-{attempt}",
                    storage_path=str(storage),
                    callbacks=sweep.callbacks(len(todo)),
                    failure_config=tune.FailureConfig(max_failures=rspec.max_failures),
                    verbose=0,
                ),
            )
            results = tuner.fit()
            if results.num_terminated + results.num_errors < len(todo):
                raise LadderInterrupted(
                    f"rung {rspec.name} was interrupted; `ranktune sweep --resume "
                    f"{shlex.quote(str(storage.parent.parent))}` continues the ladder"
                )
        return sweep.finish()


# ---------------------------------------------------------------------------------- ladder.json


def build_ladder(spec: SweepSpec, state: dict[str, Any]) -> dict[str, Any]:
    rungs = []
    for index, rung in enumerate(spec.ladder.rungs):
        if str(index) not in state["results"]:
            break
        rspec = rung_spec(spec, index)
        results = [ConfigResult(**r) for r in state["results"][str(index)]]
        rungs.append(
            {
                "index": index + 1,
                "name": rung.name,
                **rung_shape(rspec),
                "sweep_dir": str(rung_dir(spec, index).relative_to(spec.storage_dir)),
                "configurations": sorted(
                    (asdict(r) for r in results), key=lambda c: (c["loss"] is None, c["loss"] or 0.0)
                ),
                "method_ranking": [
                    {"method": m, "loss": loss, "config_id": c} for m, loss, c in method_ranking(results)
                ],
            }
        )
    comparisons = []
    pairs = [(i, i + 1) for i in range(len(rungs) - 1)]
    if len(rungs) > 2:
        pairs.append((0, len(rungs) - 1))
    for lo, hi in pairs:
        c = compare(
            rungs[lo]["name"],
            [ConfigResult(**r) for r in rungs[lo]["configurations"]],
            rungs[hi]["name"],
            [ConfigResult(**r) for r in rungs[hi]["configurations"]],
        )
        comparisons.append(c)
    complete = len(rungs) == len(spec.ladder.rungs)
    ladder: dict[str, Any] = {
        "name": spec.name,
        "complete": complete,
        "promote": spec.ladder.promote,
        "lr_factors": spec.ladder.lr_factors,
        "rungs": rungs,
        "comparisons": [c.as_dict() for c in comparisons],
        "verdict": transfer_verdict(comparisons[-1]) if comparisons else "fewer than two rungs finished",
    }
    ladder["rules"] = {m: r.as_dict() for m, r in fit_rules(rungs).items()}
    return ladder


def write_ladder(spec: SweepSpec, state: dict[str, Any]) -> dict[str, Any]:
    from ranktune.platform.report.ladder import log_ladder_run, write_ladder_html, write_ladder_plots

    ladder = build_ladder(spec, state)
    storage = spec.storage_dir
    (storage / LADDER_FILE).write_text(json.dumps(ladder, indent=2, default=str))
    plots = write_ladder_plots(ladder, storage / "plots")
    write_ladder_html(ladder, storage, plots)
    log_ladder_run(spec, ladder, storage, plots)
    return ladder
