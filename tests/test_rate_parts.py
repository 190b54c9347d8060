"""Rate control's three parts, each alone (issue 27): the budget plan, the keyframe chooser, the knob.
`tests/test_rate.py` tests them together, on real models."""

from __future__ import annotations

import math

import pytest
import torch

from deltadistill.stream.budget import Budget, TargetError, parse_target
from deltadistill.stream.keys import KeyChooser
from deltadistill.stream.knob import Threshold, TopK


def test_budget_plans_the_steady_cost_beside_keyframes() -> None:
    """At 4x with keyframes costing 1 every 8 frames, a delta frame may cost (8/4 - 1) / 7 = 1/7."""
    b = Budget(target=4.0, window=32, max_interval=8, gain=0.125, min_delta=None)
    assert b.interval(1.0) == 8
    for i in range(16):
        key = i % 8 == 0
        b.decide(key, 1.0)
        b.record(1.0 if key else 1 / 7)
    assert b.key_rate(1.0) == pytest.approx(1 / 8)
    assert b.steady(1.0) == pytest.approx(1 / 7)
    assert b.plan(1.0, floor=0.0) == pytest.approx(1 / 7)  # nothing overspent
    assert b.achieved == pytest.approx(4.0)


def test_budget_pays_back_what_was_overspent() -> None:
    """A delta frame that cost twice its plan lowers the next plan by gain times the overspend."""
    b = Budget(target=4.0, window=32, max_interval=8, gain=0.5, min_delta=None)
    b.decide(True, 1.0)
    b.record(1.0)
    b.decide(False, 1.0)
    b.record(2 / 7)  # planned 1/7
    assert b.plan(1.0, floor=0.0) == pytest.approx(1 / 7 - 0.5 * (1 / 7))


def test_budget_interval_leaves_each_delta_frame_a_share_of_a_keyframe() -> None:
    """2x with min_delta 0.25 keys every 3 frames ((3/2 - 1) / 2 = 0.25); 4x at most every 8."""
    assert Budget(2.0, 32, 8, 0.125, 0.25).interval(1.0) == 3
    assert Budget(4.0, 32, 8, 0.125, 0.25).interval(1.0) == 8


def test_budget_affords_a_keyframe_only_with_budget_left() -> None:
    b = Budget(target=2.0, window=4, max_interval=8, gain=0.125, min_delta=None)
    for c in (0.1, 0.1, 0.1):
        b.decide(False, 1.0)
        b.record(c)
    assert b.affords_key(1.0)  # 0.3 + 1 <= 4 / 2
    b.decide(False, 1.0)
    b.record(1.0)
    assert not b.affords_key(1.0)  # 0.1 + 0.1 + 1 + 1 > 2


def test_targets_parse_and_refuse() -> None:
    assert parse_target("3x") == 3.0 and parse_target(2.5) == 2.5
    for bad in ("0.5x", "abc", float("nan")):
        with pytest.raises(TargetError):
            parse_target(bad)


def test_key_chooser_reasons() -> None:
    """First frame, a scene cut, the interval, a dear delta frame, and budget left: each its reason."""
    k = KeyChooser(scene_cut=0.15, key_cost=0.9, budget_key=True)
    still, cut = torch.ones(1, 3, 8, 8), torch.full((1, 3, 8, 8), 3.0)
    assert k.reason(True, still, 8, 1.0, False) == "first"
    assert k.reason(False, still, 8, 1.0, False) == ""
    assert k.reason(False, cut, 8, 1.0, False) == "cut"
    for _ in range(7):
        assert k.reason(False, cut, 8, 1.0, False) == ""
    assert k.reason(False, cut, 8, 1.0, False) == "interval"  # the 8th frame from the cut
    k.last_delta = 0.95
    assert k.reason(False, cut, 8, 1.0, False) == "cost"
    assert k.last_delta is None
    assert k.reason(False, cut, 8, 1.0, True) == "budget"
    off = KeyChooser(scene_cut=None, key_cost=None, budget_key=False)
    off.reason(True, still, 8, 1.0, False)
    off.last_delta = 5.0
    assert off.reason(False, cut, 8, 1.0, True) == ""


def test_topk_knob_learns_cost_per_share() -> None:
    """Keeping all pixels cost 0.5 above a floor of 0.1: a plan of 0.2 keeps a quarter."""
    knob = TopK()
    knob.reset()
    knob.observe(0.6, floor=0.1)
    knob.set(0.2, floor=0.1)
    assert knob.value == pytest.approx(0.2)  # (0.2 - 0.1) / 0.5
    knob.observe(0.1 + 0.5 * 0.2, floor=0.1)
    knob.set(0.35, floor=0.1)
    assert knob.value == pytest.approx(0.5)


def test_threshold_knob_follows_a_power_law() -> None:
    """cost ~ scale^-1: halving the cost doubles the scale, once two delta frames gave the slope; the
    first delta frame after a keyframe is only the reference."""
    knob = Threshold(max_scale=64.0, max_step=5.0)
    knob.observe(0.4, floor=0.0)  # fresh after a keyframe: skipped
    knob.observe(0.4, floor=0.0)  # scale 1 -> cost 0.4: the reference
    knob.set(0.2, floor=0.0)
    assert knob.value == pytest.approx(2.0)
    knob.observe(0.2, floor=0.0)  # as predicted: the slope stays 1
    knob.set(0.1, floor=0.0)
    assert math.log(knob.value) == pytest.approx(math.log(4.0), rel=1e-6)
