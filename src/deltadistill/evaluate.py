"""Run the teacher and the delta model over the same frames, in one process, and compare them.

Both run in channels_last with the same thread count, interleaved frame by frame, so any drift
in the machine's speed hits both alike. Times are per frame, after warm-up. The delta model's
figure is amortised over its keyframe cycle: ``(key + (K-1) * delta) / K`` with the median time
of key and of delta frames, since a plain median over all frames would hide the keyframes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .stream import DeltaStream, EveryK


@dataclass
class Comparison:
    """Per-frame record of a side-by-side run."""

    keyframe_interval: int
    ms_teacher: list[float] = field(default_factory=list)
    ms_delta: list[float] = field(default_factory=list)
    is_key: list[bool] = field(default_factory=list)
    teacher_preds: list[Any] = field(default_factory=list)
    delta_preds: list[Any] = field(default_factory=list)
    warmup: int = 0
    #: per delta frame: did the delta model return its keyframe's raw output again, bit for bit?
    repeated_key: list[bool] = field(default_factory=list)

    @property
    def repeat_share(self) -> float:
        """Share of delta frames whose raw output is the keyframe's: 1.0 means the model only repeats
        keyframes (a zero student cuts every path to the output), whatever its MACs say."""
        return sum(self.repeated_key) / len(self.repeated_key) if self.repeated_key else 0.0

    @property
    def frames(self) -> int:
        return len(self.is_key)

    def _timed(self, values: list[float], key: bool | None = None) -> list[float]:
        pairs = list(zip(values, self.is_key, strict=True))[self.warmup:]
        return [v for v, k in pairs if key is None or k == key]

    @property
    def teacher_ms(self) -> float:
        return statistics.median(self._timed(self.ms_teacher))

    @property
    def key_ms(self) -> float:
        return statistics.median(self._timed(self.ms_delta, True) or self._timed(self.ms_delta))

    @property
    def delta_frame_ms(self) -> float:
        return statistics.median(self._timed(self.ms_delta, False) or self._timed(self.ms_delta))

    @property
    def delta_ms(self) -> float:
        """Amortised ms per frame of the delta model over one keyframe cycle."""
        k = self.keyframe_interval
        return (self.key_ms + (k - 1) * self.delta_frame_ms) / k


def channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)


@torch.no_grad()
def compare(
    teacher: nn.Module,
    model: nn.Module,
    frames: Iterable[np.ndarray],
    *,
    keyframe_interval: int,
    preprocess: Callable[[np.ndarray], torch.Tensor],
    postprocess: Callable[[Any], Any],
    on_frame: Callable[[int, np.ndarray, Any, Any, bool], None] | None = None,
    warmup: int = 3,
    total: int | None = None,
    progress: bool = True,
    compile: bool = False,
) -> Comparison:
    """Teacher (a plain model) and delta model (converted or deployed) on the same frames.

    ``frames`` yields uint8 RGB (H, W, 3) arrays at the model's input size; ``on_frame`` sees
    ``(index, frame, teacher_pred, delta_pred, is_key)`` for rendering or streaming metrics.
    ``compile`` runs both models through ``torch.compile``; the warm-up, then two keyframe cycles
    long, absorbs the compile time and is not timed.
    """
    teacher, model = channels_last(teacher.eval()), channels_last(model.eval())
    stream = DeltaStream(model, EveryK(keyframe_interval), compile=compile)
    if compile:  # both or neither: the ratio must compare like with like
        teacher = torch.compile(teacher)
        warmup = max(warmup, 2 * keyframe_interval + 1)  # a second keyframe may still recompile
    result = Comparison(keyframe_interval, warmup=warmup)
    for i, frame in enumerate(tqdm(frames, total=total, desc="teacher vs delta", disable=not progress)):
        x = preprocess(frame).contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        t_out = teacher(x)
        t1 = time.perf_counter()
        d_out = stream(x)
        t2 = time.perf_counter()
        key = bool(stream.last_key)
        if key:
            key_out = d_out
        else:
            result.repeated_key.append(_same(d_out, key_out))
        t_pred, d_pred = postprocess(t_out), postprocess(d_out)
        result.ms_teacher.append((t1 - t0) * 1e3)
        result.ms_delta.append((t2 - t1) * 1e3)
        result.is_key.append(key)
        result.teacher_preds.append(t_pred)
        result.delta_preds.append(d_pred)
        if on_frame is not None:
            on_frame(i, frame, t_pred, d_pred, key)
    if result.frames <= warmup:
        raise ValueError(f"need more than {warmup} frames to time after warm-up, got {result.frames}")
    return result


def _same(a: Any, b: Any) -> bool:
    """Bitwise equality of two model outputs (tensors, or tuples/lists/dicts of them)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b

