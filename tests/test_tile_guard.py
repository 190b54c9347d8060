"""`runtime.tile_guard.GuardedTiles`: tiles where they pay, the dense teacher where they do not.

Its decisions rest on measured time, so the tests script the clock: each frame's cost is set before
the call, per mode, and the modes the stream chose are checked against the rule. The outputs are
checked against the teacher (dense frames) and against a plain `TileStream` (tiled frames)."""

from __future__ import annotations

import pytest
import torch

from deltadistill.runtime.tile_guard import GuardedTiles
from deltadistill.runtime.tiles import TileStream
from deltadistill.stream import SceneCut

from .test_tiles import H, W, clip, isnet_like, sparse_model


class Clock:
    """Seconds that advance by the cost of what ran: ``ms[mode]`` per frame, a number or a function of
    the frame's change (`frame_change` against the frame before)."""

    def __init__(self, ms: dict) -> None:
        self.ms, self.t, self.started = ms, 0.0, False
        self.stream: GuardedTiles | None = None
        self.change = 0.0

    def __call__(self) -> float:
        if self.started:  # the second call of a frame: its cost, by what ran
            s = self.stream
            mode = "dense" if s.mode == "dense" else ("key" if s.tiles.last_key else "delta")
            cost = self.ms[mode]
            self.t += (cost(self.change) if callable(cost) else cost) / 1e3
        self.started = not self.started
        return self.t


def guarded(ms: dict, threshold: float = 0.0, k: int | SceneCut = 4, **kw) -> tuple[GuardedTiles, Clock, torch.nn.Module]:
    teacher = isnet_like()
    tiles = TileStream(sparse_model(isnet_like(), threshold), k, warn=False)
    clock = Clock(ms)
    g = GuardedTiles(tiles, lambda x: teacher(x), clock=clock, **kw)
    clock.stream = g
    return g, clock, teacher


def same(a, b) -> bool:
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def uniform(values: list[float]) -> list[torch.Tensor]:
    """Flat frames: the change between two is exactly |v1 - v0| / v0."""
    return [torch.full((1, 3, H, W), v) for v in values]


def run(g: GuardedTiles, clock: Clock, frames: list[torch.Tensor]) -> list[str]:
    modes, prev = [], None
    for x in frames:
        clock.change = 0.0 if prev is None else float((x - prev).abs().mean() / prev.abs().mean())
        g(x)
        modes.append(g.last_mode)
        prev = x
    return modes


def test_cheap_delta_frames_stay_tiled_and_match_the_tile_stream() -> None:
    """Delta frames at a tenth of the teacher: one dense frame to time it, then the tile stream's own
    keyframes and delta frames, with its outputs to the bit."""
    g, clock, _ = guarded({"dense": 10.0, "key": 22.0, "delta": 1.0}, threshold=0.05)
    plain = TileStream(sparse_model(isnet_like(), 0.05), 4, warn=False)
    frames = clip(10)
    modes = []
    for i, x in enumerate(frames):
        y = g(x)
        modes.append(g.last_mode)
        if i >= 1:
            assert same(y, plain(x))
    assert modes == ["dense", "key", "delta", "delta", "delta", "key", "delta", "delta", "delta", "key"]
    assert g.counts["trips"] == 0


def test_a_delta_frame_dearer_than_the_teacher_gives_way_to_it() -> None:
    """A delta frame at 1.5x the teacher trips the guard; while the input keeps moving as fast, the
    frames after it are the teacher's own outputs (no maps, no drift)."""
    g, clock, teacher = guarded({"dense": 10.0, "key": 22.0, "delta": 15.0})
    frames = uniform([0.3 * 1.05 ** t for t in range(8)])  # the same change, 0.05, on every frame
    modes = []
    for x in frames:
        y = g(x)
        modes.append(g.last_mode)
        if g.last_mode == "dense":
            assert same(y, teacher(x))
    assert modes == ["dense", "key", "delta"] + ["dense"] * 5
    assert g.counts == {"dense": 6, "key": 1, "delta": 1, "trips": 1}
    assert g.entry == pytest.approx(0.5 * 0.05, rel=1e-4)


@pytest.mark.parametrize("policy", [4, SceneCut(4, threshold=10.0)], ids=["every-k", "scene-cut"])
def test_a_whole_interval_dearer_than_the_teacher_gives_way(policy) -> None:
    """Delta frames at 0.9x are each cheaper than the teacher, but with a 2.2x keyframe the interval
    (K=4) averages 1.23x: the guard trips at its end rather than take the next keyframe. The first
    keyframe built the stream (its time is set-up, OpenVINO's compile among it), so the first interval
    is judged on its delta frames alone and goes on. At 0.5x an interval averages 0.93x: tiles go on."""
    frames = uniform([0.3 * 1.05 ** t for t in range(10)])
    g, clock, _ = guarded({"dense": 10.0, "key": 22.0, "delta": 9.0}, k=policy)
    assert run(g, clock, frames) == ["dense", "key", "delta", "delta", "delta", "key", "delta", "delta", "delta",
                                     "dense"]
    g, clock, _ = guarded({"dense": 10.0, "key": 22.0, "delta": 5.0}, k=policy)
    assert run(g, clock, frames) == ["dense", "key", "delta", "delta", "delta", "key", "delta", "delta", "delta",
                                     "key"]


