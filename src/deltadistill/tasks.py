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


def task_for(teacher: Any) -> DetectionTask | SegmentationTask:
    task = getattr(teacher, "task", None)
    if task == "detection":
        return DetectionTask(list(teacher.class_names))
    if task == "segmentation":
        return SegmentationTask()
    raise ValueError(f"no evaluation for task {task!r}: teachers must say task='detection' or 'segmentation'")
