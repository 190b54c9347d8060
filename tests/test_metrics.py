"""Metrics tests with hand-made known answers."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from deltadistill.metrics import (
    DetectionConsistency,
    MeanIoU,
    SegmentationConsistency,
    iou_per_class,
    map_vs_reference,
    match_iou,
    miou,
)
from deltadistill.metrics._convert import box_iou


def _det(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> dict:
    d = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if scores is not None:
        d["scores"] = torch.tensor(scores)
    return d


REF = [
    _det([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2], [0.9, 0.8]),
    _det([[5, 5, 25, 25]], [1], [0.95]),
]


# ---------------------------------------------------------------- detection mAP
def test_map_identical_is_one() -> None:
    out = map_vs_reference(REF, REF)
    assert out["map"] == pytest.approx(1.0) and out["map50"] == pytest.approx(1.0)
    assert out["num_refs"] == 3 and out["num_preds"] == 3


def test_map_disjoint_is_zero() -> None:
    far = [
        _det([[100, 100, 110, 110], [200, 200, 220, 220]], [1, 2], [0.9, 0.8]),
        _det([[300, 0, 320, 20]], [1], [0.9]),
    ]
    assert map_vs_reference(far, REF)["map"] == pytest.approx(0.0)


def test_map_half_width_shift_fails_at_iou_05() -> None:
    # box shifted by half its width: IoU = 1/3 < 0.5, so class 1 AP is 0 and class 2 (exact) AP is 1
    ref = [_det([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2], [0.9, 0.8])]
    pred = [_det([[5, 0, 15, 10], [20, 20, 40, 40]], [1, 2], [0.9, 0.8])]
    assert box_iou(pred[0]["boxes"].numpy()[:1], ref[0]["boxes"].numpy()[:1])[0, 0] == pytest.approx(1 / 3)
    assert map_vs_reference(pred, ref)["map50"] == pytest.approx(0.5)
    assert map_vs_reference(pred, ref, iou_thresholds=[0.3])["map"] == pytest.approx(1.0)


def test_map_reference_score_threshold_and_ground_truth() -> None:
    ref = [_det([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [0.9, 0.1])]  # 2nd ref below 0.3: ignored
    pred = [_det([[0, 0, 10, 10]], [1], [0.7])]
    assert map_vs_reference(pred, ref)["map"] == pytest.approx(1.0)
    gt = [_det([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1])]  # no scores: real GT, all kept
    assert map_vs_reference(pred, gt)["map50"] == pytest.approx(0.5, abs=0.01)


def test_map_empty_conventions() -> None:
    empty = _det([], [], [])
    assert map_vs_reference([empty], [empty])["map"] == 1.0
    assert map_vs_reference(REF[:1], [empty])["map"] == 0.0
    assert map_vs_reference([empty, empty], REF)["map"] == 0.0
    # a false positive on a frame whose reference is empty lowers precision
    with_fp = map_vs_reference([REF[0], _det([[0, 0, 10, 10]], [1], [0.99])], [REF[0], empty])
    assert with_fp["map"] == pytest.approx(0.75)  # measured with pycocotools; 0 < x < 1 could not fail
    with pytest.raises(ValueError):
        map_vs_reference(REF, REF[:1])


def test_map_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    map_vs_reference(REF, REF)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- segmentation mIoU
def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int, value: float = 1.0) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[y0:y1, x0:x1] = value
    return m


def test_miou_known_values() -> None:
    a = _rect(10, 10, 0, 10, 0, 4)
    assert miou(a, a) == 1.0
    assert miou(a, 1.0 - a) == 0.0
    b = _rect(10, 10, 0, 10, 2, 6)  # fg IoU 2/6, bg: inter 4 cols, union 8 cols -> 0.5
    assert miou(a, b) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert miou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # only background present


def test_miou_probabilities_labels_and_batches() -> None:
    prob = torch.tensor(_rect(8, 8, 0, 8, 0, 4, 0.7))
    labels = torch.tensor(_rect(8, 8, 0, 8, 0, 4)).long()
    assert miou(prob, labels) == 1.0
    three = np.array([[0, 1, 2, 2]])
    per = iou_per_class(three, np.array([[0, 1, 1, 1]]), num_classes=4)
    assert per[0] == 1.0 and per[1] == pytest.approx(1 / 3) and per[2] == 0.0 and math.isnan(per[3])
    batch_p = np.stack([_rect(4, 4, 0, 4, 0, 2), _rect(4, 4, 0, 4, 0, 2)])
    batch_r = np.stack([_rect(4, 4, 0, 4, 0, 2), _rect(4, 4, 0, 4, 2, 4)])
    acc = MeanIoU()
    for p, r in zip(batch_p, batch_r, strict=True):
        acc.update(p, r)
    assert acc.compute() == pytest.approx(miou(batch_p, batch_r)) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- temporal consistency
_TEXTURE = cv2.GaussianBlur(
    np.random.default_rng(0).integers(0, 255, (220, 280, 3)).astype(np.uint8), (0, 0), 2
)


def _frame(t: int, dx: int, dy: int) -> np.ndarray:
    return np.roll(_TEXTURE, (dy * t, dx * t), (0, 1))[20:180, 20:240].copy()


def test_segmentation_consistency_identical_and_disjoint() -> None:
    static = _frame(0, 0, 0)
    a, b = _rect(160, 220, 10, 50, 10, 50), _rect(160, 220, 100, 150, 150, 200)
    same, flip = SegmentationConsistency(), SegmentationConsistency(warp=False)
    assert math.isnan(same.compute())
    for t in range(4):
        same.update(static, a)
        flip.update(static, a if t % 2 == 0 else b)
    assert same.compute() == pytest.approx(1.0)
    assert iou_per_class(a, b)[1] == 0.0  # foreground disjoint; background overlaps
    assert flip.compute() == pytest.approx(miou(a, b))


def test_segmentation_consistency_static_video_shifted_mask() -> None:
    # static content, mask jumps by half its width: flow is ~0 so the warp cannot explain the jump
    static = _frame(0, 0, 0)
    a, b = _rect(160, 220, 40, 100, 40, 100), _rect(160, 220, 40, 100, 70, 130)
    sc = SegmentationConsistency()
    sc.update(static, a)
    sc.update(static, b)
    assert sc.compute() == pytest.approx(miou(b, a), abs=1e-3)
    fg = 30 * 60 / (90 * 60)
    bg = (160 * 220 - 90 * 60) / (160 * 220 - 30 * 60)
    assert sc.compute() == pytest.approx((fg + bg) / 2, abs=1e-3)


def test_segmentation_consistency_follows_motion_with_flow() -> None:
    dx, dy = 3, 2
    warped, raw = SegmentationConsistency(), SegmentationConsistency(warp=False)
    for t in range(6):
        m = _rect(160, 220, 40 + dy * t, 100 + dy * t, 50 + dx * t, 110 + dx * t)
        warped.update(_frame(t, dx, dy), m)
        raw.update(_frame(t, dx, dy), m)
    assert warped.compute() > 0.98
    assert raw.compute() < 0.93


def test_match_iou_known_values() -> None:
    a = np.array([[0.0, 0, 10, 10]])
    assert match_iou(a, np.array([1]), a, np.array([1])) == 1.0
    assert match_iou(a, np.array([1]), a + [5, 0, 5, 0], np.array([1])) == pytest.approx(1 / 3)
    assert match_iou(a, np.array([1]), a, np.array([2])) == 0.0  # other class never matches
    assert match_iou(a, np.array([1]), np.zeros((0, 4)), np.zeros(0, int)) == 0.0  # object vanished
    assert math.isnan(match_iou(np.zeros((0, 4)), np.zeros(0, int), np.zeros((0, 4)), np.zeros(0, int)))


def test_detection_consistency_static_and_moving() -> None:
    static = _frame(0, 0, 0)
    box = [[40.0, 40, 100, 100]]
    shifted = [[70.0, 40, 130, 100]]  # half its width to the right: IoU 1/3
    dc = DetectionConsistency()
    dc.update(static, _det(box, [1], [0.9]))
    dc.update(static, _det(shifted, [1], [0.9]))
    assert dc.compute() == pytest.approx(1 / 3, abs=0.02)

    dx, dy = 3, 2
    warped, raw = DetectionConsistency(), DetectionConsistency(warp=False)
    for t in range(6):
        pred = _det([[50 + dx * t, 40 + dy * t, 110 + dx * t, 100 + dy * t]], [1], [0.9])
        warped.update(_frame(t, dx, dy), pred)
        raw.update(_frame(t, dx, dy), pred)
    assert warped.compute() > 0.95
    assert raw.compute() < 0.9


def test_detection_consistency_thresholds_and_skips_empty_pairs() -> None:
    static = _frame(0, 0, 0)
    dc = DetectionConsistency(score_threshold=0.5)
    dc.update(static, _det([[0.0, 0, 10, 10]], [1], [0.2]))  # below threshold: empty frame
    dc.update(static, _det([], [], []))
    assert math.isnan(dc.compute())  # empty/empty pair skipped
    dc.update(static, _det([[0.0, 0, 10, 10]], [1], [0.9]))  # box appears: pair scores 0
    dc.update(static, _det([[0.0, 0, 10, 10]], [1], [0.9]))  # box stays: pair scores 1
    assert dc.scores == pytest.approx([0.0, 1.0], abs=0.01) and dc.compute() == pytest.approx(0.5, abs=0.01)
