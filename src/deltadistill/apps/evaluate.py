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

from ..core.macs import MacReport
from ..measure.recovery import first_output_map
from ..runtime.streams import FrameStream, StreamSetup, open_stream
from ..stream import EveryK, KeyframePolicy, frame_change


@dataclass
class Comparison:
    """Per-frame record of a side-by-side run."""

    #: K, or under a policy that adds keyframes (`SceneCut`), frames per keyframe as run
    keyframe_interval: float
    ms_teacher: list[float] = field(default_factory=list)
    ms_delta: list[float] = field(default_factory=list)
    is_key: list[bool] = field(default_factory=list)
    teacher_preds: list[Any] = field(default_factory=list)
    delta_preds: list[Any] = field(default_factory=list)
    warmup: int = 0
    #: amortise by the mean of every timed frame, not (key + (K-1) delta) / K: for a stream that chooses
    #: per frame what to run (the tile runtime's dense guard), whose frames follow no K
    by_mean: bool = False
    #: per delta frame: did the delta model return its keyframe's raw output again, bit for bit?
    repeated_key: list[bool] = field(default_factory=list)
    #: per frame, under a policy other than `EveryK`, `stream.frame_change` from the frame before (0 for
    #: the first): the rival's scene cuts
    changes: list[float] = field(default_factory=list)
    #: per delta frame, its measured MACs (only for models with data-dependent students)
    delta_frame_macs: list[int] = field(default_factory=list)
    #: over delta frames, on the first raw output map: sum ||delta model - teacher||^2, and the same for
    #: the teacher's keyframe output repeated (the rival at the same K)
    change_error: float = 0.0
    change_energy: float = 0.0
    #: per delta frame of a runtime that reports them (`runtime.crop.CropStream`): the share of tiles
    #: that moved, the share of the frame computed, and where its time went
    stages: list[dict[str, float]] = field(default_factory=list)
    #: the keyframe policy the delta model ran under (a `rate.RateControl` holds what it spent)
    policy: Any = None

    @property
    def recovered(self) -> float | None:
        """Share of the output's change since the keyframe that delta frames recover:
        ``1 - ||y_delta - y_teacher||^2 / ||y_key - y_teacher||^2``; 0 is repeating the keyframe, 1 the teacher."""
        return 1.0 - self.change_error / self.change_energy if self.change_energy > 0 else None

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

    def tail_ms(self, which: str) -> dict[str, float]:
        """p95 and worst ms of a frame after warm-up (``which``: "teacher" or "delta"): real-time users
        care about the worst frame, which an amortised median hides."""
        values = sorted(self._timed(self.ms_teacher if which == "teacher" else self.ms_delta))
        return {"p95": values[min(len(values) - 1, int(0.95 * len(values)))], "max": values[-1]}

    @property
    def delta_ms(self) -> float:
        """Amortised ms per frame of the delta model over one keyframe cycle (or, ``by_mean``, over every
        frame after warm-up)."""
        if self.by_mean:
            return statistics.fmean(self._timed(self.ms_delta))
        k = self.keyframe_interval
        return (self.key_ms + (k - 1) * self.delta_frame_ms) / k


def channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)


#: frames each comparison runs before it starts timing
WARMUP = 3


