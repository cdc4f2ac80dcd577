"""A sweep spec: base training config, search space, objective, search, scheduler, budgets, storage.

Loaded from YAML and validated like the training config (unknown keys, bad values and search-space
entries that cannot work with the base model or budget are refused up front, naming the entry).
"""

from __future__ import annotations

import copy
import math
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ranktune.search_spaces.presets import PRESETS
from ranktune.search_spaces.space import SearchSpace, format_value
from ranktune.trainables.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    describe_validation_errors,
    read_yaml_mapping,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class SpaceSection(Strict):
    preset: Literal["galore", "apollo", "relora", "compare"] | None = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    branches: dict[str, Any] | None = None
    """replaces the preset's branches when given"""


class Objective(Strict):
    metric: str = "eval_loss"
    """reported at every evaluation; the value at the end of the budget ranks"""
    mode: Literal["min", "max"] = "min"


# What `objectives` (the trade-offs searched with the primary objective) may name: metrics every
# evaluation's result carries and the MLflow run keeps as final_<metric> (platform/tracking/client.py).
TRADE_OFF_METRICS = ("optimizer_state_bytes", "peak_memory_bytes", "tokens_per_s")


class Search(Strict):
    algorithm: Literal["tpe", "random", "grid"] = "tpe"
    n_startup_trials: int = Field(default=4, ge=1)
    """TPE: random trials before the model kicks in"""
    min_trials_per_branch: int = Field(default=1, ge=0)
    """Conditional spaces: this many trials per branch are enqueued first (round-robin) and never stopped early, so
    every method has a full-budget trial in the answer. 0 leaves it to the sampler.
    """


class Scheduler(Strict):
    name: Literal["asha", "hyperband", "none"] = "asha"
    grace_period: int = Field(default=0, ge=0)
    """steps before a trial can be stopped; 0 = one eval period"""
    reduction_factor: float = Field(default=2.0, gt=1.0)


class Confirm(Strict):
    """After the search: replicate the best configurations with new seeds (platform/sweep/confirm.py)."""

    top_k: int = Field(default=2, ge=2)
    """methods (branches) or configurations to replicate; a verdict needs 2"""
    seeds: int = Field(default=3, ge=2)
    """new seeds each, at the full budget; a spread needs 2"""
    tie_threshold: float = Field(default=0.01, ge=0)
    """gaps of the objective within +/- this are practically equal (a tie); 0.01 nats of eval_loss = 1% perplexity"""


class Rung(Strict):
    """One model size of a ladder (platform/sweep/ladder.py, docs/ladder.md)."""

    name: str
    """label in ladder.json, the report and the rung's sweep directory (rungs/<index>-<name>)"""
    model: dict[str, Any] = Field(default_factory=dict)
    """model section settings over the base config's (e.g. {hidden_size: 256, num_layers: 4})"""
    steps: int | None = Field(default=None, ge=1)
    """steps per trial at this rung; None: budget.steps_per_trial"""

    @model_validator(mode="after")
    def _check_name(self) -> Rung:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"name {self.name!r} may hold only letters, digits, '_', '-' and '.'")
        return self


class Ladder(Strict):
    """Model size as a fidelity: the search at the first rung, the promoted configurations re-trained at each next."""

    rungs: list[Rung] = Field(min_length=2)
    """smallest first; the first rung runs the ordinary search (with `confirm` if set)"""
    promote: int = Field(default=2, ge=1)
    """configurations per method (branch) that move up to the next rung, best first"""
    lr_factors: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1)
    """the lr re-searched at each next rung: the transferred lr times each factor (optimal lr moves with width)"""

    @model_validator(mode="after")
    def _check(self) -> Ladder:
        names = [r.name for r in self.rungs]
        if len(set(names)) != len(names):
            raise ValueError(f"rungs: names {names} -> distinct names")
        if any(f <= 0 for f in self.lr_factors):
            raise ValueError(f"lr_factors: {self.lr_factors} -> positive factors")
        return self


