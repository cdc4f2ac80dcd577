"""APOLLO's random projector: a Gaussian matrix drawn from a seed, so it can be stored or regenerated.

For an (m, n) gradient G and rank r the projector has GaLore's layout (same state keys, so
`galore.projector.project` applies it):

    proj_left   (m, r)  entries N(0, 1/r):  low = proj_left.T @ G    (r, n)
    proj_right  (r, n)  entries N(0, 1/r):  low = G @ proj_right.T   (m, r)

Each parameter starts from seed `group["seed"] + its 1-based position among the optimizer's
parameters` (apollo-torch's rule when the group seed is 0) and moves to `next_seed(seed)` at every
projector update, so the k-th projector of a parameter is fixed by its position and k alone: the
same in per-layer and whole-model mode (the per-layer method passes each parameter's global position
as the group seed) and after a resume. Only the seed of the current projector is state
(`proj_seed`, an int64 tensor); the matrix is optionally stored beside it.
"""

from __future__ import annotations

import math

import torch

from ranktune.trainables.optim.galore.projector import projected_sides

SEED_ADVANCE = 15  # the new seed is the 15th int64 drawn from a generator seeded with the old one
INT64_MAX = torch.iinfo(torch.int64).max


def next_seed(seed: int) -> int:
    """The seed of the next projector (apollo-torch's chaining rule, so parity runs draw the same matrices)."""
    gen = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, INT64_MAX, (SEED_ADVANCE,), generator=gen)[-1])


def random_projector(grad: torch.Tensor, rank: int, proj_type: str, seed: int) -> dict[str, torch.Tensor]:
    """The projector of `grad` for `seed`, as `{"proj_left": ..., "proj_right": ...}` (the sides projected).

    Drawn in fp32 on the gradient's device and cast to its dtype (bf16 weights get bf16 projectors),
    as apollo-torch does; CPU and CUDA generators give different matrices for the same seed.
    `full` draws the left factor first, then the right one from the same generator.
    """
    left, right = projected_sides(grad.shape, proj_type)
    m, n = grad.shape
    gen = torch.Generator(device=grad.device).manual_seed(seed)
    std = math.sqrt(rank)  # divided, not multiplied by 1/std: the same bits as apollo-torch's matrices
    out = {}
    if left:
        out["proj_left"] = torch.randn(m, rank, generator=gen, device=grad.device).div_(std).to(grad.dtype)
    if right:
        out["proj_right"] = torch.randn(rank, n, generator=gen, device=grad.device).div_(std).to(grad.dtype)
    return out
