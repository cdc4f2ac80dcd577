"""Export's advice is one it accepts: the --budget-gib it suggests includes the fit's own headroom."""

from __future__ import annotations

import re

import pytest

from ranktune.platform.export.fit import fit_micro_batch
from ranktune.platform.export.mapping import map_to_target
from ranktune.platform.export.rules import ScalingRules
from ranktune.trainables.config import ConfigError


def test_the_suggested_budget_is_accepted(make_config):
    rules = ScalingRules()
    raw = map_to_target(make_config("optim.name=galore_adamw", "galore.rank=16"), "7b", rules)
    with pytest.raises(ConfigError) as refused:
        fit_micro_batch(raw, [], rules, 16.0)  # GaLore 7b fits 24 GiB with low-rank accumulation; not 16
    need = int(re.search(r"needs --budget-gib (\d+)", refused.value.problems[0]).group(1))
    cfg, run = fit_micro_batch(raw, [], rules, float(need))  # refused before: the suggestion left out the headroom
    assert run.total / 2**30 <= need - rules.min_headroom_gib
