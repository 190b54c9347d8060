"""The long-stream check with its numbers pinned (issue 21, item 2): time per frame, memory the stream
holds (in bytes and container entries, not as a share of the process), and drift on a clip that never repeats.

`soak_problems` is the one check; it runs on the real stream, which must pass, and on controls with a
leak injected, which it must report.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import deltadistill as dd
import deltadistill.measure.soak as soak_module
from deltadistill.measure.soak import SoakResult, soak
from deltadistill.stream import DeltaStream
from tests.conftest import trained_bn

N, K, WARMUP, EVERY = 880, 4, 200, 20  # as the long-stream test in tests/test_stream_and_errors.py
TIME_RATIO = 1.5  # the last window's ms per frame against the first's (the bound)
TIME_QUANTILE = 0.1  # of each window's per-frame times (see soak_problems)
CONTROL_N = 400  # the leaky control's frames
DRIFT_RATIO = 1.25  # mean interval-end error, last tenth against first tenth (see the long-stream test)


@dataclass(frozen=True)
class Held:
    """What a stream holds: bytes of distinct tensor storages, and entries of containers (dicts,
    lists, tuples, sets), reachable from it. Entries, not objects by identity: Python shares small
    ints, so the count of distinct ints moves with their values."""

    bytes: int
    entries: int


def held(stream: DeltaStream) -> Held:
    """Walk everything reachable from ``stream`` (its caches, policy, model and the model's layers'
    per-stream dicts): containers, our own objects, modules; each tensor storage counted once."""
    seen: set[int] = set()
    storages: dict[int, int] = {}
    todo: list[object] = [stream]
    entries = 0
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, (dict, list, tuple, set, frozenset)):
            entries += len(o)
        if isinstance(o, Tensor):
            s = o.untyped_storage()
            storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        elif isinstance(o, dict):
            todo += list(o.keys()) + list(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            todo += list(o)
        elif isinstance(o, nn.Module) or type(o).__module__.startswith(("deltadistill", "tests")):
            todo += list(vars(o).values()) if hasattr(o, "__dict__") else []
    return Held(sum(storages.values()), entries)


def measured_soak(model: nn.Module, frames: list[Tensor], stream_class: type[DeltaStream] = DeltaStream,
                  n: int = N) -> tuple[SoakResult, list[tuple[int, Held]]]:
    """`soak` as it is, with its stream made a subclass of ``stream_class`` that records `held`
    every ``EVERY`` frames (outside the timed call: `soak` times ``stream(x)`` only)."""
    samples: list[tuple[int, Held]] = []

    class Measured(stream_class):  # type: ignore[misc, valid-type]
        def __call__(self, frame: Tensor):
            out = super().__call__(frame)
            if self.step % EVERY == 0 or self.step == n:
                samples.append((self.step, held(self)))
            return out

    original = soak_module.DeltaStream
    soak_module.DeltaStream = Measured
    try:
        result = soak(model, frames, n=n, keyframe_interval=K, sample_every=100, progress=False)
    finally:
        soak_module.DeltaStream = original
    return result, samples


def soak_problems(result: SoakResult, samples: list[tuple[int, Held]], warmup: int = WARMUP) -> list[str]:
    """Everything wrong with a long stream, empty when nothing is:

    - time: the ms per frame of the last tenth at most ``TIME_RATIO`` x that of the first tenth after
      warm-up, each window's ``TIME_QUANTILE`` quantile: the frames no other process preempted (a
      wait only adds time; on a busy machine a median of 88 frames of ~2.5 ms once doubled);
    - memory: after warm-up, not one byte of tensor storage and not one container entry more held by the
      stream (its per-frame state has fixed shapes; nothing may pile up);
    - drift: the mean error against the teacher at the intervals' ends, last tenth against first,
      at most ``DRIFT_RATIO``.
    """
    s = result.summary(warmup)
    problems = []
    tenth = max(1, len(result.ms) // 10)
    start, end = (float(np.quantile(w, TIME_QUANTILE)) for w in (result.ms[warmup:warmup + tenth], result.ms[-tenth:]))
    if end > TIME_RATIO * start:
        problems.append(f"time: {end:.3f} ms/frame at the end, {start:.3f} at the start")
    after = [h for step, h in samples if step >= warmup]
    if len(after) < 2:
        problems.append("memory: fewer than two samples after warm-up")
    else:
        grew = Held(after[-1].bytes - after[0].bytes, after[-1].entries - after[0].entries)
        if grew.bytes > 0 or grew.entries > 0:
            problems.append(f"memory: the stream holds {grew.bytes} bytes and {grew.entries} entries more "
                            f"at frame {samples[-1][0]} than at frame {warmup}")
    if s["error_end"] > DRIFT_RATIO * s["error_start"]:
        problems.append(f"drift: error {s['error_end']:.4g} at the end, {s['error_start']:.4g} at the start")
    return problems


def drifting_clip(n: int = N, seed: int = 7, a: float = 0.99, size: int = 32) -> list[Tensor]:
    """``n`` frames that never repeat: each the last one times ``a`` plus its own seeded noise
    (``x' = a x + sqrt(1 - a^2) e``). A stationary picture (unit variance throughout, so the error's
    scale does not move with time) in smooth motion (a step of ~0.14, as `make_video`'s 0.15) that
    wanders off for good, unlike a clip played back and forth, which returns to where it was."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, size, size, generator=g)
    out = []
    for _ in range(n):
        out.append(x.clone())
        x = a * x + (1 - a * a) ** 0.5 * torch.randn(1, 3, size, size, generator=g)
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine two spinning OpenMP threads made these
    streams ~100x slower (45 s against 0.4 s for 176 frames) and their timing meaningless."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sparse_model() -> nn.Module:
    """The model of the long-stream test in tests/test_stream_and_errors.py: deployed sparse students."""
    torch.manual_seed(0)
    model = dd.deploy(dd.convert(trained_bn(dd.models.TinySegNet()), dd.DeltaConfig(student="sparse")))
    for _, layer in dd.core.modes.delta_layers(model):
        layer.student.threshold.fill_(0.02)
    return model


@pytest.fixture(scope="module")
def clip() -> list[Tensor]:
    return drifting_clip()


def test_long_stream_on_a_clip_that_never_repeats_has_no_time_memory_or_drift_problem(sparse_model, clip) -> None:
    """880 frames, K=4, every frame different (`drifting_clip`), sparse students at threshold 0.02.
    Interval-end error, last tenth over first: measured 0.94x-1.04x on seeds 7-11 (sampling noise of
    a stationary clip); bound 1.25x. Time per frame, last tenth over the first after warm-up:
    medians measured 0.92x-1.04x, and once 1.9x while another process took the CPU; the 10%
    quantile the check uses is immune to that; bound 1.5x (the issue's).

    Every frame the soak streams is checked to be new (a soak given half the clip, which `ping_pong`
    plays back, fails that).

    Checked to fail with, each reported by the one problem it should be:
    - drift (1.58x): a keyframe that updates its reference from the last keyframe instead of starting
      afresh (in `DeltaLayer._stream_from_keyframe`, on an all-keyframe batch with a cache:
      ``cache["z"] += g(x - cache["x"]); cache["x"] = x.clone(); return cache["z"].clone()``), so
      the pixels the sparse student drops pile up from interval to interval;
    - memory: ``cache.setdefault("seen", []).append(x.clone())`` in that same method (a leak inside
      a layer's per-stream cache);
    - time (2.6x): ``time.sleep(1e-5 * self.step)`` in `DeltaStream.__call__`.
    """
    fed: list[bytes] = []

    class Recording(DeltaStream):
        """Records what `soak` itself feeds the stream (its playback of the clip), not the clip."""

        def __call__(self, frame: Tensor):
            fed.append(frame.numpy().tobytes())
            return super().__call__(frame)

    result, samples = measured_soak(copy.deepcopy(sparse_model), clip, Recording)
    # the drift check needs a stream that never returns to a frame: checked on what soak streamed, so a
    # soak that plays the clip back and forth (fewer frames than it streams) fails here
    assert len(fed) == N and len(set(fed)) == N
    s = result.summary(WARMUP)
    assert len(result.interval_error) == N // K and s["error_start"] > 0
    assert soak_problems(result, samples) == []
    assert samples[0][1].bytes > 0  # the walk sees the caches (x_k and z_k of every layer)


class LeakyStream(DeltaStream):
    """A stream that keeps every frame it is given: the leak the check must catch."""

    def __call__(self, frame: Tensor):
        self.__dict__.setdefault("history", []).append(frame.clone())
        return super().__call__(frame)


def test_the_check_reports_a_stream_that_keeps_its_frames(sparse_model, clip) -> None:
    """The same check on `LeakyStream` (12 KB a frame, 400 frames) reports the leak, in bytes and
    in entries: exactly the frames kept since warm-up. Checked to fail with `held` walking only
    ``stream.caches`` (the leak sits beside them, on the stream) and with the memory part of
    `soak_problems` removed."""
    result, samples = measured_soak(copy.deepcopy(sparse_model), clip[:CONTROL_N], LeakyStream, n=CONTROL_N)
    problems = soak_problems(result, samples)
    assert "memory" in [p.split(":")[0] for p in problems], problems
    (first, a), (last, b) = next((st, h) for st, h in samples if st >= WARMUP), samples[-1]
    assert last == CONTROL_N and b.entries - a.entries == last - first
    assert b.bytes - a.bytes == (last - first) * clip[0].numel() * clip[0].element_size()
