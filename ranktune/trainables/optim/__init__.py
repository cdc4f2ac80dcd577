"""Optimization methods: importing this package registers the built-in ones (see registry.py).

from ranktune.trainables.optim import OPTIMIZERS, build_method, register
"""

from ranktune.trainables.optim import apollo, baselines, frozen_blocks, galore, relora  # noqa: F401  (each registers its methods)
from ranktune.trainables.optim.base import Method, TorchOptimizerMethod, decay_groups, tensor_bytes
from ranktune.trainables.optim.registry import (
    OPTIMIZERS,
    MethodFlops,
    OptimizerEntry,
    ParamShape,
    PhaseState,
    TargetScaling,
    baseline_methods,
    build_method,
    build_schedule,
    foreign_sections,
    reference_methods,
    register,
    unregister,
)

__all__ = [
    "OPTIMIZERS",
    "Method",
    "MethodFlops",
    "OptimizerEntry",
    "ParamShape",
    "PhaseState",
    "TargetScaling",
    "TorchOptimizerMethod",
    "baseline_methods",
    "reference_methods",
    "build_method",
    "build_schedule",
    "decay_groups",
    "foreign_sections",
    "register",
    "tensor_bytes",
    "unregister",
]
