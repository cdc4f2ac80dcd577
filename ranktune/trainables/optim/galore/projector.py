"""GaLore's gradient projector: top singular vectors of a gradient, and projection to and from them.

For a 2-D gradient G (m, n) the projector is kept as plain tensors in the optimizer state, so it is
saved and restored with the optimizer (the public galore-torch keeps a Python object there):

    proj_left   (m, r)  U_r, the top-r left singular vectors:   low = proj_left.T @ G       (r, n)
    proj_right  (r, n)  V_r^T, the top-r right singular vectors: low = G @ proj_right.T      (m, r)

`proj_type` says which sides are projected (same names and rules as galore-torch):

    std          the smaller side: right if m >= n, else left  (moments r * max(m, n))
    reverse_std  the larger side
    left, right  always that side
    full         both sides (moments r * r)

`projector_dtype: int8` (Q-GaLore keeps projectors in low bits) stores each singular vector as int8
codes with one fp32 absmax, `proj_left_absmax` (r,) / `proj_right_absmax` (r,): half the bytes of a
bf16 projector. Projection dequantizes one projector at a time.
"""

from __future__ import annotations

import torch

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
SVD_METHODS = ("full", "randomized")
PROJECTOR_DTYPES = ("same", "int8")
PROJECTOR_KEYS = ("proj_left", "proj_right", "proj_left_absmax", "proj_right_absmax")


def projected_sides(shape: torch.Size | tuple[int, ...], proj_type: str) -> tuple[bool, bool]:
    """(left, right): which sides of an (m, n) gradient `proj_type` projects."""
    m, n = shape
    if proj_type == "std":
        return (m < n, m >= n)
    if proj_type == "reverse_std":
        return (m >= n, m < n)
    if proj_type == "left":
        return (True, False)
    if proj_type == "right":
        return (False, True)
    if proj_type == "full":
        return (True, True)
    raise ValueError(f"proj_type: {proj_type!r} -> one of {list(PROJ_TYPES)}")


def randomized_svd(
    a: torch.Tensor, rank: int, oversample: int, power_iters: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`rank` (U_r (m, r), Vh_r (r, n)) of `a` by a randomized range finder (Halko et al. 2011).

    The same algorithm as torch.svd_lowrank, but the Gaussian sketch comes from a generator seeded with
    `seed` rather than the global RNG: a resumed run draws the same sketch, and the data order and
    anything else that uses the global RNG are untouched.
    """
    m, n = a.shape
    q = min(rank + oversample, m, n)
    gen = torch.Generator(device=a.device).manual_seed(seed)
    sketch = torch.randn(n, q, generator=gen, device=a.device, dtype=a.dtype)
    basis = torch.linalg.qr(a @ sketch).Q  # (m, q), spans roughly the top-q column space
    for _ in range(power_iters):  # each iteration sharpens the spectrum's decay by a power of 2
        basis = torch.linalg.qr(a.T @ basis).Q
        basis = torch.linalg.qr(a @ basis).Q
    u_small, _, vh = torch.linalg.svd(basis.T @ a, full_matrices=False)  # SVD of a small (q, n) matrix
    return (basis @ u_small[:, :rank], vh[:rank])


def top_singular_vectors(
    grad: torch.Tensor, rank: int, svd: str = "full", oversample: int = 8, power_iters: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r (m, r), Vh_r (r, n)) of a gradient, computed in fp32 whatever the gradient's dtype."""
    a = grad.float()
    if svd == "full":
        u, _, vh = torch.linalg.svd(a, full_matrices=False)
        return u[:, :rank], vh[:rank]
    if svd == "randomized":
        return randomized_svd(a, rank, oversample, power_iters, seed)
    raise ValueError(f"svd: {svd!r} -> one of {list(SVD_METHODS)}")


def update_projector(state: dict, grad: torch.Tensor, group: dict) -> None:
    """Recompute the projector of one parameter from its current gradient, into `state`."""
    left, right = projected_sides(grad.shape, group["proj_type"])
    u, vh = top_singular_vectors(
        grad,
        group["rank"],
        svd=group["svd"],
        oversample=group["svd_oversample"],
        power_iters=group["svd_power_iters"],
        # Seeded by the update count: identical sketches in per-layer and whole-model mode, and on resume.
        seed=state["step"],
    )
    # Stored in the gradient's dtype (bf16 weights keep bf16 projectors), as galore-torch does, and
    # copied out of the SVD's factors: a slice would keep all min(m, n) singular vectors alive.
    int8 = group.get("projector_dtype", "same") == "int8"
    if left:
        store(state, "proj_left", u, grad.dtype, vector_dim=0, int8=int8)
    if right:
        store(state, "proj_right", vh, grad.dtype, vector_dim=1, int8=int8)


def store(state: dict, key: str, factor: torch.Tensor, dtype: torch.dtype, vector_dim: int, int8: bool) -> None:
    """Keep a projector factor in `dtype`, or as int8 codes with one absmax per singular vector."""
    if not int8:
        state[key] = factor.to(dtype, copy=True, memory_format=torch.contiguous_format)
        return
    absmax = factor.abs().amax(dim=vector_dim, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny)
    state[key] = torch.round(factor / absmax * 127).to(torch.int8).contiguous()
    state[f"{key}_absmax"] = absmax.reshape(-1).float().contiguous()


def projector(state: dict, key: str, dtype: torch.dtype) -> torch.Tensor:
    """A projector factor in `dtype`, dequantized when it is stored as int8."""
    factor = state[key]
    if factor.dtype != torch.int8:
        return factor
    absmax = state[f"{key}_absmax"]
    scale = absmax[None, :] if key == "proj_left" else absmax[:, None]  # one per singular vector
    return factor.to(dtype) * (scale / 127).to(dtype)


def project(grad: torch.Tensor, state: dict) -> torch.Tensor:
    """Full-rank gradient -> its coordinates in the projector's subspace."""
    low = grad
    if "proj_left" in state:
        low = torch.matmul(projector(state, "proj_left", grad.dtype).t(), low)
    if "proj_right" in state:
        low = torch.matmul(low, projector(state, "proj_right", grad.dtype).t())
    return low


def project_back(low: torch.Tensor, state: dict) -> torch.Tensor:
    """Low-rank update -> full-rank update. GaLore's scale (alpha) is left to the caller, which folds
    it into the step size rather than spend a pass over the full-size update on it."""
    full = low
    if "proj_left" in state:
        full = torch.matmul(projector(state, "proj_left", low.dtype), full)
    if "proj_right" in state:
        full = torch.matmul(full, projector(state, "proj_right", low.dtype))
    return full
