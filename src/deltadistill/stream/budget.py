"""Planning a cost budget: what each frame may cost so that every window of frames averages to the
target (one part of rate control, `rate.RateControl`).

Costs are shares of the teacher's MACs per frame, keyframes included: a target of 3x is a mean cost
of 1/3 over every ``window`` frames.
"""

from __future__ import annotations

import math
import re
from collections import deque

from ..core.macs import MacReport


class TargetError(ValueError):
    """A cost target that cannot be held (one line, for the CLI)."""


def parse_target(text: str | float) -> float:
    """``"3x"``, ``"3"`` or ``3.0`` -> 3.0: the cost ratio against the teacher to hold."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*[xX]?\s*", str(text))
        if not m:
            raise TargetError(f"cost target {text!r} is not a ratio like 3x or 2.5")
        value = float(m.group(1))
    if not math.isfinite(value) or value < 1.0:
        raise TargetError(f"cost target {text!r} is below 1x: a delta model cannot cost more than its teacher")
    return value


def cost_floor(report: MacReport) -> float:
    """A delta frame's cost (share of the teacher) when no sparse layer computes anything."""
    nominal = sum(r.delta for r in report.layers if r.student.startswith("sparse"))
    return (report.delta - nominal) / report.teacher


def max_target(report: MacReport, max_interval: int) -> float:
    """The largest cost ratio a model can hold: a keyframe every ``max_interval`` frames and delta
    frames at their floor."""
    q = 1.0 / max_interval
    return 1.0 / (q * report.keyframe / report.teacher + (1 - q) * cost_floor(report))


class Budget:
    """The frames' costs so far and the plan for the next one.

    ``record(cost)`` takes what a frame cost; `plan` is the cost to give the next delta frame: the
    `steady` cost, less a share (``gain``) of what the last ``window - 1`` frames overspent against
    what they were planned."""

    def __init__(self, target: float, window: int, max_interval: int, gain: float, min_delta: float | None) -> None:
        self.target, self.window, self.max_interval = target, window, max_interval
        self.gain, self.min_delta = gain, min_delta
        self.reset()

    def reset(self) -> None:
        self.costs: list[float] = []
        self.keys: list[bool] = []
        self._recent: deque[float] = deque(maxlen=self.window - 1)
        self.planned = 0.0

    def record(self, cost: float) -> None:
        """A frame that ran, at ``cost``, against what it was planned."""
        self.costs.append(cost)
        self._recent.append(cost - self.planned)

    def decide(self, key: bool, key_share: float) -> None:
        """Note the next frame's kind and what it is counted against: a keyframe at its own cost (the
        steady delta cost already leaves room for the keyframes of the window), a delta frame at the
        steady cost."""
        self.planned = key_share if key else self.steady(key_share)
        self.keys.append(key)

    def interval(self, key_share: float) -> int:
        """The keyframe interval the target is played at: the shortest that leaves each delta frame
        at least ``min_delta`` of a keyframe's cost, and at most ``max_interval``. Why not always the
        longest: the rival (the teacher every few frames, repeated) is this controller with delta
        frames that compute nothing, and over a grid of intervals and top-k shares the points
        nearest it or above it had short intervals and delta frames at about a quarter of a
        keyframe (note 34: centernet on the static camera at 2x, 0.959 at K=3 against 0.893 at
        K=8)."""
        if self.min_delta is None:
            return self.max_interval
        r = 1.0 / self.target
        for i in range(2, self.max_interval):
            if (i * r - key_share) / (i - 1) >= self.min_delta * key_share:
                return i
        return self.max_interval

    def key_rate(self, key_share: float) -> float:
        """Keyframes per frame, from the spacing of those in the last ``window - 1`` frames (cuts
        included): ``n`` keyframes over the span from the first to the last, plus one `interval`.
        That is exact for keyframes every `interval` frames, one alone gives that rate, and two
        close together at the start of a stream do not read as a keyframe on every frame. Not
        their count over the window: 31 frames hold four keyframes every 8 frames
        in 7 phases of 8, a rate of 0.129 for 0.125, which left every delta frame at 6x about 9%
        under its budget (and the first window, where the stream's first frame counted beside an
        assumed rate, up to 60% under)."""
        interval = self.interval(key_share)
        at = [i for i, key in enumerate(self.keys[-(self.window - 1):]) if key]
        return len(at) / (at[-1] - at[0] + interval) if at else 1.0 / interval

    def steady(self, key_share: float) -> float:
        """The delta-frame cost that, beside keyframes at the recent rate (`key_rate`), averages to
        the target."""
        r, q = 1.0 / self.target, min(self.key_rate(key_share), 0.5)
        return (r - q * key_share) / (1 - q)

    def plan(self, key_share: float, floor: float) -> float:
        """The cost to give the next delta frame: the steady cost, less what the last ``window - 1``
        frames overspent against it (an unplanned keyframe at a cut, frames the knob got wrong),
        paid back at ``gain`` of it per frame; never below the floor or above a keyframe."""
        over = sum(self._recent)
        return max(floor + 1e-4, min(key_share, self.steady(key_share) - self.gain * over))

    def affords_key(self, key_share: float) -> bool:
        """The last ``window - 1`` frames spent so little that a keyframe now still keeps the window at
        the target. Weighed on what the frames did cost, so it never fires while the deltas spend
        their plan."""
        recent = self.costs[-(self.window - 1):]
        return sum(recent) + key_share <= (len(recent) + 1) / self.target

    @property
    def achieved(self) -> float:
        """Teacher cost over the model's, over every frame so far."""
        return len(self.costs) / sum(self.costs) if self.costs else float("nan")

    def window_ratios(self, window: int | None = None) -> list[float]:
        """The ratio held over each run of ``window`` (default: the budget's) consecutive frames."""
        w, c = window or self.window, self.costs
        return [w / sum(c[i:i + w]) for i in range(len(c) - w + 1)]
