"""Running a sweep on Ray Tune: the driver, the trial, early stopping, progress and the replicates."""


def __getattr__(name: str):
    # Compatibility: sweeps written before platform/ had subpackages pickled `ranktune.platform.sweep.<name>`; `--resume`
    # of such a sweep finds it here. Imported on first use, so importing this package stays cheap.
    if name in ('resolved_config_yaml',):
        from ranktune.platform.sweep.driver import resolved_config_yaml

        return locals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
