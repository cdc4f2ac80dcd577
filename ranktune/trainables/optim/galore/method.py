"""GaLore as a training method: which weights are projected, per-layer updates, metrics, config checks.

One rule picks the projected weights: every `nn.Linear` whose module name matches a pattern of
`galore.target_modules` (a name suffix such as `q_proj`, or a glob such as `layers.*.mlp.*`). Everything
else (embeddings, norms, the output head) gets the plain inner optimizer. The decision is logged.

Per-layer mode (`galore.per_layer: true`) gives every parameter its own optimizer and steps it inside
a post-accumulate-grad hook, freeing the gradient at once, so full gradients never all exist together.
With gradient accumulation the hooks only update on the last micro-batch (gradients accumulate in
`.grad` before that); global-norm clipping needs every gradient at once and is refused, per-tensor
clipping (`galore.per_tensor_clip`) is offered instead.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from functools import partial
from typing import Any

import torch
from torch import nn

from ranktune.trainables.model import build_model
from ranktune.trainables.optim import eightbit
from ranktune.trainables.optim.base import Method, tensor_bytes
from ranktune.trainables.optim.baselines import inner_state_bytes
from ranktune.trainables.optim.galore.optimizers import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit
from ranktune.trainables.optim.galore.projector import PROJECTOR_KEYS, projected_sides
from ranktune.trainables.optim.registry import Device, OptimizerEntry, ParamShape, PhaseState, register

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
        if g.per_layer and cfg.train.grad_clip > 0:
            raise ValueError("train.grad_clip must be 0 with galore.per_layer; use galore.per_tensor_clip")
        self.model = model
        self.grad_clip = cfg.train.grad_clip
        self.per_layer = g.per_layer
        self.per_tensor_clip = g.per_tensor_clip

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
            for group in groups:
                for p in group["params"]:
                    opt = make([{**group, "params": [p]}])
                    self.optimizers.append(opt)
                    self.hook_handles.append(p.register_post_accumulate_grad_hook(partial(self.update_in_hook, opt)))
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

    def update_in_hook(self, opt: torch.optim.Optimizer, param: nn.Parameter) -> None:
        """Post-accumulate-grad hook: update this parameter now and free its gradient."""
        if not self.is_last_micro_batch:
            return  # gradient accumulation: the gradient keeps summing in param.grad
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
            total += moments + r * small * size
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
                    if key in PROJECTOR_KEYS:
                        by_category["projectors"] += tensor_bytes(value)
                    elif id(p) in self.projected_ids:
                        by_category["moments"] += tensor_bytes(value)
                    else:
                        by_category["regular_params"] += tensor_bytes(value)
        return by_category


# ---------------------------------------------------------------------- registry entries


def check_galore(cfg, inner: str) -> list[str]:
    """Problems a run would hit, as `field: value -> what is allowed` lines."""
    g = cfg.galore
    problems = eightbit.bitsandbytes_missing() if inner == "adamw8bit" else []
    if g.per_layer and cfg.train.grad_clip > 0:
        problems.append(
            f"train.grad_clip: {cfg.train.grad_clip} -> 0 with galore.per_layer: true (global-norm clipping needs "
            "every gradient at once, per-layer updates free each one as it arrives); use galore.per_tensor_clip"
        )
    try:
        llama = cfg.model.llama_config()
    except (KeyError, ValueError):
        return problems  # the model section's own problems are reported by check_config
    targets = targeted_linears(build_model(llama, "meta"), g.target_modules)
    if not targets:
        problems.append(
            f"galore.target_modules: {g.target_modules} -> patterns matching Linear layers of the model, "
            "e.g. q_proj or layers.*.mlp.* (names look like layers.0.attn.q_proj)"
        )
        return problems
    name, smallest = min(targets.items(), key=lambda kv: min(kv[1].weight.shape))
    limit = min(smallest.weight.shape)
    if g.rank > limit:
        m, n = smallest.weight.shape
        problems.append(
            f"galore.rank: {g.rank} -> at most {limit}, the smaller side of the smallest targeted matrix "
            f"({name}, {m}x{n}); lower the rank or narrow galore.target_modules"
        )
    return problems


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
    moments = projectors = regular = temp = 0
    for p in shapes:
        e = p.value_bytes
        if p.module == "Linear" and any(name_matches(p.module_name, pat) for pat in g.target_modules):
            low, projector = low_rank_shape(p.shape, g.rank, g.proj_type)
            moments += inner_state_bytes(inner, low, e, step_tensor=False) * p.count
            projectors += projector * e * p.count  # stored in the gradient dtype
            m, n = p.shape
            k = min(m, n)
            svd = (m * n + m * k + k * n + k) * 4  # fp32 copy of the gradient and its thin SVD
            temp = max(temp, svd + m * n * e)  # plus the projected-back full-rank update
        else:
            regular += inner_state_bytes(inner, p.shape, e, step_tensor=False) * p.count
            if inner != "adamw8bit":
                temp = max(temp, 2 * p.numel * e)  # sqrt(v) + update (AdamW) or var estimate (Adafactor)
    state = PhaseState(
        phase="galore",
        weights=sum(p.numel * p.count * p.value_bytes for p in shapes),
        trainable=shapes,
        optimizer={"moments": moments, "projectors": projectors, "regular_params": regular},
        step_temporaries=temp,
        one_gradient_at_a_time=g.per_layer,
    )
    return [state]


for _inner, _description in [
    ("adamw", "GaLore: low-rank gradient projection, AdamW inner (fp32 moments)"),
    ("adamw8bit", "GaLore: low-rank gradient projection, bitsandbytes 8-bit AdamW inner"),
    ("adafactor", "GaLore: low-rank gradient projection, Adafactor inner"),
]:
    register(
        f"galore_{_inner}",
        OptimizerEntry(
            build=partial(build_galore, inner=_inner),
            check=partial(check_galore, inner=_inner),
            estimate_state=partial(estimate_galore, inner=_inner),
            description=_description,
        ),
    )
