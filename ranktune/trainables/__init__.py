"""What one trial runs: LLaMA model, data, optimization methods, training loop, checkpoints.

Usable without Ray or MLflow:

    from ranktune.trainables import Trainer, load_config
    Trainer(load_config("configs/tiny.yaml")).fit()
"""

from ranktune.trainables.config import ConfigError, TrainConfig, load_config
from ranktune.trainables.model import MODEL_PRESETS, Llama, LlamaConfig, build_model
from ranktune.trainables.trainer import Trainer, TrainingDiverged

__all__ = [
    "MODEL_PRESETS",
    "ConfigError",
    "Llama",
    "LlamaConfig",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "load_config",
]
