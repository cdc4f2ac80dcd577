"""GaLore as a training method: which weights are projected, per-layer updates, metrics, config checks.

One rule picks the projected weights: every `nn.Linear` whose module name matches a pattern of
`galore.target_modules` (a name suffix such as `q_proj`, or a glob such as `layers.*.mlp.*`). Everything
else (embeddings, norms, the output head) gets the plain inner optimizer. The decision is logged.

Per-layer mode (`galore.per_layer: true`) gives every parameter its own optimizer and works inside a
post-accumulate-grad hook, freeing the gradient at once, so full gradients never all exist together.
With `galore.accumulation: low_rank` (the default) the hook projects each micro-batch's gradient and
sums it into a low-rank accumulator held in the optimizer state; after the last micro-batch the inner
optimizer steps on it, in the hook, or, with global-norm clipping (`train.grad_clip`), in `step()`
once every accumulator is complete. `galore.accumulation: full` keeps the older rule: gradients sum
in `.grad` and the hooks update on the last micro-batch only; global clipping is refused there.

A projector refresh (`galore.refresh: whole_batch`, the default) takes the SVD of the whole step's
gradient, as whole-model GaLore does: on a refresh step the projected matrices' full gradients sum
over the micro-batches in `galore.full_grad_buffer` (host memory by default, see grad_sums.py; or
`.grad` on the device), and the last micro-batch's hook takes the SVD of the sum and projects it.
`refresh: first_micro_batch` is the older approximation (the first micro-batch's gradient only).

Global clipping clips by the full gradient's norm, as whole-model GaLore does, estimated without the
full gradient: exact on refresh steps (the sum is there) and for unprojected tensors, and for
projected matrices between refreshes from a Gaussian sketch (`galore.norm_sketch_rows`, see
optimizers.py); the metrics log it as `grad_norm`, and the projected accumulators' norm as
`grad_norm_projected`.

Under torch.distributed the hooks average the accumulators across ranks themselves (the model is
not wrapped in DDP): the low-rank ones, r / min(m, n) of a full gradient's bytes, the norm sketches,
and on refresh steps the full gradient the projector is taken from, so every rank computes the same
projector.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections import Counter
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import nn

from ranktune.trainables.model import build_model
from ranktune.trainables.optim import eightbit
from ranktune.trainables.optim.base import Method, tensor_bytes
from ranktune.trainables.optim.baselines import inner_state_bytes
from ranktune.trainables.optim.galore.grad_sums import HostGradientSums
from ranktune.trainables.optim.galore.optimizers import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit, GaLoreOptimizer
from ranktune.trainables.optim.galore.projector import PROJECTOR_KEYS, projected_sides
from ranktune.trainables.optim.registry import (
    Device,
    MethodFlops,
    OptimizerEntry,
    ParamShape,
    PhaseState,
    PublishedRecipe,
    TargetScaling,
    depends_on_layer_index,
    expand_layers,
    register,
)

log = logging.getLogger(__name__)

INNER_OPTIMIZERS = {"adamw": GaLoreAdamW, "adamw8bit": GaLoreAdamW8bit, "adafactor": GaLoreAdafactor}


def name_matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def targeted_linears(model: nn.Module, patterns: list[str]) -> dict[str, nn.Linear]:
    """Module name -> Linear for every Linear whose name matches one of `patterns`."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name_matches(name, pat) for pat in patterns)
    }


def inner_kwargs(inner: str, cfg) -> dict[str, Any]:
    o = cfg.optim
    if inner == "adafactor":
        return {"lr": o.lr, "eps": (None, 1e-3)}  # as the adafactor baseline
    return {"lr": o.lr, "betas": o.betas, "eps": o.eps}


