"""Compatibility: sweeps written before platform/ had subpackages pickled names from this module;
`ranktune sweep --resume` of such a sweep finds them here. New code imports ranktune.platform.sweep.trial."""

from ranktune.platform.sweep.trial import run_trial, trial_memory_rejection  # noqa: F401
