"""Calibration: the whitened split is the best split for the deltas it saw, and the budget is kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import deltadistill as dd
from deltadistill.core.geometry import ConvGeometry
from deltadistill.core.layer import DeltaConv2d
from deltadistill.core.modes import delta_layers
from deltadistill.core.students import CompressedStudent
from deltadistill.train.calibrate import _hull, _patch_covariance, allocate

from .conftest import make_video, trained_bn


def correlated_deltas(conv: nn.Conv2d, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Deltas whose channels are strongly correlated, in directions unrelated to the conv's weights."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(conv.in_channels, 2, generator=g)
    low = torch.randn(n, 2, 12, 12, generator=g)
    return torch.einsum("cr,nrhw->nchw", mix, low) + 0.05 * torch.randn(n, conv.in_channels, 12, 12, generator=g)


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(16, 24, 1), lambda: nn.Conv2d(8, 12, 3, padding=1),
                                  lambda: nn.Conv2d(12, 12, 5, stride=2, padding=2, groups=12)],
                         ids=["1x1", "3x3", "depthwise_s2"])
def test_whitened_split_loses_less_delta_than_plain_svd(make) -> None:
    torch.manual_seed(0)  # the conv is built here, under the seed (built at collection, its weights
    conv = make()  # depended on whatever had drawn random numbers before, and the test was flaky)
    geo = ConvGeometry.of(conv)
    delta = correlated_deltas(conv)
    cov, count = _patch_covariance(delta, geo)
    true = conv._conv_forward(delta, conv.weight, None)
    def error(rank: int, whiten: bool) -> float:
        student = CompressedStudent(geo, rank)
        student.init_from_svd(conv.weight.detach(), cov / count if whiten else None)
        with torch.no_grad():
            return float(((student(delta) - true) ** 2).sum() / (true**2).sum())

    assert error(1, whiten=True) < error(1, whiten=False)
    if not geo.depthwise:  # the deltas' patches span 2*kh directions: that rank is then almost exact
        rank = 2 * geo.kernel[0]
        assert error(rank, whiten=True) < 0.02 < error(rank, whiten=False)


def test_whitened_split_is_exact_at_full_rank() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    geo = ConvGeometry.of(conv)
    cov, count = _patch_covariance(correlated_deltas(conv, 8), geo)
    student = CompressedStudent(geo, 18)  # min(6*3, 10*3)
    student.init_from_svd(conv.weight.detach(), cov / count)
    x = torch.randn(2, 6, 9, 11)
    torch.testing.assert_close(student(x), conv._conv_forward(x, conv.weight, None), atol=1e-4, rtol=1e-4)


def test_hull_and_greedy_allocation_on_a_hand_made_case() -> None:
    # layer a: a rank buys a lot; layer b: little. Costs are MACs, errors what is lost.
    a = [(0, 1.0, "zero", None), (10, 0.2, "compressed", 1), (20, 0.1, "compressed", 2), (40, 0.0, "full", None)]
    b = [(0, 1.0, "zero", None), (10, 0.9, "compressed", 1), (15, 0.85, "compressed", 2), (30, 0.0, "full", None)]
    ha, hb = _hull(a), _hull(b)
    assert [o[2:] for o in hb] == [("zero", None), ("full", None)]  # b's ranks are below the hull
    assert allocate({"a": ha, "b": hb}, 10) == {"a": 1, "b": 0}
    assert allocate({"a": ha, "b": hb}, 50) == {"a": 2, "b": 1}  # 20 + 30
    with pytest.raises(ValueError, match="budget too small"):
        allocate({"a": _hull(a[1:]), "b": _hull(b[1:])}, 5)


def _clips(n: int = 4) -> list[torch.Tensor]:
    return [torch.cat(make_video(frames=3, size=32, seed=s)) for s in range(n)]


@pytest.mark.parametrize("budget", [0.2, 0.5])
def test_calibrate_meets_the_budget_and_the_mac_counter_agrees(tiny: nn.Module, budget: float) -> None:
    model = dd.convert(trained_bn(tiny), dd.DeltaConfig(student="compressed"))
    result = dd.calibrate(model, _clips(), budget=budget, progress=False)
    counted = dd.count_macs(model, (3, 32, 32))
    assert result.cost <= budget + 1e-9
    assert counted.delta_ratio == pytest.approx(result.cost, rel=1e-9)
    assert result.cost > 0.5 * budget  # the budget is spent, not ignored
    for _, layer in delta_layers(model):
        assert isinstance(layer, DeltaConv2d) and layer.gate is None and len(layer.students) == 1


def test_a_larger_budget_keeps_more_and_tracks_the_teacher_better(tiny: nn.Module) -> None:
    teacher = trained_bn(tiny)
    frames = make_video(frames=4, size=32, seed=7)
    with torch.no_grad():
        want = [teacher(f) for f in frames]
    errors = []
    for budget in (0.1, 0.6):
        model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="compressed"))
        result = dd.calibrate(model, _clips(), budget=budget, progress=False)
        stream = dd.DeltaStream(model, keyframe=dd.EveryK(4))
        errors.append(sum(float((stream(f) - w).pow(2).mean()) for f, w in zip(frames, want, strict=True)))
        errors.append(sum(c.kept for c in result.layers))
    err_low, kept_low, err_high, kept_high = errors
    assert kept_high > kept_low
    assert err_high < err_low


def test_calibrated_ranks_survive_save_and_load(tiny: nn.Module, tmp_path) -> None:
    teacher = trained_bn(tiny)
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="compressed"))
    dd.calibrate(model, _clips(), budget=0.3, progress=False)
    ranks = {n: (layer.chosen(), getattr(layer.students[layer.chosen()], "rank", None))
             for n, layer in delta_layers(model)}
    assert len({r for _, r in ranks.values()}) > 1  # not one gamma for all
    dd.deploy(model)
    dd.save(model, tmp_path / "m")
    loaded = dd.load(copy.deepcopy(teacher), tmp_path / "m")
    assert {n: (layer.chosen(), getattr(layer.student, "rank", None)) for n, layer in delta_layers(loaded)} == ranks
    frames = make_video(frames=3, size=32, seed=3)
    a, b = dd.DeltaStream(model, 4), dd.DeltaStream(loaded, 4)
    for f in frames:
        torch.testing.assert_close(a(f), b(f))


def test_calibrate_refuses_bad_input(tiny: nn.Module) -> None:
    model = dd.convert(trained_bn(tiny), dd.DeltaConfig(student="compressed"))
    with pytest.raises(ValueError, match="budget"):
        dd.calibrate(model, _clips(), budget=0.0)
    with pytest.raises(ValueError, match="chooses among"):
        dd.calibrate(model, _clips(), budget=0.3, students=("pooled",))
    with pytest.raises(ValueError, match="T >= 2"):
        dd.calibrate(model, [torch.randn(1, 3, 32, 32)], budget=0.3, progress=False)
    with pytest.raises(ValueError, match="budget too small"):
        dd.calibrate(model, _clips(), budget=0.01, students=("compressed", "full"), progress=False)


class CancelledBranch(nn.Module):
    """Two equally costly 1x1 convs side by side; the rest of the net cancels ``b``'s output entirely."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 1, bias=False)
        self.b = nn.Conv2d(8, 8, 1, bias=False)
        self.mix = nn.Conv2d(8, 8, 1, bias=False)
        nn.init.zeros_(self.mix.weight)  # whatever b computes is multiplied by zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(x)) + self.mix(torch.relu(self.b(x)))