class GaLoreMethod(Method):
    def __init__(self, model: nn.Module, cfg, inner: str) -> None:
        g, o = cfg.galore, cfg.optim
        problems = check_clip_and_accumulation(cfg)
        if problems:
            raise ValueError("; ".join(problems))
        self.model = model
        self.grad_clip = cfg.train.grad_clip
        self.per_layer = g.per_layer
        self.per_tensor_clip = g.per_tensor_clip
        self.low_rank_accumulation = g.per_layer and g.accumulation == "low_rank"
        # Global clipping needs every accumulator complete, so the update waits for step().
        self.deferred_update = self.low_rank_accumulation and self.grad_clip > 0
        self.whole_batch_refresh = self.low_rank_accumulation and g.refresh == "whole_batch"
        self.host_sums = HostGradientSums() if self.whole_batch_refresh and g.full_grad_buffer == "host" else None
        self.world_size = world_size()
        if g.per_layer and self.world_size > 1 and not self.low_rank_accumulation:
            raise ValueError(
                "galore.accumulation: 'full' -> 'low_rank' with galore.per_layer under torch.distributed "
                f"({self.world_size} processes): the full-accumulation hooks update before DDP reduces"
            )

        targets = targeted_linears(model, g.target_modules)
        projected = [m.weight for m in targets.values() if m.weight.requires_grad]
        self.projected_ids = {id(p) for p in projected}
        self.inner, self.galore = inner, g
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in self.projected_ids]
        galore_keys = {
            "rank": g.rank,
            "update_proj_gap": g.update_proj_gap,
            "scale": g.scale,
            "proj_type": g.proj_type,
            "svd": g.svd,
            "svd_oversample": g.svd_oversample,
            "svd_power_iters": g.svd_power_iters,
            "projector_dtype": g.projector_dtype,
            "norm_sketch_rows": g.norm_sketch_rows if self.deferred_update else 0,
        }
        # nanoGPT's decay rule for the rest: 2-D weights decay, 1-D (norms) do not.
        groups = [
            {"params": projected, "weight_decay": o.weight_decay, **galore_keys},
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ]
        groups = [grp for grp in groups if grp["params"]]
        make = partial(INNER_OPTIMIZERS[inner], **inner_kwargs(inner, cfg))

        self.is_last_micro_batch = True
        self.hook_handles = []
        if self.per_layer:
            self.optimizers = []
            position = 0  # seeds each matrix's norm sketch
            for group in groups:
                for p in group["params"]:
                    opt = make([{**group, "params": [p], "norm_sketch_seed": position}])
                    position += 1
                    self.optimizers.append(opt)
                    hook = self.accumulate_in_hook if self.low_rank_accumulation else self.update_in_hook
                    self.hook_handles.append(p.register_post_accumulate_grad_hook(partial(hook, opt)))
        else:
            self.optimizers = [make(groups)]
        self.log_targeting(inner, targets, rest)

    def log_targeting(self, inner: str, targets: dict[str, nn.Linear], rest: list[nn.Parameter]) -> None:
        kinds = Counter(name.rsplit(".", 1)[-1] for name in targets)
        n_projected = sum(m.weight.numel() for m in targets.values())
        module_of = {id(p): n.rsplit(".", 2)[-2] if "." in n else n for n, p in self.model.named_parameters()}
        log.info(
            "galore (%s inner, %s): projecting %d matrices (%s) = %.2fM parameters; plain %s for %d tensors (%s)",
            inner,
            "per-layer updates" if self.per_layer else "one optimizer",
            len(targets),
            ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())),
            n_projected / 1e6,
            inner,
            len(rest),
            ", ".join(sorted({module_of[id(p)] for p in rest})),
        )

    # ------------------------------------------------------------------ the loop's calls

    def begin_micro_batch(self, is_last: bool) -> None:
        self.is_last_micro_batch = is_last

    @property
    def syncs_gradients(self) -> bool:
        """True when the hooks average gradients across ranks themselves: the loop must not wrap in DDP."""
        return self.low_rank_accumulation

    def update_in_hook(self, opt: torch.optim.Optimizer, param: nn.Parameter) -> None:
        """Post-accumulate-grad hook (`accumulation: full`): update this parameter now and free its gradient."""
        if not self.is_last_micro_batch:
            return  # gradient accumulation: the gradient keeps summing in param.grad
        if self.per_tensor_clip > 0:
            torch.nn.utils.clip_grad_norm_(param, self.per_tensor_clip)
        opt.step()  # its LR was set with every other optimizer's in begin_step
        opt.zero_grad(set_to_none=True)

    def accumulate_in_hook(self, opt: GaLoreOptimizer, param: nn.Parameter) -> None:
        """Post-accumulate-grad hook (`accumulation: low_rank`): project and accumulate, update after the last."""
        refreshing = "rank" in opt.param_groups[0] and self.projector_refresh_pending(opt, param)
        if refreshing and self.whole_batch_refresh:
            # every rank takes the SVD of the same sum
            if not sum_micro_batches(param, self.host_sums, self.is_last_micro_batch, self.world_size):
                return
            full_sq_norm = param.grad.to(torch.promote_types(param.grad.dtype, torch.float32)).square().sum()
            opt.accumulate(param)  # the SVD of the whole batch's gradient; the sum projected
            state = opt.state[param]
            state.pop("norm_sketch", None)
            if self.deferred_update:
                state["full_sq_norm"] = full_sq_norm
        else:
            if self.world_size > 1 and refreshing:
                # Every rank must take the SVD of the same gradient: the global first micro-batch's.
                all_reduce_mean(param.grad, self.world_size)
            opt.accumulate(param)
            if not self.is_last_micro_batch:
                return
            if self.world_size > 1:
                for accum in opt.accumulators():
                    all_reduce_mean(accum, self.world_size)
                sketch = opt.state[param].get("norm_sketch")
                if sketch is not None:
                    all_reduce_mean(sketch, self.world_size)
        if self.deferred_update:
            return  # step() clips by the global norm of all accumulators, then updates
        opt.step_accumulated(self.per_tensor_scale(opt))

    @staticmethod
    def projector_refresh_pending(opt: GaLoreOptimizer, param: nn.Parameter) -> bool:
        state = opt.state[param]
        return "grad_accum" not in state and opt.refresh_due(opt.param_groups[0], {"step": 0, **state})

    def per_tensor_scale(self, opt: GaLoreOptimizer) -> float:
        """clip_grad_norm_'s factor for `galore.per_tensor_clip` applied to one parameter's accumulator."""
        if self.per_tensor_clip <= 0:
            return 1.0
        squares = opt.accumulated_sq_norm()
        norm = float(squares.sqrt()) if squares is not None else 0.0
        return min(1.0, self.per_tensor_clip / (norm + 1e-6))

    def step(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        if self.deferred_update:
            scales = [self.per_tensor_scale(opt) for opt in self.optimizers]
            projected = [
                s * s * sq
                for s, opt in zip(scales, self.optimizers, strict=True)
                if (sq := opt.accumulated_sq_norm()) is not None
            ]
            full = [
                s * s * sq
                for s, opt in zip(scales, self.optimizers, strict=True)
                if (sq := opt.accumulated_full_sq_norm()) is not None
            ]
            projected_norm = float(torch.stack(projected).sum().sqrt()) if projected else 0.0
            full_norm = float(torch.stack(full).sum().sqrt()) if full else 0.0
            # The norm whole-model GaLore clips by (the full gradient's), unless the sketch is off.
            total_norm = full_norm if self.galore.norm_sketch_rows > 0 else projected_norm
            clip = min(1.0, self.grad_clip / (total_norm + 1e-6))  # the factor clip_grad_norm_ uses
            for opt, scale in zip(self.optimizers, scales, strict=True):
                opt.step_accumulated(scale * clip)
            stats["grad_norm"] = total_norm
            stats["grad_norm_projected"] = projected_norm
        elif not self.per_layer:
            if self.per_tensor_clip > 0:
                for p in self.trainable_parameters():
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, self.per_tensor_clip)
            stats = super().step()  # global clipping (if any), the update, grads freed
        stats.update(self.galore_metrics())
        return stats

    # ------------------------------------------------------------------ metrics and state

    @property
    def projector_updates(self) -> int:
        return sum(opt.projector_updates for opt in self.optimizers)

    @property
    def svd_seconds(self) -> float:
        return sum(opt.svd_seconds for opt in self.optimizers)

    def galore_metrics(self) -> dict[str, float]:
        return {"galore/projector_updates": self.projector_updates, "galore/svd_seconds": self.svd_seconds}

    def analytic_state_bytes(self) -> int | None:
        """The paper's count for the projected matrices (std projection), to check state_bytes against.

        Per (m, n) matrix: a projector of r * min(m, n) values, and the inner optimizer's state on an
        r x max(m, n) gradient: AdamW 2 values per element, 8-bit AdamW 2 bytes per element plus an
        fp32 scale per block (eightbit.py), Adafactor one row and one column, r + max(m, n) values.
        """
        if self.galore.proj_type != "std":
            return None
        r, total = self.galore.rank, 0
        for p in self.model.parameters():
            if id(p) not in self.projected_ids:
                continue
            small, large, size = min(p.shape), max(p.shape), p.element_size()
            if self.inner == "adamw":
                moments = 2 * r * large * size
            elif self.inner == "adamw8bit":
                moments = eightbit.adam_state_bytes(r * large)
            else:
                moments = (r + large) * size
            projector = r * small + 4 * r if self.galore.projector_dtype == "int8" else r * small * size
            total += moments + projector
        return total

    def benchmark_extras(self) -> dict[str, float]:
        rounds = self.projector_updates / max(len(self.projected_ids), 1)
        extras = {
            "projector_updates": self.projector_updates,
            "svd_s": self.svd_seconds,
            "svd_s_per_round": self.svd_seconds / rounds if rounds else 0.0,
        }
        analytic = self.analytic_state_bytes()
        if analytic:
            by_category = self.state_bytes()
            extras["projected_state_vs_analytic"] = (by_category["moments"] + by_category["projectors"]) / analytic
        return extras

    def state_bytes(self) -> dict[str, int]:
        """Moments of projected matrices, their projectors, and the state of every other parameter."""
        by_category = {"moments": 0, "projectors": 0, "regular_params": 0}
        for opt in self.optimizers:
            for p, state in opt.state.items():
                for key, value in state.items():
                    if key in ("grad_accum", "norm_sketch", "full_sq_norm"):
                        continue  # a gradient (counted as such), not optimizer state
                    if key in PROJECTOR_KEYS:
                        by_category["projectors"] += tensor_bytes(value)
                    elif id(p) in self.projected_ids:
                        by_category["moments"] += tensor_bytes(value)
                    else:
                        by_category["regular_params"] += tensor_bytes(value)
        return by_category


