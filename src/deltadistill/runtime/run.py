"""The everyday job: run a delta model (or its teacher) over a video, write what it sees.

One JSON line per frame (detections as boxes in source-video pixels, labels and scores; masks as
COCO run-length encoding at the model's input size), an annotated mp4, and a summary with the
measured frames per second and MACs per frame.
"""

from __future__ import annotations

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
from ..macs import count_macs, has_measured_macs, measured_delta_macs
from ..modes import delta_layers
from ..rate import rate_policy
from ..stream import DeltaStream, SceneCut
from ..tasks import DETECTION_SCORE_THRESHOLD, task_for
from ..video import BACKGROUNDS, VideoWriter, cutout, fit_frame, is_live, iter_frames, video_info

BACKENDS = ("torch", "onnxruntime", "openvino")


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
                f"{self.teacher_macs_per_frame / max(self.macs_per_frame, 1):.2f}x fewer)")
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
    rerun only on boxes around what moved (`runtime.crop.CropStream`, options in ``crop``).
    ``background``: what the mp4 of a segmentation teacher shows, the cut-out foreground over a
    ``plain`` colour or the ``blur``-red frame, or the mask as an ``overlay``; default the teacher's
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
    policy: Any = SceneCut(keyframe_interval, scene_cut) if scene_cut else keyframe_interval
    if target is not None:
        policy = rate_policy(model, target, keyframe_interval, scene_cut, size, onnx_dir is not None or
                             runtime != "dense" or backend != "torch", rate)
    plain: Callable[[torch.Tensor], Any] = teacher
    cropping = runtime == "crop"
    if cropping:
        from .crop import CropStream

        stream: Any = CropStream(teacher, policy, backend=backend, threads=threads, **(crop or {})).prepare(progress)
        teacher_macs = _teacher_macs(teacher, size)
    elif onnx_dir is not None:
        from .onnx_stream import OnnxStream

        stream = OnnxStream(onnx_dir, keyframe=policy, threads=threads, engine=backend)
        teacher_macs = int(stream.manifest.get("macs", {}).get("teacher") or _teacher_macs(teacher, size))
    else:
        net = model if model is not None else teacher
        if list(delta_layers(net)):
            stream = DeltaStream(net, policy)
            report = count_macs(net, (3, *size), keyframe_interval)
            teacher_macs = report.teacher
        else:
            stream = None
            teacher_macs = _teacher_macs(net, size)
            if backend == "openvino":
                from ..apps.fastest import dense_runner

                plain = dense_runner(teacher, "openvino", size, threads=threads)  # type: ignore[arg-type]
    measured = cropping or (onnx_dir is None and stream is not None and has_measured_macs(stream.model))
    records: list[dict] = []
    total_macs, keys, n = 0.0, 0, 0
    writer = VideoWriter(out, fps=info.fps if info else 25.0).__enter__() if out else None
    bar = tqdm(total=info.frames if info else None, unit="frame", disable=not progress, desc=f"run ({backend})")
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            for i, raw in enumerate(iter_frames(video)):
                frame, box = fit_frame(raw, size, "letterbox")
                x = teacher.preprocess(frame[None]).contiguous(memory_format=torch.channels_last)
                if stream is None:
                    y, key = plain(x), True
                else:
                    y = stream(x)
                    key = bool(stream.last_key) if isinstance(stream.last_key, bool) else bool(stream.last_key.all())
                pred = task.single(teacher.postprocess(y))
                keys += key
                if stream is None:
                    total_macs += teacher_macs
                elif cropping:  # a crop costs about its share of the frame
                    total_macs += teacher_macs if key else stream.last_cost * teacher_macs
                elif onnx_dir is None:  # a keyframe costs the teacher plus any c = z_k - g(x_k) to fold
                    total_macs += report.keyframe if key else (
                        measured_delta_macs(stream.model, report) if measured else report.delta)
                else:
                    fixed = stream.manifest.get("macs", {})
                    if not fixed.get("data_dependent", True):
                        total_macs += fixed["keyframe"] if key else fixed["delta"]
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
    seconds = time.perf_counter() - t0
    if writer is not None:
        writer.__exit__(None, None, None)
    if jsonl is not None:
        atomic_write(Path(jsonl), lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in records)))
    # onnxruntime cannot measure a sparse student's cost; a fixed-cost model's is in the manifest
    per_frame: float | None = None if onnx_dir is not None and not cropping and stream.manifest.get("macs", {}).get(
        "data_dependent", True) else total_macs / max(n, 1)
    return RunSummary(n, keys, seconds, n / max(seconds, 1e-9), per_frame, teacher_macs, measured or stream is None,
                      backend, str(out) if out else None, str(jsonl) if jsonl else None,
                      policy.summary() if target is not None else None)


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


def _teacher_macs(net: nn.Module, size: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.zeros(1, 3, *size))
    return fc.get_total_flops() // 2
