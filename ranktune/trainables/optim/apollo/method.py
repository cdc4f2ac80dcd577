"""APOLLO, APOLLO-Mini and Fira as training methods: targeting, per-layer updates, metrics, config checks.

Targeting is GaLore's rule (`target_modules`: every `nn.Linear` whose name matches; the rest gets
plain AdamW), read from the method's own section (`apollo:`, `apollo_mini:`, `fira:`).

Per-layer mode (`per_layer: true`) gives every parameter its own optimizer and updates it inside a
post-accumulate-grad hook, freeing the gradient at once. Both methods update with the full-rank
gradient of the whole batch (scaled), so GaLore's low-rank gradient accumulation does not apply.
With gradient accumulation the hooks update on the last micro-batch only, and the full-gradient sums
live where `full_grad_buffer` says: `device` sums them in `.grad` (every full gradient coexists
between micro-batches), `host` moves each micro-batch's gradient to a host-memory fp32 sum in its
hook and brings the sum back for the update (galore/grad_sums.py). Both are exact.

Global-norm clipping (`train.grad_clip`) is exact too: the last micro-batch's hooks complete each
gradient, take its norm and keep it (in `.grad`, or back in the host sum), and `step()` updates every
parameter once the global norm is known. Under torch.distributed the hooks average each completed
gradient across ranks themselves (the model is not wrapped in DDP).

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

from ranktune.trainables.optim.apollo.optimizers import ApolloAdamW, FiraAdamW, norm_dtype
from ranktune.trainables.optim.base import Method, tensor_bytes
from ranktune.trainables.optim.galore.grad_sums import HostGradientSums
from ranktune.trainables.optim.galore.method import (
    check_targets_and_rank,
    low_rank_shape,
    name_matches,
    projection_flops,
    sum_micro_batches,
    svd_flops,
    targeted_linears,
    world_size,
)
from ranktune.trainables.optim.galore.projector import PROJECTOR_KEYS
from ranktune.trainables.optim.registry import (
    Device,
    MethodFlops,
    OptimizerEntry,
    ParamShape,
    PhaseState,
    PublishedRecipe,
    TargetScaling,
    register,
)

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
        self.world_size = world_size()
        # Global clipping needs every gradient's norm before any update: the hooks complete the gradients
        # and step() updates.
        self.deferred_update = s.per_layer and self.grad_clip > 0
        self.host_sums = HostGradientSums() if s.per_layer and s.full_grad_buffer == "host" else None
        self.completed_norms: list[torch.Tensor] = []

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

    @property
    def syncs_gradients(self) -> bool:
        """True when the hooks average gradients across ranks themselves: the loop must not wrap in DDP."""
        return self.per_layer

    def update_in_hook(self, opt: torch.optim.Optimizer, param: nn.Parameter) -> None:
        """Post-accumulate-grad hook: on the last micro-batch, update this parameter and free its gradient."""
        if not sum_micro_batches(param, self.host_sums, self.is_last_micro_batch, self.world_size):
            return
        if self.per_tensor_clip > 0:
            torch.nn.utils.clip_grad_norm_(param, self.per_tensor_clip)
        if self.deferred_update:
            self.completed_norms.append(torch.linalg.vector_norm(param.grad, dtype=norm_dtype(param.grad)))
            if self.host_sums is not None:  # back out until step() knows the global norm
                self.host_sums.add(param, param.grad)
                param.grad = None
            return
        opt.step()  # its LR was set with every other optimizer's in begin_step
        opt.zero_grad(set_to_none=True)

    def step_deferred(self) -> float:
        """Every parameter's update, clipped by the global norm of the completed gradients (clip_grad_norm_'s rule)."""
        total = torch.linalg.vector_norm(torch.stack(self.completed_norms)) if self.completed_norms else torch.zeros(())
        self.completed_norms = []
        clip = torch.clamp(self.grad_clip / (total + 1e-6), max=1.0)
        for opt in self.optimizers:
            param = opt.param_groups[0]["params"][0]
            if self.host_sums is not None and self.host_sums.summed(param):
                param.grad = self.host_sums.take(param, None)
            if param.grad is None:
                continue
            param.grad.mul_(clip.to(param.grad.device, param.grad.dtype))
            opt.step()
            opt.zero_grad(set_to_none=True)
        return float(total)

    def step(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        if self.deferred_update:
            stats["grad_norm"] = self.step_deferred()
        if self.host_sums is not None:
            stats["host/bytes_to_host"] = self.host_sums.bytes_copied_to_host
            stats["host/bytes_to_device"] = self.host_sums.bytes_copied_to_device
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
    if s.full_grad_buffer == "host" and not s.per_layer:
        problems.append(
            f"{section}.full_grad_buffer: 'host' -> 'device' without {section}.per_layer: true (whole-model "
            "mode sums gradients in .grad; the host buffer is filled by the per-layer hooks)"
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
    gradient_bytes, host, notes = full_gradient_sums(shapes, cfg, device, name)
    state = PhaseState(
        phase=name,
        weights=sum(p.numel * p.count * p.value_bytes for p in shapes),
        trainable=shapes,
        optimizer={"moments": moments, "projectors": projectors, "regular_params": regular},
        step_temporaries=temp,
        one_gradient_at_a_time=s.per_layer,
        gradient_bytes=gradient_bytes,
        host_bytes=host,
        notes=notes,
    )
    return [state]


HOST_SUM_BYTES = 4  # HostGradientSums keeps fp32 sums (grad_sums.sum_dtype of fp32 and bf16)
PCIE_GB_PER_S = 25.0  # PCIe 4.0 x16, the rate the notes convert traffic at


def full_gradient_sums(
    shapes: tuple[ParamShape, ...], cfg, device: Device, name: str
) -> tuple[int | None, dict[str, int], list[str]]:
    """(device gradient bytes or None for the estimator's own count, host bytes, notes) of per-layer mode.

    Device buffer: with accumulation or global clipping every full gradient is alive at once (the
    estimator's count of all trainable gradients). Host buffer: the device holds the gradient being
    produced plus, on the last micro-batch, the fp32 sum brought back and the result in the weight
    dtype, one parameter at a time; the host holds an fp32 sum per parameter (and, on CUDA, two pinned
    staging buffers of the largest gradient).
    """
    s = section_of(cfg, name)
    section, accum, clip = METHODS[name][1], cfg.grad_accum_steps, cfg.train.grad_clip > 0
    if not s.per_layer or (accum == 1 and not clip):
        return None, {}, []
    values = sum(p.numel * p.count for p in shapes)
    largest = max(shapes, key=lambda p: p.numel)
    e = largest.value_bytes
    grads = sum(p.numel * p.count * p.value_bytes for p in shapes)
    why = f"{accum} accumulation steps" + (" and global clipping (update after every norm is known)" if clip else "")
    if s.full_grad_buffer == "device":
        return (
            None,
            {},
            [
                f"{name} per-layer with {why}: the full-gradient sums stay on the device "
                f"({grads / 2**30:.2f} GiB); {section}.full_grad_buffer: host moves them to host memory"
            ],
        )
    staging = 2 * largest.numel * e if device == "cuda" else 0
    host = {"full-gradient sums (fp32)": values * HOST_SUM_BYTES, "pinned staging": staging}
    # Each micro-batch but the last sends its gradients out; the sums come back once, fp32. Deferred
    # clipping sends the completed gradients out once more and brings them back once more.
    to_host = (accum - 1 + clip) * grads
    to_device = (1 + clip) * values * HOST_SUM_BYTES
    traffic = to_host + to_device
    notes = [
        f"{name} per-layer with {why}: full-gradient sums in host memory ({values * HOST_SUM_BYTES / 2**30:.2f} GiB "
        f"fp32); PCIe traffic {traffic / 1e9:.1f} GB per step ({to_host / 1e9:.1f} to host, {to_device / 1e9:.1f} "
        f"back), {traffic / 1e9 / PCIE_GB_PER_S:.1f} s at {PCIE_GB_PER_S:g} GB/s"
    ]
    # The last gradient, the fp32 sum brought back (their sum), and its cast to a narrower weight dtype.
    return largest.numel * (e + HOST_SUM_BYTES + (e if e < HOST_SUM_BYTES else 0)), host, notes


def estimate_scaled_gradient_flops(shapes: tuple[ParamShape, ...], cfg, name: str) -> MethodFlops:
    """Each step projects the full gradient (APOLLO: to measure the channel scaling; Fira: for the
    low-rank Adam update, projected back, plus the residual G - P P^T G, another projection pair);
    the projector is refreshed every update_proj_gap steps: an SVD (Fira, APOLLO with proj: svd) or a
    fresh random matrix (no FLOPs worth counting)."""
    s, cls = section_of(cfg, name), METHODS[name][0]
    svd = cls is FiraAdamW or s.proj == "svd"
    project = refresh = 0.0
    for p in shapes:
        if p.module == "Linear" and any(name_matches(p.module_name, pat) for pat in s.target_modules):
            project += projection_flops(p.shape, s.rank, s.proj_type) * p.count
            refresh += (svd_flops(p.shape, s.rank, s) if svd else 0.0) * p.count
    projections = 4 if cls is FiraAdamW else 1
    notes = (f"SVD every {s.update_proj_gap} steps, counted at the matmul rate (a lower bound)",) if svd else ()
    return MethodFlops(
        per_step=projections * project, per_refresh=refresh, refresh_every=s.update_proj_gap, notes=notes
    )


def summarize_scaled_gradient(cfg, name: str) -> str:
    s = section_of(cfg, name)
    projector = f", {s.proj} projector" if hasattr(s, "proj") else ""
    return (
        f"{METHODS[name][1]} rank {s.rank}, {s.scale_type}-wise scale {s.scale:g}{projector}"
        f"{', per-layer' if s.per_layer else ''}"
    )


# The public 7b launch scripts (reference.md "The public 7b recipes"); reference_lr is each repository's lr
# at 60m..350m. APOLLO uses 0.01 at every size; Fira halves it at 7b, as GaLore does.
PUBLISHED_7B = {
    "apollo_adamw": PublishedRecipe(
        "7b", "apollo", rank=256, scale=1.0, update_proj_gap=200, lr=0.01, reference_lr=0.01, source="APOLLO 7b script"
    ),
    "apollo_mini": PublishedRecipe(
        "7b",
        "apollo_mini",
        rank=1,
        scale=128.0,
        update_proj_gap=200,
        lr=0.01,
        reference_lr=0.01,
        source="APOLLO-Mini 7b script",
    ),
    "fira_adamw": PublishedRecipe(
        "7b",
        "fira",
        rank=64,
        scale=0.0625,
        update_proj_gap=500,
        lr=0.005,
        reference_lr=0.01,
        source="Fira 7b script (alpha 0.0625)",
    ),
}


# Export without a published recipe (`rules.recipe: proxy`), per method: the ScalingRules key of its
# target rank (None: the `rank` width rule; "proxy": kept, APOLLO-Mini stays at rank 1) and of its scale
# rule (None: the proxy's scale kept).
TARGET_RULES = {
    "apollo_adamw": ("apollo_rank", "apollo_scale"),
    "apollo_mini": ("proxy", "apollo_mini_scale"),
    "fira_adamw": (None, None),
}


def scaled_gradient_to_target(raw: dict[str, Any], proxy, scaling: TargetScaling, name: str) -> None:
    """The rank (a fixed number, the width rule, or the proxy's), the scale (`hidden_over_rank` keeps
    scale * rank / hidden: the paper's alpha = sqrt(n / r) compensation) and the gap as the rules say."""
    section = METHODS[name][1]
    a, pa = raw[section], getattr(proxy, section)
    rank_rule, scale_key = TARGET_RULES[name]
    fixed_rank = getattr(scaling.rules, rank_rule) if rank_rule not in (None, "proxy") else None
    if fixed_rank is not None:
        a["rank"] = fixed_rank
    elif rank_rule != "proxy":
        a["rank"] = scaling.rank(pa.rank)
    if scale_key is not None and getattr(scaling.rules, scale_key) == "hidden_over_rank":
        a["scale"] = pa.scale * (scaling.target_hidden / a["rank"]) / (scaling.proxy_hidden / pa.rank)
    if scaling.update_proj_gap is not None:
        a["update_proj_gap"] = scaling.update_proj_gap


def keeps_full_gradients(cfg, name: str) -> bool:
    """Per-layer APOLLO / Fira update with the full gradient: with accumulation, every one stays alive."""
    return section_of(cfg, name).per_layer


def step_size_factor(cfg, name: str) -> float:
    """What multiplies the lr in the update: APOLLO sqrt(scale), Fira alpha (`scale`)."""
    s = section_of(cfg, name)
    return s.scale if METHODS[name][0] is FiraAdamW else math.sqrt(s.scale)


for _name, _description, _colour in [
    (
        "apollo_adamw",
        "APOLLO: AdamW moments of a random projection set a channel-wise scale of the full gradient",
        "#9467bd",
    ),
    ("apollo_mini", "APOLLO-Mini: APOLLO at rank 1 with one scale per matrix (SGD-like memory)", "#e377c2"),
    ("fira_adamw", "Fira: GaLore's low-rank AdamW plus the scaled out-of-subspace gradient", "#b5cf6b"),
]:
    register(
        _name,
        OptimizerEntry(
            build=partial(build_scaled_gradient, name=_name),
            check=partial(check_scaled_gradient, name=_name),
            estimate_state=partial(estimate_scaled_gradient, name=_name),
            summarize=partial(summarize_scaled_gradient, name=_name),
            estimate_flops=partial(estimate_scaled_gradient_flops, name=_name),
            description=_description,
            sections=(METHODS[_name][1],),
            colour=_colour,
            published=(PUBLISHED_7B[_name],),
            # Per-layer with the full-gradient sums in host memory: exact at the paper's tokens per step.
            single_gpu=((f"{METHODS[_name][1]}.per_layer", True), (f"{METHODS[_name][1]}.full_grad_buffer", "host")),
            update_rule_keys=(
                f"{METHODS[_name][1]}.per_layer",
                f"{METHODS[_name][1]}.full_grad_buffer",
                f"{METHODS[_name][1]}.per_tensor_clip",
                "train.grad_clip",
            ),
            step_size_factor=partial(step_size_factor, name=_name),
            rank_key=f"{METHODS[_name][1]}.rank",
            target_mapping=partial(scaled_gradient_to_target, name=_name),
            full_gradient_section=METHODS[_name][1],
            keeps_full_gradients=partial(keeps_full_gradients, name=_name),
        ),
    )
