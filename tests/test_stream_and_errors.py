"""Stream isolation, reset, mixed keyframes in a batch, save/load, and clear errors for bad input."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from torch import nn

import deltadistill as dd
from deltadistill.files import atomic_write
from deltadistill.models import ResNetLike, TinySegNet
from tests.conftest import make_video
from tests.test_identities import randomise_gates_and_students


@pytest.fixture
def model(tiny: TinySegNet) -> TinySegNet:
    dd.convert(tiny, dd.DeltaConfig())
    randomise_gates_and_students(tiny)
    return tiny


def run(model: nn.Module, frames: list[torch.Tensor], k: int = 4) -> list[torch.Tensor]:
    stream = dd.DeltaStream(model, dd.EveryK(k))
    return [stream(x) for x in frames]


def test_two_streams_on_one_model_are_isolated(model) -> None:
    a, b = make_video(seed=1), make_video(seed=2)
    alone_a, alone_b = run(model, a), run(model, b)
    sa, sb = dd.DeltaStream(model, 4), dd.DeltaStream(model, 4)
    for t in range(len(a)):  # interleaved
        assert torch.equal(sa(a[t]), alone_a[t])
        assert torch.equal(sb(b[t]), alone_b[t])


def test_batch_of_streams_equals_each_stream_alone(model) -> None:
    a, b = make_video(seed=1), make_video(seed=2)
    alone_a, alone_b = run(model, a), run(model, b)
    batched = run(model, [torch.cat([x, y]) for x, y in zip(a, b, strict=True)])
    for t in range(len(a)):
        torch.testing.assert_close(batched[t][0:1], alone_a[t], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched[t][1:2], alone_b[t], atol=1e-5, rtol=1e-4)


def test_reset_forgets_state(model) -> None:
    a, b = make_video(seed=1), make_video(seed=2)
    stream = dd.DeltaStream(model, 4)
    for x in a[:3]:
        stream(x)
    stream.reset()
    fresh = run(model, b)
    for t, x in enumerate(b):
        assert torch.equal(stream(x), fresh[t])


class StaggeredKeys:
    """Stream 0 keys every 2 frames, stream 1 every 3: a per-stream policy."""

    def reset(self) -> None:
        pass

    def __call__(self, step: int, frame: torch.Tensor) -> torch.Tensor:
        return torch.tensor([step % 2 == 0, step % 3 == 0])


@pytest.mark.parametrize("deployed", [False, True])
def test_per_stream_keyframes_in_one_batch(model, deployed: bool) -> None:
    if deployed:
        dd.deploy(model)
    a, b = make_video(seed=1), make_video(seed=2)
    alone_a, alone_b = run(model, a, 2), run(model, b, 3)
    stream = dd.DeltaStream(model, StaggeredKeys())
    for t in range(len(a)):
        out = stream(torch.cat([a[t], b[t]]))
        torch.testing.assert_close(out[0:1], alone_a[t], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[1:2], alone_b[t], atol=1e-5, rtol=1e-4)


def test_wrong_frame_shape_mid_stream_is_a_clear_error(model) -> None:
    stream = dd.DeltaStream(model, 4)
    stream(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="frame shape changed mid-stream"):
        stream(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        stream(torch.randn(3, 32, 32))


def test_unsupported_layer_named_explicitly_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 8, 2, 2), nn.Conv2d(8, 3, 1))
    with pytest.raises(dd.UnsupportedLayerError, match=r"'1'.*not a Conv2d"):
        dd.convert(net, dd.DeltaConfig(targets=["0", "1"]))
    with pytest.raises(dd.UnsupportedLayerError, match="not cheaper"):
        dd.convert(nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8)), dd.DeltaConfig(student="compressed", targets=["0"]))
    with pytest.raises(ValueError, match="matched no layer"):
        dd.convert(net, dd.DeltaConfig(targets="nothing_here"))
    with pytest.raises(ValueError, match="unknown student"):  # the registry checks names at conversion
        dd.convert(net, dd.DeltaConfig(student="magic"))
    assert not any(isinstance(m, dd.DeltaConv2d) for m in net.modules())  # and nothing was converted


def test_broad_targets_skip_unconvertible_layers_with_a_reason() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, 2, 1, groups=8), nn.Conv2d(8, 8, 3, 1, 1))
    dd.convert(net, dd.DeltaConfig(targets=nn.Conv2d))
    assert "not cheaper" in net.delta_report.skipped["1"]
    assert {"0", "2"} <= set(net.delta_report.converted)


def test_save_load_roundtrip(model, tmp_path) -> None:
    frames = make_video()
    expected = run(model, frames)
    dd.save(model, tmp_path / "ckpt")
    torch.manual_seed(0)
    fresh = TinySegNet()
    fresh.load_state_dict({k: v for k, v in _teacher_state(model).items()})
    dd.load(fresh, tmp_path / "ckpt")
    fresh.eval()
    for got, want in zip(run(fresh, frames), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_save_load_deployed(model, tmp_path) -> None:
    teacher_state = _teacher_state(model)
    dd.deploy(model)  # folds BN into teacher and students
    frames = make_video()
    expected = run(model, frames)
    dd.save(model, tmp_path / "ckpt")
    fresh = TinySegNet()
    fresh.load_state_dict(teacher_state)
    dd.load(fresh, tmp_path / "ckpt")
    assert any(isinstance(m, dd.DeployedDeltaConv2d) for m in fresh.modules())
    for got, want in zip(run(fresh, frames), expected, strict=True):
        torch.testing.assert_close(got, want)


def _teacher_state(converted: nn.Module) -> dict[str, torch.Tensor]:
    """The original teacher's state dict, read back out of a converted model."""
    teacher = copy.deepcopy(converted)
    for name, m in list(teacher.named_modules()):
        if isinstance(m, (dd.DeltaConv2d, dd.DeployedDeltaConv2d)):
            parent, _, child = name.rpartition(".")
            setattr(teacher.get_submodule(parent) if parent else teacher, child, m.base)
    return teacher.state_dict()