@torch.no_grad()
def compare(
    teacher: nn.Module,
    model: nn.Module | None,
    frames: Iterable[np.ndarray],
    *,
    keyframe_interval: int,
    preprocess: Callable[[np.ndarray], torch.Tensor],
    postprocess: Callable[[Any], Any],
    on_frame: Callable[[int, np.ndarray, Any, Any, bool], None] | None = None,
    warmup: int = WARMUP,
    total: int | None = None,
    progress: bool = True,
    compile: bool = False,
    macs: MacReport | None = None,
    stream: FrameStream | None = None,
    policy: KeyframePolicy | None = None,
) -> Comparison:
    """Teacher (a plain model) and a stream (any way of running frames, `runtime.streams`) on the
    same frames; without ``stream``, the delta ``model`` in torch (``compile``: through
    ``torch.compile``, the teacher too; the warm-up, then two keyframe cycles long, absorbs the compile
    time and is not timed).

    ``frames`` yields uint8 RGB (H, W, 3) arrays at the model's input size; ``on_frame`` sees
    ``(index, frame, teacher_pred, delta_pred, is_key)`` for rendering or streaming metrics. A
    stream whose delta frames cost what the data asks (`FrameStream.measured`) has each delta frame's
    MACs counted, after the frame, outside its time. ``policy``: the keyframe policy (default
    `EveryK(keyframe_interval)`); under one that adds keyframes, the comparison's interval becomes
    frames per keyframe as run, so amortised figures count them all. ``macs`` is unused (the stream
    counts its own; kept for callers).
    """
    own = stream is None
    if stream is None:
        if model is None:
            raise ValueError("compare needs a delta model, or a stream to time")
        model = channels_last(model.eval())
        stream = open_stream("dense", StreamSetup(teacher, model, tuple(teacher.input_size) if hasattr(
            teacher, "input_size") else (0, 0), policy if policy is not None else keyframe_interval,
            keyframe_interval, compile=compile))
    teacher = channels_last(teacher.eval())
    timed_teacher = stream.dense_teacher()
    if compile:  # both or neither: the ratio must compare like with like
        teacher = torch.compile(teacher)
        warmup = max(warmup, 2 * keyframe_interval + 1)  # a second keyframe may still recompile
    result = Comparison(keyframe_interval, warmup=warmup, by_mean=bool(getattr(stream, "amortised_by_mean", False)))
    prev: torch.Tensor | None = None
    track_changes = policy is not None and not isinstance(policy, EveryK)
    try:
        for i, frame in enumerate(tqdm(frames, total=total, desc="teacher vs delta", disable=not progress)):
            x = preprocess(frame).contiguous(memory_format=torch.channels_last)
            if track_changes:  # only a policy that re-keys on change needs them (for the rival's keyframes)
                result.changes.append(0.0 if prev is None else float(frame_change(prev, x).mean()))
                prev = x
            t0 = time.perf_counter()
            t_out = teacher(x) if timed_teacher is None else timed_teacher(x)
            t1 = time.perf_counter()
            d_out = stream(x)
            t2 = time.perf_counter()
            key = bool(stream.last_key)
            spent = stream.account()  # untimed: what the frame computed
            if key:
                key_out, teacher_key_map = d_out, first_output_map(t_out).clone()
            else:
                t_map = first_output_map(t_out)
                result.change_error += float((first_output_map(d_out) - t_map).double().pow(2).sum())
                result.change_energy += float((teacher_key_map - t_map).double().pow(2).sum())
                result.repeated_key.append(_same(d_out, key_out))
                if stream.measured and spent is not None:
                    result.delta_frame_macs.append(round(spent))
                stages = stream.stages()
                if stages is not None:
                    result.stages.append(stages)
            t_pred, d_pred = postprocess(t_out), postprocess(d_out)
            result.ms_teacher.append((t1 - t0) * 1e3)
            result.ms_delta.append((t2 - t1) * 1e3)
            result.is_key.append(key)
            result.teacher_preds.append(t_pred)
            result.delta_preds.append(d_pred)
            if on_frame is not None:
                on_frame(i, frame, t_pred, d_pred, key)
    finally:
        if own:
            stream.close()
    result.policy = stream.policy
    if result.frames <= warmup:
        raise ValueError(f"need more than {warmup} frames to time after warm-up, got {result.frames}")
    expected = sum(1 for i in range(result.frames) if i % keyframe_interval == 0)
    if (policy is not None and not isinstance(policy, EveryK)) or sum(result.is_key) != expected:
        result.keyframe_interval = result.frames / sum(result.is_key)  # keyframes as run (cuts, re-keys)
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
