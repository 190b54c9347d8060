"""The sparse student: exact where it computes, MACs measured from what moved, deployable and savable."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import deltadistill as dd
from deltadistill.core.geometry import ConvGeometry
from deltadistill.core.macs import has_measured_macs, measured_delta_macs
from deltadistill.core.modes import delta_layers
from deltadistill.core.students import SparseStudent

from .conftest import make_video, trained_bn


def test_threshold_zero_is_the_teacher_conv_and_a_threshold_drops_only_still_pixels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    student = SparseStudent.from_teacher(conv, dd.DeltaConfig(), threshold=0.0)
    d = torch.randn(2, 8, 12, 12)
    torch.testing.assert_close(student(d), conv._conv_forward(d, conv.weight, None))
    assert student.measured_macs() == ConvGeometry.of(conv).macs((12, 12))
    d[:, :, :, 6:] *= 1e-3  # the right half barely moves
    student.threshold.fill_(0.1)
    kept = d.clone()
    kept[:, :, :, 6:] = 0
    torch.testing.assert_close(student(d), conv._conv_forward(kept, conv.weight, None))


@pytest.mark.parametrize("conv,share", [(nn.Conv2d(4, 4, 1), 6 / 12), (nn.Conv2d(4, 4, 3, padding=1), 7 / 12),
                                        (nn.Conv2d(4, 4, 3, stride=2, padding=1), 4 / 6)])
def test_measured_macs_count_the_outputs_whose_receptive_field_moved(conv: nn.Conv2d, share: float) -> None:
    student = SparseStudent.from_teacher(conv, dd.DeltaConfig(), threshold=0.5)
    d = torch.zeros(1, 4, 12, 12)
    d[..., :6] = 1.0  # columns 0..5 move: a 3x3 conv must also compute column 6; stride 2: columns 0..3 of 6
    student(d)
    dense = ConvGeometry.of(conv).macs((12, 12))
    assert student.measured_macs() == round(share * dense)


def test_deployed_sparse_model_streams_like_the_trainable_one_and_survives_save_load(tiny: nn.Module, tmp_path) -> None:
    teacher = trained_bn(tiny)
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    for _, layer in delta_layers(model):
        layer.students["sparse"].threshold.fill_(0.05)
    frames = make_video(frames=5, size=32, seed=2)
    trainable = dd.DeltaStream(model, 4)
    want = [trainable(f) for f in frames]
    deployed = dd.deploy(copy.deepcopy(model))
    assert has_measured_macs(deployed)
    stream = dd.DeltaStream(deployed, 4)
    for f, w in zip(frames, want, strict=True):
        torch.testing.assert_close(stream(f), w, atol=1e-4, rtol=1e-4)
    dd.save(deployed, tmp_path / "m")
    loaded = dd.load(copy.deepcopy(teacher), tmp_path / "m")
    assert all(float(layer.student.threshold) == pytest.approx(0.05) for _, layer in delta_layers(loaded))
    again = dd.DeltaStream(loaded, 4)
    for f, w in zip(frames, want, strict=True):
        torch.testing.assert_close(again(f), w, atol=1e-4, rtol=1e-4)
    # the keyframe is the (BN-folded) teacher's output bit for bit; a delta frame's MACs are measured
    with torch.no_grad(), dd.mode(loaded, "teacher"):
        want_key = loaded(frames[0])
    assert torch.equal(dd.DeltaStream(loaded, 4)(frames[0]), want_key)
    report = dd.count_macs(loaded, (3, 32, 32))
    measured = measured_delta_macs(loaded, report)
    assert 0 < measured < report.teacher


def test_sparsify_scales_each_threshold_by_its_layers_input_and_a_higher_level_computes_less(tiny: nn.Module) -> None:
    teacher = trained_bn(tiny)
    clips = [torch.cat(make_video(frames=3, size=32, seed=s)) for s in range(3)]
    frames = make_video(frames=4, size=32, seed=9)
    measured = []
    for level in (0.0, 0.5):
        model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
        result = dd.sparsify(model, clips, level=level, clips=3)
        mean_abs = {}
        hooks = [layer.register_forward_pre_hook(lambda _m, a, n=n, seen=mean_abs: seen.setdefault(n, []).append(
            float(a[0].abs().mean()))) for n, layer in delta_layers(model)]
        with torch.no_grad(), dd.mode(model, "teacher"):
            for clip in clips:
                model(clip[:1])
        for h in hooks:
            h.remove()
        assert {"stem", "head"} <= {c.name for c in result.layers}  # sparse students take the ends too
        for choice in result.layers:
            share = 0.25 if choice.name == "stem" else 1.0  # the first conv sees the frame: a quarter of the level
            assert choice.threshold == pytest.approx(share * level * sum(mean_abs[choice.name]) / 3, rel=1e-5)
        deployed = dd.deploy(model)
        stream = dd.DeltaStream(deployed, 4)
        report = dd.count_macs(deployed, (3, 32, 32))
        total = 0
        for f in frames:
            stream(f)
            if not stream.last_key:
                total += measured_delta_macs(deployed, report)
        measured.append(total)
    dense = 3 * (dd.count_macs(dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="full")),
                               (3, 32, 32)).delta)
    assert measured[0] == dense  # threshold 0: every moving pixel computed, and in this video all move
    assert measured[1] < 0.9 * measured[0]
    with pytest.raises(ValueError, match="level"):
        dd.sparsify(dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse")), clips, level=-1)
    # a model converted with its ends dense: no layer is the first conv, so none gets the lower threshold
    inner = dd.DeltaConfig(student="sparse", targets=lambda n, m: isinstance(m, nn.Conv2d) and n not in ("stem", "head"))
    kept = dd.convert(copy.deepcopy(teacher), inner)
    plain = dd.sparsify(kept, clips, level=0.5, clips=3, first=0.0)
    assert all(c.threshold > 0 for c in plain.layers)


def test_sparsify_gives_the_stem_its_share_of_the_level(tiny: nn.Module) -> None:
    # TinySegNet at 32x32: the first conv sees 32x32; block1's conv1 and projection see 16x16 (half:
    # the stem); everything after sees 8x8
    clips = [torch.cat(make_video(frames=3, size=32, seed=s)) for s in range(3)]
    plain = dd.sparsify(dd.convert(copy.deepcopy(tiny), dd.DeltaConfig(student="sparse")), clips, level=0.4, clips=3)
    low = dd.sparsify(dd.convert(copy.deepcopy(tiny), dd.DeltaConfig(student="sparse")), clips, level=0.4, clips=3,
                      stem=0.1)
    ratio = {a.name: b.threshold / a.threshold for a, b in zip(plain.layers, low.layers, strict=True)}
    assert ratio.pop("block1.conv1") == pytest.approx(0.1) and ratio.pop("block1.proj.0") == pytest.approx(0.1)
    assert ratio.pop("stem") == pytest.approx(0.1 / 0.25)  # the first conv: the lower of ``first`` and ``stem``
    assert all(r == pytest.approx(1.0) for r in ratio.values()), ratio
    with pytest.raises(ValueError, match="stem"):
        dd.sparsify(dd.convert(copy.deepcopy(tiny), dd.DeltaConfig(student="sparse")), clips, stem=-1)


@pytest.mark.parametrize(("student", "ends"), [("sparse", True), ("sparse_running", True), ("compressed", False),
                                               ("full", False)])
def test_convert_leaves_the_first_and_last_conv_dense_only_for_students_that_lose_there(
        tiny: nn.Module, student: str, ends: bool) -> None:
    model = dd.convert(copy.deepcopy(tiny), dd.DeltaConfig(student=student))
    converted = set(model.delta_report.converted)
    assert ({"stem", "head"} <= converted) == ends
    assert not ({"stem", "head"} & converted) or ends
    assert {"block1.conv1", "same"} <= converted


def test_tune_sparse_meets_a_measured_budget_and_each_move_improves_the_measured_model(tiny: nn.Module) -> None:
    from deltadistill.train.tune import _measure

    teacher = trained_bn(tiny)
    clips = [torch.cat(make_video(frames=3, size=32, seed=s)) for s in range(3)]
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    dd.sparsify(model, clips, level=0.05, clips=3)
    result = dd.tune_sparse(model, clips, budget=0.6, clips=3, rounds=6, progress=False)
    start, end = result.history[0], result.history[-1]
    assert start["cost"] > 0.6 >= result.cost  # it began over budget and ended within it
    scores = [h["error"] + 10 * max(0.0, h["cost"] - 0.6) for h in result.history]
    assert all(b < a for a, b in zip(scores, scores[1:], strict=False))
    # what it reports is what the model now measures
    with torch.no_grad(), dd.mode(model, "teacher"):
        wants = [[model(f[None]).clone() for f in clip] for clip in clips]
    err, cost = _measure(model, clips, wants, dd.count_macs(model, (3, 32, 32)))
    assert (err, cost) == pytest.approx((end["error"], end["cost"]))
    with pytest.raises(ValueError, match="sparse student"):
        dd.tune_sparse(dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="full")), clips, budget=0.5)


def _moves_once(frames: int = 4) -> torch.Tensor:
    """A (T, 1, 4, 8, 8) clip: frame 1 changes a 2x2 patch, later frames repeat frame 1."""
    torch.manual_seed(3)
    x = torch.randn(1, 4, 8, 8).repeat(frames, 1, 1, 1)
    x[1:, :, 2:4, 2:4] += 2.0
    return x.unsqueeze(1)


@pytest.mark.parametrize("kind", ["sparse", "sparse_running"])
def test_a_running_reference_pays_once_for_a_pixel_that_moved_once(kind: str) -> None:
    conv = nn.Conv2d(4, 6, 1)
    model = dd.deploy(dd.convert(nn.Sequential(copy.deepcopy(conv)), dd.DeltaConfig(student=kind, targets=["0"])))
    (_, layer), = delta_layers(model)
    layer.student.threshold.fill_(0.5)
    stream, paid = dd.DeltaStream(model, 8), []
    for f in _moves_once():
        torch.testing.assert_close(stream(f), conv(f))  # the moved patch is far above the threshold: exact
        paid.append(layer.student.measured_macs())
    patch = 4 * ConvGeometry.of(conv).macs((1, 1))
    # keyframe reference: the patch differs from the keyframe on every frame; running: only on frame 1
    assert paid[1:] == ([patch, patch, patch] if kind == "sparse" else [patch, 0, 0])


def test_a_running_reference_stays_within_the_threshold_of_each_input_while_drifts_add_up() -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    model = dd.deploy(dd.convert(nn.Sequential(copy.deepcopy(conv)), dd.DeltaConfig(student="sparse_running", targets=["0"])))
    (_, layer), = delta_layers(model)
    tau = 0.3
    layer.student.threshold.fill_(tau)
    x0 = x = torch.randn(1, 4, 10, 10)
    stream = dd.DeltaStream(model, 100)
    stream(x)
    for _ in range(12):  # small drifts, each below the threshold, that add up to far more than it
        x = x + 0.1 * torch.rand(1, 4, 10, 10)
        out = stream(x)
        ref = stream.caches[0]["x"]
        assert float((x - ref).abs().mean(1).max()) <= tau + 1e-6  # never more than tau behind the truth
        torch.testing.assert_close(out, conv._conv_forward(ref, conv.weight, conv.bias))  # z is W x_ref + b
    assert float((stream.caches[0]["x"] - x0).abs().mean()) > tau  # the reference did move with the input


@pytest.mark.parametrize("conv,count", [(nn.Conv2d(4, 6, 1), 3 * 6), (nn.Conv2d(4, 6, 3, padding=1), (9 + 9 + 4) * 6),
                                        (nn.Conv2d(4, 8, 3, padding=1, groups=4), (9 + 9 + 4) * 2),
                                        (nn.Conv2d(4, 6, 3, stride=2, padding=1), (1 + 4 + 1) * 6)])
def test_element_macs_count_each_nonzero_times_the_weights_that_reach_an_output(conv: nn.Conv2d, count: int) -> None:
    from deltadistill.core.students import element_macs
    mask = torch.zeros(1, 4, 6, 6, dtype=torch.bool)
    mask[0, 0, 2, 2] = mask[0, 3, 3, 3] = True  # interior: 9 windows with a 3x3 kernel (1 and 4 at stride 2)
    mask[0, 1, 0, 0] = True  # a corner: 4 windows with padding 1 (1 at stride 2)
    geo = ConvGeometry.of(conv)
    full = geo.cout // geo.groups * geo.cin * geo.kernel[0] * geo.kernel[1] * 36 // geo.stride[0] ** 2
    if conv.padding == (1, 1):  # padding: 5x5 of the 6x6 input sees all 9 taps, the border fewer
        full = {1: (16 * 9 + 16 * 6 + 4 * 4) * 4, 2: (4 * 9 + 4 * 6 + 1 * 4) * 4}[geo.stride[0]] * (geo.cout // geo.groups)
    want = count * geo.macs((6, 6)) / full  # scaled so that a full input costs the dense conv's MACs
    assert float(element_macs(mask, geo)) == pytest.approx(want)
    assert float(element_macs(torch.ones_like(mask), geo)) == pytest.approx(geo.macs((6, 6)))


def test_element_student_drops_single_channels_and_is_exact_at_threshold_zero() -> None:
    from deltadistill.core.students import ElementSparseStudent
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    student = ElementSparseStudent.from_teacher(conv, dd.DeltaConfig(), threshold=0.0)
    d = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(student(d), conv._conv_forward(d, conv.weight, None))
    assert student.measured_macs() == ConvGeometry.of(conv).macs((8, 8))
    d[:, 1] *= 1e-3  # one channel barely moves: only it is dropped, at every pixel
    student.threshold.fill_(0.01)
    kept = d.clone()
    kept[:, 1] = torch.where(kept[:, 1].abs() > 0.01, kept[:, 1], 0)
    torch.testing.assert_close(student(d), conv._conv_forward(kept, conv.weight, None))
    assert student.measured_macs() < ConvGeometry.of(conv).macs((8, 8)) * 0.8


@pytest.mark.parametrize("kind", ["sparse_running", "sparse_element_running"])
def test_running_students_stream_alike_trainable_and_deployed_and_survive_save_load(kind: str, tiny: nn.Module,
                                                                                    tmp_path) -> None:
    teacher = trained_bn(tiny)
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student=kind))
    for _, layer in delta_layers(model):
        layer.students[kind].threshold.fill_(0.05)
    frames = make_video(frames=6, size=32, seed=2)
    trainable = dd.DeltaStream(model, 8)
    want = [trainable(f) for f in frames]
    deployed = dd.deploy(copy.deepcopy(model))
    stream = dd.DeltaStream(deployed, 8)
    for f, w in zip(frames, want, strict=True):
        torch.testing.assert_close(stream(f), w, atol=1e-4, rtol=1e-4)
    dd.save(deployed, tmp_path / "m")
    loaded = dd.load(copy.deepcopy(teacher), tmp_path / "m")
    assert {layer.student.name for _, layer in delta_layers(loaded)} == {kind}
    again = dd.DeltaStream(loaded, 8)
    for f, w in zip(frames, want, strict=True):
        torch.testing.assert_close(again(f), w, atol=1e-4, rtol=1e-4)