# ---------------------------------------------------------------------- registry entries


def check_clip_and_accumulation(cfg) -> list[str]:
    g = cfg.galore
    if g.per_layer and g.accumulation == "full" and cfg.train.grad_clip > 0:
        return [
            f"train.grad_clip: {cfg.train.grad_clip} -> 0 with galore.per_layer: true and galore.accumulation: full "
            "(global-norm clipping needs every gradient at once, these hooks free each one as it arrives); use "
            "galore.accumulation: low_rank or galore.per_tensor_clip"
        ]
    return []


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(t: torch.Tensor, world: int) -> None:
    import torch.distributed as dist

    dist.all_reduce(t)
    t.div_(world)


def sum_micro_batches(param: nn.Parameter, host_sums, is_last: bool, world: int) -> bool:
    """A gradient hook's share of summing the batch's full gradient of `param`: before the last micro-batch
    the gradient goes into `host_sums` (a HostGradientSums) and leaves the device, or, without host sums,
    keeps summing in `param.grad`; on the last one `param.grad` becomes the whole batch's gradient, averaged
    over ranks, and True is returned."""
    if not is_last:
        if host_sums is not None:
            host_sums.add(param, param.grad)
            param.grad = None
        return False
    if host_sums is not None:
        param.grad = host_sums.take(param, param.grad)
    if world > 1:
        all_reduce_mean(param.grad, world)
    return True


