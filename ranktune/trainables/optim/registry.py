"""Optimization methods by name: the registry the trainer, the config checks and the memory estimator look up.

A method module registers itself when imported (`ranktune.trainables.optim` imports the built-in ones):

    register("my_method", OptimizerEntry(build=..., check=..., estimate_state=..., description="..."))

`register` refuses a name that is already taken; `unregister` removes one (tests). This module imports
only leaf modules of ranktune (the `Method` base and the pure schedule functions), so any method module
can import it without an import circle.

An entry holds:

    build(model, cfg) -> Method          the method for a model built from `cfg` (a TrainConfig)
    check(cfg) -> list[str]              problems a run would hit, as `field: value -> what is allowed`
                                         lines (default: none)
    schedule(cfg) -> (step -> LR)        the method's own LR schedule; None uses the `schedule:` section
    estimate_state(shapes, cfg, device)  what the method holds in memory, for `ranktune estimate` and
                                         the sweep's memory budget; None: the estimator refuses the method
    description                          one line for listings
    settling_windows(cfg) -> [(a, b)]    update counts (inclusive ranges) at which the method's loss rises by
                                         design and is not comparable with other methods' (ReLoRA's warm
                                         start and restart re-warmups); early stopping skips them. None: none
    colour                               the method's colour in every plot and report (hex); distinct
                                         from the other built-in methods' (None: one from a spare palette)
    baseline                             True for a full-rank reference method (AdamW, 8-bit AdamW): a
                                         sweep's `confirm` always replicates the best of them, and its
                                         verdict says whether the winner beats it
    sections                             the TrainConfig sections the method reads besides optim,
                                         schedule and train (galore_*: `galore`; relora, lora:
                                         `relora`); a sweep's best_config.yaml keeps these and drops
                                         those of every other method

What `ranktune export` and a target-aware sweep read (platform/export/recipe.py, docs/export.md), all optional:

    published                            the method's public recipes at target sizes (PublishedRecipe):
                                         the default transfer rule starts from them
    single_gpu                           `key: value` settings of the method on one GPU at the target
                                         (per-layer mode, 8-bit inner optimizer, ...), applied by export
    update_rule_keys                     the keys that make the target's update rule (per-layer and
                                         accumulation mode, inner optimizer, projector dtype): a
                                         target-aware sweep trains its proxies with the target's values
    export_refusal(proxy, target)        why the exported config is a baseline rather than a pretraining
                                         recipe (None: it is one); export refuses it unless the trial is
                                         asked for by name (`--trial`); a target-aware sweep skips it
    export_inputs(proxy, target)         what the exported config still needs from the user
                                         (`field: value -> what to give` lines), e.g. a warm-start checkpoint
    target_mapping(raw, proxy, scaling)  the method's own hyperparameters at the target (rank by width,
                                         scale, refresh gap, intervals), written into the raw target config;
                                         export calls it when no published recipe applies (TargetScaling)
    full_gradient_section                the section of a method that updates with the scaled full-rank
                                         gradient (APOLLO, Fira): export turns the proxy's global clip into
                                         `<section>.per_tensor_clip` and can name `<section>.full_grad_buffer`
    keeps_full_gradients(cfg)            whether the config keeps every full gradient alive between
                                         micro-batches (per-layer with full accumulation): export's
                                         does-not-fit advice then names a smaller batch
    full_rank                            full-rank optimizer state for every matrix (AdamW, Adafactor): when
                                         the target does not fit, export points at the low-rank methods
    memory_savings                       `key: value` settings export tries in turn when nothing fits,
                                         cheapest in accuracy first (GaLore: int8 projectors)
    export_fit_advice(cfg, phase, bytes) the method's own levers when its target config does not fit,
                                         given the peak phase (ReLoRA: its full-rank warm start)

The `estimate_state` contract
-----------------------------
    estimate_state(shapes: tuple[ParamShape, ...], cfg: TrainConfig, device: "cuda" | "cpu")
        -> list[PhaseState]

`shapes` are the model's parameters as the trainer builds them, derived from the model on the `meta`
device (no memory allocated): for each tensor its name (`layers.0.attn.q_proj.weight`), shape, the
class name of the module that owns it (`Linear`, `Embedding`, `RMSNorm`: select targets by this and
the name, as the method's own targeting rule does), the bytes per value it has in training
(`value_bytes`: 4 in fp32 and bf16-mixed, 2 in bf16) and `count`, the number of the model's tensors
the row stands for. Decoder layers repeat the same tensors, so each tensor of a layer comes once, named
as in layer 0 (`layers.0.mlp.up_proj.weight`), with count = the number of layers: multiply what one
tensor holds by `count`, and the estimate costs the same for 2 layers or 100000. A rule that picks
tensors by a name pattern the layer index can change (a digit, `?` or `[` in the pattern, see
`depends_on_layer_index`) must first call `expand_layers(shapes)` for one row per layer.

Return one `PhaseState` per phase of the run whose memory differs (most methods have one; ReLoRA's
full-rank warm start is a phase before its LoRA phase), in the order they happen. A phase gives:

    phase             its label in the estimate table
    weights           bytes of every weight tensor the phase keeps, trainable or frozen
    trainable         the tensors that get a gradient (the estimator counts their gradients in their
                      `value_bytes`), as ParamShape rows
    optimizer         bytes of optimizer state by category, with EXACTLY the keys the method's
                      `Method.state_bytes()` returns (tests compare the two key by key, within 10%)
    step_temporaries  the largest transient buffer of one optimizer step (e.g. torch's foreach AdamW
                      allocates sqrt(v) for all tensors at once on CUDA), 0 if none
    saved_values_per_token
                      extra values per token and decoder layer the method saves for backward, in the
                      activation dtype (LoRA: A x for each wrapped projection), 0 if none
    one_gradient_at_a_time
                      True when the method updates each tensor in its gradient hook and frees the
                      gradient at once (the estimator then counts one gradient, or all of them with
                      gradient accumulation)
    gradient_bytes    peak bytes of gradients and accumulators when the method keeps them itself
                      (replaces the estimator's count), None otherwise
    host_bytes        bytes the method keeps in host memory (pinned CPU RAM) rather than on the device,
                      by category (per-layer APOLLO's `full_grad_buffer: host` sums); not part of the
                      device total, shown as their own rows
    notes             lines printed under the table

The `estimate_flops` contract (optional; `ranktune estimate` / `export` duration)
--------------------------------------------------------------------------------
    estimate_flops(shapes: tuple[ParamShape, ...], cfg: TrainConfig) -> MethodFlops

The floating-point work the method adds to the model's forward + backward (which the duration estimate
counts itself: 6 N per token, plus the recompute of activation checkpointing): per micro-batch (per-layer
low-rank accumulation projects every micro-batch's gradient), per optimizer step (projection and
update), per refresh (GaLore's SVD every update_proj_gap steps, ReLoRA's merge every relora_every
steps) and per token (LoRA's adapters, less the weight gradients a frozen base skips; may be negative).
Count matrix products as 2 m n k. None: the method adds nothing beyond its inner AdamW-like update,
which the estimate counts as negligible.

Write the estimate next to the code that allocates the state, from the same constants (e.g.
`ranktune.trainables.optim.eightbit` for bitsandbytes' layout), so that the two change together.
Activations, logits, autocast copies and the fixed overhead are the estimator's (platform/memory.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ranktune.trainables.optim.base import Method
from ranktune.trainables.schedule import Schedule, section_schedule

if TYPE_CHECKING:
    from torch import nn

    from ranktune.trainables.config import TrainConfig

Device = Literal["cuda", "cpu"]


@dataclass(frozen=True)
class ParamShape:
    """One parameter tensor of the model as the memory estimator sees it (see the module docstring)."""

    name: str
    shape: tuple[int, ...]
    module: str  # class name of the owning module: Linear, Embedding, RMSNorm
    value_bytes: int  # bytes per value in training
    count: int = 1  # how many of the model's tensors this row stands for

    @property
    def numel(self) -> int:
        """Values of one tensor (multiply by `count` for all of them)."""
        return math.prod(self.shape)

    @property
    def module_name(self) -> str:
        return self.name.rpartition(".")[0]


LAYER_PREFIX = "layers."  # the decoder layers' tensors are named layers.<index>.<rest>


def depends_on_layer_index(patterns: list[str]) -> bool:
    """Whether a name pattern (a glob, or a dotted suffix) can match a tensor of one layer but not the
    same tensor of another: only through a digit, `?` or `[` (any other character of the pattern has to
    match a non-digit of the name, and a `*` absorbs an index of any length)."""
    return any(ch.isdigit() or ch in "?[" for pattern in patterns for ch in pattern)


def expand_layers(shapes: tuple[ParamShape, ...]) -> tuple[ParamShape, ...]:
    """One row per decoder layer (`layers.0.x` with count n -> `layers.0.x` ... `layers.<n-1>.x`)."""
    first = LAYER_PREFIX + "0."
    expanded: list[ParamShape] = []
    for p in shapes:
        if p.count > 1 and p.name.startswith(first):
            rest = p.name.removeprefix(first)
            expanded += [replace(p, name=f"{LAYER_PREFIX}{i}.{rest}", count=1) for i in range(p.count)]
        else:
            expanded.append(p)
    return tuple(expanded)


@dataclass
class PhaseState:
    """What one phase of a run holds besides activations (see the module docstring)."""

    phase: str
    weights: int
    trainable: tuple[ParamShape, ...]
    optimizer: dict[str, int]
    step_temporaries: int = 0
    saved_values_per_token: int = 0
    one_gradient_at_a_time: bool = False
    # Peak bytes of gradients plus gradient accumulators, for a method that holds them itself (per-layer
    # GaLore's low-rank accumulators); None lets the estimator count the trainable tensors' gradients.
    gradient_bytes: int | None = None
    # Host-memory bytes by category (not on the device, not in the device total).
    host_bytes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MethodFlops:
    """What a method adds to the model's forward + backward FLOPs (see the module docstring)."""

    per_micro_batch: float = 0.0
    per_step: float = 0.0
    per_refresh: float = 0.0
    refresh_every: int = 0  # optimizer steps between refreshes; 0: the method has none
    per_token: float = 0.0  # averaged over the run (e.g. after a full-rank warm start only)
    notes: tuple[str, ...] = ()


