"""Compatibility: sweeps written before platform/ had subpackages pickled names from this module;
`ranktune sweep --resume` of such a sweep finds them here. New code imports ranktune.platform.sweep.progress."""

from ranktune.platform.sweep.progress import SweepProgress  # noqa: F401
