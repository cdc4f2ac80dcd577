"""`adamw_frozen_blocks`: AdamW on the embeddings, head and norms, with the decoder blocks' attention and
MLP matrices frozen at their initialization. A sanity baseline, not a method to use.

The compared methods (GaLore, APOLLO, Fira, ReLoRA, LoRA) change exactly those matrices and leave the
rest to plain AdamW. On a proxy whose parameters are mostly embeddings (`tiny`: 95%), a method can win
by how little it moves the matrices; this baseline moves them not at all. When it ties or beats the best
method, the proxy cannot tell the methods apart, and the report says so (platform/report/proxy_checks.py reads
`sanity_baseline` from this entry). docs/ladder.md has the measurements that motivated it.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import torch

from ranktune.trainables.model import ATTENTION_MLP_LINEARS
from ranktune.trainables.optim.base import TorchOptimizerMethod, decay_groups
from ranktune.trainables.optim.baselines import full_rank_state
from ranktune.trainables.optim.registry import Device, OptimizerEntry, ParamShape, PhaseState, register


def is_block_matrix(name: str) -> bool:
    """An attention or MLP projection weight of a decoder layer (what the low-rank methods change)."""
    return any(fnmatch.fnmatchcase(name, f"layers.*.{suffix}.weight") for suffix in ATTENTION_MLP_LINEARS)


def build_frozen_blocks(model, cfg) -> TorchOptimizerMethod:
    frozen = 0
    for name, p in model.named_parameters():
        if is_block_matrix(name):
            p.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise ValueError(
            "optim.name: adamw_frozen_blocks -> a model with attention/MLP matrices to freeze (none found)"
        )
    o = cfg.optim
    opt = torch.optim.AdamW(decay_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    return TorchOptimizerMethod(model, opt, cfg.train.grad_clip)


def estimate_frozen_blocks(shapes: tuple[ParamShape, ...], cfg, device: Device) -> list[PhaseState]:
    trained = [p for p in shapes if not is_block_matrix(p.name)]
    phase = full_rank_state("adamw", trained, device, "blocks frozen")
    return [dataclasses.replace(phase, weights=sum(p.numel * p.count * p.value_bytes for p in shapes))]


register(
    "adamw_frozen_blocks",
    OptimizerEntry(
        build=build_frozen_blocks,
        estimate_state=estimate_frozen_blocks,
        description="sanity baseline: AdamW with the blocks' attention/MLP matrices frozen at init",
        sanity_baseline=True,
        colour="#000000",  # black: a reference line, far from every method's colour
    ),
)
