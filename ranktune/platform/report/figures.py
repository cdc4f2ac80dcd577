"""The sweep's plots: the method-coloured charts, the Pareto front and Optuna's parameter importances."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ranktune.search_spaces.spec import SweepSpec

if TYPE_CHECKING:
    from ranktune.platform.store.state import SweepState

log = logging.getLogger(__name__)

IMPORTANCE_MIN_TRIALS = 20  # Optuna's fANOVA importances from fewer full-budget trials are noise


def write_plots(
    spec: SweepSpec, state: SweepState, rows: list[dict[str, Any]], confirm: dict[str, Any] | None, out_dir: Path
) -> list[Path]:
    """The method-coloured plots of plots.py (with the replicates' summary `confirm`, as the caller loaded
    it), the Pareto front (several objectives), and Optuna's parameter importances once there are enough
    full-budget trials for them to mean something."""
    from ranktune.platform.report.pareto import plot_front
    from ranktune.platform.report.plots import write_method_plots

    written = write_method_plots(spec, state, rows, out_dir, confirm)
    front = plot_front(spec, rows, out_dir / "pareto.png")
    if front:
        written.append(front)
    if sum(r["status"] == "finished" for r in rows) >= IMPORTANCE_MIN_TRIALS:
        importances = _param_importances(spec, out_dir / "param_importances.png")
        if importances:
            written.append(importances)
    return written


def _param_importances(spec: SweepSpec, path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    db = spec.storage_dir / "optuna.db"
    # A sweep of fixed points (a ladder's rung above the first) has no Optuna study: nothing was sampled,
    # so there are no importances to draw (and opening the file would create an empty one).
    if not db.is_file() or spec.name not in optuna.study.get_all_study_names(f"sqlite:///{db}"):
        return None
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{db}")
    try:
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore")
            # With several objectives Optuna's plots need one value per trial: the primary objective's.
            ax = ovm.plot_param_importances(study, target=lambda t: t.values[0], target_name=spec.objective.metric)
    except Exception as exc:  # Optuna raises for conditional-only spaces
        log.warning("plot param_importances skipped: %s", exc)
        return None
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
