"""How much of the output's change since the keyframe delta frames recover: the measure that says
whether a delta model beats repeating keyframes, used by calibration, tuning and the reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.macs import MacReport, has_measured_macs, measured_delta_macs
from ..stream import DeltaStream, EveryK


def first_output_map(out: Any) -> torch.Tensor:
    """The first tensor of a model's raw output (the heatmap of a detector, the mask of a segmenter)."""
    while not isinstance(out, torch.Tensor):
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out



@torch.no_grad()
def stream_change(model: nn.Module, clips: Sequence[torch.Tensor], wants: Sequence[Sequence[torch.Tensor]] | None = None,
                  macs: MacReport | None = None) -> tuple[float, float, float | None]:
    """Stream each clip (T, C, H, W), its first frame the keyframe, and compare delta frames with the teacher.

    Returns ``(error, energy, delta MACs)``: sums over delta frames of ``||y_delta - y_teacher||^2``
    and ``||y_key - y_teacher||^2`` on the first output map, and, with ``macs`` and data-dependent
    students, the mean measured MACs of a delta frame. ``wants``: the teacher's first output maps per
    clip and frame, when already known (the model in teacher mode gives them otherwise).
    """
    from ..core.modes import mode

    err = energy = spent = 0.0
    frames = 0
    measure = macs is not None and has_measured_macs(model)
    for i, clip in enumerate(clips):
        clip = clip[0] if isinstance(clip, (tuple, list)) else clip
        if wants is None:
            with mode(model, "teacher"):
                want = [first_output_map(model(f[None])).clone() for f in clip]
        else:
            want = wants[i]
        stream = DeltaStream(model, EveryK(clip.shape[0]))
        for t, f in enumerate(clip):
            got = first_output_map(stream(f[None]))
            if t:
                err += float((got - want[t]).double().pow(2).sum())
                energy += float((want[0] - want[t]).double().pow(2).sum())
                spent += measured_delta_macs(model, macs) if measure else 0
                frames += 1
    return err, energy, spent / max(frames, 1) if measure else None


def recovered_share(model: nn.Module, clips: Sequence[torch.Tensor]) -> float:
    """How much of the output's change since the keyframe a converted model's delta frames recover.

    Each clip (T, C, H, W) streams with its first frame as the keyframe; on the rest,
    ``1 - sum ||y_delta - y_teacher||^2 / sum ||y_key - y_teacher||^2`` over the first output map:
    0 is no better than repeating the keyframe (the free rival), 1 is the teacher, below 0 is worse.
    """
    err, energy, _ = stream_change(model, clips)
    if energy == 0:
        raise ValueError("the clips do not change the output: nothing to recover")
    return 1.0 - err / energy
