"""ranktune: sweeps of low-rank LLaMA pretraining recipes (GaLore, ReLoRA) with Ray Tune, Optuna and MLflow."""

__version__ = "0.1.0"
