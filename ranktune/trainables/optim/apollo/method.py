"""APOLLO, APOLLO-Mini and Fira as training methods: targeting, per-layer updates, metrics, config checks.

Targeting is GaLore's rule (`target_modules`: every `nn.Linear` whose name matches; the rest gets
plain AdamW), read from the method's own section (`apollo:`, `apollo_mini:`, `fira:`).

Per-layer mode (`per_layer: true`) gives every parameter its own optimizer and updates it inside a
post-accumulate-grad hook, freeing the gradient at once. Both methods update with the full-rank
gradient (scaled), so GaLore's low-rank gradient accumulation does not apply: with gradient
accumulation the full gradients sum in `.grad` and the hooks update on the last micro-batch only,
so full gradients coexist between micro-batches (the memory estimator counts them). Global-norm
clipping needs every gradient at once and is refused with per-layer mode; `per_tensor_clip` is
offered instead. Under torch.distributed per-layer mode is refused (the hooks would update before
DDP averages the gradients).

APOLLO's random projectors are seeded by each parameter's position in the whole-model order, offset
by `train.seed`: per-layer and whole-model mode draw the same matrices.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from functools import partial
from typing import Any

import torch
from torch import nn

from ranktune.trainables.optim.apollo.optimizers import ApolloAdamW, FiraAdamW
from ranktune.trainables.optim.base import Method, tensor_bytes
from ranktune.trainables.optim.galore.method import (
    check_targets_and_rank,
    low_rank_shape,
    name_matches,
    targeted_linears,
)
from ranktune.trainables.optim.galore.projector import PROJECTOR_KEYS
from ranktune.trainables.optim.registry import Device, OptimizerEntry, ParamShape, PhaseState, register

log = logging.getLogger(__name__)

# method name -> (optimizer class, config section)
METHODS = {
    "apollo_adamw": (ApolloAdamW, "apollo"),
    "apollo_mini": (ApolloAdamW, "apollo_mini"),
    "fira_adamw": (FiraAdamW, "fira"),
}
# Seeds of different train.seed values never meet: positions stay below 2**32.
SEED_STRIDE = 2**32


def section_of(cfg, name: str):
    return getattr(cfg, METHODS[name][1])


def group_keys(section, cls: type) -> dict[str, Any]:
    """The projected group's keys, from the config section (apollo-torch / fira names)."""
    keys = {
        "rank": section.rank,
        "update_proj_gap": section.update_proj_gap,
        "scale": section.scale,
        "scale_type": section.scale_type,
        "proj_type": section.proj_type,
        "norm_growth_limit": section.norm_growth_limit,
        "svd": section.svd,
        "svd_oversample": section.svd_oversample,
        "svd_power_iters": section.svd_power_iters,
    }
    if cls is ApolloAdamW:
        keys |= {"proj": section.proj, "proj_storage": section.proj_storage}
    if cls is FiraAdamW:
        keys["residual"] = section.residual
    return keys


