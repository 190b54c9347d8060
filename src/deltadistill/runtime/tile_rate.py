"""Hold a frame rate on measured time, with the tile runtime's threshold scale as the knob.

`--target` (issue 20, `stream.rate`) holds a MAC ratio. A user of an expensive teacher asks for frames
per second instead (``--fps``). `FrameRate` plans each delta frame's time as `stream.budget.Budget`
plans its MACs: the share that, beside the last keyframe, averages ``1000 / fps`` ms over a keyframe
interval, less a share (``gain``) of what the last ``window`` frames overspent. After each delta frame
it turns the threshold scale by how far that frame missed its plan (higher thresholds, fewer pixels,
less time). `reachable_fps` says before any work whether a rate can be held at all.
"""

from __future__ import annotations

from collections import deque


class RateError(ValueError):
    """A frame rate that cannot be held (one line, for the CLI)."""


def reachable_fps(key_ms: float, floor_ms: float, k: int) -> float:
    """The fastest a tile stream can run at keyframe interval ``k``: a keyframe (``key_ms``) and
    ``k - 1`` delta frames in which nothing moved (``floor_ms``, the fixed cost of walking the plan)."""
    return 1000.0 * k / (key_ms + (k - 1) * floor_ms)


class FrameRate:
    """Plans delta frames' time to hold ``fps``, and the threshold scale that gets it.

    ``record(ms, kind)`` after every frame (``kind``: ``"dense"``, ``"key"`` or ``"delta"``); for a
    delta frame it returns the scale for the next one. ``window_fps()``: the rate over each window of
    ``window`` frames, what `held` judges (within ``tolerance`` of the target).
    """

    def __init__(self, fps: float, k: int, *, window: int = 32, gain: float = 0.5, min_scale: float = 0.125,
                 max_scale: float = 64.0, step: float = 2.0, tolerance: float = 0.1) -> None:
        if fps <= 0 or k < 2 or window < 2:
            raise RateError(f"fps must be > 0, the keyframe interval >= 2 and the window >= 2, got {fps}, {k}, {window}")
        self.fps, self.k, self.window, self.gain = float(fps), k, window, gain
        self.target_ms = 1000.0 / self.fps
        self.min_scale, self.max_scale, self.step, self.tolerance = min_scale, max_scale, step, tolerance
        self.reset()

    def reset(self) -> None:
        self.scale = 1.0
        self.key_ms: float | None = None
        self.recent: deque[float] = deque(maxlen=self.window)
        self.frames_ms: list[float] = []

    def plan_ms(self) -> float:
        """What the next delta frame may cost: the interval's budget less the keyframe, spread over its
        delta frames, less ``gain`` of the recent overspend spread likewise (never below a tenth)."""
        key = self.key_ms if self.key_ms is not None else self.target_ms
        share = (self.k * self.target_ms - key) / (self.k - 1)
        over = sum(self.recent) - len(self.recent) * self.target_ms
        return max(0.1 * self.target_ms, share - self.gain * over / (self.k - 1))

    def record(self, ms: float, kind: str, plan: float | None = None) -> float:
        """One frame's measured ``ms``. A delta frame that took longer than its ``plan`` raises the
        scale by the ratio (at most ``step`` at a time), one that took less lowers it."""
        self.recent.append(ms)
        self.frames_ms.append(ms)
        if kind == "key":
            self.key_ms = ms
        if kind == "delta" and plan is not None and ms > 0:
            ratio = min(self.step, max(1 / self.step, ms / plan))
            self.scale = min(self.max_scale, max(self.min_scale, self.scale * ratio))
        return self.scale

    def window_fps(self, skip: int = 0) -> list[float]:
        """The frame rate over every run of ``window`` frames (sliding) after the first ``skip``, or over
        all of them if fewer."""
        ms = self.frames_ms[skip:]
        n = min(self.window, len(ms))
        if n == 0:
            return []
        return [1000.0 * n / sum(ms[i:i + n]) for i in range(len(ms) - n + 1)]

    def report(self, skip: int = 0) -> dict:
        """The target, what was achieved, and whether every window (after ``skip`` set-up frames) held
        within ``tolerance``."""
        ms = self.frames_ms[skip:]
        windows = self.window_fps(skip)
        achieved = 1000.0 * len(ms) / sum(ms) if ms else 0.0
        held = bool(windows) and all(abs(w - self.fps) <= self.tolerance * self.fps or w > self.fps for w in windows)
        return {"fps": self.fps, "achieved_fps": achieved, "window": self.window,
                "window_fps": {"min": min(windows), "max": max(windows)} if windows else None,
                "held": held, "scale": self.scale}
