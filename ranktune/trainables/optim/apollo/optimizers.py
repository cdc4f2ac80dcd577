"""APOLLO and Fira AdamW as torch optimizers, built on GaLore's projector and step loop.

Both run AdamW moments on the projected gradient R (as GaLore does), but apply an update built from
the full-rank gradient G, scaled by how much Adam changes the low-rank gradient: with N the low-rank
Adam direction (m_t / (sqrt(v_t) + eps)), the norm ratio

    s = ||N_j|| / (||R_j|| + 1e-8)     per channel j of the unprojected side (`scale_type: channel`)
    s = ||N||  / (||R||  + 1e-8)       for the whole tensor                  (`scale_type: tensor`)

APOLLO (Zhu et al. 2025):  update = sqrt(scale) * limit(s * G), projector random (or SVD)
Fira   (Chen et al. 2024):  update = scale * P N + limit(s * (G - P P^T G)), projector SVD

where limit is Fira's norm-growth limiter: the update's norm may grow by at most a factor
`norm_growth_limit` (gamma, 1.01) per step, else it is scaled down to that. Parameter groups take the
keys of apollo-torch / fira unchanged (`rank`, `update_proj_gap`, `scale`, `proj_type`, `proj`,
`scale_type`; Fira's `alpha` is accepted as `scale`), plus `norm_growth_limit`, `proj_storage` and
`seed` (APOLLO's random projector, see random_projector.py) and GaLore's `svd*` keys for SVD
projectors. Groups without `rank` get plain AdamW. AdamW numerics are the packages' (eps added to
sqrt(v), bias correction on the step size); weight decay is decoupled and applied before the update
as in torch.optim.AdamW (both packages decay the already-updated weight). See docs/apollo.md.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ranktune.trainables.optim.apollo.random_projector import next_seed, random_projector
from ranktune.trainables.optim.galore.optimizers import GaLoreAdamW
from ranktune.trainables.optim.galore.projector import project, projected_sides

SCALE_TYPES = ("channel", "tensor")
PROJ_STORAGE = ("matrix", "seed")
RATIO_EPS = 1e-8  # both packages' guard in the norm ratios; the same constant keeps the ratios equal

APOLLO_GROUP_DEFAULTS = {
    "proj": "random",
    "scale_type": "channel",
    "scale": 1.0,
    "norm_growth_limit": 1.01,
    "proj_storage": "seed",
    "seed": 0,
}
FIRA_GROUP_DEFAULTS = {
    "proj": "svd",
    "scale_type": "channel",
    "scale": 1.0,
    "norm_growth_limit": 1.01,
    "residual": "orthogonal",
}
# Fira's out-of-subspace gradient: "orthogonal" G - P P^T G (the paper's equation), "published" G - alpha P P^T G
# (the fira package's code, which produced the paper's figures).
FIRA_RESIDUALS = ("orthogonal", "published")


def fira_residual(full: torch.Tensor, low: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> torch.Tensor:
    """The gradient Fira adds outside the low-rank AdamW step, as a new tensor (see FIRA_RESIDUALS)."""
    form = group.get("residual", "orthogonal")
    if form not in FIRA_RESIDUALS:
        raise ValueError(f"residual: {form!r} -> one of {list(FIRA_RESIDUALS)}")
    alpha = 1.0 if form == "orthogonal" else group["scale"]
    return add_projected_back(full, low, state, alpha=-alpha, inplace=False)


def fill_scaled_group(group: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Take Fira's `alpha` as `scale` and fill the method's defaults, before GaLore fills its own."""
    if "alpha" in group:
        alpha = group.pop("alpha")
        if "scale" in group and group["scale"] != alpha:
            raise ValueError(f"alpha: {alpha!r} and scale: {group['scale']!r} -> give one of them (the same key)")
        group["scale"] = alpha
    for key, value in defaults.items():
        group.setdefault(key, value)


