"""The free rival every delta model must beat: run the teacher every K frames and repeat its output.

A delta model is worth its MACs only where it scores better than this at the *same* MACs. Its MAC
ratio R (teacher MACs over the delta model's amortised MACs) buys the rival a keyframe every R
frames; between whole intervals the rival mixes the two neighbours, so its score is interpolated
linearly in amortised MACs, i.e. in 1/K.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def repeat_keyframes(teacher_preds: Sequence[T], interval: int) -> list[T]:
    """The rival's predictions: the teacher's on frames 0, K, 2K, ..., repeated on the frames between."""
    if interval < 1:
        raise ValueError(f"keyframe interval must be >= 1, got {interval}")
    return [teacher_preds[i - i % interval] for i in range(len(teacher_preds))]


def equal_mac_interval(teacher_macs: float, delta_amortised_macs: float) -> float:
    """``K_eq``: the keyframe interval at which repeating keyframes costs what the delta model does."""
    if delta_amortised_macs <= 0:
        raise ValueError("the delta model's amortised MACs must be positive")
    return teacher_macs / delta_amortised_macs


def rival_at(interval: float, score_at: Callable[[int], float]) -> float:
    """The rival's score at a possibly fractional interval, from its scores at whole intervals.

    At or below 1 the rival is the teacher itself (every frame a keyframe). Otherwise the score is
    linear in 1/K between ``floor(K)`` and ``ceil(K)``: a policy mixing the two intervals gets it.
    """
    if interval <= 1:
        return score_at(1)
    lo = math.floor(interval)
    if lo == interval:
        return score_at(lo)
    hi = lo + 1
    w = (1 / lo - 1 / interval) / (1 / lo - 1 / hi)  # 0 at lo, 1 at hi
    return (1 - w) * score_at(lo) + w * score_at(hi)


def margin_needed(rival: float) -> float:
    """How much more than the rival a model must score to *beat* it: half the rival's remaining gap
    to the teacher (accuracy 1), or 0.02, whichever is smaller."""
    return min(0.02, (1.0 - rival) / 2)


def rival_equal_macs(teacher_preds: Sequence[Any], score: Callable[[list[Any]], float], teacher_macs: float,
                     delta_amortised_macs: float, accuracy: float) -> dict[str, Any]:
    """``accuracy.rival_equal_macs`` of a report: the rival at the delta model's own MAC cost.

    ``score(preds)`` scores predictions against ``teacher_preds`` (mAP50 or mIoU vs the teacher).
    """
    k_eq = equal_mac_interval(teacher_macs, delta_amortised_macs)
    cache: dict[int, float] = {}

    def score_at(k: int) -> float:
        if k not in cache:
            cache[k] = 1.0 if k == 1 else score(repeat_keyframes(teacher_preds, k))
        return cache[k]

    value = rival_at(k_eq, score_at)
    need = margin_needed(value)
    return {"interval": k_eq, "value": value, "scores_at": {str(k): v for k, v in sorted(cache.items())},
            "margin_needed": need, "margin": accuracy - value, "beats": accuracy >= value + need - 1e-12}