def check_galore(cfg, inner: str) -> list[str]:
    """Problems a run would hit, as `field: value -> what is allowed` lines."""
    g = cfg.galore
    problems = eightbit.bitsandbytes_missing() if inner == "adamw8bit" else []
    problems += check_clip_and_accumulation(cfg)
    return problems + check_targets_and_rank(cfg, "galore", g.target_modules, g.rank)


def check_targets_and_rank(cfg, section: str, target_modules: list[str], rank: int) -> list[str]:
    """`section.target_modules` must match Linear layers of the model, and `section.rank` fit the
    smallest of them (shared by every method that projects targeted matrices)."""
    try:
        llama = cfg.model.llama_config()
    except (KeyError, ValueError):
        return []  # the model section's own problems are reported by check_config
    if not depends_on_layer_index(target_modules):
        llama = replace(llama, num_layers=1)  # every layer is targeted alike: one stands for all
    targets = targeted_linears(build_model(llama, "meta"), target_modules)
    if not targets:
        return [
            f"{section}.target_modules: {target_modules} -> patterns matching Linear layers of the model, "
            "e.g. q_proj or layers.*.mlp.* (names look like layers.0.attn.q_proj)"
        ]
    name, smallest = min(targets.items(), key=lambda kv: min(kv[1].weight.shape))
    limit = min(smallest.weight.shape)
    if rank <= limit:
        return []
    m, n = smallest.weight.shape
    return [
        f"{section}.rank: {rank} -> at most {limit}, the smaller side of the smallest targeted matrix "
        f"({name}, {m}x{n}); lower the rank or narrow {section}.target_modules"
    ]


