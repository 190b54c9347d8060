"""The fastest dense teacher: what a user who wants speed would run instead of any delta model.

Every candidate is the plain teacher at f32, with the same threads and one stream: eager torch
(channels_last), onnxruntime and OpenVINO (latency hint), each at the model's input size and at the
video's content size (the letterbox bars cut off: a user would simply not compute them). The
fastest candidate's median time is the bar a delta model's amortised time is held to.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: engines in the order they are tried; one that is not installed is skipped and said so
ENGINES = ("torch", "onnxruntime", "openvino")


def content_size(frame_hw: tuple[int, int], size: tuple[int, int], align: int = 32) -> tuple[int, int]:
    """The input size without letterbox bars: the fitted frame, each side rounded up to ``align``."""
    (h, w), (th, tw) = frame_hw, size
    s = min(th / h, tw / w)
    return tuple(min(t, -(-round(v * s) // align) * align) for v, t in ((h, th), (w, tw)))  # type: ignore[return-value]


def _resized(teacher: nn.Module, size: tuple[int, int]) -> nn.Module:
    """The same teacher at another input size (the graph's sizes follow its input)."""
    t = copy.deepcopy(teacher)
    t.input_size = size
    return t


def median_ms(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, runs: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def dense_runner(teacher: nn.Module, engine: str, size: tuple[int, int], workdir: str | Path | None = None,
                 threads: int | None = None) -> Callable[[torch.Tensor], Any]:
    """The plain teacher at ``size`` on ``engine``, as a callable on an NCHW frame; exports are kept in
    ``workdir`` (default: the export cache, `runtime.cache`), made once per weights and size."""
    t = _resized(teacher, size).eval()
    if engine == "torch":
        t = t.to(memory_format=torch.channels_last)
        return lambda x: t(x.contiguous(memory_format=torch.channels_last))
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    from .cache import cache_dir, cached, fingerprint
    from .export import export_plain_onnx

    if engine == "onnxruntime":
        from .onnx_stream import OnnxModel as Engine
    else:
        from .openvino import OpenVinoModel as Engine  # type: ignore[assignment]
    name = f"teacher-{fingerprint(teacher)}_{size[0]}x{size[1]}.onnx"
    file = cached(cache_dir(workdir) / name, lambda tmp: export_plain_onnx(t, tmp, size))
    return Engine(file, threads)


@torch.no_grad()
def fastest_dense(teacher: nn.Module, frame_hw: tuple[int, int] | None = None, *, engines: tuple[str, ...] = ENGINES,
                  runs: int = 30, threads: int | None = None, workdir: str | Path | None = None,
                  align: int = 32) -> dict[str, Any]:
    """Time the plain teacher on every engine, at its input size and at the content size of a
    ``frame_hw`` video (its sides rounded up to ``align``, the teacher's total stride); return ``{"backend", "precision", "input_size", "ms", "iqr_ms", "candidates"}``
    for the fastest, with every candidate's figures (and why any was skipped) under ``candidates``."""
    size = tuple(teacher.input_size)
    sizes = [size]
    if frame_hw is not None and content_size(frame_hw, size, align) != size:
        sizes.append(content_size(frame_hw, size, align))
    candidates: list[dict[str, Any]] = []
    for engine in engines:
        for s in sizes:
            entry: dict[str, Any] = {"backend": engine, "precision": "f32", "input_size": list(s),
                                     "content_size": s != size}
            try:
                run = dense_runner(teacher, engine, s, workdir, threads)
            except ImportError as e:
                entry["skipped"] = str(e).splitlines()[0]
                candidates.append(entry)
                continue
            x = torch.rand(1, 3, *s) * float(getattr(teacher, "input_range", 1.0))
            entry["ms"], entry["iqr_ms"] = median_ms(run, x, runs)
            candidates.append(entry)
    timed = [c for c in candidates if "ms" in c]
    best = min(timed, key=lambda c: c["ms"])
    return {**{k: best[k] for k in ("backend", "precision", "input_size", "ms", "iqr_ms")},
            "threads": int(threads or torch.get_num_threads()), "candidates": candidates}
