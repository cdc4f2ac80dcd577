"""Compatibility: sweeps written before platform/ had subpackages pickled names from this module;
`ranktune sweep --resume` of such a sweep finds them here. New code imports ranktune.platform.sweep.milestones."""

from ranktune.platform.sweep.milestones import MethodAwareASHA, windows_for_params  # noqa: F401
