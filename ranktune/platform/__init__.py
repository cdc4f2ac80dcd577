"""CLI, orchestration (Ray Tune / Train), tracking (MLflow), export and memory estimation."""
