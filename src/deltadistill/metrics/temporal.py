"""Temporal consistency: do predictions on consecutive frames agree once camera/object motion is undone?

Motion is estimated with OpenCV Farneback optical flow on the RGB frames, so a model that tracks a
moving object perfectly scores ~1.0, while flicker (especially at key/delta frame switches) lowers it.
Both accumulators are fed frame by frame and keep only the previous frame, so they run inside a
streaming evaluation loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from ._convert import box_iou, det_arrays, to_numpy
from .segmentation import miou, to_labels

__all__ = ["farneback_flow", "warp_to_next", "match_iou", "SegmentationConsistency", "DetectionConsistency"]


def _gray(frame_rgb: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    f = to_numpy(frame_rgb)
    if f.ndim == 3 and f.shape[0] == 3 and f.shape[-1] != 3:  # CHW tensor layout
        f = f.transpose(1, 2, 0)
    if f.dtype != np.uint8:  # float frames: 0..1 or 0..255
        f = np.clip(f * (255.0 if f.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    g = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) if f.ndim == 3 else f
    if size is not None and g.shape != size:
        g = cv2.resize(g, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return g


def farneback_flow(src_gray: np.ndarray, dst_gray: np.ndarray) -> np.ndarray:
    """Dense flow ``(H, W, 2)`` with ``dst(y + fy, x + fx) ~= src(y, x)`` (pixels, x first)."""
    return cv2.calcOpticalFlowFarneback(
        src_gray,
        dst_gray,
        None,
        pyr_scale=0.5,
        levels=4,
        winsize=21,
        iterations=3,
        poly_n=7,
        poly_sigma=1.5,
        flags=0,
    )


def warp_to_next(prev: np.ndarray, flow_next_to_prev: np.ndarray, nearest: bool) -> np.ndarray:
    """Resample ``prev`` (t-1) onto frame t's grid using the backward flow from t to t-1."""
    h, w = flow_next_to_prev.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = gx + flow_next_to_prev[..., 0], gy + flow_next_to_prev[..., 1]
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(prev, mx, my, interpolation=interp, borderMode=cv2.BORDER_REPLICATE)


class SegmentationConsistency:
    """Mean over consecutive pairs of ``mIoU(pred_t, warp(pred_{t-1} -> t))``.

    Flow is computed from frame t to t-1 at the mask's resolution (frames are resized to it) and used
    to pull the previous mask onto frame t (``cv2.remap``; probabilities bilinear then thresholded,
    label maps nearest). ``warp=False`` compares raw consecutive masks (static-camera baseline).
    ``compute()`` is ``nan`` until two frames were seen.
    """

    def __init__(self, num_classes: int = 2, threshold: float = 0.5, warp: bool = True) -> None:
        self.num_classes, self.threshold, self.warp = num_classes, threshold, warp
        self.reset()

    def reset(self) -> None:
        self._prev_gray: np.ndarray | None = None
        self._prev_mask: np.ndarray | None = None
        self.scores: list[float] = []

    def update(self, frame_rgb: Any, prediction: Any) -> float | None:
        """Add frame t and its mask ``(H, W)`` (probabilities or labels); returns this pair's score."""
        mask = to_numpy(prediction).squeeze()
        if mask.ndim != 2:
            raise ValueError(f"expected a single (H, W) mask, got shape {mask.shape}")
        is_prob = np.issubdtype(mask.dtype, np.floating)
        mask = mask.astype(np.float32) if is_prob else to_labels(mask).astype(np.int32)
        gray = _gray(frame_rgb, mask.shape) if self.warp else None
        score = None
        if self._prev_mask is not None:
            prev = self._prev_mask
            if self.warp:
                assert gray is not None and self._prev_gray is not None
                flow = farneback_flow(gray, self._prev_gray)
                prev = warp_to_next(prev, flow, nearest=not is_prob)
            score = miou(mask, prev, self.num_classes, self.threshold)
            self.scores.append(score)
        self._prev_gray, self._prev_mask = gray, mask
        return score

    def compute(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")


def match_iou(a_boxes: np.ndarray, a_labels: np.ndarray, b_boxes: np.ndarray, b_labels: np.ndarray) -> float:
    """Greedy same-class matching by IoU; returns ``sum(matched IoU) / max(len(a), len(b))``.

    Unmatched boxes (objects that pop in or out) count as IoU 0. Both sets empty -> ``nan``.
    """
    n = max(len(a_boxes), len(b_boxes))
    if n == 0:
        return float("nan")
    iou = box_iou(a_boxes, b_boxes)
    iou[a_labels[:, None] != b_labels[None, :]] = 0.0
    total = 0.0
    order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None), iou.shape))[0] if iou.size else []
    used_a, used_b = set(), set()
    for i, j in order:
        if iou[i, j] <= 0.0:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        total += float(iou[i, j])
    return total / n


class DetectionConsistency:
    """Mean over consecutive pairs of the matched-box IoU between frame t and motion-compensated t-1.

    Definition: keep boxes with ``score >= score_threshold``; compute forward flow t-1 -> t and shift
    every box of t-1 by the median flow inside it (median resists background pixels in the box);
    match shifted t-1 boxes to t boxes greedily by IoU within each class; the pair score is
    ``sum(matched IoU) / max(#boxes t-1, #boxes t)``, so flicker (a box vanishing) costs as much as
    a total miss. Pairs where neither frame has a box carry no information and are skipped;
    ``compute()`` is ``nan`` if no pair counted. ``warp=False`` compares the raw boxes.
    ``flow_scale`` < 1 computes the flow on downscaled frames for speed.
    """

    def __init__(self, score_threshold: float = 0.3, warp: bool = True, flow_scale: float = 1.0) -> None:
        self.score_threshold, self.warp, self.flow_scale = score_threshold, warp, flow_scale
        self.reset()

    def reset(self) -> None:
        self._prev_gray: np.ndarray | None = None
        self._prev: tuple[np.ndarray, np.ndarray] | None = None
        self.scores: list[float] = []

    def _shift(self, boxes: np.ndarray, flow: np.ndarray, s: float) -> np.ndarray:
        h, w = flow.shape[:2]
        out = boxes.copy()
        for k, (x0, y0, x1, y1) in enumerate(boxes * s):
            xa, xb = int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.ceil(x1), 1, w))
            ya, yb = int(np.clip(np.floor(y0), 0, h - 1)), int(np.clip(np.ceil(y1), 1, h))
            region = flow[ya : max(yb, ya + 1), xa : max(xb, xa + 1)].reshape(-1, 2)
            dx, dy = np.median(region, axis=0) / s
            out[k] += (dx, dy, dx, dy)
        return out

    def update(self, frame_rgb: Any, prediction: Mapping[str, Any]) -> float | None:
        """Add frame t (RGB) and its detections dict; returns this pair's score (None if skipped)."""
        boxes, _, labels = det_arrays(prediction, self.score_threshold)
        gray, scale = None, 1.0
        if self.warp:
            g = _gray(frame_rgb)
            size = (max(1, round(g.shape[0] * self.flow_scale)), max(1, round(g.shape[1] * self.flow_scale)))
            gray, scale = _gray(g, size), size[0] / g.shape[0]
        score = None
        if self._prev is not None:
            pb, pl = self._prev
            if self.warp and len(pb):
                assert gray is not None and self._prev_gray is not None
                pb = self._shift(pb, farneback_flow(self._prev_gray, gray), scale)
            value = match_iou(pb, pl, boxes, labels)
            if not np.isnan(value):
                score = value
                self.scores.append(value)
        self._prev_gray, self._prev = gray, (boxes, labels)
        return score

    def compute(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")
