"""GaLore AdamW, 8-bit AdamW and Adafactor as torch optimizers.

Parameter groups carrying `rank` are projected, with the same keys as galore-torch, so its groups
move over unchanged:

    {"params": matrices, "rank": 128, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}

plus our own optional keys `svd` ("full" | "randomized"), `svd_oversample`, `svd_power_iters`,
`projector_dtype` ("same" | "int8").
Groups without `rank` get the plain inner optimizer. For each projected matrix, every
`update_proj_gap` updates (counted in optimizer updates, from 0) the projector is recomputed from the
current gradient; the inner moments live in the low-rank space and are kept when the projector
changes, as in the paper. The projector is optimizer state (tensors), so `state_dict()` /
`load_state_dict()` round-trip exactly, including in the middle of a gap.

Numerics follow galore-torch where it is right (AdamW: eps added to sqrt(v) before bias correction,
the HF formulation), and differ where it is not: weight decay is decoupled and applied before the
update as in torch.optim.AdamW (galore-torch decays the already-updated weight), 8-bit states use
bitsandbytes' kernels that also run on CPU, and the Adafactor inner is torch.optim.Adafactor's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from functools import cache
from itertools import chain
from typing import Any

import torch

from ranktune.trainables.optim import eightbit
from ranktune.trainables.optim.galore.projector import (
    PROJ_TYPES,
    PROJECTOR_DTYPES,
    PROJECTOR_KEYS,
    SVD_METHODS,
    project,
    project_back,
    projector,
    update_projector,
)

# Defaults of the GaLore paper for the keys a projected group may leave out.
GALORE_GROUP_DEFAULTS = {
    "update_proj_gap": 200,
    "scale": 0.25,
    "proj_type": "std",
    "svd": "full",
    "svd_oversample": 8,
    "svd_power_iters": 2,
    "projector_dtype": "same",
}


def check_galore_group(group: dict[str, Any]) -> None:
    """Fill defaults into a projected group and refuse bad values, naming the key."""
    for key, value in GALORE_GROUP_DEFAULTS.items():
        group.setdefault(key, value)
    rank, gap = group["rank"], group["update_proj_gap"]
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank: {rank!r} -> an integer >= 1")
    if not isinstance(gap, int) or gap < 1:
        raise ValueError(f"update_proj_gap: {gap!r} -> an integer >= 1 (optimizer updates between projector updates)")
    if not group["scale"] > 0:
        raise ValueError(f"scale: {group['scale']!r} -> a number > 0")
    if group["proj_type"] not in PROJ_TYPES:
        raise ValueError(f"proj_type: {group['proj_type']!r} -> one of {list(PROJ_TYPES)}")
    if group["projector_dtype"] not in PROJECTOR_DTYPES:
        raise ValueError(f"projector_dtype: {group['projector_dtype']!r} -> one of {list(PROJECTOR_DTYPES)}")
    if group["svd"] not in SVD_METHODS:
        raise ValueError(f"svd: {group['svd']!r} -> one of {list(SVD_METHODS)}")
    for p in group["params"]:
        if p.dim() != 2:
            raise ValueError(f"rank: projected parameters must be matrices, got shape {tuple(p.shape)}")
        if rank > min(p.shape):
            raise ValueError(f"rank: {rank} -> at most {min(p.shape)} for a parameter of shape {tuple(p.shape)}")


class GaLoreOptimizer(torch.optim.Optimizer):
    """Shared projector handling and step loop; subclasses implement the inner update in `update`."""

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self.projector_updates = 0  # projectors recomputed (one per matrix per update_proj_gap)
        self.svd_seconds = 0.0  # wall time spent computing them

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if "rank" in self.param_groups[-1]:
            check_galore_group(self.param_groups[-1])

    def low_rank_grad(self, grad: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> torch.Tensor:
        """The gradient the inner optimizer sees: projected for groups with `rank`, else as is.

        `state["step"]` is the number of updates done so far, so the projector is recomputed at updates
        0, T, 2T, ... exactly as galore-torch does.
        """
        if "rank" not in group:
            return grad
        if self.refresh_due(group, state):
            self.refresh_projector(grad, group, state)
        return project(grad, state)

    @staticmethod
    def refresh_due(group: dict[str, Any], state: dict[str, Any]) -> bool:
        return state["step"] % group["update_proj_gap"] == 0 or not any(k in state for k in PROJECTOR_KEYS)

    def refresh_projector(self, grad: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        start = time.perf_counter()
        update_projector(state, grad, group)
        if grad.is_cuda:
            torch.cuda.synchronize(grad.device)  # otherwise we time the kernel launch, not the SVD
        self.svd_seconds += time.perf_counter() - start
        self.projector_updates += 1

    # -------------------------------------------------- low-rank gradient accumulation (per-layer mode)
    #
    # Each micro-batch's gradient is projected as soon as it exists and summed into state["grad_accum"]
    # (r x max(m, n) for a projected matrix, the full gradient for the rest); `.grad` is freed at once.
    # Projection is linear, so between projector refreshes the update equals the one of the summed
    # full gradient. On a refresh step the first gradient `accumulate` sees (the accumulator is still
    # empty then) gives the new projector: the method hands it the whole step's gradient (refresh:
    # whole_batch) or the first micro-batch's (first_micro_batch). The accumulator is optimizer state:
    # a state_dict taken between micro-batches resumes exactly.
    #
    # With `norm_sketch_rows` s > 0 a projected matrix also sums a Gaussian sketch of its gradient,
    # state["norm_sketch"] = sum_k Omega G_k (s x n, Omega s x m with N(0, 1/s) entries drawn from a
    # seed fixed by the parameter and the update count), from which `accumulated_full_sq_norm`
    # estimates ||G||^2 = ||P^T G||^2 + ||(I - P P^T) G||^2 without the full gradient: the first term
    # exactly (the accumulator), the residual's by E||Omega R||^2 = ||R||^2 with Omega R = S - Omega P (P^T G).

    @torch.no_grad()
    def accumulate(self, p: torch.Tensor) -> None:
        """Add `p.grad`, as the next update will see it, to p's accumulator and free `p.grad`."""
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        state = self.state[p]
        state.setdefault("step", 0)
        rows = group.get("norm_sketch_rows", 0) if "rank" in group else 0
        if rows:
            sketch = norm_sketch_matrix(rows, p, group.get("norm_sketch_seed", 0), state["step"]) @ p.grad
            if "norm_sketch" in state:
                state["norm_sketch"].add_(sketch)
            else:
                state["norm_sketch"] = sketch
        if "grad_accum" not in state:
            low = self.low_rank_grad(p.grad, group, state)  # refreshes the projector when due
            state["grad_accum"] = low  # unprojected: the gradient tensor itself, no copy
        else:
            state["grad_accum"].add_(project(p.grad, state) if "rank" in group else p.grad)
        p.grad = None

    def accumulated_full_sq_norm(self) -> torch.Tensor | None:
        """||G||^2 summed over the parameters (at least fp32), G the full gradient the accumulators come
        from: exact where the accumulator is the full gradient or `full_sq_norm` was recorded, estimated
        from the norm sketch for projected matrices (see the comment above `accumulate`)."""
        squares = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "grad_accum" not in state:
                    continue
                accum = state["grad_accum"]
                in_space = accum.to(torch.promote_types(accum.dtype, torch.float32)).square().sum()
                if "full_sq_norm" in state:
                    squares.append(state["full_sq_norm"])
                elif "norm_sketch" in state:
                    omega = norm_sketch_matrix(
                        state["norm_sketch"].shape[0], p, group.get("norm_sketch_seed", 0), state["step"]
                    )
                    residual = state["norm_sketch"] - sketch_projected_back(omega, accum, state)
                    squares.append(in_space + residual.to(in_space.dtype).square().sum())
                else:
                    squares.append(in_space)
        return torch.stack(squares).sum() if squares else None

    def accumulated_sq_norm(self) -> torch.Tensor | None:
        """Sum of squares (at least fp32) of every accumulator, i.e. of what the inner optimizers will see."""
        squares = [a.to(torch.promote_types(a.dtype, torch.float32)).square().sum() for a in self.accumulators()]
        return torch.stack(squares).sum() if squares else None

    def accumulators(self) -> list[torch.Tensor]:
        return [state["grad_accum"] for state in self.state.values() if "grad_accum" in state]

    @torch.no_grad()
    def step_accumulated(self, grad_scale: float = 1.0) -> None:
        """Update every parameter with its accumulated (low-rank) gradient times `grad_scale`; empty them."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                accum = state.pop("grad_accum", None)
                state.pop("norm_sketch", None)
                state.pop("full_sq_norm", None)
                if accum is None:
                    continue
                if grad_scale != 1.0:
                    accum.mul_(grad_scale)
                self.update(p, accum, state, group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state.setdefault("step", 0)
                self.update(p, self.low_rank_grad(p.grad, group, state), state, group)
        return loss

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Apply the inner optimizer's update to `p`, given its (possibly low-rank) gradient."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["galore"] = {"projector_updates": self.projector_updates, "svd_seconds": self.svd_seconds}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts every floating-point state tensor to its parameter's dtype. That would turn
        # 8-bit moments into floats, and fp32 absmax / moments of bf16 weights into bf16. Take the
        # saved tensors as they were.
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if torch.is_tensor(value) and key != "step":
                    self.state[p][key] = value.detach().to(device=p.device, copy=True)
        counters = state_dict.get("galore", {})
        self.projector_updates = counters.get("projector_updates", 0)
        self.svd_seconds = counters.get("svd_seconds", 0.0)


def norm_sketch_matrix(rows: int, p: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Omega (rows, m) with N(0, 1/rows) entries, fixed by (seed, step): every micro-batch of a step,
    every rank and a resumed run draw the same one; the global RNG is untouched."""
    gen = torch.Generator(device=p.device).manual_seed(seed * 1_000_003 + step)
    omega = torch.randn(rows, p.shape[0], generator=gen, device=p.device, dtype=torch.float32)
    return omega.div_(math.sqrt(rows)).to(p.dtype)