def _small_clips(n: int = 4, channels: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(1, channels, 10, 10, generator=g)
        out.append(torch.cat([x, x + 0.3 * torch.randn(1, channels, 10, 10, generator=g),
                              x + 0.3 * torch.randn(1, channels, 10, 10, generator=g)]))
    return out


def test_output_aware_allocation_gives_the_cancelled_layer_the_cheapest_student() -> None:
    torch.manual_seed(0)
    model = dd.convert(CancelledBranch(), dd.DeltaConfig(student="compressed", targets=["a", "b"]))
    # mix stays dense (a third of the MACs); the budget pays for one of a and b in full, not both:
    # b must take zero and a full, though both see the same deltas and keep the same local energy
    result = dd.calibrate(model, _small_clips(), budget=0.7, students=("zero", "compressed", "full"), progress=False)
    chosen = {c.name: c.student for c in result.layers}
    assert chosen == {"a": "full", "b": "zero"}
    assert result.predicted_recovered == pytest.approx(1.0, abs=1e-6)


def test_output_sensitivity_predicts_each_layers_real_output_error(tiny: nn.Module) -> None:
    """First order and unbiased: the estimate of ||J (W d - g(d))||^2 matches the error measured by
    swapping in that one student, for zero, kernel-split and sparse students alike."""
    from deltadistill.core.students import SparseStudent, ZeroStudent
    from deltadistill.train.calibrate import delta_covariances
    from deltadistill.train.sensitivity import output_sensitivity

    teacher = trained_bn(tiny)
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="full"))
    clips = [torch.cat(make_video(frames=2, size=32, seed=s)) for s in range(4)]
    covs = delta_covariances(model, clips, progress=False)
    sens, change = output_sensitivity(model, clips, covs, probes=256, progress=False)
    config = model.delta_report.config

    def measured(name: str, student: nn.Module) -> float:
        layer = dict(delta_layers(model))[name]
        kept = dict(layer.students)
        layer.set_students({"x": student})
        total = 0.0
        with torch.no_grad():
            for clip in clips:
                with dd.mode(model, "teacher"):
                    ref = model(clip)
                with dd.mode(model, "clip", clip_len=2):
                    out = model(clip)
                total += float(((out[1] - ref[1]) / (ref[1] - ref[0]).pow(2).mean().sqrt()).pow(2).sum())
        layer.set_students(kept)
        return total / len(clips)

    checked = 0
    for name, layer in delta_layers(model):
        st = sens[name]
        cases = [(st.mean(st.zero), ZeroStudent.from_teacher(layer.base, config)),
                 (float(st.mean(st.sparse[8])), SparseStudent.from_teacher(layer.base, config,
                                                                           threshold=float(st.thresholds[8])))]
        for predicted, student in cases:
            actual = measured(name, student)
            if actual > 0.01 * change:  # too small an error is all noise in the estimate
                assert predicted == pytest.approx(actual, rel=0.35), name
                checked += 1
    assert checked >= 8


def test_distillation_raises_the_recovered_share() -> None:
    from deltadistill.measure.recovery import recovered_share

    torch.manual_seed(0)
    teacher = trained_bn(dd.models.TinySegNet())
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="compressed", reduction=4))
    clips = [torch.cat(make_video(frames=3, size=32, seed=s)) for s in range(6)]
    before = recovered_share(model, clips)
    dd.distill(model, torch.stack(clips), steps=60, lr=3e-3, progress=False)
    after = recovered_share(model, clips)
    assert after > before + 0.1, (before, after)
