"""The method's identities: keyframe == teacher, full students == teacher on every frame, deploy == undeployed."""

from __future__ import annotations

import copy

import pytest
import torch

import deltadistill as dd
from deltadistill.models import TinySegNet
from tests.conftest import make_video, trained_bn


def teacher_out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), dd.mode(model, "teacher"):
        return model(x)


def randomise_gates_and_students(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, dd.DeltaConv2d):
            if m.gate is not None:
                m.gate.logits.data.copy_(torch.randn(m.gate.logits.shape, generator=g))
            for p in m.students.parameters():
                p.data.add_(0.05 * torch.randn(p.shape, generator=g))


def test_teacher_mode_is_the_original_model(tiny: TinySegNet, video) -> None:
    original = copy.deepcopy(tiny)
    dd.convert(tiny, dd.DeltaConfig())
    for x in video:
        assert torch.equal(teacher_out(tiny, x), original(x))


@pytest.mark.parametrize("student", ["search", "compressed", "full"])
def test_keyframe_equals_teacher_exactly(tiny: TinySegNet, video, student: str) -> None:
    dd.convert(tiny, dd.DeltaConfig(student=student))
    randomise_gates_and_students(tiny)
    stream = dd.DeltaStream(tiny, dd.EveryK(3))
    for t, x in enumerate(video):
        out = stream(x)
        if t % 3 == 0:
            assert torch.equal(out, teacher_out(tiny, x))
        else:
            assert not torch.equal(out, teacher_out(tiny, x))


def test_full_students_reproduce_teacher_on_every_frame(tiny: TinySegNet) -> None:
    """Linearity: z_k + W(x_t - x_k) == W(x_t), through BN, ReLU, residuals, stride, dilation, depthwise."""
    video = make_video(frames=8, batch=2)
    dd.convert(tiny, dd.DeltaConfig(student="full"))
    kinds = " ".join(r.kind for r in tiny.delta_report.layers if r.converted)
    assert "dw" in kinds and "/2" in kinds  # the net really has depthwise and strided convs converted
    stream = dd.DeltaStream(tiny, dd.EveryK(8))
    for x in video:
        torch.testing.assert_close(stream(x), teacher_out(tiny, x), atol=2e-5, rtol=1e-4)
    dd.deploy(tiny)
    stream = dd.DeltaStream(tiny, dd.EveryK(8))
    for x in video:
        torch.testing.assert_close(stream(x), teacher_out(tiny, x), atol=2e-5, rtol=1e-4)


def test_clip_mode_matches_stream_and_exposes_deltas(tiny: TinySegNet) -> None:
    video = make_video(frames=4, batch=2)
    dd.convert(tiny, dd.DeltaConfig(student="compressed"))
    clip = torch.stack(video, 1)  # (N, T, C, H, W)
    dd.core.modes.record_true_delta(tiny)
    tiny.eval()
    with torch.no_grad(), dd.mode(tiny, "clip", clip_len=4):
        out = tiny(clip.flatten(0, 1)).view(2, 4, *clip.shape[2:])
    stream = dd.DeltaStream(tiny, dd.EveryK(4))
    for t, x in enumerate(video):
        torch.testing.assert_close(out[:, t], stream(x), atol=1e-5, rtol=1e-4)
    layer = next(m for m in tiny.modules() if isinstance(m, dd.DeltaConv2d))
    assert layer.last_pred_delta.shape == layer.last_true_delta.shape
    assert layer.last_pred_delta.shape[0] == 2 * 3  # N * (T - 1) non-key frames


def test_true_delta_is_teacher_feature_difference(tiny: TinySegNet) -> None:
    """last_true_delta == z_t - z_k of the teacher conv, computed on that layer's own input."""
    dd.convert(tiny, dd.DeltaConfig(student="compressed"))
    dd.core.modes.record_true_delta(tiny)
    layer = tiny.block2.conv1
    seen = {}
    layer.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0].detach()))
    with torch.no_grad(), dd.mode(tiny, "clip", clip_len=3):
        tiny(torch.cat(make_video(frames=3)))
    x = seen["x"]
    z = layer.base(x)
    torch.testing.assert_close(layer.last_true_delta, (z[1:] - z[0:1]), atol=1e-5, rtol=1e-4)


def test_gate_gets_gradients_through_straight_through_sample(tiny: TinySegNet) -> None:
    dd.convert(tiny, dd.DeltaConfig(student="search"))
    tiny.train()
    with dd.mode(tiny, "clip", clip_len=3):
        tiny(torch.cat(make_video(frames=3))).square().mean().backward()
    gates = [m.gate for m in tiny.modules() if isinstance(m, dd.DeltaConv2d) and m.gate is not None]
    assert gates and all(g.logits.grad is not None and g.logits.grad.abs().sum() > 0 for g in gates)
    assert all(p.grad is None for m in tiny.modules() if isinstance(m, dd.DeltaConv2d) for p in m.base.parameters())


ALL_STUDENTS = ("zero", "pooled", "compressed", "full")


@pytest.mark.parametrize("interval,candidates", [(1, ("compressed", "full")), (3, ("compressed", "full")),
                                                 (5, ("compressed", "full")), (3, ALL_STUDENTS)])
def test_deployed_matches_undeployed(interval: int, candidates: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    model = trained_bn(TinySegNet())
    dd.convert(model, dd.DeltaConfig(student="search", candidates=candidates))
    randomise_gates_and_students(model, seed=3)
    reference = copy.deepcopy(model)
    choices = {n: m.chosen() for n, m in model.named_modules() if isinstance(m, dd.DeltaConv2d)}
    assert set(choices.values()) == set(candidates)  # every kind of student survives in this test
    dd.deploy(model)
    assert model.delta_bn_folded == 7  # every BN of TinySegNet directly follows a conv: all fold away
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, dd.DeltaConv2d) for m in model.modules())
    assert {n: m.student_name for n, m in model.named_modules() if isinstance(m, dd.DeployedDeltaConv2d)} == choices
    a, b = dd.DeltaStream(reference, interval), dd.DeltaStream(model, interval)
    for x in make_video(frames=7, batch=2):
        torch.testing.assert_close(b(x), a(x), atol=2e-5, rtol=1e-4)


def test_true_delta_uses_the_teachers_own_features_after_a_teacher_pass(tiny: TinySegNet) -> None:
    """As in training: a teacher pass over the clip, then the clip pass. The target is z_t - z_k of the
    teacher's own features, not W(x_t - x_k) on inputs that upstream students already distorted."""
    dd.convert(tiny, dd.DeltaConfig(student="compressed"))
    dd.core.modes.record_true_delta(tiny)
    clip = torch.cat(make_video(frames=3))
    layer = tiny.block2.conv1
    seen = {}
    hook = layer.register_forward_hook(lambda m, i, o: seen.setdefault("z", o.detach().clone()))
    with torch.no_grad(), dd.mode(tiny, "teacher"):
        tiny(clip)
    hook.remove()
    with torch.no_grad(), dd.mode(tiny, "clip", clip_len=3):
        tiny(clip)
    z = seen["z"]
    torch.testing.assert_close(layer.last_true_delta, z[1:] - z[0:1])
    with torch.no_grad(), dd.mode(tiny, "clip", clip_len=3):
        tiny(clip)  # no teacher pass before this one: the local target on this layer's own input
    assert not torch.allclose(layer.last_true_delta, z[1:] - z[0:1], atol=1e-4)
