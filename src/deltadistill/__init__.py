"""deltadistill: make a per-frame video CNN 2-4x cheaper per frame by Delta Distillation.

    import deltadistill as dd
    model = dd.convert(teacher, dd.DeltaConfig(reduction=4))   # students + gates, in place
    dd.distill(model, videos, steps=500, budget=0.25)            # unlabelled video is enough
    dd.deploy(model)                                             # hard choices, lean layers
    stream = dd.DeltaStream(model, keyframe=dd.EveryK(8))
    for frame in frames: out = stream(frame)
"""

from .checkpoint import CheckpointError, load, save
from .config import DeltaConfig
from .convert import ConversionReport, UnsupportedLayerError, convert
from .deploy import deploy
from .layer import DeltaConv2d, DeployedDeltaConv2d
from .macs import MacReport, count_macs
from .modes import mode, set_mode
from .stream import DeltaStream, EveryK, KeyframePolicy
from .students import STUDENTS, Student, register_student
from .summary import summary
from .train import DistillResult, distill

__all__ = [
    "STUDENTS", "CheckpointError", "ConversionReport", "DeltaConfig", "DeltaConv2d", "DeltaStream",
    "DeployedDeltaConv2d", "DistillResult", "EveryK", "KeyframePolicy", "MacReport", "Student", "UnsupportedLayerError",
    "convert", "count_macs", "deploy", "distill", "load", "mode", "register_student", "save", "set_mode", "summary",
]
__version__ = "0.1.0"
