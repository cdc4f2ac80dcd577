"""Compatibility: sweeps written before platform/ had subpackages pickled names from this module;
`ranktune sweep --resume` of such a sweep finds them here. New code imports ranktune.platform.store.study_storage."""

from ranktune.platform.store.study_storage import SweepStudyStorage, _reopen  # noqa: F401