class Budget(Strict):
    num_trials: int = Field(default=8, ge=1)
    steps_per_trial: int = Field(default=100, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    """stop starting trials past this many tokens in all"""
    time_budget_s: float | None = Field(default=None, gt=0)


class Resources(Strict):
    cpus_per_trial: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    gpus_per_trial: float | Literal["auto"] = "auto"
    """`auto`: one GPU per trial when the cluster has GPUs, else CPU only. Fractions share a GPU."""
    num_workers: int = Field(default=1, ge=1)
    """>1: Ray Train (DDP) inside the trial"""

    @field_validator("gpus_per_trial", mode="before")
    @classmethod
    def _schedulable_gpus(cls, value: Any) -> Any:
        # A request Ray can never grant (negative, NaN, 1.5 GPUs: Ray hands out fractions of one GPU
        # only) leaves every trial pending and the sweep waiting forever (issue 24.3).
        if value == "auto":
            return value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (value > 1 and value != int(value)):
            raise ValueError(
                f"{value!r} -> 'auto', 0 (CPU only), a fraction of one GPU (<= 1) or a whole number of GPUs"
            )
        return value


# The tracking URIs MLflow can record runs in: a server, a database (SQLAlchemy dialect, optionally
# `+driver`), a local file store, Databricks. Anything else fails only once Ray and the trials run.
TRACKING_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")


class Target(Strict):
    """The run the sweep is for (docs/export.md, "Target-aware sweeps"): every sampled configuration is mapped
    to it by export's rules and estimated before it trains; one that cannot be exported is not trained."""

    model: str = "7b"
    """target model preset"""
    budget_gib: float = Field(default=24.0, gt=0)
    """GPU memory of the target run, GiB (export keeps its rules' min_headroom_gib of it free)"""
    batch_size: int = Field(default=512, ge=1)
    """target sequences per optimizer update (the paper: 512)"""
    seq_len: int = Field(default=256, ge=8)
    """target tokens per sequence (the paper: 256)"""
    rules: str | dict[str, Any] = "published"
    """export's scaling rules: a named set (published, proxy) or a mapping of rule keys"""
    max_infeasible_draws: int | None = Field(default=None, ge=0)
    """configurations that cannot be exported, drawn beyond budget.num_trials before the sweep stops drawing;
    None: as many as budget.num_trials"""
    proxy_update_rule: bool = True
    """train each proxy with its target's update rule (per-layer and accumulation mode, inner optimizer, projector
    dtype: the method's registry `update_rule_keys`), so the ranking is one of launchable recipes"""

    def infeasible_draws(self, num_trials: int) -> int:
        return num_trials if self.max_infeasible_draws is None else self.max_infeasible_draws


class Tracking(Strict):
    tracking_uri: str | None = None
    """default: sqlite database inside the sweep directory"""
    experiment: str | None = None
    """MLflow experiment; default: the sweep's name"""

    @field_validator("tracking_uri")
    @classmethod
    def _check_scheme(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
        if not uri.strip() or (scheme and scheme not in TRACKING_SCHEMES):
            shown = re.sub(r"//[^/@]*@", "//", uri)  # no credentials in the message
            raise ValueError(
                f"{shown!r} -> an MLflow tracking URI: {', '.join(s + '://' for s in TRACKING_SCHEMES)}"
                " (or leave it out for the sweep's own sqlite store)"
            )
        return uri


class SweepSpec(Strict):
    name: str = "sweep"
    base: str | None = None
    """training config YAML (relative to the spec file)"""
    base_overrides: dict[str, Any] = Field(default_factory=dict)
    """nested sections merged over `base`"""
    space: SpaceSection
    objective: Objective = Field(default_factory=Objective)
    """primary: ranks trials, the scheduler prunes on it"""
    objectives: list[Objective] = Field(default_factory=list)
    """Trade-offs searched jointly with `objective` (Optuna multi-objective TPE); the report, plots and MLflow parent
    run show the Pareto front. E.g. [{metric: optimizer_state_bytes, mode: min}].
    """
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    budget: Budget = Field(default_factory=Budget)
    confirm: Confirm | None = None
    """None: no replicates"""
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int = Field(default=2, ge=1)
    max_failures: int = Field(default=0, ge=0)
    """retries of a failed trial from its last checkpoint"""
    storage: str = "sweeps/{name}"
    """relative to the working directory; `{name}` is the sweep's name"""
    tracking: Tracking = Field(default_factory=Tracking)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    """Optuna sampler seed (NumPy's range)"""
    ladder: Ladder | None = None
    """Rungs of growing model size: does the ranking transfer? (platform/sweep/ladder.py, docs/ladder.md).
    None: one size."""
    memory_budget_gib: float | None = Field(default=None, gt=0)
    """GPU memory per trial, GiB: a sampled config whose memory estimate exceeds it is pruned before it trains (Optuna:
    PRUNED; MLflow: status pruned_memory with the reason). None: no check.
    """

    target: Target | None = None
    """The run the sweep's answer is exported to, e.g. {model: 7b, budget_gib: 24}; None: any proxy config may win."""

    spec_dir: str = Field(default=".", exclude=True)
    """Where relative paths in the spec are resolved (the spec file's folder); not a YAML key."""

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, storage: str, info: ValidationInfo) -> str:
        check_storage_template(storage)
        name = info.data.get("name", "sweep")  # validated before storage (declared first)
        check_uri_safe_path(Path(storage.format(name=name)).expanduser().resolve())
        return storage

    @model_validator(mode="after")
    def _check_name(self) -> SweepSpec:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"name {self.name!r} may hold only letters, digits, '_', '-' and '.'")
        return self

    @model_validator(mode="after")
    def _check_objectives(self) -> SweepSpec:
        for i, obj in enumerate(self.objectives):
            if obj.metric not in TRADE_OFF_METRICS or obj.metric == self.objective.metric:
                raise ValueError(
                    f"objectives[{i}].metric: {obj.metric!r} -> one of {list(TRADE_OFF_METRICS)}, "
                    f"other than objective.metric"
                )
        return self

    def all_objectives(self) -> list[Objective]:
        """The primary objective first, then the trade-offs."""
        return [self.objective, *self.objectives]

    @property
    def storage_dir(self) -> Path:
        return Path(self.storage.format(name=self.name)).expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri or f"sqlite:///{self.storage_dir / 'mlflow.db'}"

    def search_space(self) -> SearchSpace:
        raw: dict[str, Any] = copy.deepcopy(PRESETS[self.space.preset]) if self.space.preset else {}
        raw.setdefault("fixed", {}).update(self.space.fixed)
        raw.setdefault("params", {}).update(self.space.params)
        for name in self.space.fixed:  # a fixed setting replaces a preset's parameter of that name
            raw["params"].pop(name, None)
        if self.space.branches is not None:
            raw["branches"] = self.space.branches
        return SearchSpace.model_validate(raw)

    def base_raw(self) -> dict[str, Any]:
        """The base training config as a nested dict, with the sweep's per-trial step budget."""
        raw: dict[str, Any] = {}
        if self.base:
            path = Path(self.base).expanduser()
            path = path if path.is_absolute() else Path(self.spec_dir) / path
            raw = read_yaml_mapping(path, "base config")
        for section, values in self.base_overrides.items():
            if isinstance(values, dict):
                raw.setdefault(section, {}).update(values)
            else:
                raw[section] = values
        bad = [
            f"base config: {k}: {v!r} -> a mapping of that section's settings"
            for k, v in raw.items()
            if not isinstance(v, dict)
        ]
        if bad:
            raise ConfigError(bad)
        raw.setdefault("train", {})["steps"] = self.budget.steps_per_trial
        return raw

    def trial_config(self, params: dict[str, Any], output_dir: str | Path | None = None) -> TrainConfig:
        raw = apply_overrides(copy.deepcopy(self.base_raw()), [f"{k}={_yaml(v)}" for k, v in params.items()])
        if output_dir is not None:
            raw.setdefault("output", {})["dir"] = str(output_dir)
        return config_from_dict(raw)


