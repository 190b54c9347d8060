"""Training the students and gates: closed-form calibration, losses, the distillation loop, checkpoints, DDP."""

from .calibrate import CalibrationResult, calibrate, sparsify
from .distill import DistillResult, distill
from .losses import TASK_LOSSES, CostModel, distill_loss, register_task_loss
from .tune import TuneResult, tune_sparse

__all__ = ["TASK_LOSSES", "CalibrationResult", "CostModel", "DistillResult", "TuneResult", "calibrate", "distill", "sparsify", "tune_sparse", "distill_loss", "register_task_loss"]
