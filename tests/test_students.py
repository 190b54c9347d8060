"""Students: the SVD kernel split is exact at full rank, and its MACs are what we say they are."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deltadistill import DeltaConfig
from deltadistill.core.geometry import ConvGeometry
from deltadistill.core.students import STUDENTS, CompressedStudent, bottleneck_width

CONVS = {
    "3x3": nn.Conv2d(8, 16, 3, padding=1),
    "stride2": nn.Conv2d(8, 16, 3, stride=2, padding=1),
    "dilated": nn.Conv2d(8, 8, 3, padding=2, dilation=2),
    "1x1": nn.Conv2d(16, 8, 1),
    "rect_same": nn.Conv2d(8, 12, (3, 5), padding="same"),
    "even_same": nn.Conv2d(6, 6, 4, padding="same"),
    "depthwise": nn.Conv2d(12, 12, 3, padding=1, groups=12),
    "depthwise_s2": nn.Conv2d(12, 12, 5, stride=2, padding=2, groups=12),
    "grouped": nn.Conv2d(8, 16, 3, padding=1, groups=4),
    "reflect": nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"),
    "valid": nn.Conv2d(4, 8, 3),
}


def full_rank(conv: nn.Conv2d) -> int:
    geo = ConvGeometry.of(conv)
    return min(geo.cin // geo.groups * geo.kernel[0], geo.cout // geo.groups * geo.kernel[1])


@pytest.mark.parametrize("name", list(CONVS))
def test_full_rank_svd_student_reproduces_teacher(name: str) -> None:
    torch.manual_seed(0)
    conv = CONVS[name]
    student = CompressedStudent(ConvGeometry.of(conv), full_rank(conv))
    student.init_from_svd(conv.weight.detach())
    x = torch.randn(2, conv.in_channels, 17, 20)
    expected = conv._conv_forward(x, conv.weight, None)
    torch.testing.assert_close(student(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(CONVS))
def test_student_macs_match_flop_counter(name: str) -> None:
    """Every registered student, on every kind of conv it supports: analytic MACs == FlopCounterMode."""
    conv = CONVS[name]
    cfg = DeltaConfig(student="compressed", reduction=4)
    students = [cls.from_teacher(conv, cfg) for cls in STUDENTS.values() if cls.unsupported_reason(conv, cfg) is None]
    assert len(students) >= 3
    for student in students:
        x = torch.randn(1, conv.in_channels, 19, 24)
        with FlopCounterMode(display=False) as fc:
            y = student(x)
        assert student.macs((19, 24)) == fc.get_total_flops() // 2, student.name
        assert y.shape == conv(x).shape, student.name


def test_truncation_reduces_macs_as_computed() -> None:
    conv = nn.Conv2d(64, 128, 3, padding=1)
    geo = ConvGeometry.of(conv)
    h = w = 32
    teacher = geo.macs((h, w))
    assert teacher == 128 * 64 * 9 * h * w
    for gamma, policy in [(4, "min"), (8, "min"), (4, "out")]:
        cfg = DeltaConfig(student="compressed", reduction=gamma, policy=policy)
        r = bottleneck_width(geo, cfg)
        assert r == (64 if policy == "min" else 128) // gamma
        student = CompressedStudent.from_teacher(conv, cfg)
        # vertical kh x 1 (64 -> r) then horizontal 1 x kw (r -> 128), both at 32x32 output
        assert student.macs((h, w)) == r * 64 * 3 * h * w + 128 * r * 3 * h * w
        assert student.macs((h, w)) < teacher


def test_truncated_svd_is_best_rank_r_and_error_shrinks_with_rank() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(4, 16, 16, 16)
    target = conv._conv_forward(x, conv.weight, None)
    errs = []
    for r in (2, 8, 24, 48):
        s = CompressedStudent(ConvGeometry.of(conv), r)
        s.init_from_svd(conv.weight.detach())
        errs.append((s(x) - target).pow(2).mean().item())
        # Eckart-Young: the split's kernel differs from the teacher's by exactly the dropped singular values
        v, h = s.vertical.weight.detach(), s.horizontal.weight.detach()  # (r, Cin, kh, 1), (Cout, r, 1, kw)
        kernel = torch.einsum("orx,riy->oiyx", h[:, :, 0, :], v[:, :, :, 0])
        m = conv.weight.detach().double().permute(1, 2, 0, 3).reshape(16 * 3, 16 * 3)  # (Cin*kh, Cout*kw)
        dropped = torch.linalg.svdvals(m)[r:].pow(2).sum()
        assert float((kernel.double() - conv.weight.double()).pow(2).sum()) == pytest.approx(float(dropped), rel=1e-4, abs=1e-8)
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-9


def test_students_are_linear_and_bias_free() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=True)
    cfg = DeltaConfig(student="compressed")
    for cls in STUDENTS.values():
        s = cls.from_teacher(conv, cfg)
        a, b = torch.randn(1, 8, 10, 10), torch.randn(1, 8, 10, 10)
        assert float(s(torch.zeros_like(a)).abs().max()) == 0.0  # bias-free
        if cls.linear:  # a non-linear student (sparse) is deployed with x_k and z_k kept instead of c
            torch.testing.assert_close(s(a) - s(b), s(a - b), atol=1e-5, rtol=1e-5)
    assert not STUDENTS["sparse"].linear


def test_grouped_split_is_cheaper_and_stride2_depthwise_is_refused() -> None:
    cfg = DeltaConfig(student="compressed")
    assert CompressedStudent.unsupported_reason(CONVS["depthwise"], cfg) is None
    assert CompressedStudent.unsupported_reason(CONVS["grouped"], cfg) is None
    # a rank-1 split of a stride-2 3x3 depthwise filter costs as much as the filter itself
    why = CompressedStudent.unsupported_reason(nn.Conv2d(8, 8, 3, 2, 1, groups=8), cfg)
    assert why is not None and "not cheaper" in why