def check_scaled_group(group: dict[str, Any], projs: tuple[str, ...]) -> None:
    """Refuse values GaLore's check does not know about, naming the key."""
    if group["proj"] not in projs:
        raise ValueError(f"proj: {group['proj']!r} -> one of {list(projs)}")
    if group["scale_type"] not in SCALE_TYPES:
        raise ValueError(f"scale_type: {group['scale_type']!r} -> one of {list(SCALE_TYPES)}")
    if group["scale_type"] == "channel" and group["proj_type"] == "full":
        raise ValueError(
            "scale_type: 'channel' -> 'tensor' with proj_type: 'full' (channels are the columns or rows "
            "of the side left unprojected, and full projects both)"
        )
    limit = group["norm_growth_limit"]
    if limit is not None and not limit >= 1.0:
        raise ValueError(f"norm_growth_limit: {limit!r} -> a number >= 1 (1.01 in the papers), or None for no limiter")
    if group.get("proj_storage", "matrix") not in PROJ_STORAGE:
        raise ValueError(f"proj_storage: {group['proj_storage']!r} -> one of {list(PROJ_STORAGE)}")
    if not isinstance(group.get("seed", 0), int):
        raise ValueError(f"seed: {group['seed']!r} -> an integer")


def norm_dtype(x: torch.Tensor) -> torch.dtype:
    """Norms of bf16 / fp16 tensors are taken in fp32: the limiter divides one step's norm by the last."""
    return torch.promote_types(x.dtype, torch.float32)


def norm_ratio(direction: torch.Tensor, low: torch.Tensor, scale_type: str, dim: int) -> torch.Tensor:
    """s: the norm of the Adam direction over that of the projected gradient, per channel or per tensor.

    Channel norms are taken over the projected dimension `dim`, leaving one ratio per row (m, 1) or
    column (1, n) of the unprojected side, which broadcasts over the full-size gradient.
    """
    if scale_type == "tensor":
        acc = norm_dtype(low)
        return torch.linalg.vector_norm(direction, dtype=acc) / (torch.linalg.vector_norm(low, dtype=acc) + RATIO_EPS)
    norms = [torch.linalg.vector_norm(t, dim=dim, keepdim=True, dtype=norm_dtype(t)) for t in (direction, low)]
    return norms[0] / (norms[1] + RATIO_EPS)


def scaled_norm(full: torch.Tensor, ratio: torch.Tensor, dim: int) -> torch.Tensor:
    """||ratio * full|| without forming ratio * full: one read of `full` instead of a full-size write."""
    if ratio.dim() == 0:
        return ratio * torch.linalg.vector_norm(full, dtype=norm_dtype(full))
    return torch.linalg.vector_norm(ratio * torch.linalg.vector_norm(full, dim=dim, keepdim=True, dtype=ratio.dtype))


def norm_growth_limiter(norm: torch.Tensor, state: dict[str, Any], gamma: float | None) -> torch.Tensor | float:
    """Fira's limiter: the factor to divide this step's update by so its norm grows by at most gamma.

    `state["limited_norm"]` is the norm of the last update after limiting; the first update is free.
    """
    if gamma is None:
        return 1.0
    if "limited_norm" not in state:
        state["limited_norm"] = norm
        return 1.0
    limiter = torch.clamp(norm / (state["limited_norm"] + RATIO_EPS), min=gamma) / gamma
    state["limited_norm"] = norm / limiter
    return limiter


def add_projected_back(base: torch.Tensor, low: torch.Tensor, state: dict, alpha: float, inplace: bool):
    """base + alpha * (the low-rank `low` taken back to full size), as one addmm."""
    if "proj_left" in state and "proj_right" in state:
        a, b = state["proj_left"] @ low, state["proj_right"]
    elif "proj_left" in state:
        a, b = state["proj_left"], low
    else:
        a, b = low, state["proj_right"]
    return base.addmm_(a, b, alpha=alpha) if inplace else torch.addmm(base, a, b, alpha=alpha)


