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


def test_a_compiled_comparison_still_measures_what_sparse_delta_frames_cost(tiny: torch.nn.Module) -> None:
    """A traced sparse student records no MACs; the compiled run must not fall back to the teacher's."""
    torch._dynamo.reset()
    teacher = trained_bn(tiny)
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    for _, layer in dd.core.modes.delta_layers(model):
        layer.students["sparse"].threshold.fill_(0.05)
    dd.deploy(model)
    macs = dd.count_macs(model, (3, 32, 32))
    frames = [f[0].permute(1, 2, 0).numpy() for f in make_video(frames=12, size=32, seed=2)]

    def run(compiled: bool):
        return compare(teacher, model, frames, keyframe_interval=4, warmup=1, progress=False, compile=compiled,
                       macs=macs, preprocess=lambda f: torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None],
                       postprocess=lambda out: out.argmax(1)[0].numpy())

    eager, compiled = run(False), run(True)
    assert len(compiled.delta_frame_macs) == 9
    assert compiled.delta_frame_macs == eager.delta_frame_macs
    assert max(compiled.delta_frame_macs) < macs.teacher
