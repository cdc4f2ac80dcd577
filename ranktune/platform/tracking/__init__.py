"""MLflow tracking, the client side (client.py): it imports no Ray, so the reading commands do not either.
Tune's callback that records trials is platform/sweep/mlflow_callback.py."""


def __getattr__(name: str):
    # Compatibility: sweeps written before platform/ had subpackages pickled
    # `ranktune.platform.tracking.MlflowTrials` (Tune's callback); `--resume` of such a sweep finds it here.
    # Imported on first use, so reading commands that import the client do not import Ray.
    if name == "MlflowTrials":
        from ranktune.platform.sweep.mlflow_callback import MlflowTrials

        return MlflowTrials
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