def sketch_projected_back(omega: torch.Tensor, low: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
    """Omega @ project_back(low) without the full-size matrix: (s, m) @ (m, r) @ (r, n) and the like."""
    x = omega.to(low.dtype)
    if "proj_left" in state:
        x = (x @ projector(state, "proj_left", low.dtype)) @ low
    else:
        x = x @ low
    if "proj_right" in state:
        x = x @ projector(state, "proj_right", low.dtype)
    return x


class GaLoreAdamW(GaLoreOptimizer):
    """AdamW with GaLore projection; eps and bias correction as galore-torch (HF) does them."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        t = state["step"]

        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        if wd > 0:
            p.mul_(1.0 - lr * wd)
        # Fewer passes over full-size tensors than galore-torch (this step is memory-bound on CPU):
        # unprojected weights (embeddings, head) divide inside addcdiv_, and GaLore's scale rides on
        # the step size instead of multiplying the projected-back update.
        if "rank" not in group:
            p.addcdiv_(exp_avg, denom, value=-step_size)
            return
        low_rank_update = denom.reciprocal_().mul_(exp_avg)
        p.add_(project_back(low_rank_update, state), alpha=-step_size * group["scale"])


@cache
def dynamic_maps(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' signed (first moment) and unsigned (second moment) 8-bit dynamic maps, one copy per device."""
    import bitsandbytes.functional as bnbf

    return bnbf.create_dynamic_map(signed=True).to(device), bnbf.create_dynamic_map(signed=False).to(device)


class GaLoreAdamW8bit(GaLoreOptimizer):
    """AdamW with GaLore projection and bitsandbytes' blockwise 8-bit moments (CPU and CUDA).

    The update itself is bitsandbytes' (`optimizer_update_8bit_blockwise`: dequantize, Adam, requantize
    in blocks of 256), so unprojected parameters get exactly bnb.optim.AdamW8bit. Tensors with fewer
    than `min_8bit_size` elements keep fp32 moments, as bitsandbytes does.
    """

    BLOCK_SIZE = eightbit.BLOCK

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_8bit_size: int = eightbit.MIN_8BIT_SIZE,
    ) -> None:
        import bitsandbytes.functional  # noqa: F401  (fail here, not at the first step, if missing)

        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "min_8bit_size": min_8bit_size}
        super().__init__(params, defaults)

    def init_moments(self, state: dict[str, Any], like: torch.Tensor, min_8bit_size: int) -> None:
        if like.numel() < min_8bit_size:
            state["state1"] = torch.zeros_like(like, dtype=torch.float32)
            state["state2"] = torch.zeros_like(like, dtype=torch.float32)
            return
        blocks = math.ceil(like.numel() / self.BLOCK_SIZE)
        state["state1"] = torch.zeros_like(like, dtype=torch.uint8)
        state["state2"] = torch.zeros_like(like, dtype=torch.uint8)
        state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=like.device)
        state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=like.device)

    @staticmethod
    def adam_update(target: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, lr: float, wd: float) -> None:
        """bitsandbytes' in-place Adam update of `target` with `grad`, 8-bit or 32-bit states."""
        import bitsandbytes.functional as bnbf

        beta1, beta2 = group["betas"]
        if state["state1"].dtype == torch.uint8:
            qmap1, qmap2 = dynamic_maps(target.device)
            bnbf.optimizer_update_8bit_blockwise(
                "adam",
                grad,
                target,
                state["state1"],
                state["state2"],
                beta1,
                beta2,
                0.0,
                0.0,
                group["eps"],
                state["step"],
                lr,
                qmap1,
                qmap2,
                state["absmax1"],
                state["absmax2"],
                weight_decay=wd,
            )
        else:
            bnbf.optimizer_update_32bit(
                "adam",
                grad,
                target,
                state["state1"],
                beta1,
                group["eps"],
                state["step"],
                lr,
                state["state2"],
                beta2,
                weight_decay=wd,
            )

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        if "state1" not in state:
            self.init_moments(state, grad, group["min_8bit_size"])
        state["step"] += 1
        if "rank" not in group:
            self.adam_update(p, grad.contiguous(), state, group, lr, wd)
            return
        # bitsandbytes updates a tensor in place. Given zeros, lr 1 and no decay, it leaves the
        # negated Adam direction there, in the low-rank space; that is what we project back.
        direction = torch.zeros_like(grad).contiguous()
        self.adam_update(direction, grad.contiguous(), state, group, lr=1.0, wd=0.0)
        if wd > 0:
            p.mul_(1.0 - lr * wd)
        p.add_(project_back(direction, state), alpha=lr * group["scale"])


