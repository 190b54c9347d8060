"""Long streams: memory, drift and speed over thousands of frames of one `DeltaStream`.

A real clip is played forwards and backwards (so motion never stops and no cut repeats) through a
deployed model. At the last delta frame of every keyframe interval the teacher runs too, and the
error there is recorded: it is where drift, if any, would be largest. Resident memory and time per
frame are sampled along the way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..core.modes import mode
from ..stream import DeltaStream
from .recovery import first_output_map


def rss_mb() -> float:
    """Resident memory of this process now (not its peak), from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def ping_pong(frames: list[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    """``n`` frames of ``frames`` played forwards, then backwards, and again."""
    cycle = frames + frames[-2:0:-1]
    for i in range(n):
        yield cycle[i % len(cycle)]


@dataclass
class SoakResult:
    frames: int
    keyframe_interval: int
    rss_mb: list[tuple[int, float]] = field(default_factory=list)  # (frame, MB)
    interval_error: list[float] = field(default_factory=list)  # mean |delta - teacher| at each interval's end
    ms: list[float] = field(default_factory=list)  # per frame

    def summary(self, warmup: int) -> dict[str, float]:
        """Start against end: RSS after warm-up and at the end, error and ms in the first and last tenth."""
        rss = [m for f, m in self.rss_mb if f >= warmup] or [m for _, m in self.rss_mb]
        tenth = max(1, len(self.interval_error) // 10)
        ms_tenth = max(1, len(self.ms) // 10)
        return {"frames": self.frames, "rss_start_mb": rss[0], "rss_end_mb": rss[-1],
                "rss_growth": rss[-1] / rss[0] - 1,
                "error_start": float(np.mean(self.interval_error[:tenth])),
                "error_end": float(np.mean(self.interval_error[-tenth:])),
                "ms_start": float(np.median(self.ms[warmup:warmup + ms_tenth])),
                "ms_end": float(np.median(self.ms[-ms_tenth:]))}


@torch.no_grad()
def soak(model: nn.Module, frames: list[torch.Tensor], n: int, keyframe_interval: int = 4,
         sample_every: int = 250, progress: bool = True) -> SoakResult:
    """Stream ``n`` frames (``frames`` played back and forth) through ``model``; see the module doc."""
    stream = DeltaStream(model, keyframe_interval)
    result = SoakResult(n, keyframe_interval)
    for i, x in enumerate(tqdm(ping_pong(frames, n), total=n, desc="soak", disable=not progress)):
        t0 = time.perf_counter()
        out = stream(x)
        result.ms.append((time.perf_counter() - t0) * 1e3)
        if i % keyframe_interval == keyframe_interval - 1:  # the interval's last delta frame
            with mode(model, "teacher"):
                want = model(x)
            result.interval_error.append(float((first_output_map(out) - first_output_map(want)).abs().mean()))
        if i % sample_every == 0 or i == n - 1:
            result.rss_mb.append((i, rss_mb()))
    return result
