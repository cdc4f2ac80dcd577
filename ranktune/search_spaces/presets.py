"""Shipped search spaces. Ranges suit proxy runs of thousands of steps on 60m-130m models; a sweep
spec can override any entry (`space.params`), and validation against the sweep's model and step
budget says which entries do not fit before any trial starts."""

from __future__ import annotations

from typing import Any

LR = {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-2}
RANK = {"type": "choice", "values": [16, 32, 64, 128]}

GALORE = {
    "rank": RANK,
    "update_proj_gap": {"type": "int", "low": 50, "high": 500, "step": 50},
    "scale": {"type": "uniform", "low": 0.1, "high": 0.5},
}
APOLLO = {
    "rank": RANK,
    "update_proj_gap": {"type": "int", "low": 50, "high": 500, "step": 50},
    "scale": {"type": "loguniform", "low": 0.25, "high": 4.0},  # the update is sqrt(scale) x the scaled gradient
    "scale_type": {"type": "choice", "values": ["channel", "tensor"]},
}
RELORA = {
    "rank": RANK,
    "relora_every": {"type": "int", "low": 200, "high": 2000, "step": 200},
    "restart_warmup_steps": {"type": "int", "low": 10, "high": 100, "step": 10},
    "warm_start_steps": {"type": "int", "low": 0, "high": 1000, "step": 100},
    "reset_ratio": {"type": "uniform", "low": 0.9, "high": 0.999},
}


# The step-size knobs as `compare` searches them: GaLore's papers use 0.25, Fira's alpha 0.25 (60m-350m) and
# 0.0625 (1b/7b), APOLLO's scale 1 (its update is sqrt(scale) x the scaled gradient); each range holds the
# papers' values with a factor of 4 to spare on the side the lr range does not already cover.
STEP_KNOB = {
    "galore": {"type": "loguniform", "low": 0.0625, "high": 1.0},
    "fira": {"type": "loguniform", "low": 0.03125, "high": 1.0},
    "apollo": {"type": "loguniform", "low": 0.25, "high": 4.0},
}


def _section(prefix: str, params: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in params.items()}


PRESETS: dict[str, dict[str, Any]] = {
    "galore": {
        "fixed": {"optim.name": "galore_adamw"},
        "params": {
            "optim.lr": LR,
            "schedule.warmup_steps": {"type": "int", "low": 0, "high": 200, "step": 20},
            **_section("galore", GALORE),
        },
    },
    "apollo": {
        "fixed": {"optim.name": "apollo_adamw"},
        "params": {
            "optim.lr": LR,
            "schedule.warmup_steps": {"type": "int", "low": 0, "high": 200, "step": 20},
            **_section("apollo", APOLLO),
        },
    },
    "relora": {
        "fixed": {"optim.name": "relora"},
        "params": {"optim.lr": LR, **_section("relora", RELORA)},
    },
    # Which method wins at this budget? One branch per method, each with its own parameters. Each method's
    # step-size knob (GaLore's scale, Fira's alpha, APOLLO's / APOLLO-Mini's scale) is searched with the lr:
    # they multiply into one step size, so fixing the knob at one value and searching the lr is unfair to
    # the methods whose good lr then lies outside the lr range (docs/ladder.md, "Fair tuning").
    "compare": {
        "params": {"optim.lr": LR},
        "branches": {
            "key": "optim.name",
            "choices": {
                "adamw": {},
                "adamw8bit": {},
                "galore_adamw": _section(
                    "galore", {"rank": RANK, "update_proj_gap": GALORE["update_proj_gap"], "scale": STEP_KNOB["galore"]}
                ),
                "fira_adamw": _section(
                    "fira", {"rank": RANK, "update_proj_gap": GALORE["update_proj_gap"], "scale": STEP_KNOB["fira"]}
                ),
                "apollo_adamw": _section(
                    "apollo", {"rank": RANK, "update_proj_gap": APOLLO["update_proj_gap"], "scale": STEP_KNOB["apollo"]}
                ),
                "apollo_mini": _section("apollo_mini", {"scale": {"type": "loguniform", "low": 32.0, "high": 512.0}}),
                "relora": _section(
                    "relora",
                    {
                        "rank": RANK,
                        "relora_every": RELORA["relora_every"],
                        "warm_start_steps": RELORA["warm_start_steps"],
                    },
                ),
                "lora": _section("relora", {"rank": RANK}),
            },
        },
    },
}