# The sweep's sqlite stores are reached through URIs (`sqlite:///PATH` for Optuna's SQLAlchemy and
# MLflow): there `?` starts the query, `#` the fragment and `%` an escape, so a path holding one
# named another file (`sweeps/a?b` put both stores in `sweeps/a`). Such paths are refused.
URI_UNSAFE_CHARACTERS = "?#%"


def check_storage_template(storage: str) -> None:
    """`storage` is a directory path in which `{name}` is the only placeholder."""
    if not storage.strip():
        raise ValueError(
            f"{storage!r} -> a directory path, e.g. 'sweeps/{{name}}' (empty would be the working directory)"
        )
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(storage) if name is not None]
    except ValueError as exc:
        raise ValueError(
            f"{storage!r} -> a path in which '{{name}}' is the only placeholder ({exc}; "
            "write '{{' and '}}' for literal braces)"
        ) from None
    bad = [name for name, spec, conv in fields if name != "name" or spec or conv]
    if bad:
        raise ValueError(
            f"{storage!r} -> a path in which '{{name}}' is the only placeholder "
            f"(found {', '.join(repr('{' + b + '}') for b in bad)})"
        )


def check_uri_safe_path(path: Path) -> None:
    found = sorted({c for c in str(path) if c in URI_UNSAFE_CHARACTERS})
    if found:
        raise ValueError(
            f"{str(path)!r} -> a path without {' or '.join(repr(c) for c in found)} "
            "(the sweep's sqlite stores are opened by URI, where these characters end or escape the path)"
        )


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_spec(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    raw = read_yaml_mapping(path, "sweep spec")
    return spec_from_dict(apply_overrides(raw, list(overrides)), spec_dir=Path(path).parent)


def spec_from_dict(raw: dict[str, Any], spec_dir: str | Path = ".") -> SweepSpec:
    try:
        spec = SweepSpec.model_validate({**raw, "spec_dir": str(spec_dir)})
    except ValidationError as exc:
        raise ConfigError(describe_validation_errors(exc, docs="docs/sweeps.md")) from None
    try:
        space = spec.search_space()
    except ValidationError as exc:
        raise ConfigError(describe_validation_errors(exc, docs="docs/sweeps.md", prefix="space.")) from None
    if spec.base and not (Path(spec.spec_dir) / spec.base).expanduser().is_file():
        raise ConfigError([f"base: {spec.base!r} -> an existing training config file"])
    spec = self_contained(spec)
    validate_against_base(spec, space)
    check_branch_balance(spec, space)
    if spec.ladder is not None:
        validate_rungs(spec)
    return spec


def check_branch_balance(spec: SweepSpec, space: SearchSpace) -> None:
    """The stratified start-up (search.min_trials_per_branch per branch) must fit in the trial budget."""
    if space.branches is None or spec.search.algorithm == "grid":
        return
    needed = spec.search.min_trials_per_branch * len(space.branches.choices)
    if needed > spec.budget.num_trials:
        problem = (
            f"search.min_trials_per_branch: {spec.search.min_trials_per_branch} x {len(space.branches.choices)} "
            f"branches = {needed} trials -> at most budget.num_trials ({spec.budget.num_trials}); raise the budget "
            "or lower it (0: no start-up per branch)"
        )
        raise ConfigError([problem])


def self_contained(spec: SweepSpec) -> SweepSpec:
    """Inline the base config file and make data paths absolute: trials run in other working
    directories (and on other nodes), and a resumed sweep must not pick up later edits of the file."""
    raw = spec.base_raw()
    data = raw.get("data", {})
    if isinstance(data, dict):
        if data.get("files"):
            data["files"] = [str(Path(f).expanduser().resolve()) for f in data["files"]]
        if data.get("tokenizer") not in (None, "embedded") and not str(data["tokenizer"]).startswith("corpus:"):
            data["tokenizer"] = str(Path(data["tokenizer"]).expanduser().resolve())
    raw.get("train", {}).pop("steps", None)  # the budget sets it
    return spec.model_copy(update={"base": None, "base_overrides": raw, "spec_dir": str(Path(spec.spec_dir).resolve())})


def validate_against_base(spec: SweepSpec, space: SearchSpace) -> None:
    """Apply every edge value of every parameter to the base config; report what the config refuses.

    This reuses the training config's own checks (rank above a targeted matrix's smallest side,
    warmup longer than the budget, restart interval not above restart warmup, unknown keys...),
    so the sweep refuses exactly what a trial would, before any trial starts.
    """
    try:
        base = spec.trial_config({})
    except ConfigError as exc:
        raise ConfigError([f"base config: {p}" for p in exc.problems]) from None
    workers = spec.resources.num_workers
    if base.train.batch_size % (base.train.micro_batch_size * workers):
        raise ConfigError(
            [
                f"base config: train.batch_size: {base.train.batch_size} -> a multiple of "
                f"train.micro_batch_size x resources.num_workers ({base.train.micro_batch_size} x {workers})"
            ]
        )
    problems: list[str] = []
    seen: set[str] = set()
    steps = spec.budget.steps_per_trial
    if spec.scheduler.name != "none" and (spec.scheduler.grace_period or base.train.eval_every) > steps:
        grace = spec.scheduler.grace_period
        shown = f"{grace}" if grace else f"0 (one eval period: train.eval_every = {base.train.eval_every})"
        problems.append(f"scheduler.grace_period: {shown} -> at most budget.steps_per_trial ({steps})")
    if space.branches is not None:  # the branch key itself first, so its problems are reported under its name
        key = space.branches.key
        try:
            spec.trial_config({key: next(iter(space.branches.choices))})
        except ConfigError as exc:  # only its own problems: the branch's other settings are not applied here
            own = [p for p in exc.problems if p.startswith(f"{key}:")]
            seen.update(own)
            problems.extend(f"space branches.key {key}: {p}" for p in own)
    for label, group in space.validation_points():
        found: list[set[str]] = []
        for assignment in group:
            try:
                spec.trial_config(assignment)
                found.append(set())
            except ConfigError as exc:
                found.append(set(exc.problems))
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in group[0].items() if k == label or len(group) == 1)
        for p in sorted(set.intersection(*found) - seen):  # each underlying problem once
            seen.add(p)
            problems.append(f"space {label}: with {shown}: {p}")
    if spec.search.algorithm == "grid":
        try:
            points = space.grid()
        except ValueError as exc:
            problems.append(f"search.algorithm: grid -> {exc}")
        else:
            if len(points) > 10_000:
                problems.append(f"search.algorithm: grid -> {len(points)} points; narrow the space")
    if problems:
        raise ConfigError(problems)


