"""A user's own graph (ONNX, or TF.js ``model.json``) as a teacher like the zoo's.

The graph becomes real conv modules (`onnx_graph`, `tfjs_graph`); this wraps it with what the rest
of the library asks of a teacher: frames in 0..1 mapped to the graph's value range, an input size,
a task to score it by, and a ``source`` that names it again when a saved model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .graph import GraphModule
from .zoo import Teacher, TeacherSpec

#: what an imported teacher can be scored as (`deltadistill.tasks`): ``map`` compares its raw output maps
IMPORTED_TASKS = ("map", "segmentation")


class ImportedTeacher(Teacher):
    """An imported graph plus pre/post-processing. Its input is frames in 0..1 (``input_range`` 1).

    ``forward`` maps them to ``value_range`` (for example ``(-1, 1)`` for a graph trained on
    ``(x - 0.5) / 0.5``) and returns the graph's only output, or a tuple of them.
    """

    def __init__(self, graph: GraphModule, *, name: str, source: str, input_size: tuple[int, int],
                 value_range: tuple[float, float] = (0.0, 1.0), task: str = "map", map_threshold: float = 0.5,
                 size_multiple: int | None = None) -> None:
        if task not in IMPORTED_TASKS:
            raise ValueError(f"task {task!r}: an imported teacher is scored as one of {IMPORTED_TASKS} "
                             "(a detector needs its own postprocess: use map)")
        channels = int(getattr(graph, "channels", 3))
        if channels != 3:  # refused here, not at the first frame (and not after a demo made its folder)
            raise ValueError(f"{name} takes {channels}-channel input; deltadistill feeds RGB frames (3 channels): "
                             "export the graph with a 3-channel input (e.g. grey = the channels' mean)")
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value range must be (low, high) with high > low, got {value_range}")
        spec = TeacherSpec(name, task, tuple(int(v) for v in input_size), tuple(graph.output_names),  # type: ignore[arg-type]
                           ("background", "foreground"), 255.0, "mse")
        super().__init__(spec, graph)
        self.source = source
        self.value_range = (lo, hi)
        self.map_threshold = float(map_threshold)
        # a graph that knows its total stride says so; any other is measured with one frame
        self.size_multiple = size_multiple or _size_multiple(graph, self.input_size)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        lo, hi = self.value_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        out = self.graph(x)
        return out[0] if len(out) == 1 else out

    def postprocess(self, outputs: Tensor | tuple[Tensor, ...]) -> Tensor:
        """``map``: the first output map (N, C, h, w) as it is. ``segmentation``: its channel 0 as a
        probability mask (N, H, W) at ``input_size``."""
        out = outputs if isinstance(outputs, Tensor) else outputs[0]
        if self.task == "map":
            return out
        if out.dim() != 4:
            raise ValueError(f"{self.name}: segmentation needs an (N, C, H, W) map, the graph gives {tuple(out.shape)}")
        mask = out[:, :1]
        if tuple(mask.shape[-2:]) != self.input_size:
            mask = F.interpolate(mask, size=self.input_size, mode="bilinear", align_corners=False)
        return mask[:, 0]

    def set_input_size(self, input_size: tuple[int, int]) -> ImportedTeacher:
        """The same teacher at another input size (the graph follows it; sizes must suit its strides)."""
        h, w = (int(v) for v in input_size)
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"{self.name} needs input sizes that are multiples of {m}, got {h}x{w}")
        self.input_size = (h, w)
        self.spec = replace(self.spec, input_size=(h, w))
        return self


def round_up(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``size`` rounded up, per side, to a multiple of ``multiple``."""
    return tuple(-(-int(s) // multiple) * multiple for s in size)  # type: ignore[return-value]


@torch.no_grad()
def _size_multiple(graph: nn.Module, size: tuple[int, int]) -> int:
    """The total stride of the graph's deepest feature map: input sizes must be multiples of it.

    Measured by running one frame and taking the smallest map a conv sees, as a power of two
    (maps pooled to 1x1, as in squeeze-and-excite blocks, do not count).
    """
    smallest = [min(size)]

    def hook(m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        for t in (args[0], out):
            if tuple(t.shape[-2:]) != (1, 1):
                smallest[0] = min(smallest[0], *t.shape[-2:])

    hooks = [m.register_forward_hook(hook) for m in graph.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        graph(torch.zeros(1, getattr(graph, "channels", 3), *size))
    finally:
        for h in hooks:
            h.remove()
    ratio = min(size) / max(smallest[0], 1)
    return max(1, 2 ** round(math.log2(ratio))) if ratio >= 1 else 1


def from_onnx(path: str | Path, input_size: tuple[int, int] | None = None,
              value_range: tuple[float, float] = (0.0, 1.0), task: str = "map",
              map_threshold: float = 0.5) -> ImportedTeacher:
    """Any ONNX CNN as a teacher: real conv modules that `convert` wraps, the rest as torch ops.

    ``input_size`` ``(H, W)`` is required when the graph leaves its sizes open; ``value_range`` is
    what the graph expects for black and white (``(-1, 1)`` for ``(x - 0.5) / 0.5``); ``task``:
    ``map`` (score the output maps against the teacher's) or ``segmentation`` (channel 0 is a
    foreground probability). An op the importer lacks raises `UnsupportedOpError` naming it.
    """
    from .onnx_graph import OnnxGraphModule

    graph = OnnxGraphModule(path, input_size=input_size).eval()
    size = tuple(input_size) if input_size is not None else graph.native_size
    return ImportedTeacher(graph, name=Path(path).stem, source=str(Path(path).resolve()), input_size=size,  # type: ignore[arg-type]
                           value_range=value_range, task=task, map_threshold=map_threshold).eval()


def from_tfjs(model_json: str | Path, input_size: tuple[int, int] | None = None,
              value_range: tuple[float, float] = (0.0, 1.0), task: str = "map",
              map_threshold: float = 0.5) -> ImportedTeacher:
    """Any TF.js graph model as a teacher (see `from_onnx`); its native size is the placeholder's."""
    from .tfjs_graph import TFJSGraphModule

    graph = TFJSGraphModule(model_json).eval()
    native = graph.native_size
    if input_size is None and native is None:
        raise ValueError(f"{model_json} leaves its input size open: give input_size=(H, W) (--input-size HxW)")
    size = tuple(input_size) if input_size is not None else native
    return ImportedTeacher(graph, name=Path(model_json).stem, source=str(Path(model_json).resolve()), input_size=size,  # type: ignore[arg-type]
                           value_range=value_range, task=task, map_threshold=map_threshold).eval()