class ScaledGradientMethod(Method):
    def __init__(self, model: nn.Module, cfg, name: str) -> None:
        cls, section_name = METHODS[name]
        s, o = getattr(cfg, section_name), cfg.optim
        problems = check_per_layer(cfg, name)
        if problems:
            raise ValueError("; ".join(problems))
        self.model, self.name, self.section = model, name, s
        self.grad_clip = cfg.train.grad_clip
        self.per_layer = s.per_layer
        self.per_tensor_clip = s.per_tensor_clip

        targets = targeted_linears(model, s.target_modules)
        projected = [m.weight for m in targets.values() if m.weight.requires_grad]
        self.projected_ids = {id(p) for p in projected}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in self.projected_ids]
        seed = cfg.train.seed * SEED_STRIDE
        # nanoGPT's decay rule for the rest: 2-D weights decay, 1-D (norms) do not. Projected matrices
        # first, so their seeds are seed + 1, 2, ... in both modes.
        groups = [
            {"params": projected, "weight_decay": o.weight_decay, "seed": seed, **group_keys(s, cls)},
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ]
        groups = [grp for grp in groups if grp["params"]]
        make = partial(cls, lr=o.lr, betas=o.betas, eps=o.eps)

        self.is_last_micro_batch = True
        self.hook_handles = []
        if self.per_layer:
            self.optimizers = []
            position = 0
            for group in groups:
                for p in group["params"]:
                    opt = make([{**group, "params": [p], "seed": seed + position}])  # its position is 1
                    position += 1
                    self.optimizers.append(opt)
                    self.hook_handles.append(p.register_post_accumulate_grad_hook(partial(self.update_in_hook, opt)))
        else:
            self.optimizers = [make(groups)]
        self.log_targeting(targets, rest)

    def log_targeting(self, targets: dict[str, nn.Linear], rest: list[nn.Parameter]) -> None:
        kinds = Counter(name.rsplit(".", 1)[-1] for name in targets)
        s = self.section
        log.info(
            "%s (rank %d, %s scaling, %s): %d matrices (%s) = %.2fM parameters; plain AdamW for %d tensors",
            self.name,
            s.rank,
            s.scale_type,
            "per-layer updates" if self.per_layer else "one optimizer",
            len(targets),
            ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())),
            sum(m.weight.numel() for m in targets.values()) / 1e6,
            len(rest),
        )

    # ------------------------------------------------------------------ the loop's calls

    def begin_micro_batch(self, is_last: bool) -> None:
        self.is_last_micro_batch = is_last

    def update_in_hook(self, opt: torch.optim.Optimizer, param: nn.Parameter) -> None:
        """Post-accumulate-grad hook: on the last micro-batch, update this parameter and free its gradient."""
        if not self.is_last_micro_batch:
            return  # the full gradient keeps summing in param.grad: both methods update with it
        if self.per_tensor_clip > 0:
            torch.nn.utils.clip_grad_norm_(param, self.per_tensor_clip)
        opt.step()  # its LR was set with every other optimizer's in begin_step
        opt.zero_grad(set_to_none=True)

    def step(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        if not self.per_layer:
            if self.per_tensor_clip > 0:
                for p in self.trainable_parameters():
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, self.per_tensor_clip)
            stats = super().step()  # global clipping (if any), the update, grads freed
        prefix = self.name.split("_")[0]
        stats[f"{prefix}/projector_updates"] = self.projector_updates
        stats[f"{prefix}/projector_seconds"] = self.projector_seconds
        return stats

    # ------------------------------------------------------------------ metrics and state

    @property
    def projector_updates(self) -> int:
        return sum(opt.projector_updates for opt in self.optimizers)

    @property
    def projector_seconds(self) -> float:
        return sum(opt.svd_seconds for opt in self.optimizers)  # random draws or SVDs, per optimizer

    def benchmark_extras(self) -> dict[str, float]:
        rounds = self.projector_updates / max(len(self.projected_ids), 1)
        return {
            "projector_updates": self.projector_updates,
            "projector_s": self.projector_seconds,
            "projector_s_per_round": self.projector_seconds / rounds if rounds else 0.0,
        }

    def state_bytes(self) -> dict[str, int]:
        """Low-rank moments (and limiter norms) of projected matrices, their projectors, everything else."""
        by_category = {"moments": 0, "projectors": 0, "regular_params": 0}
        for opt in self.optimizers:
            for p, state in opt.state.items():
                for key, value in state.items():
                    if key in PROJECTOR_KEYS:
                        by_category["projectors"] += tensor_bytes(value)
                    elif id(p) in self.projected_ids:
                        by_category["moments"] += tensor_bytes(value)
                    else:
                        by_category["regular_params"] += tensor_bytes(value)
        return by_category


# ---------------------------------------------------------------------- registry entries


def check_per_layer(cfg, name: str) -> list[str]:
    s, section = section_of(cfg, name), METHODS[name][1]
    problems = []
    if s.per_layer and cfg.train.grad_clip > 0:
        problems.append(
            f"train.grad_clip: {cfg.train.grad_clip} -> 0 with {section}.per_layer: true (global-norm clipping "
            f"needs every gradient at once, per-layer updates free each one as it arrives); use "
            f"{section}.per_tensor_clip"
        )
    import torch.distributed as dist

    if s.per_layer and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        problems.append(
            f"{section}.per_layer: true -> false under torch.distributed ({dist.get_world_size()} processes): "
            "the hooks would update before DDP averages the gradients"
        )
    return problems


def check_scaled_gradient(cfg, name: str) -> list[str]:
    """Problems a run would hit, as `field: value -> what is allowed` lines."""
    s, section = section_of(cfg, name), METHODS[name][1]
    problems = check_per_layer(cfg, name)
    if s.scale_type == "channel" and s.proj_type == "full":
        problems.append(
            f"{section}.scale_type: 'channel' -> 'tensor' with {section}.proj_type: 'full' (channels are the "
            "rows or columns of the side left unprojected, and full projects both)"
        )
    return problems + check_targets_and_rank(cfg, section, s.target_modules, s.rank)


def build_scaled_gradient(model: nn.Module, cfg, name: str) -> ScaledGradientMethod:
    return ScaledGradientMethod(model, cfg, name)


