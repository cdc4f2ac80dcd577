"""Where a run executes: device choice, the torch.distributed process group, and byte counters."""

from __future__ import annotations

import resource

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA peak allocated on GPU; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mean_over_ranks(value: float, device: torch.device) -> float:
    """`value` averaged over every rank of the process group (all ranks get the same result)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def gradient_bytes(model: torch.nn.Module) -> int:
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