# The sweeps of a ladder's rungs (platform/sweep/ladder.py runs them; docs/ladder.md).
RUNGS_DIR = "rungs"


# ---------------------------------------------------------------------------------- rung specs


def rung_dir(spec: SweepSpec, index: int) -> Path:
    return spec.storage_dir / RUNGS_DIR / f"{index + 1}-{spec.ladder.rungs[index].name}"


def rung_spec(spec: SweepSpec, index: int) -> SweepSpec:
    """The sweep of rung `index`: the base config with the rung's model settings and steps, tracked in the
    ladder's MLflow store. Rungs after the first train fixed points to the end: no scheduler, no replicates."""
    rung = spec.ladder.rungs[index]
    base = copy.deepcopy(spec.base_overrides)
    base.setdefault("model", {}).update(rung.model)
    update: dict[str, Any] = {
        "name": f"{spec.name}-{rung.name}",
        "base_overrides": base,
        "ladder": None,
        "storage": str(rung_dir(spec, index)),
        "budget": spec.budget.model_copy(update={"steps_per_trial": rung.steps or spec.budget.steps_per_trial}),
        "tracking": spec.tracking.model_copy(
            update={"tracking_uri": spec.tracking_uri, "experiment": spec.tracking.experiment or spec.name}
        ),
    }
    if index > 0:
        update |= {"confirm": None, "scheduler": spec.scheduler.model_copy(update={"name": "none"})}
    return SweepSpec.model_validate({**spec.model_dump(), **update, "spec_dir": spec.spec_dir})


def validate_rungs(spec: SweepSpec) -> None:
    """Every rung's config must accept every edge of the space (rank above a rung's smallest matrix side...)."""
    problems = []
    space = spec.search_space()
    for i, rung in enumerate(spec.ladder.rungs):
        try:
            validate_against_base(rung_spec(spec, i), space)
        except ConfigError as exc:
            problems += [f"ladder.rungs[{i}] ({rung.name}): {p}" for p in exc.problems]
    if problems:
        raise ConfigError(problems)
