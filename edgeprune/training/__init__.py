"""Training and recovery fine-tuning: SGD with a one-cycle schedule, optional knowledge
distillation from the unpruned model, checkpointed after every epoch and resumable."""

from edgeprune.training.loop import (
    TrainConfig,
    TrainResult,
    default_device,
    distillation_loss,
    evaluate,
    random_crop_flip,
    top1,
    train,
)

__all__ = ["TrainConfig", "TrainResult", "default_device", "distillation_loss", "evaluate",
           "random_crop_flip", "top1", "train"]
