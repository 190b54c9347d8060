"""Training the students and gates: closed-form calibration, losses, the distillation loop, checkpoints, DDP."""

from .calibrate import CalibrationResult, calibrate
from .distill import DistillResult, distill
from .losses import TASK_LOSSES, CostModel, distill_loss, register_task_loss

__all__ = ["TASK_LOSSES", "CalibrationResult", "CostModel", "DistillResult", "calibrate", "distill", "distill_loss", "register_task_loss"]
