"""Segmentation agreement: mean IoU between predicted and reference masks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._convert import to_numpy

__all__ = ["to_labels", "iou_per_class", "miou", "MeanIoU"]


def to_labels(mask: Any, threshold: float = 0.5) -> np.ndarray:
    """Label map from a mask: float masks are probabilities (``>= threshold`` -> 1, else 0), bool and
    integer masks are already labels. Shapes ``(H, W)`` or batched ``(..., H, W)`` pass through."""
    m = to_numpy(mask)
    if m.dtype == np.bool_:
        return m.astype(np.int64)
    if np.issubdtype(m.dtype, np.floating):
        return (m >= threshold).astype(np.int64)
    return m.astype(np.int64)


def _counts(
    pred: np.ndarray, ref: np.ndarray, num_classes: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    keep = np.ones(pred.shape, bool) if ignore_index is None else ref != ignore_index
    p, r = pred[keep], ref[keep]
    if p.size and (min(p.min(), r.min()) < 0 or max(p.max(), r.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got {p.min()}..{p.max()} / {r.min()}..{r.max()}"
        )
    inter = np.bincount(r[p == r], minlength=num_classes)[:num_classes]
    area_p = np.bincount(p, minlength=num_classes)[:num_classes]
    area_r = np.bincount(r, minlength=num_classes)[:num_classes]
    return inter, area_p + area_r - inter


def iou_per_class(
    pred: Any, ref: Any, num_classes: int = 2, threshold: float = 0.5, ignore_index: int | None = None
) -> np.ndarray:
    """IoU of every class, pooled over all pixels of the batch; ``nan`` for classes in neither mask."""
    inter, union = _counts(to_labels(pred, threshold), to_labels(ref, threshold), num_classes, ignore_index)
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def miou(
    pred: Any, ref: Any, num_classes: int = 2, threshold: float = 0.5, ignore_index: int | None = None
) -> float:
    """Mean IoU over the classes present in the prediction or the reference (absent classes are skipped,
    so a perfectly matching all-background pair scores 1.0).

    ``pred``/``ref``: probability masks (float, binarised at ``threshold``; then ``num_classes`` is 2:
    background and foreground) or integer label maps, unbatched ``(H, W)`` or batched ``(N, H, W)``.
    Intersections and unions are summed over the whole batch before dividing (dataset-style mIoU).
    Returns ``nan`` only if every pixel is ignored.
    """
    per_class = iou_per_class(pred, ref, num_classes, threshold, ignore_index)
    return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


class MeanIoU:
    """Streaming mIoU: ``update(pred, ref)`` per frame/batch, ``compute()`` pools all pixels seen."""

    def __init__(self, num_classes: int = 2, threshold: float = 0.5, ignore_index: int | None = None) -> None:
        self.num_classes, self.threshold, self.ignore_index = num_classes, threshold, ignore_index
        self.reset()

    def reset(self) -> None:
        self.inter = np.zeros(self.num_classes, np.int64)
        self.union = np.zeros(self.num_classes, np.int64)

    def update(self, pred: Any, ref: Any) -> None:
        p, r = to_labels(pred, self.threshold), to_labels(ref, self.threshold)
        inter, union = _counts(p, r, self.num_classes, self.ignore_index)
        self.inter += inter
        self.union += union

    def compute(self) -> float:
        present = self.union > 0
        return float((self.inter[present] / self.union[present]).mean()) if present.any() else float("nan")