class ScaledGradientAdamW(GaLoreAdamW):
    """The part APOLLO and Fira share: group keys, low-rank AdamW moments, the direction they give."""

    GROUP_DEFAULTS: dict[str, Any] = {}
    PROJS: tuple[str, ...] = ()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "rank" in param_group:
            fill_scaled_group(param_group, self.GROUP_DEFAULTS)
        super().add_param_group(param_group)  # GaLore's keys: defaults and checks
        if "rank" in param_group:
            check_scaled_group(self.param_groups[-1], self.PROJS)

    @staticmethod
    def low_rank_adam(low: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[torch.Tensor, float]:
        """Update the moments with the projected gradient; return (N = m / (sqrt(v) + eps), bias-corrected lr)."""
        beta1, beta2 = group["betas"]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(low)
            state["exp_avg_sq"] = torch.zeros_like(low)
        state["step"] += 1
        t = state["step"]
        state["exp_avg"].lerp_(low, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(low, low, value=1.0 - beta2)
        direction = state["exp_avg_sq"].sqrt().add_(group["eps"]).reciprocal_().mul_(state["exp_avg"])
        return direction, group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)

    @staticmethod
    def channel_dim(p: torch.Tensor, group: dict[str, Any]) -> int:
        """The projected dimension, over which channel norms are taken: 0 if the left side is projected."""
        return 0 if projected_sides(p.shape, group["proj_type"])[0] else 1


class ApolloAdamW(ScaledGradientAdamW):
    """APOLLO: AdamW moments of a random projection only set a per-channel (or per-tensor) gradient scale.

    `proj: random` draws a Gaussian projector (random_projector.py) every `update_proj_gap` updates;
    `proj_storage: seed` (the default) regenerates it from its seed at every update instead of keeping
    it, so it costs no memory (docs/apollo.md has the time of each). `proj: svd` uses GaLore's SVD.
    APOLLO-Mini is `rank: 1, scale_type: tensor, scale: 128`.
    """

    GROUP_DEFAULTS = APOLLO_GROUP_DEFAULTS
    PROJS = ("random", "svd")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        first_position = sum(len(g["params"]) for g in self.param_groups) + 1
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "rank" in group and group["proj"] == "random":
            # apollo-torch's rule: a parameter's first seed is its 1-based position among the optimizer's
            # parameters (counting every group), here offset by the group's `seed`.
            for position, p in enumerate(group["params"], start=first_position):
                self.state[p]["proj_seed"] = group["seed"] + position

    def low_rank_grad(self, grad: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> torch.Tensor:
        if "rank" not in group or group["proj"] == "svd":
            return super().low_rank_grad(grad, group, state)
        if state["step"] % group["update_proj_gap"] == 0:
            start = time.perf_counter()
            if state["step"] > 0:
                state["proj_seed"] = next_seed(state["proj_seed"])
            projector = random_projector(grad, group["rank"], group["proj_type"], state["proj_seed"])
            if group["proj_storage"] == "matrix":
                state.update(projector)
            if grad.is_cuda:
                torch.cuda.synchronize(grad.device)
            self.svd_seconds += time.perf_counter() - start
            self.projector_updates += 1
        elif group["proj_storage"] == "matrix":
            projector = state
        else:
            projector = random_projector(grad, group["rank"], group["proj_type"], state["proj_seed"])
        return project(grad, projector)

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        if "rank" not in group:
            super().update(p, grad, state, group)
            return
        low, full = grad, p.grad
        direction, step_size = self.low_rank_adam(low, state, group)
        dim = self.channel_dim(p, group)
        ratio = norm_ratio(direction, low, group["scale_type"], dim)
        ratio = ratio / norm_growth_limiter(scaled_norm(full, ratio, dim), state, group["norm_growth_limit"])
        if group["weight_decay"] > 0:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.addcmul_(full, ratio, value=-step_size * math.sqrt(group["scale"]))


class FiraAdamW(ScaledGradientAdamW):
    """Fira: GaLore's AdamW in an SVD subspace, plus the gradient outside it, scaled by the norm ratio.

    The out-of-subspace part is by default the true residual G - P P^T G (`residual: orthogonal`). The
    fira package forms G - alpha P P^T G (`residual: published`), which leaves (1 - alpha) P P^T G of the
    subspace in it; the two agree at alpha (`scale`) 1. The paper's figures come from the package's form.
    """

    GROUP_DEFAULTS = FIRA_GROUP_DEFAULTS
    PROJS = ("svd",)

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        if "rank" not in group:
            super().update(p, grad, state, group)
            return
        low, full = grad, p.grad
        direction, step_size = self.low_rank_adam(low, state, group)
        dim = self.channel_dim(p, group)
        residual = fira_residual(full, low, state, group)
        ratio = norm_ratio(direction, low, group["scale_type"], dim)
        ratio = ratio / norm_growth_limiter(scaled_norm(residual, ratio, dim), state, group["norm_growth_limit"])
        update = add_projected_back(residual.mul_(ratio), direction, state, alpha=group["scale"], inplace=True)
        if group["weight_decay"] > 0:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-step_size)
