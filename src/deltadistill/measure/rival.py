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


def repeat_at_keys(teacher_preds: Sequence[T], keys: Sequence[bool]) -> list[T]:
    """The rival under any keyframe policy: the teacher's prediction at each keyframe, held until the next."""
    if not keys or not keys[0]:
        raise ValueError("the first frame must be a keyframe")
    out, last = [], teacher_preds[0]
    for pred, key in zip(teacher_preds, keys, strict=True):
        last = pred if key else last
        out.append(last)
    return out


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


def beats(accuracy: float, rival: float, need: float) -> bool:
    """Whether ``accuracy`` beats ``rival`` by ``need``: never on a tie (a rival at 1 needs +0, and a
    model that equals it has not beaten it), never on NaN."""
    return accuracy > rival and accuracy >= rival + need - 1e-12


def rival_equal_macs(teacher_preds: Sequence[Any], score: Callable[[list[Any]], float], teacher_macs: float,
                     delta_amortised_macs: float, accuracy: float,
                     keys_at: Callable[[int], Sequence[bool]] | None = None) -> dict[str, Any]:
    """``accuracy.rival_equal_macs`` of a report: the rival at the delta model's own MAC cost.

    ``score(preds)`` scores predictions against ``teacher_preds`` (mAP50 or mIoU vs the teacher).
    ``keys_at(K)``: the keyframes the delta model's policy picks at interval K (e.g. `SceneCut`), so
    that the rival runs under the same policy; its cost is then its share of keyframes, and the
    score is interpolated in that cost between whole intervals.
    """
    if keys_at is not None:
        return _rival_under_policy(teacher_preds, score, delta_amortised_macs / teacher_macs, accuracy, keys_at)
    k_eq = equal_mac_interval(teacher_macs, delta_amortised_macs)
    cache: dict[int, float] = {}

    def score_at(k: int) -> float:
        if k not in cache:
            cache[k] = 1.0 if k == 1 else score(repeat_keyframes(teacher_preds, k))
        return cache[k]

    value = rival_at(k_eq, score_at)
    need = margin_needed(value)
    return {"interval": k_eq, "value": value, "scores_at": {str(k): v for k, v in sorted(cache.items())},
            "margin_needed": need, "margin": accuracy - value, "beats": beats(accuracy, value, need)}


def rival_equal_time(teacher_preds: Sequence[Any], score: Callable[[list[Any]], float], fastest_dense_ms: float,
                     delta_amortised_ms: float, accuracy: float,
                     keys_at: Callable[[int], Sequence[bool]] | None = None) -> dict[str, Any]:
    """``accuracy.rival_equal_time``: the rival at the delta model's own *time*.

    ``K_t`` is the teacher's ms on its fastest dense path over the delta model's amortised ms: the
    rival runs the teacher there every ``K_t`` frames and repeats it, interpolated in 1/K as
    `rival_equal_macs` is. Below 1 the delta model is slower than the teacher, and ``words`` says so.
    """
    out = rival_equal_macs(teacher_preds, score, fastest_dense_ms, delta_amortised_ms, accuracy, keys_at)
    out["speed_ratio"] = fastest_dense_ms / delta_amortised_ms
    out["words"] = ("the delta model is slower than the fastest dense teacher, so the teacher on every frame "
                    "is both faster and exact" if fastest_dense_ms < delta_amortised_ms else
                    f"in the same time the rival runs the fastest dense teacher every {out['interval']:.2f} frames")
    return out


def _rival_under_policy(teacher_preds: Sequence[Any], score: Callable[[list[Any]], float], share: float,
                        accuracy: float, keys_at: Callable[[int], Sequence[bool]]) -> dict[str, Any]:
    n = len(teacher_preds)
    points: list[tuple[int, float, float]] = []  # (K, cost share, score)
    for k in range(1, n + 1):
        keys = list(keys_at(k))
        cost = sum(keys) / n
        points.append((k, cost, 1.0 if k == 1 else score(repeat_at_keys(teacher_preds, keys))))
        if cost <= share:
            break
    (k_hi, c_hi, s_hi) = points[-1]
    if len(points) == 1 or c_hi > share:  # the model costs a full teacher, or less than the rival ever can
        value, interval = s_hi, float(k_hi)
    else:
        k_lo, c_lo, s_lo = points[-2]
        w = (c_lo - share) / (c_lo - c_hi)  # 0 at k_lo, 1 at k_hi
        value, interval = (1 - w) * s_lo + w * s_hi, k_lo + w
    need = margin_needed(value)
    return {"interval": interval, "value": value, "scores_at": {str(k): v for k, _, v in points},
            "costs_at": {str(k): c for k, c, _ in points}, "policy": "same as the delta model's",
            "margin_needed": need, "margin": accuracy - value, "beats": beats(accuracy, value, need)}
