"""best_config.yaml: the winner's own method sections only, a header naming how it was chosen, loadable."""

import yaml
from support.rows import trial_row

from ranktune.platform.export.select import select_trial
from ranktune.platform.report.ranking import pick_winner
from ranktune.platform.report.table import winner_lines
from ranktune.platform.sweep.driver import best_config_yaml
from ranktune.search_spaces import spec_from_dict
from ranktune.trainables.config import load_config

METHOD_SECTIONS = {"galore", "relora", "apollo", "apollo_mini", "fira"}
THREE_METHODS = {
    "params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
    "branches": {
        "key": "optim.name",
        "choices": {
            "adamw": {},
            "galore_adamw": {"galore.rank": {"type": "choice", "values": [16, 32]}},
            "lora": {"relora.rank": {"type": "choice", "values": [8]}},
        },
    },
}


def sweep_spec():
    # The base sets a GaLore key for every trial: an AdamW winner must still not carry it.
    base = {
        "model": {"name": "tiny"},
        "train": {"batch_size": 8, "micro_batch_size": 8, "eval_every": 10},
        "galore": {"scale": 0.5},
    }
    return spec_from_dict(
        {
            "name": "three",
            "base_overrides": base,
            "space": THREE_METHODS,
            "budget": {"num_trials": 6, "steps_per_trial": 30},
        }
    )


def row(trial_id, params, objective, status="finished"):
    return trial_row(trial_id, params, objective, status, peak_memory_bytes=0)


ADAMW = row("aaaa0001", {"optim.name": "adamw", "optim.lr": 3e-3}, 6.5)
GALORE = row("9a100002", {"optim.name": "galore_adamw", "optim.lr": 5e-3, "galore.rank": 32}, 6.6)
LORA = row("1o2a0003", {"optim.name": "lora", "optim.lr": 4e-3, "relora.rank": 8}, 6.9)
TRIALS = [ADAMW, GALORE, LORA, row("5t0p0004", {"optim.name": "adamw", "optim.lr": 1e-3}, None, "stopped_early")]


def header(text):
    return [line for line in text.splitlines() if line.startswith("#")]


def test_adamw_winner_carries_no_other_method_section_and_a_header_naming_it(tmp_path):
    spec = sweep_spec()
    text = best_config_yaml(spec, TRIALS, ADAMW, confirm=None)
    assert text.startswith("# ")
    lines = header(text)
    first = lines[0]
    assert "'three'" in first and "aaaa0001" in first and "adamw" in first and "eval_loss 6.5000" in first
    assert "lowest eval_loss" in " ".join(lines) and "3 of 4" in " ".join(lines)
    raw = yaml.safe_load(text)
    assert not (METHOD_SECTIONS & raw.keys()), sorted(raw)
    assert {"model", "data", "optim", "schedule", "train", "output"} <= raw.keys()
    (tmp_path / "best_config.yaml").write_text(text)
    cfg = load_config(tmp_path / "best_config.yaml")  # absent sections take their defaults and validate
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 3e-3 and cfg.train.steps == 30
    trial = spec.trial_config(ADAMW["params"])
    assert cfg.model_dump(exclude=METHOD_SECTIONS) == trial.model_dump(exclude=METHOD_SECTIONS)


def test_galore_winner_keeps_its_own_section_only():
    raw = yaml.safe_load(best_config_yaml(sweep_spec(), TRIALS, GALORE, confirm=None))
    assert METHOD_SECTIONS & raw.keys() == {"galore"}
    assert raw["galore"]["rank"] == 32 and raw["galore"]["scale"] == 0.5  # the trial's and the base's values


# The search's best single trial is AdamW (6.5); the replicates rank LoRA first by their mean.
CONFIRM = {
    "metric": "eval_loss",
    "mode": "min",
    "seeds": 3,
    "verdict": "resolved",
    "why": "gap 0.3 > spread 0.04",
    "configurations": [
        {
            "trial_id": LORA["trial_id"],
            "params": LORA["params"],
            "search_objective": 6.9,
            "values": [6.2] * 3,
            "n": 3,
            "mean": 6.21,
            "std": 0.02,
        },
        {
            "trial_id": ADAMW["trial_id"],
            "params": ADAMW["params"],
            "search_objective": 6.5,
            "values": [6.5] * 3,
            "n": 3,
            "mean": 6.51,
            "std": 0.02,
        },
    ],
}


def test_with_replicates_the_best_config_is_the_confirmed_winner_not_the_single_best_trial(tmp_path):
    text = best_config_yaml(sweep_spec(), TRIALS, ADAMW, confirm=CONFIRM)
    lines = " ".join(header(text))
    assert "1o2a0003" in header(text)[0] and "lora" in header(text)[0]
    assert "mean of 3 replicates" in lines and "6.2100 +/- 0.0200 over 3 replicates" in lines and "resolved" in lines
    assert "aaaa0001" in lines  # names the search's single best trial it was preferred to
    raw = yaml.safe_load(text)
    assert METHOD_SECTIONS & raw.keys() == {"relora"}  # lora reads the relora section
    assert raw["optim"]["name"] == "lora" and raw["relora"]["rank"] == 8
    (tmp_path / "best_config.yaml").write_text(text)
    assert load_config(tmp_path / "best_config.yaml").optim.name == "lora"


def test_with_replicates_the_winner_line_and_export_follow_the_replicates_mean(tmp_path):
    assert pick_winner(TRIALS, "min", CONFIRM) is LORA and pick_winner(TRIALS, "min", None) is ADAMW
    first = winner_lines(sweep_spec(), pick_winner(TRIALS, "min", CONFIRM), "SWEEP", CONFIRM)[0]
    assert first.startswith("winner: lora (trial 1o2a0003, eval_loss 6.2100 +/- 0.0200 over 3 replicates, resolved")
    assert select_trial(TRIALS, "min", None, str(tmp_path), CONFIRM) is LORA  # what `ranktune export` trains
    assert select_trial(TRIALS, "min", ADAMW["trial_id"], str(tmp_path), CONFIRM) is ADAMW  # --trial still wins
