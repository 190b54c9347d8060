"""Paths users reach that nothing else tested: teacher fine-tuning with its checkpoint, a registered student."""

from __future__ import annotations

import copy

import torch
from torch import nn

import deltadistill as dd
from deltadistill.core.geometry import ConvGeometry
from deltadistill.core.modes import delta_layers
from deltadistill.core.students import STUDENTS, FullStudent, Student

from .conftest import make_video, trained_bn


def test_finetuned_teacher_is_saved_and_loaded_with_its_weights(tiny: nn.Module, tmp_path) -> None:
    teacher = trained_bn(tiny)
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="compressed"))
    before = {n: layer.base.weight.detach().clone() for n, layer in delta_layers(model)}
    clips = torch.stack([torch.cat(make_video(frames=3, size=32, seed=s)) for s in range(2)])
    dd.distill(model, clips, steps=3, finetune_teacher=True, teacher_lr=1e-2, progress=False)
    moved = [n for n, layer in delta_layers(model) if not torch.equal(layer.base.weight, before[n])]
    assert moved  # the teacher's own convs trained
    dd.save(model, tmp_path / "m", include_teacher=True)
    loaded = dd.load(copy.deepcopy(teacher), tmp_path / "m")
    for (n, a), (_, b) in zip(delta_layers(model), delta_layers(loaded), strict=True):
        assert torch.equal(a.base.weight, b.base.weight), n
    x = make_video(frames=1, size=32, seed=5)[0]
    with torch.no_grad(), dd.mode(model, "teacher"), dd.mode(loaded, "teacher"):
        torch.testing.assert_close(model(x), loaded(x))


class HalfRes(Student):
    """A user's student: the teacher conv on every other row only (linear, bias-free, half the MACs)."""

    name = "test_half_rows"

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    @classmethod
    def from_teacher(cls, conv: nn.Conv2d, config: dd.DeltaConfig) -> HalfRes:
        return cls(FullStudent.from_teacher(conv, config).conv)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        y = self.conv(delta)
        return y * (torch.arange(y.shape[-2]) % 2 == 0).to(y.dtype).view(-1, 1)

    def macs(self, in_hw: tuple[int, int]) -> int:
        return ConvGeometry.of(self.conv).macs(in_hw) // 2


def test_a_registered_student_is_seen_by_convert_the_mac_counter_and_deploy(tiny: nn.Module) -> None:
    dd.register_student(HalfRes)
    try:
        teacher = trained_bn(tiny)
        model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="test_half_rows"))
        report = dd.count_macs(model, (3, 32, 32))
        assert all(r.student == "test_half_rows" and r.delta == r.teacher // 2 for r in report.layers)
        frames = make_video(frames=3, size=32, seed=1)
        want = [dd.DeltaStream(model, 4)(f) for f in frames[:1]]
        stream = dd.DeltaStream(dd.deploy(copy.deepcopy(model)), 4)
        torch.testing.assert_close(stream(frames[0]), want[0], atol=1e-5, rtol=1e-5)
        assert isinstance(next(layer for _, layer in delta_layers(stream.model)).student, HalfRes)
    finally:
        STUDENTS.pop("test_half_rows", None)
