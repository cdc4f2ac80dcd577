"""One builder of trial rows (what `collect_trials` returns, report/trials.py's TrialRow), and the example
sweep the ranked-table and HTML report tests share."""

from __future__ import annotations

from typing import Any

from ranktune.platform.report.trials import TrialRow
from ranktune.search_spaces import spec_from_dict


def trial_row(
    trial_id: str | None, params: dict[str, Any], objective: float | None, status: str = "finished", **fields: Any
) -> TrialRow:
    """A whole row with every field a reader may index; `fields` set the rest (step, memory, reasons, ...)."""
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "run_id": f"r{trial_id}",
        "start_time": None,
        "status": status,
        "failure_reason": None,
        "stop_reason": None,
        "params": params,
        "reference": False,
        "objective": objective,
        "last_objective": None,
        "step": None,
        "eval_ppl": None,
        "peak_memory_bytes": None,
        "optimizer_state_bytes": None,
        "tokens_per_s": None,
        "wall_time": None,
        "device_hours": None,
        "device_kind": "CPU",
    }
    row.update(fields)
    return row  # type: ignore[return-value]


LR = {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 2e-2}}
TABLE_SPEC = spec_from_dict({"name": "compare-tiny", "space": {"params": LR}, "budget": {"steps_per_trial": 80}})
MIB = 2**20


def table_row(trial_id, params, status, objective, opt_mib, peak_mib, tok_s, **extra) -> TrialRow:
    """A row of the ranked table's example sweep (80 steps; stopped trials at step 20), sizes in MiB."""
    return trial_row(
        trial_id,
        params,
        objective,
        status,
        step=80 if status == "finished" else 20,
        optimizer_state_bytes=opt_mib * MIB,
        peak_memory_bytes=peak_mib * MIB,
        tokens_per_s=tok_s,
        device_hours=0.0123,
        **extra,
    )


TABLE_ROWS = [
    table_row("3f2f0c47", {"optim.name": "adamw8bit", "optim.lr": 0.00852}, "finished", 6.8278, 1.04, 310.0, 14210.0),
    table_row("e5d27066", {"optim.name": "adamw", "optim.lr": 0.00518}, "finished", 6.8439, 4.12, 330.0, 15102.0),
    table_row(
        "1a2b3c4d",
        {"optim.name": "galore_adamw", "optim.lr": 0.0121, "galore.rank": 64, "galore.update_proj_gap": 30},
        "finished",
        6.91,
        2.31,
        320.0,
        9000.0,
    ),
    table_row(
        "5e6f7a8b",
        {
            "optim.name": "relora",
            "optim.lr": 0.0031,
            "relora.rank": 32,
            "relora.relora_every": 30,
            "relora.warm_start_steps": 20,
            "relora.restart_warmup_steps": 4,
        },
        "stopped_early",
        7.4,
        1.9,
        300.0,
        8000.0,
        stop_reason="milestone 40 (step 40): eval_loss 7.4 > cutoff 7.1, the best 1/2 of the 4 trials",
    ),
    table_row(
        "9c0d1e2f",
        {"optim.name": "lora", "optim.lr": 0.019, "relora.rank": 16},
        "failed",
        None,
        0.5,
        280.0,
        None,
        failure_reason="diverged at step 3: loss nan",
    ),
]
