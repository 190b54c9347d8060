"""Training the students and gates: losses, the distillation loop, checkpoints, multi-process."""

from .distill import DistillResult, distill
from .losses import TASK_LOSSES, CostModel, distill_loss, register_task_loss

__all__ = ["TASK_LOSSES", "CostModel", "DistillResult", "distill", "distill_loss", "register_task_loss"]
