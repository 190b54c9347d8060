"""Keyframe policies: which frames of a stream run the whole teacher (every K, or at scene cuts too)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class KeyframePolicy(Protocol):
    """Decides, per stream in the batch, whether a frame is a keyframe."""

    def reset(self) -> None: ...

    def __call__(self, step: int, frame: Tensor) -> bool | Tensor: ...


class EveryK:
    """A keyframe every ``k`` frames (frame 0, k, 2k, ...): the paper's policy."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"keyframe interval must be >= 1, got {k}")
        self.k = k

    def reset(self) -> None:
        pass

    def __call__(self, step: int, frame: Tensor) -> bool:
        return step % self.k == 0

    def __repr__(self) -> str:
        return f"EveryK({self.k})"


def frame_change(prev: Tensor, frame: Tensor) -> Tensor:
    """Per stream, how much the input jumped: mean ``|frame - prev|`` over mean ``|prev|`` (B,).

    About 0.01-0.08 between consecutive frames of a moving shot, 0.2-0.35 at the cuts of `bikes`.
    """
    return (frame - prev).abs().mean((1, 2, 3)) / prev.abs().mean((1, 2, 3)).clamp_min(1e-6)


def keyframe_flags(changes: list[float], k: int, threshold: float | None) -> list[bool]:
    """The keyframes `SceneCut` (or `EveryK`, with no threshold) picks, from per-frame `frame_change`s:
    used to give the rival the very policy the delta model ran under."""
    flags, since = [], 0
    for i, c in enumerate(changes):
        key = i == 0 or since + 1 >= k or (threshold is not None and c > threshold)
        since = 0 if key else since + 1
        flags.append(key)
    return flags


class SceneCut:
    """A keyframe every ``k`` frames, and also wherever the input jumps (`frame_change` above
    ``threshold``): a delta from a keyframe of another shot is all change, so it costs as much as a
    keyframe while repeating keyframes (the rival) shows the old shot. Each stream counts ``k`` from
    its own last keyframe."""

    def __init__(self, k: int, threshold: float = 0.15) -> None:
        if k < 1:
            raise ValueError(f"keyframe interval must be >= 1, got {k}")
        if threshold <= 0:
            raise ValueError(f"scene-cut threshold must be > 0, got {threshold}")
        self.k, self.threshold = k, threshold
        self.reset()

    def reset(self) -> None:
        self.prev: Tensor | None = None
        self.since: Tensor | None = None

    def __call__(self, step: int, frame: Tensor) -> bool | Tensor:
        if step == 0 or self.prev is None or self.prev.shape != frame.shape:
            key = torch.ones(frame.shape[0], dtype=torch.bool)
        else:
            assert self.since is not None
            key = (frame_change(self.prev, frame) > self.threshold).cpu() | (self.since + 1 >= self.k)
        self.since = torch.where(key, 0, (self.since if self.since is not None else 0) + 1)
        self.prev = frame.detach().clone()
        return bool(key.all()) if frame.shape[0] == 1 else key

    def __repr__(self) -> str:
        return f"SceneCut({self.k}, threshold={self.threshold:g})"


#: One lock per model: a frame binds its stream's state into the model's layers for the length of
#: the call, so two threads running one model must take turns (a registry, not an attribute, so
#: that a model stays deep-copyable and picklable).
