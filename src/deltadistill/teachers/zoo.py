"""The teacher zoo: convert a cached TF.js graph model and wrap it with pre/post-processing.

What the graphs compute (read from ``model.json`` and ``@vladmandic/human`` 3.3.6 ``src/object/
centernet.ts`` / ``src/segmentation/selfie.ts``):

* **centernet** (MobileNetV3 CenterNet, github.com/610265158/mobilenetv3_centernet; no licence stated
  upstream). Input ``tower_0/images`` [1,512,512,3] RGB float in 0..255 (human stretches the frame to
  512x512 without normalisation). Outputs at stride 4 (128x128):
  ``tower_0/keypoints`` = sigmoid class heatmap, 80 COCO classes, channel 0 = person (human's
  ``labels[classVal]``); ``tower_0/wh`` = 16 * raw regression = distances (left, top, right, bottom)
  **in input pixels** from the cell point ``(x*4, y*4)``. The graph's own ``tower_0/detections``
  [1,100,6] = (x1, y1, x2, y2, score, class) is 3x3 max-pool peak picking + top-100 over the flat
  (y, x, class) map, with ``x1 = 4*x - l, y1 = 4*y - t, x2 = 4*x + r, y2 = 4*y + b``. Our decoder
  reproduces that in torch (batched), then adds a score threshold and class-wise NMS (human runs a
  class-agnostic NMS). ``forward`` stops at the two maps (the detection sub-graph is pruned).
* **selfie** (MediaPipe selfie segmentation, 256x256 "general" model via PINTO_model_zoo, Apache-2.0).
  Input ``input_1`` [1,256,256,3] RGB in 0..1; output ``activation_10`` [1,256,256,1] = sigmoid person
  probability. Class 1 ("person") is the foreground.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .detection import decode_centernet
from .fetch import fetch
from .tfjs_graph import TFJSGraphModule

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class TeacherSpec:
    """Static facts about one teacher graph."""

    name: str
    task: str
    input_size: tuple[int, int]
    outputs: tuple[str, ...]
    class_names: tuple[str, ...]
    divisor: float  # model input = uint8 RGB / divisor (division, as human does, for bit-exact parity)
    task_loss: str = "mse"  # the distillation task loss (deltadistill.train.losses.TASK_LOSSES)


SPECS: dict[str, TeacherSpec] = {
    "centernet": TeacherSpec("centernet", "detection", (512, 512), ("tower_0/keypoints", "tower_0/wh"),
                             COCO_CLASSES, 1.0, "centernet"),
    "selfie": TeacherSpec("selfie", "segmentation", (256, 256), ("activation_10",),
                          ("background", "person"), 255.0, "seg_bce"),
}


class Teacher(nn.Module):
    """A converted graph (``self.graph``, holding the nn.Conv2d modules) plus pre/post-processing."""

    def __init__(self, spec: TeacherSpec, graph: TFJSGraphModule) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.source = spec.name  # what `deltadistill.teachers.resolve` takes to make this teacher again
        self.task = spec.task
        self.input_size = spec.input_size
        self.class_names = list(spec.class_names)
        self.task_loss = spec.task_loss
        self.input_range = 255.0 / spec.divisor  # frames in 0..1 times this = the model's input
        self.graph = graph

    def preprocess(self, frames: np.ndarray) -> Tensor:
        """uint8 RGB (H, W, 3) or (N, H, W, 3) at ``input_size`` -> float NCHW in the model's range."""
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or tuple(arr.shape[1:3]) != self.input_size:
            raise ValueError(f"{self.name}: expected (N, {self.input_size[0]}, {self.input_size[1]}, 3) frames, "
                             f"got {arr.shape}; resize/letterbox first (deltadistill.video.fit_frame)")
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
        return x / self.spec.divisor if self.spec.divisor != 1.0 else x


class CenterNetTeacher(Teacher):
    """MobileNetV3-CenterNet detector (80 COCO classes, stride 4)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (heatmap (N,80,h,w) with sigmoid applied, ltrb (N,4,h,w) box edge distances in input px)."""
        heatmap, ltrb = self.graph(x)
        return heatmap, ltrb

    def postprocess(self, outputs: tuple[Tensor, Tensor], score_threshold: float = 0.2, top_k: int = 100,
                    iou_threshold: float = 0.5, max_detections: int = 100) -> list[dict[str, Tensor]]:
        """Per-image ``{"boxes": (K,4) xyxy input px, "scores": (K,), "labels": (K,) COCO index}``."""
        heatmap, ltrb = outputs
        stride = self.input_size[1] / heatmap.shape[-1]
        return decode_centernet(heatmap, ltrb, stride, score_threshold, top_k, iou_threshold, max_detections,
                                image_size=self.input_size)


class SelfieTeacher(Teacher):
    """MediaPipe selfie person segmentation."""

    def forward(self, x: Tensor) -> Tensor:
        """Return the person probability (N, 1, h, w) (sigmoid applied)."""
        (mask,) = self.graph(x)
        return mask

    def postprocess(self, outputs: Tensor, score_threshold: float | None = None) -> Tensor:
        """Probability mask (N, H, W) at ``input_size``; binarised (0/1 float) if ``score_threshold`` given."""
        mask = outputs
        if tuple(mask.shape[-2:]) != self.input_size:
            mask = F.interpolate(mask, size=self.input_size, mode="bilinear", align_corners=False)
        mask = mask[:, 0]
        return (mask >= score_threshold).float() if score_threshold is not None else mask


_CLASSES: dict[str, type[Teacher]] = {"centernet": CenterNetTeacher, "selfie": SelfieTeacher}


#: zoo teachers imported from ONNX files in other npm packages (`isnet`), loaded by their own modules
IMPORTED_ZOO = ("isnet",)


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted([*SPECS, *IMPORTED_ZOO])


def load(name: str, cache_dir: str | os.PathLike[str] | None = None,
         input_size: tuple[int, int] | None = None) -> Teacher:
    """Fetch (if not cached) and convert teacher ``name``; returned in eval mode on CPU.

    ``input_size`` ``(H, W)`` runs it at another size than its native one: the graph's resizes and
    whole-map pools follow the input (sides should be multiples of 32; 64 for ``isnet``, whose default
    is its file's 1024x1024).
    """
    if name == "isnet":
        from .isnet import load_isnet

        return load_isnet(input_size, cache_dir)  # type: ignore[return-value]
    if name not in SPECS:
        raise KeyError(f"unknown teacher {name!r}; available: {available()}")
    spec = SPECS[name]
    if input_size is not None:
        h, w = (int(v) for v in input_size)
        if h % 32 or w % 32:
            raise ValueError(f"{name} runs at sizes that are multiples of 32, not {h}x{w}")
        spec = replace(spec, input_size=(h, w))
    path = fetch(name, cache_dir) / f"{name}.json"
    graph = TFJSGraphModule(path, outputs=list(spec.outputs))
    return _CLASSES[name](spec, graph).eval()
