"""Tiles where they pay, the fastest dense teacher where they do not.

A tile runtime's delta frame costs time in proportion to what moved; its keyframe, which must fill
every map the delta frames read, costs about 2.2x the fastest dense teacher (BENCHMARKS.md, the
tile runtime's passes). Where the whole picture moves (a panning camera, `bikes`), delta frames
cost more than the dense teacher, and the stream would be 2x slower than simply running it.

`GuardedTiles` runs the dense teacher (exact, no maps kept) there instead. It starts dense (that
frame also times the dense teacher, after one untimed run that sets its engine up); enters tiles
with a keyframe while the input is quiet; and goes back to dense when a delta frame, or a whole
keyframe interval, costs more than ``guard`` times the dense teacher. The input's change at that
trip (`stream.policies.frame_change`, its mean over the tiled frames) sets how quiet the input must
be to enter again: ``quiet`` times it, lowered by ``quiet`` again each time a re-entry trips at
once. After ``probe`` dense frames in a row it tries tiles again whatever the input does, so that a
trip on a passing load spike does not lock tiles out.

With a frame-rate target (``rate``, `tile_rate.FrameRate`: ``--fps``) the dense teacher runs every
frame where it alone holds the rate within the rate's tolerance (it is exact); elsewhere the tile
stream's threshold scale is turned after each delta frame to hold it, and tiles give way to the
dense teacher only once the scale is at its end and they still cost more than it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..stream.policies import frame_change
from .tile_rate import FrameRate
from .tiles import TileStream


class GuardedTiles:
    """A `TileStream` behind a dense fallback, with the same call: ``stream(frame) -> outputs``.

    ``dense``: the fastest dense teacher as a callable on the frame (its outputs shaped as the tile
    stream's). ``guard``: the cost over the dense teacher's at which tiles give way (1: as soon as
    they stop saving time). ``clock``: seconds (tests pass a scripted one). ``last_mode`` is
    ``"dense"``, ``"key"`` or ``"delta"``; ``last_key`` is True for the first two (the teacher's
    whole output was computed).
    """

    def __init__(self, tiles: TileStream, dense: Callable[[Tensor], Any], *, guard: float = 1.0,
                 quiet: float = 0.5, probe: int = 64, rate: FrameRate | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if guard <= 0 or not 0 < quiet < 1 or probe < 1:
            raise ValueError(f"guard must be > 0, quiet in (0, 1) and probe >= 1, got {guard}, {quiet} and {probe}")
        self.tiles, self.dense, self.guard, self.quiet, self.clock = tiles, dense, guard, quiet, clock
        self.probe, self.rate = probe, rate
        self.base_scale = tiles.threshold_scale
        #: the dense teacher's ms as measured before the stream (`TiledStream`'s rate check): every reset
        #: starts from it, so that one frame's time does not decide alone
        self.seed_dense_ms: list[float] = []
        self.warmed = False  # the dense engine's first run (its set-up) is done: once, not once per reset
        self.reset()

    def reset(self) -> None:
        self.tiles.reset()
        if self.rate is not None:
            self.rate.reset()
            self.tiles.set_threshold_scale(self.base_scale)
        self.mode = "dense"  # the first frame runs dense: it times the dense teacher
        self.entry = float("inf")  # the input change below which tiles are tried
        self.dense_ms: list[float] = list(self.seed_dense_ms)
        self.interval_ms: list[float] = []  # the current keyframe interval's delta frames
        self.key_ms: float | None = None  # its keyframe's (None: it built the stream, set-up not cost)
        self.interval_change: list[float] = []
        self.prev: Tensor | None = None
        self.last_mode = "dense"
        self.tripped_at_once = False
        self.dense_run = 0  # dense frames in a row since the last trip
        #: frames per mode, and trips: what the report prints
        self.counts = {"dense": 0, "key": 0, "delta": 0, "trips": 0}

    @property
    def last_key(self) -> bool:
        return self.last_mode != "delta"

    def __getattr__(self, name: str) -> Any:  # the tile stream's figures (last_macs, handlers, ...)
        if name == "tiles":
            raise AttributeError(name)
        return getattr(self.tiles, name)

    def _trip(self, change: float, at_once: bool) -> None:
        self.entry = self.quiet * change if not (at_once and self.tripped_at_once) else self.entry * self.quiet
        self.tripped_at_once = at_once
        self.mode = "dense"
        self.counts["trips"] += 1

    def __call__(self, frame: Tensor) -> Any:
        if not self.warmed:
            self.dense(frame)  # the engine's first run sets itself up: not the teacher's time
            self.warmed = True
        t0 = self.clock()  # the whole frame, the guard's own work too, is what a rate must hold
        change = float(frame_change(self.prev, frame)[0]) if self.prev is not None else 0.0
        self.prev = frame
        dense_holds = self.rate is not None and bool(self.dense_ms) and \
            statistics.median(self.dense_ms) <= self.rate.target_ms / (1 - self.rate.tolerance)  # exact, in time
        if self.mode == "dense" and self.counts["dense"] and not dense_holds and (
                change < self.entry or self.dense_run >= self.probe):
            self.mode, self.dense_run = "tiles", 0
            self.tiles.reset()  # a keyframe: every map filled afresh
        if self.mode == "dense":
            out = self.dense(frame)
            self.dense_ms = [*self.dense_ms[-7:], (self.clock() - t0) * 1e3]
            if self.rate is not None:
                self.rate.record(self.dense_ms[-1], "dense")
            self.last_mode = "dense"
            self.counts["dense"] += 1
            self.dense_run += 1
            return out
        building = not self.tiles.built  # the first keyframe builds the handlers (and compiles): set-up
        plan = self.rate.plan_ms() if self.rate is not None else None
        out = self.tiles(frame)
        ms = (self.clock() - t0) * 1e3
        self.last_mode = "key" if self.tiles.last_key else "delta"
        self.counts[self.last_mode] += 1
        if self.rate is not None and not building:
            scale = self.rate.record(ms, self.last_mode, plan)
            if self.last_mode == "delta":
                self.tiles.set_threshold_scale(self.base_scale * scale)
        if self.tiles.last_key:
            self.interval_ms, self.interval_change = [], []
            self.key_ms = None if building else ms
            return out
        self.interval_ms.append(ms)
        self.interval_change.append(change)
        if self.rate is not None and self.rate.scale < self.rate.max_scale:
            return out  # under a rate the knob decides; tiles give way only once it is at its end
        budget = self.guard * statistics.median(self.dense_ms)
        spent = self.interval_ms if self.key_ms is None else [self.key_ms, *self.interval_ms]
        if ms > budget:  # this delta frame alone costs more than the teacher
            self._trip(statistics.mean(self.interval_change), at_once=len(self.interval_ms) == 1)
        elif self._interval_done() and statistics.mean(spent) > budget:
            self._trip(statistics.mean(self.interval_change), at_once=False)
        return out

    @torch.no_grad()
    def time_still(self, x: Tensor, runs: int = 3) -> tuple[float, float, float]:
        """ms of the dense teacher, of a keyframe and of a delta frame in which nothing moved, on the
        still frame ``x`` (medians of ``runs``: one slow run of the host must not decide), after the
        set-up runs (the engine's first, the keyframe that builds the stream). The dense time seeds
        the guard (`seed_dense_ms`); the stream is reset after."""
        def ms(fn: Callable[[Tensor], Any]) -> float:
            t0 = self.clock()
            fn(x)
            return (self.clock() - t0) * 1e3

        self.dense(x)
        self.warmed = True
        dense = statistics.median(ms(self.dense) for _ in range(runs))
        self.tiles.reset()
        self.tiles(x)
        keys, floors = [], []
        for _ in range(runs):
            self.tiles.reset()
            keys.append(ms(self.tiles))
            floors.append(ms(self.tiles))
        self.seed_dense_ms = [dense] * runs
        self.reset()
        return dense, statistics.median(keys), statistics.median(floors)

    def _interval_done(self) -> bool:
        """Whether the keyframe interval that began with the last keyframe is whole: the policy's ``k``
        frames (`EveryK`, `SceneCut`, which count from their own last keyframe), so that the next frame
        would be a keyframe; policies without a ``k`` are judged frame by frame only."""
        k = getattr(self.tiles.policy, "k", None)
        return k is not None and 1 + len(self.interval_ms) >= k
