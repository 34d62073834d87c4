"""Training: the one trainer, the model tasks and ``train_bundle``."""

from recstack.training.pipeline import TrainConfig, train_bundle
from recstack.training.plans import ModelPlan
from recstack.training.trainer import FitResult, TrainerConfig, TrainingError, TrainTask, fit

__all__ = [
    "FitResult",
    "ModelPlan",
    "TrainConfig",
    "TrainTask",
    "TrainerConfig",
    "TrainingError",
    "fit",
    "train_bundle",
]
