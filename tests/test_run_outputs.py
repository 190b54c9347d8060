"""`run`'s JSON lines are right, not only well formed (issue 21, item 4): each mask decodes to the
stream's own thresholded output, frame by frame, on both backends; each box is the teacher's own
decoded box mapped back to source pixels.

`run_video` is what `deltadistill run` calls (the CLI adds argument parsing only, and
tests/test_runtime.py runs it end to end); called here in-process, which saves seconds of start-up.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import deltadistill as dd
from deltadistill import teachers
from deltadistill.runtime import export_onnx
from deltadistill.runtime.onnx_stream import OnnxStream
from deltadistill.runtime.run import run_video
from deltadistill.video import VideoWriter, default_videos, fit_frame, iter_frames

SIZE = (128, 128)  # both zoo teachers run at any multiple of 32; 128 keeps every graph cheap
K = 4


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: two spinning OpenMP threads on a busy 2-core machine cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _clip(path: Path, name: str, start: int, n: int = 9) -> Path:
    """``n`` frames of a shipped video at its own resolution (not square: letterboxing is real)."""
    with VideoWriter(path, fps=25) as w:
        for f in iter_frames(default_videos()[name], start=start, stop=start + n):
            w.write(f)
    return path


@pytest.fixture(scope="module")
def person(tmp_path_factory) -> Path:
    """carphone: a man on the phone, 176x144, in every frame (selfie's masks are neither empty nor full)."""
    return _clip(tmp_path_factory.mktemp("clip") / "carphone.mp4", "carphone_pristine", 30)


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    """bikes, 640x272: riders for centernet to box."""
    return _clip(tmp_path_factory.mktemp("clip") / "bikes.mp4", "bikes", 200)


def model_inputs(teacher, clip: Path) -> list[tuple[torch.Tensor, object, tuple[int, int]]]:
    """What the model sees of each frame, decoded and fitted independently of `run_video`, with its
    letterbox and the source frame's (height, width)."""
    out = []
    for raw in iter_frames(clip):
        frame, box = fit_frame(raw, SIZE, "letterbox")
        out.append((teacher.preprocess(frame[None]).contiguous(memory_format=torch.channels_last), box, raw.shape[:2]))
    return out


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decode(rec: dict) -> np.ndarray:
    m = rec["mask"]
    return mask_utils.decode({"size": m["size"], "counts": m["counts"].encode("ascii")}).astype(bool)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_run_masks_decode_to_the_streams_thresholded_output(backend: str, person: Path, tmp_path: Path) -> None:
    """selfie at 128x128 with compressed students (K=4, 9 frames of carphone): every line's RLE, decoded with
    pycocotools, equals the mask a stream of the same backend gives on the same frame, thresholded at
    0.5; keyframe flags and foreground shares match too. The delta frames' masks differ from their
    keyframe's (a stale output would show), and onnxruntime's masks differ from torch's only at
    pixels within 1e-3 of the threshold.

    Checked to fail with (each patched in by a throwaway pytest plugin): `frame_record` given the
    mask transposed, thresholding at 0.4, or each line the previous frame's prediction (fail at the
    equality); on onnxruntime, `OnnxStream` keeping its first keyframe's state for good, which the
    reference stream shares, so only the check against torch sees it (pixels 0.01-0.49 from the
    threshold differ at frame 5).
    """
    teacher = teachers.load("selfie", input_size=SIZE)
    model = dd.deploy(dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="compressed", reduction=2)))
    lines = tmp_path / "out.jsonl"
    if backend == "onnxruntime":
        export_onnx(model, tmp_path / "onnx", input_size=SIZE, keyframe_interval=K, meta={"teacher": "selfie"})
        stream, kw = OnnxStream(tmp_path / "onnx", keyframe=K), {"onnx_dir": tmp_path / "onnx"}
    else:
        stream, kw = dd.DeltaStream(model, K), {"model": model}
    summary = run_video(teacher, person, keyframe_interval=K, jsonl=lines, progress=False, **kw)
    recs = read_lines(lines)
    frames = model_inputs(teacher, person)
    assert summary.frames == len(recs) == len(frames) == 9 and summary.backend == backend
    torch_stream = dd.DeltaStream(copy.deepcopy(model), K)
    key_mask = None
    for i, (rec, (x, _, _)) in enumerate(zip(recs, frames, strict=True)):
        prob = teacher.postprocess(stream(x))[0].numpy()
        want = prob >= 0.5
        got = decode(rec)
        assert rec["frame"] == i and rec["keyframe"] == (i % K == 0)
        assert rec["mask"]["size"] == list(SIZE) and np.array_equal(got, want), i
        assert rec["mask"]["foreground"] == round(float(want.mean()), 4)
        assert 0.01 < want.mean() < 0.99  # a person on screen: the masks are not trivially empty or full
        if rec["keyframe"]:
            key_mask = got
        else:
            assert not np.array_equal(got, key_mask), i
        torch_prob = teacher.postprocess(torch_stream(x))[0].numpy()
        differ = got != (torch_prob >= 0.5)
        assert np.all(np.abs(torch_prob[differ] - 0.5) < 1e-3), i


def test_run_boxes_are_the_teachers_own_mapped_to_source_pixels(street: Path, tmp_path: Path) -> None:
    """centernet at 128x128, the teacher alone (9 frames of bikes): each line's detections are the teacher's
    decoded boxes at or above the 0.3 score threshold, in order, mapped from the letterboxed input to
    the source frame (``(b - pad) / scale``, the letterbox recomputed here from the frame's size), to
    the 0.1 px the line keeps; labels are class names, scores to 4 decimals.

    Checked to fail with (patched in the same way): `Letterbox.to_source` dividing by the scale
    but not removing the padding (y off by 185 px), or returning input pixels; the score threshold
    in `runtime.run` set to 0 (a 0.20 handbag appears).
    """
    teacher = teachers.load("centernet", input_size=SIZE)
    lines = tmp_path / "t.jsonl"
    run_video(teacher, street, jsonl=lines, progress=False)
    recs = read_lines(lines)
    total = 0
    for rec, (x, _, (h, w)) in zip(recs, model_inputs(teacher, street), strict=True):
        with torch.no_grad():
            (pred,) = teacher.postprocess(teacher(x))
        keep = pred["scores"] >= 0.3
        scale = min(SIZE[0] / h, SIZE[1] / w)
        pad_x, pad_y = (SIZE[1] - round(w * scale)) // 2, (SIZE[0] - round(h * scale)) // 2
        want = (pred["boxes"][keep].double() - torch.tensor([pad_x, pad_y, pad_x, pad_y])) / scale
        got = rec["detections"]
        assert rec["keyframe"] and len(got) == int(keep.sum())
        for d, b, s, c in zip(got, want, pred["scores"][keep], pred["labels"][keep], strict=True):
            assert np.allclose(d["box"], b.numpy(), rtol=0, atol=0.05 + 1e-3), (d, b)
            assert d["score"] == round(float(s), 4) and d["label"] == teacher.class_names[int(c)]
        total += len(got)
    assert total >= 5  # the comparison is not empty
    assert (pad_x, pad_y) != (0, 0)  # the source is not square: the padding is really undone
