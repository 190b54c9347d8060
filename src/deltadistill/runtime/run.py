"""The everyday job: run a delta model (or its teacher) over a video, write what it sees.

One JSON line per frame (detections as boxes in source-video pixels, labels and scores; masks as
COCO run-length encoding at the model's input size), an annotated mp4, and a summary with the
measured frames per second and MACs per frame.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..files import atomic_write, check_output_file
from ..stream import SceneCut
from ..stream.rate import rate_policy
from ..tasks import DETECTION_SCORE_THRESHOLD, task_for
from ..video import BACKGROUNDS, VideoError, VideoWriter, cutout, fit_frame, is_live, iter_frames, video_info
from .streams import StreamSetup, open_stream, resolve


@dataclass
class RunSummary:
    frames: int
    keyframes: int
    seconds: float
    fps: float
    macs_per_frame: float | None
    teacher_macs_per_frame: int
    macs_measured: bool
    backend: str
    out: str | None
    jsonl: str | None
    #: with a cost target (`rate.RateControl`): what it held, beside the target
    rate: dict | None = None

    def line(self) -> str:
        macs = ("MACs per frame not measured by onnxruntime" if self.macs_per_frame is None else
                f"{self.macs_per_frame / 1e9:.2f} GMAC per frame ({'measured, ' if self.macs_measured else ''}"
                f"teacher {self.teacher_macs_per_frame / 1e9:.2f}, "
                + (f"{self.teacher_macs_per_frame / max(self.macs_per_frame, 1):.2f}x fewer)"
                   if self.teacher_macs_per_frame else "no MACs to save)"))
        held = "" if self.rate is None else (
            f"; target {self.rate['target']:g}x, held {self.rate['achieved']:.2f}x "
            f"({self.rate['window_min']:.2f}-{self.rate['window_max']:.2f}x over every {self.rate['window']} frames)")
        return (f"{self.frames} frames ({self.keyframes} keyframes) in {self.seconds:.1f} s: {self.fps:.2f} frames/s "
                f"on {self.backend}; {macs}{held}")


def frame_record(task_kind: str, i: int, key: bool, pred: Any, box, class_names: list[str] | None,
                 threshold: float = 0.5) -> dict:
    """One JSON line: detections in source pixels, a mask as COCO RLE (at the model's input size), or
    for a ``map`` task a one-channel probability map as the RLE of the map at ``threshold`` and any
    other map as its shape, mean and maximum."""
    rec: dict[str, Any] = {"frame": i, "keyframe": bool(key)}
    if task_kind == "detection":
        keep = pred["scores"] >= DETECTION_SCORE_THRESHOLD
        boxes = box.to_source(pred["boxes"][keep])
        names = class_names or []
        rec["detections"] = [
            {"box": [round(float(v), 1) for v in b], "label": names[int(c)] if int(c) < len(names) else int(c),
             "score": round(float(s), 4)}
            for b, c, s in zip(boxes, pred["labels"][keep], pred["scores"][keep], strict=True)]
    else:
        from pycocotools import mask as mask_utils

        pred = np.asarray(pred)
        if task_kind == "map":
            if pred.shape[0] != 1 or pred.min() < 0 or pred.max() > 1:
                rec["map"] = {"shape": list(pred.shape), "mean": round(float(pred.mean()), 5),
                              "max": round(float(pred.max()), 5)}
                return rec
            pred = pred[0]
        m = np.asfortranarray((pred >= threshold).astype(np.uint8))
        rle = mask_utils.encode(m)
        rec["mask"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii"),
                       "foreground": round(float(m.mean()), 4)}
    return rec


def run_video(teacher: nn.Module, video: str | Path, *, model: nn.Module | None = None,
              onnx_dir: str | Path | None = None, keyframe_interval: int = 4, target: float | str | None = None,
              rate: dict | None = None,
              out: str | Path | None = None, jsonl: str | Path | None = None,
              progress: bool = True, threads: int | None = None,
              on_frame: Callable[[int, dict], None] | None = None, scene_cut: float | None = None,
              backend: str | None = None, runtime: str = "dense", crop: dict | None = None,
              background: str | None = None) -> RunSummary:
    """Run ``model`` (a deployed delta model; the plain ``teacher`` when None) or the exported graphs
    in ``onnx_dir`` over ``video`` and write ``out`` (mp4) and ``jsonl``. Outputs appear only complete.
    ``scene_cut``: also a keyframe where the input jumps (`SceneCut`). ``backend``: ``openvino`` runs
    the exported graphs, or the plain teacher, on OpenVINO. ``runtime="crop"``: the teacher itself,
    rerun only on boxes around what moved (`runtime.crop.CropStream`); ``runtime="tiles"``: a sparse
    model's delta frames computed only where its thresholds pass (`runtime.tiles.TileStream`). ``crop``:
    the runtime's options (each takes its own, `streams.FrameStream.option_names`).
    ``background``: what the mp4 of a segmentation teacher shows, the cut-out foreground over a
    ``plain`` colour or the frame blurred (``blur``), or the mask as an ``overlay``; default the teacher's
    ``default_background`` (IS-Net: ``plain``), else ``overlay``.
    """
    for path, what in ((out, "output video"), (jsonl, "JSONL output")):
        if path is not None:
            check_output_file(path, what)
    if threads:
        torch.set_num_threads(threads)
    task = task_for(teacher)
    kind = getattr(teacher, "task", "segmentation")
    draw = _drawing(task, kind, background or getattr(teacher, "default_background", None))
    size = tuple(teacher.input_size)
    live = is_live(video)  # a pipe, URL or device: read once as frames arrive; no count, no rate probe
    info = None if live else video_info(video)
    backend = backend or ("onnxruntime" if onnx_dir is not None else "torch")
    name = resolve(runtime, backend, model, onnx_dir)
    policy: Any = SceneCut(keyframe_interval, scene_cut) if scene_cut else keyframe_interval
    if target is not None:
        policy = rate_policy(model, target, keyframe_interval, scene_cut, size, name != "dense" or backend != "torch",
                             rate)
    stream = open_stream(name, StreamSetup(teacher, model, size, policy, keyframe_interval, backend=backend,  # type: ignore[arg-type]
                                           threads=threads, options=dict(crop or {}),
                                           onnx_dir=Path(onnx_dir) if onnx_dir is not None else None,
                                           progress=progress, count_beside=False))
    teacher_macs = stream.mac_report().teacher
    frames = iter_frames(video)
    first = next(frames, None)  # before the progress bar and the writer: an unreadable pipe is one line
    if first is None:
        raise VideoError(f"no frames in {'standard input' if str(video) == '-' else video}")
    records: list[dict] = []
    total_macs, keys, n, counted = 0.0, 0, 0, True
    writer = VideoWriter(out, fps=info.fps if info else 25.0).__enter__() if out else None
    bar = tqdm(total=info.frames if info else None, unit="frame", disable=not progress, desc=f"run ({backend})")
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            for i, raw in enumerate(itertools.chain([first], frames)):
                frame, box = fit_frame(raw, size, "letterbox")
                x = teacher.preprocess(frame[None]).contiguous(memory_format=torch.channels_last)
                y = stream(x)
                key = stream.last_key
                pred = task.single(teacher.postprocess(y))
                keys += key
                spent = stream.account()
                counted = counted and spent is not None
                total_macs += spent or 0.0
                rec = frame_record(kind, i, key, pred, box, getattr(teacher, "class_names", None),
                                   getattr(teacher, "map_threshold", 0.5))
                records.append(rec)
                if on_frame is not None:
                    on_frame(i, rec)
                if writer is not None:
                    writer.write(draw(frame, pred))
                n += 1
                bar.update(1)
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, None)
        raise
    finally:
        bar.close()
        stream.close()
    seconds = time.perf_counter() - t0
    if writer is not None:
        writer.__exit__(None, None, None)
    if jsonl is not None:
        atomic_write(Path(jsonl), lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in records)))
    per_frame = total_macs / max(n, 1) if counted else None  # onnxruntime cannot count a sparse student's cost
    return RunSummary(n, keys, seconds, n / max(seconds, 1e-9), per_frame, teacher_macs,
                      stream.measured, backend, str(out) if out else None,
                      str(jsonl) if jsonl else None, stream.policy.summary() if target is not None else None)


def _drawing(task: Any, kind: str, background: str | None) -> Callable[[np.ndarray, Any], np.ndarray]:
    """How a frame and its prediction become a frame of the mp4: the task's drawing, or a cut-out."""
    if background is None or background == "overlay":
        return task.draw
    if background not in BACKGROUNDS:
        raise ValueError(f"--background must be one of {', '.join(BACKGROUNDS)}, not {background!r}")
    if kind != "segmentation":
        raise ValueError(f"--background {background} cuts out a segmentation teacher's foreground; "
                         f"this teacher's task is {kind}")
    return lambda frame, mask: cutout(frame, mask, background)