LIMITER_NORM_BYTES = 4  # `limited_norm`: a 0-d tensor in fp32 (the norm dtype for fp32, bf16 and fp16 weights)


def estimate_scaled_gradient(shapes: tuple[ParamShape, ...], cfg, device: Device, name: str) -> list[PhaseState]:
    """What ScaledGradientMethod allocates, by the same targeting rule and state_bytes() categories.

    Per targeted (m, n) matrix: exp_avg and exp_avg_sq on the projected gradient, in the gradient dtype
    (2 r max(m, n) values for std), plus the limiter's fp32 norm; the projector, in the gradient dtype,
    unless APOLLO regenerates it from its seed (`proj_storage: seed`; the seed is a Python int). Plain
    AdamW for the rest: exp_avg and exp_avg_sq, the step an int. Per-layer mode frees each gradient in
    its hook, but the update needs the full gradient, so with gradient accumulation the full gradients
    of every tensor are kept between micro-batches (the estimator counts them all then).
    """
    s, cls = section_of(cfg, name), METHODS[name][0]
    svd = cls is FiraAdamW or s.proj == "svd"
    keeps_projector = svd or s.proj_storage == "matrix"
    moments = projectors = regular = temp = 0
    for p in shapes:
        e = p.value_bytes
        if p.module == "Linear" and any(name_matches(p.module_name, pat) for pat in s.target_modules):
            low, projector = low_rank_shape(p.shape, s.rank, s.proj_type)
            low_values = math.prod(low)
            limiter = LIMITER_NORM_BYTES if s.norm_growth_limit is not None else 0
            moments += (2 * low_values * e + limiter) * p.count
            projectors += (projector * e if keeps_projector else 0) * p.count
            m, n = p.shape
            # The projected gradient and the Adam direction; a regenerated projector (drawn in fp32).
            step = 2 * low_values * e + (0 if keeps_projector else projector * (4 + e))
            if cls is FiraAdamW:
                step += m * n * e  # the out-of-subspace residual, full size
            if svd:
                k = min(m, n)
                step = max(step, (m * n + m * k + k * n + k) * 4)  # fp32 copy of the gradient and its thin SVD
            temp = max(temp, step)
        else:
            regular += 2 * p.numel * e * p.count
            temp = max(temp, p.numel * e)  # sqrt(v) + eps; addcdiv_ writes the weight in place
    notes = []
    if s.per_layer and cfg.grad_accum_steps > 1:
        notes.append(
            f"{name} updates with the full-rank gradient: per-layer mode with accumulation keeps full "
            "gradients (GaLore's low-rank accumulation does not apply)"
        )
    state = PhaseState(
        phase=name,
        weights=sum(p.numel * p.count * p.value_bytes for p in shapes),
        trainable=shapes,
        optimizer={"moments": moments, "projectors": projectors, "regular_params": regular},
        step_temporaries=temp,
        one_gradient_at_a_time=s.per_layer,
        notes=notes,
    )
    return [state]


def summarize_scaled_gradient(cfg, name: str) -> str:
    s = section_of(cfg, name)
    projector = f", {s.proj} projector" if hasattr(s, "proj") else ""
    return (f"{METHODS[name][1]} rank {s.rank}, {s.scale_type}-wise scale {s.scale:g}{projector}"
            f"{', per-layer' if s.per_layer else ''}")  # fmt: skip


def step_size_factor(cfg, name: str) -> float:
    """What multiplies the lr in the update: APOLLO sqrt(scale), Fira alpha (`scale`)."""
    s = section_of(cfg, name)
    return s.scale if METHODS[name][0] is FiraAdamW else math.sqrt(s.scale)


for _name, _description in [
    ("apollo_adamw", "APOLLO: AdamW moments of a random projection set a channel-wise scale of the full gradient"),
    ("apollo_mini", "APOLLO-Mini: APOLLO at rank 1 with one scale per matrix (SGD-like memory)"),
    ("fira_adamw", "Fira: GaLore's low-rank AdamW plus the scaled out-of-subspace gradient"),
]:
    register(
        _name,
        OptimizerEntry(
            build=partial(build_scaled_gradient, name=_name),
            check=partial(check_scaled_gradient, name=_name),
            estimate_state=partial(estimate_scaled_gradient, name=_name),
            summarize=partial(summarize_scaled_gradient, name=_name),
            description=_description,
            sections=(METHODS[_name][1],),
            step_size_factor=partial(step_size_factor, name=_name),
            rank_key=f"{METHODS[_name][1]}.rank",
        ),
    )
