"""The second free rival at equal time: the teacher at a lower input resolution, on every frame, its
output brought back to the full size.

A user of an expensive model who cannot afford it on every frame can run it smaller. Where the
foreground is large and simple this is strong (IS-Net at 320x448 agreed with 384x512 at mIoU 0.997
in 0.75 of the time, on the static camera); a delta model must beat it to be worth its time. The
size is the largest whose sides are multiples of ``align`` (64), in the teacher input's aspect, whose
dense time on the fastest engine fits the delta model's amortised time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..measure.rival import beats, margin_needed
from ..runtime.fastest import _resized, dense_runner, median_ms


def smaller_sizes(size: tuple[int, int], align: int = 64) -> list[tuple[int, int]]:
    """Sizes below ``size`` near its aspect, sides multiples of ``align`` (at least ``align``), largest
    area first: the height steps by ``align``, and the width takes both of its roundings to ``align``
    (at 256 for 384x512, 320 and 384: the rival is the best a user could run, not an accident of rounding)."""
    h, w = size
    out: list[tuple[int, int]] = []
    for hh in range((h - 1) // align * align, align - 1, -align):
        exact = w * hh / h / align
        for ww in {max(align, math.floor(exact) * align), max(align, math.ceil(exact) * align)}:
            if (hh, ww) != tuple(size) and (hh, ww) not in out and ww <= w:
                out.append((hh, ww))
    return sorted(out, key=lambda s: (-s[0] * s[1], -s[0]))


def fitting_size(teacher: nn.Module, budget_ms: float, engine: str, *, scale: float = 1.0, align: int = 64,
                 runs: int = 5, threads: int | None = None) -> tuple[tuple[int, int] | None, list[dict[str, Any]]]:
    """The largest size, the teacher's own or smaller, whose dense time on ``engine`` (times ``scale``:
    the run's conditions over those of the fastest-dense timing) is within ``budget_ms``; None when
    none is. Returns the sizes timed, too."""
    timed: list[dict[str, Any]] = []
    full = tuple(teacher.input_size)
    for s in [full, *smaller_sizes(full, align)]:  # the full size first: a slow delta model meets the teacher
        run = dense_runner(teacher, engine, s, threads=threads)
        x = torch.rand(1, 3, *s) * float(getattr(teacher, "input_range", 1.0))
        ms, _ = median_ms(run, x, runs, warmup=2)
        timed.append({"input_size": list(s), "ms": ms * scale})
        if ms * scale <= budget_ms:
            return s, timed
    return None, timed


def _scale_boxes(pred: Any, sy: float, sx: float) -> Any:
    pred = dict(pred)
    boxes = pred["boxes"].clone().float()
    boxes[:, 0::2] *= sx
    boxes[:, 1::2] *= sy
    pred["boxes"] = boxes
    return pred


@torch.no_grad()
def lower_res_preds(teacher: nn.Module, size: tuple[int, int], frames: Iterable[np.ndarray],
                    single: Callable[[Any], Any]) -> list[Any]:
    """The teacher at ``size`` on each full-size input frame (resized down, bilinear), its output
    brought back: maps resized up to the full teacher's output size and read by its own
    ``postprocess``; detections (whose maps hold distances in input pixels) decoded at the small size
    and their boxes scaled up."""
    if tuple(size) == tuple(teacher.input_size):
        return [single(teacher.postprocess(teacher(teacher.preprocess(f[None])))) for f in frames]
    small = _resized(teacher, size).eval()
    full_hw = tuple(teacher.input_size)
    sy, sx = full_hw[0] / size[0], full_hw[1] / size[1]
    detection = getattr(teacher, "task", "") == "detection"
    preds = []
    for frame in frames:
        x = teacher.preprocess(frame[None])
        y = small(F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True))
        if detection:
            preds.append(_scale_boxes(single(small.postprocess(y)), sy, sx))
            continue
        outs = y if isinstance(y, (tuple, list)) else (y,)
        up = tuple(F.interpolate(o, size=(round(o.shape[-2] * sy), round(o.shape[-1] * sx)), mode="bilinear",
                                 align_corners=False) if o.dim() == 4 else o for o in outs)
        preds.append(single(teacher.postprocess(up if isinstance(y, (tuple, list)) else up[0])))
    return preds


def rival_lower_res(teacher: nn.Module, frames: Sequence[np.ndarray], teacher_preds: Sequence[Any],
                    score: Callable[[list[Any]], float], single: Callable[[Any], Any], accuracy: float,
                    budget_ms: float, engine: str, *, scale: float = 1.0, align: int = 64,
                    threads: int | None = None) -> dict[str, Any]:
    """``accuracy.rival_lower_res``: the teacher at the largest size (its own, or smaller in steps of
    ``align``) that runs within the delta model's amortised ``budget_ms`` on ``engine``, scored against
    the full teacher like the model. Where even the smallest size does not fit, the rival is scored at
    the smallest size all the same (a generous rival: it runs over budget), and ``words`` says so."""
    size, timed = fitting_size(teacher, budget_ms, engine, scale=scale, align=align, threads=threads)
    words = None
    if size is None:
        if not timed:
            return {"input_size": None, "value": None, "words": "no smaller size to run at"}
        size = tuple(timed[-1]["input_size"])  # type: ignore[assignment]
        words = f"even {size[0]}x{size[1]} takes longer than the delta model; scored there all the same"
    value = score(lower_res_preds(teacher, size, frames, single))
    need = margin_needed(value)
    return {"input_size": list(size), "value": value, "ms": next(t["ms"] for t in timed
                                                                  if tuple(t["input_size"]) == tuple(size)),
            "timed": timed, "engine": engine, "margin_needed": need, "margin": accuracy - value,
            "beats": beats(accuracy, value, need), **({"words": words} if words else {})}
