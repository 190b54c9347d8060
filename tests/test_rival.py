"""The rival at equal MACs: repeating keyframes at the delta model's own cost, checked by hand."""

from __future__ import annotations

import pytest

from deltadistill.measure.rival import (
    beats,
    equal_mac_interval,
    margin_needed,
    repeat_keyframes,
    rival_at,
    rival_equal_macs,
)


def test_repeat_keyframes_holds_every_kth_prediction() -> None:
    assert repeat_keyframes(list("abcdefg"), 3) == list("aaadddg")
    assert repeat_keyframes([1, 2, 3], 1) == [1, 2, 3]
    with pytest.raises(ValueError):
        repeat_keyframes([1], 0)


def test_rival_is_interpolated_linearly_in_amortised_macs() -> None:
    scores = {1: 1.0, 2: 0.9, 3: 0.8}
    # K = 2.5: 1/K = 0.4 lies 60% of the way from 1/2 to 1/3, so 0.4 * 0.9 + 0.6 * 0.8
    assert rival_at(2.5, scores.__getitem__) == pytest.approx(0.84)
    assert rival_at(2.0, scores.__getitem__) == pytest.approx(0.9)
    assert rival_at(0.7, scores.__getitem__) == 1.0  # costlier than the teacher: the teacher itself
    assert equal_mac_interval(10.0, 4.0) == 2.5


def test_margin_is_half_the_gap_or_two_points() -> None:
    assert margin_needed(0.97) == pytest.approx(0.015)
    assert margin_needed(0.90) == pytest.approx(0.02)


def test_a_tie_never_beats_the_rival() -> None:
    """A model that scores what the rival scores has not beaten it, even where the rival is perfect and
    the margin needed is +0. Breakage caught: a bench whose sparse layers computed nothing (``--sparse
    nan``) equalled the rival at 1.0 and was reported as beating it "+0.000, needs +0.000" (issue 29, 9)."""
    assert margin_needed(1.0) == 0.0
    assert not beats(1.0, 1.0, margin_needed(1.0))
    assert not beats(float("nan"), 0.5, margin_needed(0.5))
    assert beats(0.93, 0.9, margin_needed(0.9)) and not beats(0.91, 0.9, margin_needed(0.9))
    same = [7, 7, 7, 7]  # a still scene: the rival repeats the right answer and scores 1 at any interval
    r = rival_equal_macs(same, lambda p: float(p == same), teacher_macs=10.0, delta_amortised_macs=5.0, accuracy=1.0)
    assert r["value"] == 1.0 and r["margin"] == 0.0 and not r["beats"]


def test_rival_equal_macs_on_a_hand_computed_case() -> None:
    # 8 frames; the teacher's "prediction" is the frame index and the score is the share of exact hits.
    teacher = list(range(8))

    def score(preds: list[int]) -> float:
        return sum(p == t for p, t in zip(preds, teacher, strict=True)) / len(teacher)

    # repeating every 2nd frame hits 4/8, every 3rd hits 3/8 (frames 0, 3, 6); K_eq = 1.3 / 0.52 = 2.5
    out = rival_equal_macs(teacher, score, teacher_macs=1.3, delta_amortised_macs=0.52, accuracy=0.5)
    assert out["interval"] == pytest.approx(2.5)
    assert out["value"] == pytest.approx(0.4 * 0.5 + 0.6 * 0.375)
    assert out["margin_needed"] == pytest.approx(0.02)
    assert out["beats"] is True  # 0.5 >= 0.425 + 0.02
    assert rival_equal_macs(teacher, score, 1.3, 0.52, accuracy=0.44)["beats"] is False


def test_rival_under_the_models_policy_is_interpolated_in_its_keyframe_share() -> None:
    from deltadistill.measure.rival import repeat_at_keys
    from deltadistill.stream import keyframe_flags

    preds = list(range(12))  # every frame differs from every other
    changes = [0.0] * 12
    changes[5] = 0.5  # a cut at frame 5

    def score(p: list[int]) -> float:
        return sum(a == b for a, b in zip(p, preds, strict=True)) / len(preds)

    assert keyframe_flags(changes, 4, 0.15) == [True, False, False, False, True, True, False, False, False,
                                                True, False, False]
    assert repeat_at_keys(preds, keyframe_flags(changes, 4, 0.15))[:7] == [0, 0, 0, 0, 4, 5, 5]
    # K=2: keys 0,2,4,5,7,9,11 -> 7/12 of the cost, scores 7/12; K=3: keys 0,3,5,8,11 -> 5/12, scores 5/12
    r = rival_equal_macs(preds, score, teacher_macs=12.0, delta_amortised_macs=6.0, accuracy=0.7,
                         keys_at=lambda k: keyframe_flags(changes, k, 0.15))
    assert r["costs_at"] == {"1": 1.0, "2": 7 / 12, "3": 5 / 12}
    w = (7 / 12 - 0.5) / (7 / 12 - 5 / 12)
    assert r["value"] == pytest.approx((1 - w) * 7 / 12 + w * 5 / 12) and r["interval"] == pytest.approx(2 + w)
    assert r["beats"] == (0.7 >= r["value"] + r["margin_needed"])
