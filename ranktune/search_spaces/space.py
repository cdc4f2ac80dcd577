"""Search spaces as data: parameters named by their training-config key, optional conditional branches.

    params:                                  # always sampled
      optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
    branches:                                # optional: one key picks a branch, each with its own params
      key: optim.name
      choices:
        adamw: {}
        galore_adamw:
          galore.rank: {type: choice, values: [8, 16, 32]}

Sampling is Optuna define-by-run: a branch's parameters are suggested only once it is chosen.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)  # int: grid step; uniform: quantization
    log: bool = False  # int only: sample on a log scale
    values: list[Any] | None = None  # choice only

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.type == "choice":
            if not self.values:
                raise ValueError("choice needs a non-empty `values` list")
            if self.low is not None or self.high is not None:
                raise ValueError("choice takes `values`, not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs `low` and `high`")
        if self.values is not None:
            raise ValueError(f"{self.type} takes low/high, not `values`")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite numbers (got {self.low}, {self.high})")
        if self.low == self.high:
            raise ValueError(f"low == high ({self.low:g}): for a constant setting put it under space.fixed instead")
        if not self.low < self.high:
            raise ValueError(f"empty range: low={self.low} must be below high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low})")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("int needs integer low and high")
        return self

    def suggest(self, trial, name: str) -> Any:
        if self.type == "choice":
            return trial.suggest_categorical(name, self.values)
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(name, int(self.low), int(self.high), step=step, log=self.log)
        if self.type == "loguniform":
            return trial.suggest_float(name, self.low, self.high, log=True)
        return trial.suggest_float(name, self.low, self.high, step=self.step)

    def edge_values(self) -> list[Any]:
        """The values validation tries: every choice, or both ends of a range."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            step = int(self.step or 1)
            high = int(self.low) + (int(self.high) - int(self.low)) // step * step
            return [int(self.low), high]
        return [self.low, self.high]

    def grid_values(self) -> list[Any]:
        if self.type == "choice":
            return list(self.values)
        if self.type == "int" and not self.log:
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        raise ValueError(f"{self.type} ranges cannot be enumerated for grid search; use type: choice")


class Branches(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    choices: dict[str, dict[str, Param]]

    @model_validator(mode="after")
    def _check(self) -> Branches:
        if not self.choices:
            raise ValueError("branches.choices is empty")
        seen: dict[str, Param] = {}
        for params in self.choices.values():
            for name, p in params.items():
                # Optuna needs one distribution per parameter name across all branches.
                if name in seen and seen[name] != p:
                    raise ValueError(f"{name} is defined differently in two branches; give it one definition")
                seen[name] = p
        return self


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fixed: dict[str, Any] = Field(default_factory=dict)  # constant settings every trial gets
    params: dict[str, Param] = Field(default_factory=dict)
    branches: Branches | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        if not self.params and self.branches is None:
            raise ValueError("the search space has no parameters")
        names = [*self.fixed, *self.params, *([self.branches.key] if self.branches else [])]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise ValueError(f"{clash} appear more than once among fixed, params and the branch key")
        return self

    def all_params(self) -> dict[str, Param]:
        merged = dict(self.params)
        if self.branches:
            for params in self.branches.choices.values():
                merged.update(params)
        return merged

    def sample(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: returns {config key: value} for one trial."""
        values = {**self.fixed, **{name: p.suggest(trial, name) for name, p in self.params.items()}}
        if self.branches:
            choice = trial.suggest_categorical(self.branches.key, list(self.branches.choices))
            values[self.branches.key] = choice
            for name, p in self.branches.choices[choice].items():
                values[name] = p.suggest(trial, name)
        return values

    def grid(self) -> list[dict[str, Any]]:
        """Every combination (branch by branch), for grid search."""
        points: list[dict[str, Any]] = []
        branches = self.branches.choices.items() if self.branches else [(None, {})]
        for choice, branch_params in branches:
            params = {**self.params, **branch_params}
            names = list(params)
            for combo in product(*(params[n].grid_values() for n in names)):
                point = {**self.fixed, **dict(zip(names, combo, strict=True))}
                if choice is not None:
                    point[self.branches.key] = choice
                points.append(point)
        return points

    def validation_points(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """(label, assignments) groups that validation applies to the base config.

        For each edge value of each parameter, the group holds two assignments: the other parameters
        of its branch at their low ends, and at their high ends; a problem counts when it shows in
        both, so `relora_every: 20` is not blamed on a default restart warmup the space overrides.
        The all-low and all-high corners are groups of one, to catch interactions.
        """
        groups: list[tuple[str, list[dict[str, Any]]]] = []
        branches = self.branches.choices.items() if self.branches else [(None, {})]
        for choice, branch_params in branches:
            fixed = {**self.fixed, **({self.branches.key: choice} if choice is not None else {})}
            params = {**self.params, **branch_params}
            corners = [{n: p.edge_values()[pick] for n, p in params.items()} for pick in (0, -1)]
            for name, p in params.items():
                for value in p.edge_values():
                    groups.append((name, [{**fixed, **corner, name: value} for corner in corners]))
            groups.append(("all-low corner", [{**fixed, **corners[0]}]))
            groups.append(("all-high corner", [{**fixed, **corners[1]}]))
        return groups


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