class GaLoreAdafactor(GaLoreOptimizer):
    """Adafactor with GaLore projection: torch.optim.Adafactor's update, run in the low-rank space.

    Factored second moments (a row and a column vector) of the projected gradient, no first moment,
    relative step size rho_t = min(lr, 1/sqrt(t)) times max(eps2, RMS of the full weight), update
    RMS clipped to `d` before it is projected back.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def update(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        eps1, eps2 = group["eps"]
        if "row_var" not in state and "variance" not in state:
            if grad.dim() > 1:
                state["row_var"] = grad.new_zeros(grad.shape[:-1] + (1,))
                state["col_var"] = grad.new_zeros(grad.shape[:-2] + (1,) + grad.shape[-1:])
            else:
                state["variance"] = torch.zeros_like(grad)
        state["step"] += 1
        t = state["step"]
        tiny = torch.finfo(p.dtype).eps if eps1 is None else eps1

        one_minus_beta2_t = t ** group["beta2_decay"]
        rho_t = min(lr, 1.0 / math.sqrt(t))
        alpha = max(eps2, p.norm(2).item() / math.sqrt(p.numel())) * rho_t
        if wd != 0:
            p.mul_(1.0 - lr * wd)

        if grad.dim() > 1:
            row_var, col_var = state["row_var"], state["col_var"]
            row_var.lerp_(torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)), one_minus_beta2_t)
            col_var.lerp_(torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)), one_minus_beta2_t)
            var_estimate = row_var @ col_var
            var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=tiny))
        else:
            state["variance"].lerp_(grad * grad, one_minus_beta2_t)
            var_estimate = state["variance"].clone()
        update = var_estimate.clamp_(min=tiny * tiny).rsqrt_().mul_(grad)
        denom = max(1.0, update.norm(2).item() / (math.sqrt(update.numel()) * group["d"]))
        if "rank" in group:
            p.add_(project_back(update, state), alpha=-alpha / denom * group["scale"])
        else:
            p.add_(update, alpha=-alpha / denom)