def _no_problems(cfg: TrainConfig) -> list[str]:
    return []


def _no_reason(proxy: TrainConfig, target: TrainConfig) -> str | None:
    return None


def _no_inputs(proxy: TrainConfig, target: TrainConfig) -> list[str]:
    return []


@dataclass(frozen=True)
class PublishedRecipe:
    """A method's public recipe at one target size (its repository's launch script; /work/shared/reference.md
    "The public 7b recipes"). `reference_lr` is the same repository's learning rate at small sizes: the
    default transfer rule reads a proxy's lr relative to it and applies that ratio (clamped) to `lr`."""

    target: str  # a model preset, e.g. "7b"
    section: str  # the TrainConfig section holding rank, scale and update_proj_gap
    rank: int
    scale: float
    update_proj_gap: int
    lr: float
    reference_lr: float
    source: str  # where the numbers come from, printed in the export header


@dataclass(frozen=True)
class TargetScaling:
    """What export hands a method's `target_mapping`: the widths and the export's rules, so the method
    maps its own section from the proxy to the target (platform/export/recipe.py, docs/export.md)."""

    proxy_hidden: int
    target_hidden: int
    rank: Callable[[int], int]  # a proxy rank at the target, by the `rank` rule (relative/absolute, multiple)
    interval: Callable[[int], int]  # a proxy interval in steps at the target, by the `intervals` rule
    update_proj_gap: int | None  # the `update_proj_gap` rule: None keeps the proxy's value
    # The export's ScalingRules (platform/export/recipe.py): a method reads its own rule keys from it by name
    # (apollo_rank, apollo_scale, relora_warm_start, ...); typed loosely so trainables/ imports no platform.
    rules: Any


