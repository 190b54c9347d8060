"""Video in and out on the real bikes clip: streaming reads, exact clip frames, clear errors, mp4 writing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deltadistill.video import (
    VideoClips,
    VideoError,
    VideoWriter,
    default_videos,
    draw_boxes,
    fit_frame,
    iter_frames,
    letterbox_share,
    overlay_mask,
    side_by_side,
    video_info,
)


@pytest.fixture(scope="module")
def bikes():
    return default_videos()["bikes"]


def test_default_videos_are_real_files(bikes) -> None:
    info = video_info(bikes)
    assert (info.frames, info.width, info.height) == (250, 640, 272)


def test_iter_frames_fits_and_slices(bikes) -> None:
    frames = list(iter_frames(bikes, (128, 160), fit="letterbox", start=10, stop=20, step=3))
    assert len(frames) == 4 and frames[0].shape == (128, 160, 3) and frames[0].dtype == np.uint8
    _, lb = fit_frame(np.zeros((272, 640, 3), np.uint8), (512, 512))
    assert lb.scale == pytest.approx(0.8) and lb.pad_x == 0 and lb.pad_y == (512 - round(272 * 0.8)) // 2
    np.testing.assert_allclose(lb.to_source(np.array([[0, lb.pad_y, 512, 512 - lb.pad_y]])), [[0, 0, 640, 272]], atol=1)
    # the share of the input that is bars: what a fitted frame holds at the pad value, in a black video
    fitted, _ = fit_frame(np.zeros((272, 640, 3), np.uint8), (256, 256))
    assert letterbox_share((272, 640), (256, 256)) == pytest.approx(float((fitted == 114).all(-1).mean()))
    assert letterbox_share((272, 640), (256, 256)) == pytest.approx(0.57, abs=0.01)
    assert letterbox_share((256, 256), (128, 128)) == 0.0


def test_bad_videos_give_clear_errors(tmp_path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    for name, match in [("missing.mp4", "not found"), ("empty.mp4", "empty"), ("junk.mp4", "cannot read|corrupt")]:
        with pytest.raises(VideoError, match=match):
            list(iter_frames(tmp_path / name))
        with pytest.raises(VideoError):
            VideoClips([tmp_path / name])


def test_truncated_video_is_an_error_not_a_crash(bikes, tmp_path) -> None:
    data = bikes.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError):  # each call on its own: a second call inside one raises-block never runs
        VideoClips([tmp_path / "cut.mp4"], clip_len=3)[0]
    with pytest.raises(VideoError):
        list(iter_frames(tmp_path / "cut.mp4"))


def test_clips_hold_the_exact_frames_keyframe_first(bikes) -> None:
    ds = VideoClips([bikes], clip_len=4, max_interval=6, size=(64, 96), frame_range=(0, 0.5), seed=3, scale_jitter=1.0)
    v, idx, jitter = ds.plan(5)
    assert idx[0] < idx[1] < idx[2] < idx[3] <= idx[0] + 6 and idx[-1] < 125
    clip = ds[5]
    assert clip.shape == (4, 3, 64, 96) and 0 <= float(clip.min()) and float(clip.max()) <= 1
    direct = list(iter_frames(bikes, start=idx[0], stop=idx[-1] + 1))
    expected = ds.crop([direct[i - idx[0]] for i in idx], jitter)  # same crop for every frame of the clip
    np.testing.assert_allclose(clip.permute(0, 2, 3, 1).numpy() * 255, expected, atol=1e-3)
    assert torch.equal(ds[5], clip)  # a pure function of (seed, index)


def test_clips_load_in_worker_processes(bikes) -> None:
    ds = VideoClips([bikes], clip_len=2, size=(32, 32), length=4)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert len(batches) == 2 and batches[0].shape == (2, 2, 3, 32, 32)
    assert torch.equal(batches[1][0], ds[2])


def test_writer_makes_a_playable_mp4_and_drawing_works(tmp_path) -> None:
    frame = np.full((64, 80, 3), 90, np.uint8)
    boxed = draw_boxes(frame, np.array([[5, 20, 40, 60]]), np.array([0]), np.array([0.9]), ["person"])
    masked = overlay_mask(frame, np.pad(np.ones((20, 20)), 20)[:64, :80])
    assert masked[30, 30].tolist() == [70, 147, 70]  # half frame (90), half colour (50, 205, 50)
    assert masked[5, 5].tolist() == [90, 90, 90]  # outside the mask: untouched
    outline = (masked == [50, 205, 50]).all(-1)
    assert outline.any() and not outline[30, 40]  # an outline in the pure colour, around (not over) the inside
    panel = side_by_side(boxed, masked, "teacher", "delta (KEY)", "1.3 GMAC", "0.3 GMAC", right_is_key=True)
    assert panel.shape == (64 + 48, 80 * 2 + 4, 3) and not np.array_equal(boxed, frame)
    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=10) as w:
        for _ in range(5):
            w.write(panel)
    assert video_info(out).frames == 5 and len(list(iter_frames(out))) == 5
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "bad.mp4") as w:
        w.write(panel)
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == [out]  # nothing half-written left behind


def _write_clip(path, codec: str, fmt: str | None = None, pts_ms: list[int] | None = None, bframes: int = 0,
                n: int = 24) -> None:
    """A short clip whose every frame differs (a bar moving down, a red ramp), written with PyAV."""
    import fractions

    import av

    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.codec_context.max_b_frames = bframes
        if pts_ms is not None:
            s.codec_context.time_base = fractions.Fraction(1, 1000)
        for i in range(n):
            a = np.zeros((64, 96, 3), np.uint8)
            a[..., 0] = i * 9
            a[(i * 3) % 56:(i * 3) % 56 + 8, :, 1] = 255
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], fractions.Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("kind", ["variable_frame_rate", "b_frames", "avi_packed_b_frames"])
def test_clip_frames_are_indexed_by_position_not_timestamp(tmp_path, kind: str) -> None:
    path = tmp_path / ("v.avi" if kind.startswith("avi") else "v.mp4")
    if kind == "variable_frame_rate":  # gaps of 20 to 90 ms: round(pts * rate) skips and repeats indices
        gaps = np.random.default_rng(0).integers(20, 90, 24)
        _write_clip(path, "mpeg4", pts_ms=np.cumsum(gaps).tolist())
    else:
        _write_clip(path, "mpeg4", "avi" if kind.startswith("avi") else None, bframes=2)
    direct = list(iter_frames(path))
    assert len(direct) == video_info(path).frames == 24
    ds = VideoClips([path], clip_len=3, max_interval=5, size=(64, 96), scale_jitter=1.0, seed=1)
    for i in range(12):
        _, idx, jitter = ds.plan(i)
        clip = ds[i].permute(0, 2, 3, 1).numpy() * 255
        np.testing.assert_allclose(clip, ds.crop([direct[j] for j in idx], jitter), atol=1e-3)


def test_a_clip_cut_off_in_the_middle_gives_its_good_frames_and_one_warning(tmp_path) -> None:
    """Matroska declares its duration up front: cut at half, it still decodes the frames before the
    cut, and says once which frame was the last good one. (A cut mp4 or avi loses its index at the
    end of the file: nothing is decodable, and that is a `VideoError`.)"""
    import warnings

    from deltadistill.video import VideoWarning

    whole = tmp_path / "whole.mkv"
    _write_clip(whole, "mpeg4", "matroska", n=28)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        frames = list(iter_frames(cut))
    said = [w for w in seen if issubclass(w.category, VideoWarning)]
    assert 0 < len(frames) < 28 and len(said) == 1
    assert f"frame {len(frames) - 1} is the last good one" in str(said[0].message)
    assert "cut.mkv" in str(said[0].message)
    np.testing.assert_array_equal(frames, list(iter_frames(whole, stop=len(frames))))  # the same good frames
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert len(list(iter_frames(whole))) == 28
    assert not [w for w in seen if issubclass(w.category, VideoWarning)]  # a whole file: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VideoWarning)
        ds = VideoClips([cut], clip_len=3, max_interval=3, size=(64, 96))  # training uses the good frames
        assert ds[0].shape == (3, 3, 64, 96)


def test_clips_decode_frames_past_a_packet_that_decodes_to_nothing() -> None:
    """static-hands has 456 packets and 455 frames: the packet order put a position on a frame that never
    decodes, and frames 0 and 21 together failed ("could not decode frames [21]", which stopped
    `bench --sparse` calibrating on it). They decode, and they are the frames a plain read gives."""
    import numpy as np

    from deltadistill.video import default_videos, iter_frames
    from deltadistill.video.clips import VideoClips

    path = default_videos()["static-hands"]
    clips = VideoClips([path])
    got = clips.decode(0, [0, 21, 25])
    plain = [f for i, f in enumerate(iter_frames(path)) if i in (0, 21, 25)]
    assert all(np.array_equal(a, b) for a, b in zip(got, plain, strict=True))