def test_checkpoint_from_another_architecture_is_refused(model, tmp_path) -> None:
    dd.save(model, tmp_path / "ckpt")
    with pytest.raises(dd.CheckpointError, match="another architecture"):
        dd.load(ResNetLike(), tmp_path / "ckpt")
    with pytest.raises(dd.CheckpointError, match="another architecture"):
        dd.load(TinySegNet(width=8), tmp_path / "ckpt")


def test_corrupt_or_missing_checkpoint_is_refused(model, tmp_path) -> None:
    ckpt = dd.save(model, tmp_path / "ckpt")
    with pytest.raises(dd.CheckpointError, match="not a deltadistill checkpoint"):
        dd.load(TinySegNet(), tmp_path / "nowhere")
    (ckpt / "students.safetensors").write_bytes(b"\x00garbage" * 10)
    # (not match="corrupt": this test's own tmp_path holds that word)
    with pytest.raises(dd.CheckpointError, match="altered or truncated"):
        dd.load(TinySegNet(), ckpt)
    (ckpt / "deltadistill.json").write_text("{not json")
    with pytest.raises(dd.CheckpointError, match=r"deltadistill\.json is corrupt"):
        dd.load(TinySegNet(), ckpt)
    (ckpt / "deltadistill.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(dd.CheckpointError, match="format"):
        dd.load(TinySegNet(), ckpt)


def test_results_are_written_with_ordinary_permissions(model, tmp_path) -> None:
    """Atomic writes go through a private temp file; the published file must not stay 0600."""
    mask = os.umask(0o022)
    try:
        dd.save(model, tmp_path / "m")
        atomic_write(tmp_path / "r.json", lambda p: p.write_text("{}"))
    finally:
        os.umask(mask)
    for f in (tmp_path / "m" / "students.safetensors", tmp_path / "m" / "deltadistill.json", tmp_path / "r.json"):
        assert f.stat().st_mode & 0o777 == 0o644, f
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp files left behind


def test_scene_cut_policy_keys_each_stream_at_its_own_cuts_and_counts_k_from_there() -> None:
    from deltadistill.stream import SceneCut, frame_change, keyframe_flags

    torch.manual_seed(0)
    a, b = torch.rand(1, 3, 8, 8) + 0.5, torch.rand(1, 3, 8, 8) + 0.5
    frames = [torch.cat([a + 0.01 * t, a + 0.01 * t]) for t in range(12)]
    for t in range(3, 12):  # stream 0 cuts to another shot at frame 3; stream 1 does not
        frames[t][0] = b[0] + 0.01 * t
    policy = SceneCut(8, threshold=0.15)
    keys = [policy(t, f) for t, f in enumerate(frames)]
    assert [bool(k[0]) for k in keys] == [True, False, False, True] + [False] * 7 + [True]
    assert [bool(k[1]) for k in keys] == [True] + [False] * 7 + [True] + [False] * 3
    changes = [0.0] + [float(frame_change(frames[t - 1][:1], frames[t][:1])) for t in range(1, 12)]
    assert keyframe_flags(changes, 8, 0.15) == [bool(k[0]) for k in keys]  # what the rival is given
    model = dd.convert(TinySegNet(), dd.DeltaConfig())
    stream = dd.DeltaStream(model, SceneCut(8, threshold=0.15))
    seen = []
    for f in frames:
        stream(f[:1])
        seen.append(bool(stream.last_key))
    assert seen == [bool(k[0]) for k in keys]
    with pytest.raises(ValueError, match="threshold must be > 0"):
        SceneCut(4, threshold=0)


def test_streams_on_one_model_from_several_threads_give_what_each_gives_alone(tiny) -> None:
    import threading

    model = dd.deploy(dd.convert(copy.deepcopy(tiny), dd.DeltaConfig(student="sparse")))
    for _, layer in dd.core.modes.delta_layers(model):
        layer.student.threshold.fill_(0.05)
    clips = [make_video(frames=10, size=32, seed=s) for s in range(4)]
    alone = []
    for clip in clips:
        stream = dd.DeltaStream(model, 4)
        alone.append([stream(f) for f in clip])
    together: list[list[torch.Tensor]] = [[] for _ in clips]
    barrier = threading.Barrier(len(clips))

    def work(i: int) -> None:
        stream = dd.DeltaStream(model, 4)
        barrier.wait()  # all threads start streaming at once
        for f in clips[i]:
            together[i].append(stream(f))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert len(b) == 10 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    copy.deepcopy(model)  # the lock lives outside the model: it still copies


@pytest.mark.parametrize("damage,words", [
    ("flip", "altered or truncated"), ("truncate", "altered or truncated"),
    ("pickle", "altered or truncated"), ("pickle-no-checksum", "not a readable safetensors file")])
def test_a_tampered_checkpoint_is_refused_in_one_line(tiny, tmp_path, damage: str, words: str) -> None:
    import pickle

    model = dd.convert(copy.deepcopy(tiny), dd.DeltaConfig())
    path = dd.save(model, tmp_path / "m")
    weights = path / "students.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:  # a pickle where safetensors belongs: never unpickled
        weights.write_bytes(pickle.dumps({"x": torch.zeros(2)}))
        if damage == "pickle-no-checksum":
            meta = json.loads((path / "deltadistill.json").read_text())
            del meta["weights_sha256"]
            (path / "deltadistill.json").write_text(json.dumps(meta))
    with pytest.raises(dd.CheckpointError, match=words):
        dd.load(copy.deepcopy(tiny), path)
    assert dd.load(copy.deepcopy(tiny), dd.save(model, tmp_path / "again")) is not None  # intact: loads


def test_a_long_stream_keeps_memory_error_and_time_flat(tiny) -> None:
    """The short form of benchmarks/bench_soak.py (10,000 frames there)."""
    from deltadistill.measure.soak import soak

    model = dd.deploy(dd.convert(copy.deepcopy(tiny), dd.DeltaConfig(student="sparse")))
    for _, layer in dd.core.modes.delta_layers(model):
        layer.student.threshold.fill_(0.02)
    frames = make_video(frames=12, size=32, seed=7)
    # 12 frames back and forth: a cycle of 22, so with K=4 the stream repeats itself every 44 frames, and
    # over 880 frames the first and the last tenth (88 frames each) see the very same frames and keyframes
    result = soak(model, frames, n=880, keyframe_interval=4, sample_every=100, progress=False)
    s = result.summary(warmup=200)
    assert len(result.interval_error) == 220 and s["error_start"] > 0
    assert s["rss_growth"] < 0.05  # no state piles up frame after frame
    assert s["error_end"] == pytest.approx(s["error_start"], rel=1e-5)  # no drift: each keyframe resets it all


def test_scene_cut_guard_on_real_clips_joined_end_to_end_and_silent_within_a_shot() -> None:
    """Two real videos joined: the guard keys the first frame of the second, whose output is then the
    teacher's own, and counts K from there. Within one continuous shot (the whole of carphone and of
    bigbuckbunny, at K=1000) it never fires."""
    from deltadistill.stream import SceneCut
    from deltadistill.video import default_videos, iter_frames

    videos = default_videos()

    def frames(name: str, start: int = 0, stop: int | None = None) -> list[torch.Tensor]:
        return [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255
                for f in iter_frames(videos[name], (64, 64), "letterbox", start, stop)]

    model = dd.deploy(dd.convert(TinySegNet(), dd.DeltaConfig(student="compressed", reduction=2)))
    joined = frames("carphone_pristine", 0, 10) + frames("bikes", 100, 110)  # no cut inside either part
    stream = dd.DeltaStream(model, SceneCut(8, threshold=0.15))
    keys = []
    for t, x in enumerate(joined):
        y = stream(x)
        keys.append(bool(stream.last_key))
        if t == 10:
            with torch.no_grad(), dd.core.modes.mode(model, "teacher"):
                assert torch.equal(y, model(x))  # the first frame of the new shot is the teacher's
    assert [t for t, k in enumerate(keys) if k] == [0, 8, 10, 18]
    for name in ("carphone_pristine", "bigbuckbunny"):
        policy = SceneCut(1000, threshold=0.15)
        assert [t for t, x in enumerate(frames(name)) if bool(policy(t, x))] == [0], name
