"""Running a sweep on Ray Tune: the driver, the trial, early stopping, progress and the replicates."""


def __getattr__(name: str):
    # Compatibility: sweeps written before platform/ had subpackages pickled
    # `ranktune.platform.sweep.resolved_config_yaml`; `--resume` of such a sweep finds it here. Imported on
    # first use, so importing the package does not import the driver (and Ray).
    if name == "resolved_config_yaml":
        from ranktune.platform.sweep.driver import resolved_config_yaml

        return resolved_config_yaml
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
