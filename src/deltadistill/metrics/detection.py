"""Detection quality against a reference: COCO mAP via pycocotools, with teacher boxes as ground truth.

In delta distillation the teacher (the full per-frame network) is the reference: the question is how
far the cheap delta frames drift from what the teacher would have said on the same frame.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ._convert import det_arrays

__all__ = ["map_vs_reference", "COCO_IOU_THRESHOLDS"]

COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())

Detections = Mapping[str, Any]


def _coco(images: list[dict], cats: list[dict], anns: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": cats, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _anns(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_id: int, first_id: int
) -> list[dict]:
    out = []
    for k, ((x0, y0, x1, y1), s, c) in enumerate(zip(boxes, scores, labels, strict=True)):
        w, h = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
        out.append(
            {"id": first_id + k, "image_id": image_id, "category_id": int(c), "bbox": [x0, y0, w, h],
             "area": w * h, "iscrowd": 0, "score": float(s)}
        )  # fmt: skip
    return out


def map_vs_reference(
    preds: Sequence[Detections],
    refs: Sequence[Detections],
    score_threshold: float = 0.3,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_dets: int = 100,
) -> dict[str, float]:
    """mAP of ``preds`` against ``refs`` (one dict per image: ``boxes`` [K,4] xyxy, ``scores``, ``labels``).

    Conventions:
      * ``refs`` with ``scores`` are teacher detections: only boxes with ``score >= score_threshold``
        become ground truth. Refs without ``scores`` are real ground truth and are all kept.
      * ``preds`` are never thresholded (AP is a ranking metric; low-score boxes only add recall).
      * Frames whose reference is empty stay in the evaluation: predictions there are false positives.
      * Per COCO, a class with no reference box anywhere is left out of the class mean.
      * If there is no reference box at all: ``1.0`` when there are no predictions either (perfect
        agreement with a teacher that saw nothing) and ``0.0`` otherwise (everything is a false positive).

    Returns ``{"map": mAP@[iou_thresholds], "map50": AP@0.5 (nan if 0.5 not in the thresholds),
    "map75": likewise, "num_refs": int, "num_preds": int}`` (counts after thresholding).
    """
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} prediction frames but {len(refs)} reference frames")
    ious = np.asarray(sorted(iou_thresholds), dtype=np.float64)
    gt_anns: list[dict] = []
    dt_anns: list[dict] = []
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        gb, gs, gl = det_arrays(r, None if r.get("scores") is None else score_threshold)
        gt_anns += _anns(gb, gs, gl, i + 1, len(gt_anns) + 1)
        pb, ps, pl = det_arrays(p)
        dt_anns += _anns(pb, ps, pl, i + 1, len(dt_anns) + 1)
    result = {"num_refs": len(gt_anns), "num_preds": len(dt_anns)}
    if not gt_anns:
        value = 1.0 if not dt_anns else 0.0
        return {"map": value, "map50": value, "map75": value, **result}

    images = [{"id": i + 1} for i in range(len(refs))]
    cat_ids = sorted({a["category_id"] for a in gt_anns} | {a["category_id"] for a in dt_anns})
    cats = [{"id": c} for c in cat_ids]
    gt, dt = _coco(images, cats, gt_anns), _coco(images, cats, dt_anns)
    ev = COCOeval(gt, dt, iouType="bbox")
    ev.params.iouThrs = ious
    ev.params.maxDets = [1, 10, max_dets]
    ev.params.catIds = cat_ids
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    # precision: [iou, recall, class, area range, max dets]; -1 marks classes without references
    prec = ev.eval["precision"][:, :, :, 0, -1]

    def _mean(sel: np.ndarray) -> float:
        valid = sel[sel > -1]
        return float(valid.mean()) if valid.size else float("nan")

    def _at(t: float) -> float:
        hit = np.flatnonzero(np.isclose(ious, t))
        return _mean(prec[hit[0]]) if hit.size else float("nan")

    return {"map": _mean(prec), "map50": _at(0.5), "map75": _at(0.75), **result}