def build_galore(model: nn.Module, cfg, inner: str) -> GaLoreMethod:
    return GaLoreMethod(model, cfg, inner)


def low_rank_shape(shape: tuple[int, int], rank: int, proj_type: str) -> tuple[tuple[int, int], int]:
    """(shape of the projected gradient, projector values) for one (m, n) matrix."""
    m, n = shape
    left, right = projected_sides(shape, proj_type)
    low = (rank if left else m, rank if right else n)
    return low, (m * rank if left else 0) + (rank * n if right else 0)


def estimate_galore(shapes: tuple[ParamShape, ...], cfg, device: Device, inner: str) -> list[PhaseState]:
    """What GaLoreMethod allocates: the inner state on the projected gradient plus the projector for
    every targeted Linear (the same `name_matches` rule), the plain inner state for the rest."""
    g = cfg.galore
    if depends_on_layer_index(g.target_modules):
        shapes = expand_layers(shapes)
    moments = projectors = regular = temp = accumulators = 0
    projected_low = projected_full = projected_values = sketches = 0
    projected_shapes: list[ParamShape] = []
    for p in shapes:
        e = p.value_bytes
        if p.module == "Linear" and any(name_matches(p.module_name, pat) for pat in g.target_modules):
            low, projector = low_rank_shape(p.shape, g.rank, g.proj_type)
            moments += inner_state_bytes(inner, low, e, step_tensor=False) * p.count
            accumulators += math.prod(low) * e * p.count  # grad_accum, in the gradient dtype
            projected_low += math.prod(low) * e * p.count
            projected_full += p.numel * e * p.count
            projected_values += p.numel * p.count
            projected_shapes.append(p)
            sketches += g.norm_sketch_rows * p.shape[1] * e * p.count
            m, n = p.shape
            k = min(m, n)
            svd = (m * n + m * k + k * n + k) * 4  # fp32 copy of the gradient and its thin SVD
            if g.projector_dtype == "int8":
                # int8 codes + one fp32 absmax per singular vector; dequantized one projector at a time.
                projectors += (projector + 4 * g.rank * sum(projected_sides(p.shape, g.proj_type))) * p.count
                temp = max(temp, svd + m * n * e + projector * e)
            else:
                projectors += projector * e * p.count  # stored in the gradient dtype
                temp = max(temp, svd + m * n * e)  # plus the projected-back full-rank update
        else:
            regular += inner_state_bytes(inner, p.shape, e, step_tensor=False) * p.count
            accumulators += p.numel * e * p.count
            if inner != "adamw8bit":
                temp = max(temp, 2 * p.numel * e)  # sqrt(v) + update (AdamW) or var estimate (Adafactor)
    gradient_bytes, notes, host = None, [], {}
    accum = cfg.grad_accum_steps
    if g.per_layer and g.accumulation == "low_rank" and (accum > 1 or cfg.train.grad_clip > 0):
        # Every accumulator is alive from the first micro-batch (or, deferred for global clipping, at
        # the end of backward), plus the one full gradient being projected or added.
        in_flight = max(p.numel * p.value_bytes for p in shapes)
        if cfg.train.grad_clip > 0 and g.norm_sketch_rows:
            accumulators += sketches  # Omega G summed per projected matrix, rows x n
        gradient_bytes = accumulators + in_flight
        notes.append(
            f"per-layer updates, low-rank accumulation over {accum} micro-batches"
            f"{' with deferred global clipping' if cfg.train.grad_clip > 0 else ''}: accumulators "
            f"{accumulators / 2**30:.2f} GiB + one full gradient in flight {in_flight / 2**30:.2f} GiB"
        )
        if g.refresh == "whole_batch" and accum > 1:
            # Refresh steps sum the projected matrices' full gradients over the micro-batches.
            if g.full_grad_buffer == "device":
                gradient_bytes = max(gradient_bytes, projected_full + accumulators - projected_low + in_flight)
                notes.append(
                    f"whole-batch refresh steps keep the projected matrices' full gradients on the "
                    f"device ({projected_full / 2**30:.2f} GiB); galore.full_grad_buffer: host moves them "
                    "out"
                )
            else:
                # One projected matrix at a time on the device: its gradient, the fp32 sum brought back, the cast.
                largest = max(projected_shapes, key=lambda p: p.numel)
                gradient_bytes = max(gradient_bytes, accumulators + largest.numel * (2 * largest.value_bytes + 4))
                staging = 2 * largest.numel * largest.value_bytes if device == "cuda" else 0
                host = {"refresh-step full-gradient sums (fp32)": projected_values * 4, "pinned staging": staging}
                traffic = (accum - 1) * projected_full + projected_values * 4
                notes.append(
                    f"whole-batch refresh steps (every {g.update_proj_gap} updates) sum full gradients in "
                    f"host memory: PCIe {traffic / 1e9:.1f} GB on those steps, {traffic / 1e9 / 25:.1f} s at "
                    "25 GB/s"
                )
    state = PhaseState(
        phase="galore",
        weights=sum(p.numel * p.count * p.value_bytes for p in shapes),
        trainable=shapes,
        optimizer={"moments": moments, "projectors": projectors, "regular_params": regular},
        step_temporaries=temp,
        one_gradient_at_a_time=g.per_layer,
        gradient_bytes=gradient_bytes,
        host_bytes=host,
        notes=notes,
    )
    return [state]


