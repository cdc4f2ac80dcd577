"""MLflow tracking: the client side (client.py, no Ray) and Tune's callback (callback.py)."""


def __getattr__(name: str):
    # Compatibility: sweeps written before platform/ had subpackages pickled `ranktune.platform.tracking.<name>`; `--resume`
    # of such a sweep finds it here. Imported on first use, so importing this package stays cheap.
    if name in ('MlflowTrials',):
        from ranktune.platform.tracking.client import MlflowTrials

        return locals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
