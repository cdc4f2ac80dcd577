"""ReLoRA's partial optimizer reset: prune the Adam moments of the LoRA factors at each restart.

Each moment tensor (first and second, independently, as in the reference code) is pruned:

    magnitude  keep the round((1 - reset_ratio) * n) entries largest by |value|, zero the rest
    random     keep that many entries chosen uniformly at random, zero the rest
    full       zero everything

The per-parameter step count is kept, as in the reference: Adam's bias correction is then ~1, so the
first updates after a restart are large (m/sqrt(v) ~ 3 per entry for pruned entries), which is why
the LR re-warms from 0.

8-bit AdamW (bitsandbytes) keeps each moment as uint8 codes with one fp32 absmax per block (eightbit.py)
and a fixed code book (signed dynamic map for the first moment, unsigned for the second). Pruning
there is: dequantize the block-wise codes to fp32, prune exactly as above, requantize into the same
buffers (fresh per-block absmax). Both dynamic maps contain an exact 0, and pruned entries are
given that code explicitly, so they decode to exactly 0; survivors keep their value up to 8-bit rounding, and
usually gain precision, since their block's absmax now comes from survivors only. Tensors below
bitsandbytes' min_8bit_size (eightbit.MIN_8BIT_SIZE) hold fp32 moments and are pruned directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from ranktune.trainables.optim import eightbit

ResetMode = Literal["magnitude", "random", "full"]

# torch AdamW names its moments exp_avg / exp_avg_sq; bitsandbytes calls them state1 / state2.
_TORCH_MOMENTS = ("exp_avg", "exp_avg_sq")
_BNB_MOMENTS = (("state1", "absmax1", "qmap1"), ("state2", "absmax2", "qmap2"))


def keep_count(numel: int, reset_ratio: float) -> int:
    return round(numel * (1.0 - reset_ratio))


@torch.no_grad()
def prune_(tensor: torch.Tensor, reset_ratio: float, mode: ResetMode, generator: torch.Generator) -> None:
    """Zero all but keep_count(n, reset_ratio) entries of `tensor`, in place."""
    flat = tensor.view(-1)
    keep = 0 if mode == "full" else keep_count(flat.numel(), reset_ratio)
    if keep >= flat.numel():
        return
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        if mode == "magnitude":
            # topk gives exactly `keep` survivors (a quantile threshold would not, with ties).
            kept = flat.abs().float().topk(keep, sorted=False).indices
        else:
            kept = torch.randperm(flat.numel(), generator=generator)[:keep].to(flat.device)
        mask[kept] = True
    flat.mul_(mask.to(flat.dtype))


@torch.no_grad()
def _prune_bnb_8bit_(state: dict, reset_ratio: float, mode: ResetMode, generator: torch.Generator) -> None:
    import bitsandbytes.functional as bnbf

    for codes_key, absmax_key, qmap_key in _BNB_MOMENTS:
        codes, absmax, qmap = state[codes_key], state[absmax_key], state[qmap_key]
        values = bnbf.dequantize_blockwise(codes, absmax=absmax, code=qmap, blocksize=eightbit.BLOCK)
        prune_(values, reset_ratio, mode, generator)
        new_codes, quant = bnbf.quantize_blockwise(values, code=qmap, blocksize=eightbit.BLOCK)
        # bitsandbytes' CPU quantizer maps 0 to a small non-zero code (1e-5 x absmax); write the code
        # of the map's exact 0 for pruned entries so they really decode to 0 on every device.
        new_codes[values == 0] = int((qmap == 0).nonzero()[0])
        codes.copy_(new_codes)
        absmax.copy_(quant.absmax)


@torch.no_grad()
def prune_moments_(
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.nn.Parameter],
    reset_ratio: float,
    mode: ResetMode,
    generator: torch.Generator,
) -> int:
    """Prune the moments of `params` in `optimizer` (torch AdamW or bitsandbytes 8-bit AdamW).

    Returns the number of moment tensors pruned (parameters without state yet are skipped).
    """
    pruned = 0
    for p in params:
        state = optimizer.state.get(p)
        if not state:
            continue
        if "exp_avg" in state:
            names = _TORCH_MOMENTS
        elif "state1" in state and state["state1"].dtype == torch.uint8:
            _prune_bnb_8bit_(state, reset_ratio, mode, generator)
            pruned += 2
            continue
        elif "state1" in state:  # bitsandbytes keeps small tensors in fp32
            names = ("state1", "state2")
        else:
            raise TypeError(f"don't know the moment names of {type(optimizer).__name__}: {sorted(state)}")
        for name in names:
            prune_(state[name], reset_ratio, mode, generator)
            pruned += 1
    return pruned
