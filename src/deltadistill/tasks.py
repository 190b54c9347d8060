"""Per-task glue for evaluation: how to score, track and draw a teacher's predictions.

One small class per task, so the demo and the benchmark need not know what a task outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import DetectionConsistency, SegmentationConsistency, map_vs_reference, miou
from .video import draw_boxes, overlay_mask

#: Teacher detections at or above this score are the reference "ground truth" for mAP vs teacher.
DETECTION_SCORE_THRESHOLD = 0.3


class DetectionTask:
    metric = "mAP50_vs_teacher"

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = class_names

    def single(self, preds: Any) -> dict[str, np.ndarray]:
        p = preds[0]
        return {k: v.detach().cpu().numpy() for k, v in p.items()}

    def accuracy(self, delta: list[Any], teacher: list[Any]) -> dict[str, float]:
        r = map_vs_reference(delta, teacher, score_threshold=DETECTION_SCORE_THRESHOLD)
        return {"value": float(r["map50"]), "mAP50_95_vs_teacher": float(r["map"]),
                "score_threshold": DETECTION_SCORE_THRESHOLD}

    def consistency(self) -> DetectionConsistency:
        return DetectionConsistency(score_threshold=DETECTION_SCORE_THRESHOLD)

    def draw(self, frame: np.ndarray, pred: dict[str, np.ndarray]) -> np.ndarray:
        keep = pred["scores"] >= DETECTION_SCORE_THRESHOLD
        return draw_boxes(frame, pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep], self.class_names)


class SegmentationTask:
    metric = "mIoU_vs_teacher"

    def single(self, preds: Any) -> np.ndarray:
        return preds[0].detach().cpu().numpy()

    def accuracy(self, delta: list[Any], teacher: list[Any]) -> dict[str, float]:
        return {"value": float(miou(np.stack(delta), np.stack(teacher)))}

    def consistency(self) -> SegmentationConsistency:
        return SegmentationConsistency()

    def draw(self, frame: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return overlay_mask(frame, pred)


class MapTask:
    """For a teacher whose task we do not know: compare its raw output maps with the teacher's.

    A one-channel map in 0..1 is a probability map: scored by the mean IoU of the map binarised at
    ``threshold``. Any other map: by ``1 - ||y - y_t|| / ||y_t||`` over all frames (1 is the teacher).
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.metric = "map_agreement_vs_teacher"

    def single(self, preds: Any) -> np.ndarray:
        return preds[0].detach().float().cpu().numpy()

    def _is_probability(self, maps: np.ndarray) -> bool:
        return maps.shape[1] == 1 and float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0

    def accuracy(self, delta: list[Any], teacher: list[Any]) -> dict[str, float]:
        d, t = np.stack(delta).astype(np.float64), np.stack(teacher).astype(np.float64)
        if self._is_probability(t):
            self.metric = f"mIoU_vs_teacher (map >= {self.threshold:g})"
            return {"value": float(miou(d[:, 0], t[:, 0], threshold=self.threshold)), "kind": "binarised_miou",
                    "threshold": self.threshold}
        self.metric = "relative_accuracy_vs_teacher"
        norm = float(np.linalg.norm(t))
        return {"value": 1.0 - float(np.linalg.norm(d - t)) / norm if norm > 0 else float(np.array_equal(d, t)),
                "kind": "relative_error"}

    def consistency(self) -> _MapConsistency:
        return _MapConsistency(self.threshold)

    def draw(self, frame: np.ndarray, pred: np.ndarray) -> np.ndarray:
        m = pred[0] if pred.shape[0] == 1 else np.abs(pred).max(axis=0)
        top = float(m.max()) if m.size else 0.0
        if not (0.0 <= float(m.min()) and top <= 1.0):
            m = m / top if top > 0 else m
        return overlay_mask(frame, (m >= self.threshold).astype(np.float32))


class _NoConsistency:
    def update(self, frame: Any, prediction: Any) -> None:
        return None

    def compute(self) -> float:
        return float("nan")


class _MapConsistency:
    """Temporal consistency of a one-channel probability map (binarised, as a mask); none otherwise."""

    def __init__(self, threshold: float) -> None:
        self.inner: SegmentationConsistency | _NoConsistency | None = None
        self.threshold = threshold

    def update(self, frame: Any, prediction: np.ndarray) -> None:
        if self.inner is None:
            prob = prediction.shape[0] == 1 and prediction.min() >= 0 and prediction.max() <= 1
            self.inner = SegmentationConsistency(threshold=self.threshold) if prob else _NoConsistency()
        if isinstance(self.inner, SegmentationConsistency):
            self.inner.update(frame, prediction[0])

    def compute(self) -> float:
        return self.inner.compute() if self.inner is not None else float("nan")


TASKS = ("detection", "segmentation", "map")


def task_for(teacher: Any) -> DetectionTask | SegmentationTask | MapTask:
    task = getattr(teacher, "task", None)
    if task == "detection":
        return DetectionTask(list(teacher.class_names))
    if task == "segmentation":
        return SegmentationTask()
    if task == "map":
        return MapTask(getattr(teacher, "map_threshold", 0.5))
    raise ValueError(f"no evaluation for task {task!r}: teachers must say task= one of {', '.join(TASKS)}")