@dataclass(frozen=True)
class OptimizerEntry:
    build: Callable[[nn.Module, TrainConfig], Method]
    check: Callable[[TrainConfig], list[str]] = _no_problems
    # Returns step -> LR for the whole run; None uses the `schedule:` section (cosine / constant).
    schedule: Callable[[TrainConfig], Schedule] | None = None
    description: str = ""
    estimate_state: Callable[[tuple[ParamShape, ...], TrainConfig, Device], list[PhaseState]] | None = None
    # The method's own settings in a few words (`ranktune estimate`'s header), e.g. "galore rank 128, per-layer".
    summarize: Callable[[TrainConfig], str] | None = None
    # Config sections the method reads (e.g. ("galore",)): a best config leaves out the others' sections.
    sections: tuple[str, ...] = ()
    # (first, last) update counts, inclusive, where the loss rises by design (platform/sweep/milestones.py skips them).
    settling_windows: Callable[[TrainConfig], list[tuple[int, int]]] | None = None
    # A full-rank reference (the papers' "full-rank Adam"): `confirm` replicates the best one as the baseline.
    baseline: bool = False
    # Its colour in plots and reports, the same everywhere; chosen apart from the other methods' colours.
    colour: str | None = None
    # Export and target-aware sweeps (see the module docstring).
    published: tuple[PublishedRecipe, ...] = ()
    single_gpu: tuple[tuple[str, object], ...] = ()
    update_rule_keys: tuple[str, ...] = ()
    export_refusal: Callable[[TrainConfig, TrainConfig], str | None] = _no_reason
    export_inputs: Callable[[TrainConfig, TrainConfig], list[str]] = _no_inputs
    # The method's own FLOPs for the duration estimate (see the module docstring); None: none beyond an update.
    estimate_flops: Callable[[tuple[ParamShape, ...], TrainConfig], MethodFlops] | None = None
    # A sanity baseline (adamw_frozen_blocks): not a contender. When it ties or beats the best method, the
    # sweep's report says the proxy cannot tell the methods apart (platform/report/proxy_checks.py).
    sanity_baseline: bool = False
    # The method's own step-size knob as a factor on the lr (GaLore's scale, Fira's alpha, APOLLO's
    # sqrt(scale)): lr x this is the step size the ladder's fitted transfer rule scales with width
    # (platform/export/fitted_rules.py). None: the lr alone.
    step_size_factor: Callable[[TrainConfig], float] | None = None
    # The config key of the method's rank (e.g. "galore.rank"), for the ladder's rank-vs-width fit. None: no rank.
    rank_key: str | None = None
    # Export's mapping of the method's own section to the target (rank by width, scale, gap, intervals),
    # edited into the raw target config in place; called when no published recipe applies. None: the
    # proxy's values are kept.
    target_mapping: Callable[[dict[str, Any], TrainConfig, TargetScaling], None] | None = None
    # The config section of a method that updates with the scaled full-rank gradient (APOLLO, Fira). Its
    # per-layer update needs each full gradient, so there is no low-rank accumulator to defer a global clip
    # over: export turns the proxy's `train.grad_clip` into `<section>.per_tensor_clip`, and when the target
    # does not fit it names `<section>.full_grad_buffer=host`. None: not such a method.
    full_gradient_section: str | None = None
    # Whether a config keeps every full gradient alive between micro-batches (per-layer GaLore with
    # `accumulation: full`, per-layer APOLLO/Fira): export's does-not-fit advice then names a smaller batch.
    keeps_full_gradients: Callable[[TrainConfig], bool] | None = None
    # Full-rank optimizer state for every matrix (AdamW, 8-bit AdamW, Adafactor): when its target config
    # does not fit, export says no setting of the method will and points at the low-rank methods.
    full_rank: bool = False
    # `key: value` settings export tries in turn when no micro-batch fits, cheapest in accuracy first
    # (GaLore: int8 projectors); one the user set with --set is left alone.
    memory_savings: tuple[tuple[str, object], ...] = ()
    # The method's own levers when its target config does not fit: `field: value -> what to change` lines
    # from the config and the peak phase's label and bytes (ReLoRA: its full-rank warm start phase).
    export_fit_advice: Callable[[TrainConfig, str, int], list[str]] | None = None

    def recipe_for(self, target: str) -> PublishedRecipe | None:
        return next((r for r in self.published if r.target == target), None)


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register(name: str, entry: OptimizerEntry) -> None:
    """Make `entry` available as `optim.name: <name>`; a name can be registered once."""
    if name in OPTIMIZERS:
        raise ValueError(
            f"optimizer {name!r} is already registered ({OPTIMIZERS[name].description or 'no description'}); "
            "pick another name, or unregister the existing entry first"
        )
    OPTIMIZERS[name] = entry


