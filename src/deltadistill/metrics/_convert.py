"""Shared conversions: tensors/arrays to numpy, box IoU and prediction-dict normalisation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """Tensor (any device) or array-like to a numpy array, without copying when possible."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def det_arrays(
    d: Mapping[str, Any], score_threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(boxes [K,4] float64 xyxy, scores [K], labels [K] int64)`` from a detection dict.

    A missing ``"scores"`` (real ground truth) means score 1 for every box. With ``score_threshold``,
    boxes scoring below it are dropped.
    """
    boxes = to_numpy(d.get("boxes", np.zeros((0, 4)))).astype(np.float64).reshape(-1, 4)
    labels = to_numpy(d.get("labels", np.zeros(0))).astype(np.int64).reshape(-1)
    scores = d.get("scores")
    sc = np.ones(len(boxes)) if scores is None else to_numpy(scores).astype(np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(sc):
        raise ValueError(f"boxes/labels/scores lengths differ: {len(boxes)}, {len(labels)}, {len(sc)}")
    if score_threshold is not None:
        keep = sc >= score_threshold
        boxes, sc, labels = boxes[keep], sc[keep], labels[keep]
    return boxes, sc, labels


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a [N,4]`` and ``b [M,4]`` -> ``[N, M]`` (0 for empty boxes)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