def svd_flops(shape: tuple[int, int], rank: int, section) -> float:
    """FLOPs of one projector refresh of an (m, n) gradient: the thin SVD (Golub & Van Loan's R-SVD,
    4 k^2 l + 22 k^3 for k = min, l = max), or the randomized range finder with its power iterations
    (a sketch of q = rank + oversample columns, 2 products per iteration, then QR and a small SVD)."""
    m, n = shape
    k, l = min(m, n), max(m, n)
    if section.svd == "randomized":
        q = min(k, rank + section.svd_oversample)
        return 2 * m * n * q * (1 + 2 * section.svd_power_iters) + 4 * l * q * q + 22 * q**3
    return 4 * k * k * l + 22 * k**3


def projection_flops(shape: tuple[int, int], rank: int, proj_type: str) -> float:
    """One projection of an (m, n) gradient into the low-rank space (P^T G or G Q): 2 r m n per projected
    side; projecting the update back costs the same."""
    m, n = shape
    return 2 * rank * m * n * sum(projected_sides(shape, proj_type))


def estimate_galore_flops(shapes: tuple[ParamShape, ...], cfg) -> MethodFlops:
    """Per-layer low-rank accumulation projects every micro-batch's gradient (per micro-batch) and
    projects the update back once (per step); otherwise both happen once per step. The SVD refreshes
    every update_proj_gap steps."""
    g = cfg.galore
    project = refresh = 0.0
    for p in shapes:
        if p.module == "Linear" and any(name_matches(p.module_name, pat) for pat in g.target_modules):
            project += projection_flops(p.shape, g.rank, g.proj_type) * p.count
            refresh += svd_flops(p.shape, g.rank, g) * p.count
    low_rank_accumulation = (
        g.per_layer and g.accumulation == "low_rank" and (cfg.grad_accum_steps > 1 or cfg.train.grad_clip > 0)
    )
    notes = (
        f"projector refresh ({g.svd} SVD) every {g.update_proj_gap} steps, counted at the matmul rate: "
        "SVDs run well below it, so this part is a lower bound",
    )
    if low_rank_accumulation:
        return MethodFlops(
            per_micro_batch=project, per_step=project, per_refresh=refresh, refresh_every=g.update_proj_gap, notes=notes
        )
    return MethodFlops(per_step=2 * project, per_refresh=refresh, refresh_every=g.update_proj_gap, notes=notes)