def unregister(name: str) -> OptimizerEntry:
    """Remove a registered method (returns its entry)."""
    return OPTIMIZERS.pop(name)


def lookup(name: str) -> OptimizerEntry:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"optim.name: {name!r} -> one of {sorted(OPTIMIZERS)}") from None


def baseline_methods() -> list[str]:
    """The registered full-rank reference methods (OptimizerEntry.baseline)."""
    return sorted(name for name, entry in OPTIMIZERS.items() if entry.baseline)


def reference_methods() -> list[str]:
    """Methods a sweep trains to compare against, not to launch: the full-rank baselines and the sanity
    baseline. A target-aware sweep trains them even though their target run does not fit, and never
    makes one its answer."""
    return sorted(name for name, entry in OPTIMIZERS.items() if entry.baseline or entry.sanity_baseline)


def foreign_sections(name: str) -> set[str]:
    """Config sections that other registered methods read and `name` does not: noise in its config."""
    own = set(lookup(name).sections)
    return {section for entry in OPTIMIZERS.values() for section in entry.sections} - own


def build_method(model: nn.Module, cfg: TrainConfig) -> Method:
    return lookup(cfg.optim.name).build(model, cfg)


def build_schedule(cfg: TrainConfig) -> Schedule:
    """The run's schedule: the optimizer's own (e.g. ReLoRA's jagged cosine) or the `schedule:` section."""
    entry = lookup(cfg.optim.name)
    return entry.schedule(cfg) if entry.schedule is not None else section_schedule(cfg)