def test_a_quiet_input_brings_tiles_back_with_a_keyframe() -> None:
    """After a trip, a still input (change 0, below half the change at the trip) re-enters tiles with a
    fresh keyframe; delta frames there are cheap, and tiles stay."""
    g, clock, _ = guarded({"dense": 10.0, "key": 22.0, "delta": lambda c: 15.0 if c > 0 else 1.0})
    frames = uniform([0.3 * 1.05 ** t for t in range(4)] + [0.3 * 1.05 ** 3] * 5)
    assert run(g, clock, frames) == ["dense", "key", "delta", "dense", "key", "delta", "delta", "delta", "key"]


def test_a_re_entry_that_trips_at_once_asks_for_a_quieter_input() -> None:
    """Each re-entry whose first delta frame trips halves the entry level again, so a camera that keeps
    moving does not pay a keyframe every other frame."""
    g, clock, _ = guarded({"dense": 10.0, "key": 22.0, "delta": 15.0})
    values = [0.5, 0.6, 0.66, 0.661, 0.6611, 0.66111, 0.661111]  # changes 0.2, 0.1, 0.0015, 0.00015, ...
    entries = []
    for x in uniform(values):
        trips = g.counts["trips"]
        g(x)
        if g.counts["trips"] > trips:
            entries.append(g.entry)
    assert len(entries) == 3
    assert entries == pytest.approx([0.05, 0.025, 0.0125], rel=1e-3)


def test_after_probe_dense_frames_tiles_are_tried_again() -> None:
    """However the input moves, tiles get another keyframe after ``probe`` dense frames in a row."""
    g, clock, _ = guarded({"dense": 10.0, "key": 22.0, "delta": 15.0}, probe=3)
    frames = uniform([0.3 * 1.05 ** t for t in range(9)])
    assert run(g, clock, frames) == ["dense", "key", "delta", "dense", "dense", "dense", "key", "delta", "dense"]


def test_the_dense_engines_first_run_is_not_its_time() -> None:
    """An engine's first run sets itself up (OpenVINO: seconds); timed, it would make every delta frame
    look cheap. The first frame runs the teacher twice and times the second."""
    teacher = isnet_like()
    calls = []
    clock = Clock({"dense": 10.0, "key": 22.0, "delta": 15.0})
    g = GuardedTiles(TileStream(sparse_model(isnet_like(), 0.0), 4, warn=False),
                     lambda x: calls.append(1) or teacher(x), clock=clock)
    clock.stream = g
    run(g, clock, uniform([0.3, 0.31]))
    assert len(calls) == 2 and g.dense_ms == [10.0]


def test_bad_settings_are_one_line() -> None:
    tiles = TileStream(sparse_model(isnet_like(), 0.0), 4, warn=False)
    with pytest.raises(ValueError, match="guard must be > 0"):
        GuardedTiles(tiles, lambda x: x, guard=0)


def test_a_guarded_stream_is_amortised_by_the_mean_of_its_frames() -> None:
    """Its frames follow no K (dense, keyframes and delta frames as time decides), so (key + (K-1) delta)
    / K would weigh them wrongly: here 2 dense frames at 10, 1 keyframe at 22, 5 delta frames at 2 after
    a warm-up of 2 frames. The formula's K=4 gives (10 + 3 x 2) / 4 = 4; the frames cost 52 / 8."""
    from deltadistill.apps.evaluate import Comparison

    ms = [99.0, 99.0, 10.0, 10.0, 22.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    keys = [True, True, True, True, True, False, False, False, False, False]
    by_k = Comparison(4, ms_delta=ms, is_key=keys, warmup=2)
    by_mean = Comparison(4, ms_delta=ms, is_key=keys, warmup=2, by_mean=True)
    assert by_k.delta_ms == pytest.approx(4.0) and by_mean.delta_ms == pytest.approx(52 / 8)


def test_the_dense_engine_is_set_up_once_not_at_every_reset() -> None:
    """Catches: the untimed set-up run repeated after each `reset` (a whole dense frame wasted per video)."""
    teacher = isnet_like()
    calls = []
    clock = Clock({"dense": 10.0, "key": 22.0, "delta": 15.0})
    g = GuardedTiles(TileStream(sparse_model(isnet_like(), 0.0), 4, warn=False),
                     lambda x: calls.append(1) or teacher(x), clock=clock)
    clock.stream = g
    run(g, clock, uniform([0.3]))
    g.reset()
    run(g, clock, uniform([0.3]))
    assert len(calls) == 3 and g.dense_ms == [10.0]