def summarize_galore(cfg) -> str:
    return f"galore rank {cfg.galore.rank}{', per-layer' if cfg.galore.per_layer else ''}"


def galore_to_target(raw: dict[str, Any], proxy, scaling: TargetScaling) -> None:
    """Export without a published recipe: the rank by the width rule; the gap as the rules say."""
    g = raw["galore"]
    g["rank"] = scaling.rank(proxy.galore.rank)
    if scaling.update_proj_gap is not None:
        g["update_proj_gap"] = scaling.update_proj_gap


def keeps_full_gradients(cfg) -> bool:
    """Per-layer GaLore with `accumulation: full` sums full gradients between micro-batches; its low-rank
    accumulation does not."""
    return cfg.galore.per_layer and cfg.galore.accumulation == "full"


for _inner, _description, _colour in [
    ("adamw", "GaLore: low-rank gradient projection, AdamW inner (fp32 moments)", "#2ca02c"),
    ("adamw8bit", "GaLore: low-rank gradient projection, bitsandbytes 8-bit AdamW inner", "#17becf"),
    ("adafactor", "GaLore: low-rank gradient projection, Adafactor inner", "#98df8a"),
]:
    register(
        f"galore_{_inner}",
        OptimizerEntry(
            build=partial(build_galore, inner=_inner),
            check=partial(check_galore, inner=_inner),
            estimate_state=partial(estimate_galore, inner=_inner),
            summarize=summarize_galore,
            estimate_flops=estimate_galore_flops,
            description=_description,
            sections=("galore",),
            colour=_colour,
            # GaLore's README 7b command (8-bit, per-layer); its 60m..1b scripts use lr 0.01.
            published=(
                PublishedRecipe(
                    "7b",
                    "galore",
                    rank=1024,
                    scale=0.25,
                    update_proj_gap=500,
                    lr=0.005,
                    reference_lr=0.01,
                    source="GaLore README, 7b on one GPU",
                ),
            ),
            single_gpu=(
                ("optim.name", "galore_adamw8bit"),
                ("galore.per_layer", True),
                ("galore.accumulation", "low_rank"),
            ),
            update_rule_keys=("optim.name", "galore.per_layer", "galore.accumulation", "galore.projector_dtype"),
            step_size_factor=lambda cfg: cfg.galore.scale,  # the update is scale x the projected-back step
            rank_key="galore.rank",
            target_mapping=galore_to_target,
            keeps_full_gradients=keeps_full_gradients,
            # int8 projectors: half the bytes of bf16 ones (docs/galore.md for their cost)
            memory_savings=(("galore.projector_dtype", "int8"),),
        ),
    )
