"""The method itself: the wrapper layer (`DeltaConv2d`), the student registry, the config, `convert`,
the modes, BN folding, `deploy`, MAC counting, and saving and loading a converted model.

Nothing here imports from the rest of the package (streams, measurement, apps): the core is what
every other room builds on."""

from .checkpoint import CheckpointError, load, save
from .config import DeltaConfig
from .convert import ConversionReport, UnsupportedLayerError, convert
from .deploy import deploy
from .layer import DeltaConv2d, DeployedDeltaConv2d
from .macs import MacReport, count_macs
from .modes import delta_layers, mode, set_mode
from .students import STUDENTS, Student, register_student

__all__ = [
    "STUDENTS", "CheckpointError", "ConversionReport", "DeltaConfig", "DeltaConv2d", "DeployedDeltaConv2d",
    "MacReport", "Student", "UnsupportedLayerError", "convert", "count_macs", "delta_layers", "deploy", "load",
    "mode", "register_student", "save", "set_mode",
]
