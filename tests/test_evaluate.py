"""The side-by-side comparison tells a model that only repeats keyframes from one that tracks the video."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import deltadistill as dd
from deltadistill.apps.evaluate import compare
from deltadistill.apps.report import table

from .conftest import make_video, trained_bn


@pytest.mark.parametrize(("student", "repeats"), [("zero", 1.0), ("compressed", 0.0), ("full", 0.0)])
def test_compare_flags_a_model_that_repeats_its_keyframes(tiny: torch.nn.Module, student: str, repeats: float) -> None:
    teacher = trained_bn(tiny)
    model = dd.deploy(dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student=student)))
    frames = [f[0].permute(1, 2, 0).numpy() for f in make_video(frames=9, size=32, seed=2)]
    cmp = compare(teacher, model, frames, keyframe_interval=4, warmup=1, progress=False,
                  preprocess=lambda f: torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None],
                  postprocess=lambda out: out.argmax(1)[0].numpy())
    assert len(cmp.repeated_key) == 6  # frames 1-3 and 5-7 are delta frames
    assert cmp.repeat_share == repeats
    report = {"gmacs_per_frame": {"teacher": 1.0, "delta": 0.5}, "mac_ratio": 2.0, "keyframe_interval": 4,
              "ms_per_frame": {"teacher": 1.0, "delta": 1.0}, "speedup": 1.0, "frames": 9, "video": "v.mp4",
              "accuracy": {"metric": "mIoU_vs_teacher", "value": 0.9}, "temporal_consistency": {"teacher": 1, "delta": 1},
              "detail": {"delta_frames_repeating_keyframe": cmp.repeat_share}}
    assert ("only repeats" in table(report)) == (repeats == 1.0)
