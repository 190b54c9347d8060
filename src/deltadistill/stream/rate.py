"""Rate control: hold a cost target that the user chooses, frame after frame, on any video.

A fixed threshold gives a cost that depends on the video. `RateControl` is a keyframe policy for
`DeltaStream` that also picks each delta frame's work, as a video encoder's rate control picks its
quantiser: the user asks for ``target`` (say 3.0, a third of the teacher's cost per frame, keyframes
included). It is three parts, each in its own module:

* `budget.Budget` plans the cost: every ``window`` frames near ``window / target`` teacher frames,
  each delta frame given the cost that, beside the recent keyframes, averages to the target, less a
  share (``gain``) of what the last frames overspent; and the keyframe interval the target is played
  at (the shortest that leaves each delta frame ``min_delta`` of a keyframe, at most
  ``max_interval``; BENCHMARKS.md note 34);
* `keys.KeyChooser` chooses keyframes: the first frame, scene cuts, the interval, a delta frame that
  cost about a keyframe (``key_cost``), and budget left over (``budget_key``);
* `knob.TopK` or `knob.Threshold` turns the sparse layers to the planned cost (``mode``).

Cost is multiply-accumulates measured frame by frame (`macs.measured_delta_macs`), as a share of
the teacher's: the unit `count_macs` reports. One stream (batch 1) per controller.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..core.macs import MacReport, count_macs, layer_students, measured_delta_macs
from ..core.modes import delta_layers
from ..core.students import SparseStudent
from .budget import Budget, TargetError, cost_floor, max_target, parse_target
from .keys import KeyChooser
from .knob import Knob, Threshold, TopK, calibrated_cost

MODES = ("threshold", "topk")
#: ``key_cost`` by mode: under top-k what is weighed is the calibrated thresholds' estimate of the frame's
#: cost, which runs low (later layers see only the deltas top-k let through: 0.58 of a keyframe where the
#: scaled thresholds measured 0.95, tests/test_rate.py), so at 0.9 the rule never fired
KEY_COST = {"threshold": 0.9, "topk": 0.5}

__all__ = ["MODES", "RateControl", "TargetError", "calibrated_cost", "cost_floor", "max_target", "parse_target",
           "rate_policy", "sparse_students"]


def sparse_students(model: nn.Module) -> list[SparseStudent]:
    """Every data-dependent sparse student the model runs on delta frames (what the controller steers)."""
    return [s for _, layer in delta_layers(model) for s in layer_students(layer) if isinstance(s, SparseStudent)]


class RateControl:
    """A keyframe policy that holds ``target`` (teacher cost over the model's, keyframes counted).

    ``DeltaStream(model, keyframe=RateControl(3.0))``: the stream binds the model. After a stream,
    ``costs`` holds each frame's cost as a share of the teacher's, ``keys`` the keyframes, and
    `achieved` and `window_ratios` what was held.
    """

    def __init__(self, target: float | str, *, mode: str = "topk", window: int = 32, max_interval: int = 8,
                 scene_cut: float | None = 0.15, key_cost: float | str | None = "auto", max_scale: float = 64.0,
                 gain: float = 0.125, max_step: float = 0.5, smooth: float = 1.0, budget_key: bool = True,
                 min_delta: float | None = 0.25) -> None:
        """``smooth`` < 1 (threshold mode) moves the scale only that share of the way to the frame's
        plan: the cost then follows the motion more, and the windows stray further. ``key_cost``: a
        keyframe once a delta frame costs that share of one (`keys.KeyChooser.needs_key`); ``"auto"``
        is the mode's own (`KEY_COST`), None turns the rule off."""
        if mode not in MODES:
            raise TargetError(f"unknown rate-control mode {mode!r}; expected one of {', '.join(MODES)}")
        if window < 2 or max_interval < 1:
            raise TargetError(f"window must be >= 2 and max_interval >= 1, got {window} and {max_interval}")
        self.target = parse_target(target)
        if key_cost == "auto":  # the mode's own (`KEY_COST`)
            key_cost = KEY_COST[mode]
        self.options = {"mode": mode, "window": window, "max_interval": max_interval, "scene_cut": scene_cut,
                        "key_cost": key_cost, "max_scale": max_scale, "gain": gain, "max_step": max_step,
                        "smooth": smooth, "budget_key": budget_key, "min_delta": min_delta}
        self.mode, self.window, self.max_interval = mode, window, max_interval
        self.budget = Budget(self.target, window, max_interval, gain, min_delta)
        self.chooser = KeyChooser(scene_cut, key_cost, budget_key)
        self.knob: Knob = TopK() if mode == "topk" else Threshold(max_scale, max_step, smooth)
        self.model: nn.Module | None = None
        self.students: list[SparseStudent] = []
        self.report: MacReport | None = None
        self.reset()

    # ------------------------------------------------------------------ binding
    def bind(self, model: nn.Module) -> None:
        """Called by `DeltaStream`: the model whose sparse layers this controller steers."""
        if model is self.model:
            return
        self.model, self.students = model, sparse_students(model)
        if not self.students:
            raise TargetError("rate control steers sparse students, and this model has none "
                              "(convert with DeltaConfig(student='sparse'))")
        self.report = None

    def check(self, model: nn.Module, input_shape: tuple[int, ...]) -> RateControl:
        """Bind ``model`` and refuse, in one line, a target it cannot hold at ``input_shape``
        (before any frame runs, so that nothing is written first)."""
        self.bind(model)
        self._count(tuple(input_shape))
        return self

    def _count(self, shape: tuple[int, ...]) -> None:
        assert self.model is not None
        self.report = count_macs(self.model, shape, self.max_interval)
        top = max_target(self.report, self.max_interval)
        if self.target > top:
            raise TargetError(f"cost target {self.target:g}x is above this model's maximum of {top:.2f}x "
                              f"(a keyframe every {self.max_interval} frames, delta frames at their floor)")

    def __deepcopy__(self, memo: dict) -> RateControl:  # a policy is copied per stream; never its model
        new = RateControl(self.target, **self.options)
        memo[id(self)] = new
        return new

    def reset(self) -> None:
        self.budget.reset()
        self.chooser.reset()
        self.knob.reset()
        self.scales: list[float] = []
        self.reasons: list[str] = []
        self._pending: bool | None = None  # the frame decided last: True key, False delta; None: observed

    # ------------------------------------------------------------------ what was held
    @property
    def key_share(self) -> float:
        return self.report.keyframe / self.report.teacher if self.report is not None else 1.0

    @property
    def floor(self) -> float:
        return cost_floor(self.report) if self.report is not None else 0.0

    @property
    def key_cost(self) -> float | None:
        """The share of a keyframe's cost at which a delta frame calls for one (`keys.KeyChooser`)."""
        return self.chooser.key_cost

    @property
    def keys(self) -> list[bool]:
        """Which frames so far were keyframes."""
        return self.budget.keys

    @property
    def interval(self) -> int:
        """The keyframe interval the target is played at (`budget.Budget.interval`)."""
        return self.budget.interval(self.key_share)

    def observe(self) -> None:
        """Take the cost of the frame that just ran (done at the next frame; call it after the last)."""
        if self._pending is None or self.model is None or self.report is None:
            return
        if self._pending:
            cost = self.key_share
        else:
            cost = measured_delta_macs(self.model, self.report) / self.report.teacher
            self.chooser.last_delta = self.knob.weigh(cost, self.model, self.report)
            self.knob.observe(cost, self.floor)
        self.budget.record(cost)
        self._pending = None

    @property
    def costs(self) -> list[float]:
        """Each frame's cost so far, as a share of the teacher's (keyframes included)."""
        self.observe()
        return self.budget.costs

    @property
    def achieved(self) -> float:
        """Teacher cost over the model's, over every frame so far."""
        self.observe()
        return self.budget.achieved

    def window_ratios(self, window: int | None = None) -> list[float]:
        """The ratio held over each run of ``window`` (default: the controller's) consecutive frames."""
        self.observe()
        return self.budget.window_ratios(window)

    # ------------------------------------------------------------------ the policy
    def __call__(self, step: int, frame: Tensor) -> bool:
        if frame.shape[0] != 1:
            raise TargetError(f"rate control holds one stream's cost; got a batch of {frame.shape[0]}")
        if self.model is None:
            raise TargetError("RateControl must be the keyframe policy of a DeltaStream (which binds the model)")
        if self.report is None:
            self._count(tuple(frame.shape))
        self.observe()
        share, first = self.key_share, step == 0 or not self.budget.costs
        plan = self.budget.plan(share, self.floor)
        reason = self.chooser.reason(first, frame, self.interval, share, self.budget.affords_key(share))
        key = bool(reason)
        self.budget.decide(key, share)
        if key:
            self.knob.keyed()
        else:
            self.knob.set(plan, self.floor)
        self.reasons.append(reason)
        self.scales.append(self.knob.value)
        self._pending = key
        return key

    def apply(self) -> None:
        """Set the chosen knob on every steered layer; `DeltaStream` calls it under the model's lock,
        just before the frame runs, and `release` just after."""
        self.knob.apply(self.students)

    def release(self) -> None:
        """Put every steered layer back to its calibrated thresholds (the model is left as it was)."""
        self.knob.release(self.students)

    def summary(self) -> dict[str, Any]:
        """The held cost next to the target, for reports."""
        ratios = self.window_ratios() if len(self.costs) >= self.window else [self.achieved]
        return {"target": self.target, "achieved": self.achieved, "mode": self.mode, "window": self.window,
                "window_min": min(ratios), "window_max": max(ratios),
                "within_10pct": all(abs(x / self.target - 1) <= 0.1 for x in ratios),
                "keyframes": sum(self.keys), "keyframe_reasons": {r: self.reasons.count(r) for r in set(self.reasons) if r},
                "cost_unit": "MACs (share of the teacher's)"}


def rate_policy(model: nn.Module | None, target: float | str, keyframe_interval: int, scene_cut: float | None,
                size: tuple[int, ...], elsewhere: bool = False, options: dict | None = None) -> RateControl:
    """A `RateControl` for ``model`` at input ``size`` (H, W), checked before any frame or output: a
    target below 1x, malformed, above what the model can hold, or on a path that cannot steer it
    (``elsewhere``: an exported graph, another engine, a compiled model) is one line."""
    if model is None or not list(delta_layers(model)):
        raise TargetError("--target steers a delta model's sparse layers: give --model")
    if elsewhere:
        raise TargetError("--target runs on the torch backend, dense runtime, uncompiled (it steers each layer "
                          "frame by frame)")
    policy = RateControl(target, max_interval=keyframe_interval, scene_cut=scene_cut, **(options or {}))
    policy.check(model, (1, 3, *size))
    return policy
