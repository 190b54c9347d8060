"""Choosing keyframes under rate control (one part of `rate.RateControl`): the reason, if any, that
the next frame runs the whole teacher."""

from __future__ import annotations

from torch import Tensor

from .policies import frame_change


class KeyChooser:
    """Keys the first frame, at a scene cut, at the interval, when the last delta frame cost about as
    much as a keyframe (``key_cost``), and when the window has budget left for one (``budget_key``).

    `reason` returns ``"first"``, ``"cut"``, ``"interval"``, ``"cost"``, ``"budget"`` or ``""``."""

    def __init__(self, scene_cut: float | None, key_cost: float | None, budget_key: bool) -> None:
        self.scene_cut, self.key_cost, self.budget_key = scene_cut, key_cost, budget_key
        self.reset()

    def reset(self) -> None:
        self._prev: Tensor | None = None
        self._since = 0
        self.last_delta: float | None = None  # what the last delta frame since the keyframe weighed

    def _cut(self, frame: Tensor) -> bool:
        cut = (self.scene_cut is not None and self._prev is not None and self._prev.shape == frame.shape
               and float(frame_change(self._prev, frame).mean()) > self.scene_cut)
        self._prev = frame.detach().clone()
        return cut

    def needs_key(self, key_share: float) -> bool:
        """A keyframe pays when the last delta frame cost about as much as one (``key_cost`` of it;
        under top-k, what the calibrated thresholds would have computed, an underestimate): the
        keyframe is exact for the same price, and the delta frames after it are cheap. (Taking
        the cost back to the calibrated thresholds on the power law instead ran away: a tight budget
        raised the scale, the scale raised the estimate, and keyframes came every other frame.)"""
        return (self.key_cost is not None and self.last_delta is not None
                and self.last_delta >= self.key_cost * key_share)

    def reason(self, first: bool, frame: Tensor, interval: int, key_share: float, affords: bool) -> str:
        """Why the frame is a keyframe, or "" for a delta frame. ``affords``: the budget has room for one
        (without it, delta frames that cannot spend their plan, because nothing moved or the knob is at
        its floor, leave the held ratio above the target: 8x held for 6x on a still clip)."""
        cut = self._cut(frame)
        reason = ("first" if first else "cut" if cut else "interval" if self._since + 1 >= interval else "")
        if not reason and self.needs_key(key_share):
            reason = "cost"
        if not reason and self.budget_key and affords:
            reason = "budget"
        if reason:
            self.last_delta = None
        self._since = 0 if reason else self._since + 1
        return reason
