"""bitsandbytes' blockwise 8-bit optimizer-state layout, in one place for the optimizers and the estimator.

A moment of a tensor with at least `MIN_8BIT_SIZE` values is stored as uint8 codes plus one fp32 absmax
per block of `BLOCK` values; smaller tensors (norms) keep fp32 moments. An optimizer keeps one signed
and one unsigned 256-entry fp32 code map (qmap) for its two moments. The same on CPU and CUDA.
"""

from __future__ import annotations

import importlib.util
import math

BLOCK = 256  # values per quantization block
MIN_8BIT_SIZE = 4096  # tensors with fewer values keep 32-bit state
QMAPS_BYTES = 2 * 256 * 4  # signed + unsigned dynamic code maps, fp32, one pair per optimizer


def adam_state_bytes(numel: int) -> int:
    """Both Adam moments of one tensor: codes and per-block absmax, or fp32 below MIN_8BIT_SIZE."""
    if numel < MIN_8BIT_SIZE:
        return 2 * numel * 4
    return 2 * numel + 2 * 4 * math.ceil(numel / BLOCK)


def bitsandbytes_missing() -> list[str]:
    if importlib.util.find_spec("bitsandbytes") is None:
        return ["optim.name: 8-bit states need bitsandbytes -> pip install bitsandbytes, or use adamw"]
    return []
