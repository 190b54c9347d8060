"""The knob rate control turns to make a delta frame cost what was planned (one part of
`rate.RateControl`), one class per mode:

* ``topk``: the same share of pixels, the most moved first, in every sparse layer
  (`SparseStudent.keep`): a nearly constant cost whatever moves;
* ``threshold``: one scale on every calibrated threshold (`SparseStudent.threshold_scale`), steered
  by feedback on a power law, cost ~ scale^-beta, its slope fitted online.

Measured on selfie over four videos (BENCHMARKS.md note 33), top-k held every 32-frame window within
10% where the scaled thresholds strayed up to 16% on bikes, at the same or better accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ..core.macs import MacReport, counted_student
from ..core.modes import delta_layers
from ..core.students import SparseStudent


def calibrated_cost(model: nn.Module, report: MacReport) -> float:
    """What the top-k delta frame just run would have cost at the calibrated thresholds, as a share
    of the teacher's: each sparse layer's share of its MACs that its own threshold would compute."""
    total = report.delta
    for (_, layer), row in zip(delta_layers(model), report.layers, strict=True):
        student = counted_student(layer, row)
        share = student.__dict__.get("wanted_share") if isinstance(student, SparseStudent) else None
        if share is not None:
            total += share * row.teacher - row.delta
    return total / report.teacher


class Knob:
    """One mode's setting of the sparse layers. ``value`` is what is applied; `observe` learns from
    the cost a delta frame had, `set` chooses the value for a planned cost."""

    attribute: str = ""

    def reset(self) -> None: ...

    @property
    def value(self) -> float:
        raise NotImplementedError

    def keyed(self) -> None:
        """A keyframe ran: the next delta frame starts a new run."""

    def observe(self, cost: float, floor: float) -> None:
        raise NotImplementedError

    def set(self, cost: float, floor: float) -> None:
        raise NotImplementedError

    def weigh(self, cost: float, model: nn.Module, report: MacReport) -> float:
        """What a delta frame that cost ``cost`` is weighed at against a keyframe (`keys.KeyChooser`)."""
        return cost

    def apply(self, students: Sequence[SparseStudent]) -> None:
        for s in students:
            s.__dict__[self.attribute] = self.value

    @staticmethod
    def release(students: Sequence[SparseStudent]) -> None:
        """Put every steered layer back to its calibrated thresholds."""
        for s in students:
            s.__dict__.pop("threshold_scale", None)
            s.__dict__.pop("keep", None)


class TopK(Knob):
    """The share of pixels kept per layer, from the measured cost per unit of kept share."""

    attribute = "keep"

    def reset(self) -> None:
        self._keep = 1.0
        self._spread = 1.0  # measured cost per unit of kept share (receptive fields grow it)

    @property
    def value(self) -> float:
        return self._keep

    def observe(self, cost: float, floor: float) -> None:
        self._spread = max(1e-3, (cost - floor) / max(self._keep, 1e-6))

    def set(self, cost: float, floor: float) -> None:
        self._keep = min(1.0, max(1e-4, (cost - floor) / self._spread))

    def weigh(self, cost: float, model: nn.Module, report: MacReport) -> float:
        """Top-k caps what the frame did cost, so that alone would never call for a keyframe: what its
        layers' calibrated thresholds would have computed, weighted by their MACs (an underestimate:
        later layers see deltas top-k already cut; the largest layer share instead re-keyed centernet
        on a third of bikes' frames, its stem's thresholds being tiny)."""
        return calibrated_cost(model, report)


class Threshold(Knob):
    """A scale on every calibrated threshold, on a power law fitted online."""

    attribute = "threshold_scale"

    def __init__(self, max_scale: float = 64.0, max_step: float = 0.5, smooth: float = 1.0) -> None:
        """``smooth`` < 1 moves the scale only that share of the way to the frame's plan: the cost then
        follows the motion more, as a fixed threshold's does, and the windows stray further."""
        self.max_scale, self.max_step, self.smooth = max_scale, max_step, smooth
        self.reset()

    def reset(self) -> None:
        self._scale = 1.0
        self._beta = 1.0  # cost ~ scale^-beta
        self._last: tuple[float, float] | None = None  # (log scale, log cost) of the last delta frame
        self._fresh = True  # no delta frame since the last keyframe: do not fit a slope across one

    @property
    def value(self) -> float:
        return self._scale

    def keyed(self) -> None:
        self._fresh = True

    def observe(self, cost: float, floor: float) -> None:
        """Take a delta frame as the reference of the power law, and update its slope from two
        consecutive ones. Not the first after a keyframe: it is far cheaper than the rest of its run
        at any scale (the frame has barely moved), and steering by it overshoots the next."""
        log_scale, log_cost = math.log(self._scale), math.log(max(cost, 1e-9))
        if self._fresh:
            self._fresh = False
            return
        if self._last is not None and abs(log_scale - self._last[0]) > 0.05:
            slope = -(log_cost - self._last[1]) / (log_scale - self._last[0])
            if math.isfinite(slope):
                self._beta = 0.8 * self._beta + 0.2 * min(2.0, max(0.5, slope))
        self._last = (log_scale, log_cost)

    def set(self, cost: float, floor: float) -> None:
        if self._last is None:
            wanted = self._scale
        else:
            step = self.smooth * (self._last[1] - math.log(cost)) / self._beta
            wanted = math.exp(self._last[0] + max(-self.max_step, min(self.max_step, step)))
        self._scale = min(self.max_scale, max(1.0 / self.max_scale, wanted))
