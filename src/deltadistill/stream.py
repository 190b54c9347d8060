"""Frame-by-frame inference with cached keyframe state, under a pluggable keyframe policy."""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

import torch
from torch import Tensor, nn

from .modes import delta_layers


class KeyframePolicy(Protocol):
    """Decides, per stream in the batch, whether a frame is a keyframe."""

    def reset(self) -> None: ...

    def __call__(self, step: int, frame: Tensor) -> bool | Tensor: ...


class EveryK:
    """A keyframe every ``k`` frames (frame 0, k, 2k, ...): the paper's policy."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"keyframe interval must be >= 1, got {k}")
        self.k = k

    def reset(self) -> None:
        pass

    def __call__(self, step: int, frame: Tensor) -> bool:
        return step % self.k == 0

    def __repr__(self) -> str:
        return f"EveryK({self.k})"


def frame_change(prev: Tensor, frame: Tensor) -> Tensor:
    """Per stream, how much the input jumped: mean ``|frame - prev|`` over mean ``|prev|`` (B,).

    About 0.01-0.08 between consecutive frames of a moving shot, 0.2-0.35 at the cuts of `bikes`.
    """
    return (frame - prev).abs().mean((1, 2, 3)) / prev.abs().mean((1, 2, 3)).clamp_min(1e-6)


def keyframe_flags(changes: list[float], k: int, threshold: float | None) -> list[bool]:
    """The keyframes `SceneCut` (or `EveryK`, with no threshold) picks, from per-frame `frame_change`s:
    used to give the rival the very policy the delta model ran under."""
    flags, since = [], 0
    for i, c in enumerate(changes):
        key = i == 0 or since + 1 >= k or (threshold is not None and c > threshold)
        since = 0 if key else since + 1
        flags.append(key)
    return flags


class SceneCut:
    """A keyframe every ``k`` frames, and also wherever the input jumps (`frame_change` above
    ``threshold``): a delta from a keyframe of another shot is all change, so it costs as much as a
    keyframe while repeating keyframes (the rival) shows the old shot. Each stream counts ``k`` from
    its own last keyframe."""

    def __init__(self, k: int, threshold: float = 0.15) -> None:
        if k < 1:
            raise ValueError(f"keyframe interval must be >= 1, got {k}")
        if threshold <= 0:
            raise ValueError(f"scene-cut threshold must be > 0, got {threshold}")
        self.k, self.threshold = k, threshold
        self.reset()

    def reset(self) -> None:
        self.prev: Tensor | None = None
        self.since: Tensor | None = None

    def __call__(self, step: int, frame: Tensor) -> bool | Tensor:
        if step == 0 or self.prev is None or self.prev.shape != frame.shape:
            key = torch.ones(frame.shape[0], dtype=torch.bool)
        else:
            assert self.since is not None
            key = (frame_change(self.prev, frame) > self.threshold).cpu() | (self.since + 1 >= self.k)
        self.since = torch.where(key, 0, (self.since if self.since is not None else 0) + 1)
        self.prev = frame.detach().clone()
        return bool(key.all()) if frame.shape[0] == 1 else key

    def __repr__(self) -> str:
        return f"SceneCut({self.k}, threshold={self.threshold:g})"


#: One lock per model: a frame binds its stream's state into the model's layers for the length of
#: the call, so two threads running one model must take turns (a registry, not an attribute, so
#: that a model stays deep-copyable and picklable).
_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def _lock_for(model: nn.Module) -> threading.Lock:
    with _REGISTRY_LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


class DeltaStream:
    """Runs a converted (or deployed) model over a batch of independent video streams.

    Each call takes one frame per stream, ``(B, C, H, W)``. The stream owns its cached state, so
    several streams can share one model without seeing each other's keyframes, from one thread or
    from several: frames of streams that share a model run one at a time (a per-model lock), and
    each stream's outputs are those it gives alone. For parallel speed, give each thread its own
    copy of the model.
    """

    def __init__(self, model: nn.Module, keyframe: KeyframePolicy | int = 4, compile: bool = False) -> None:
        """``compile``: run the model through ``torch.compile`` (inductor). It traces one graph for
        keyframes and one for delta frames, each compiled on first use (tens of seconds on a CPU),
        and fuses the elementwise work around the convs; outputs match eager to float tolerance."""
        self.model = model
        self.runner = torch.compile(model) if compile else model
        self.policy: KeyframePolicy = EveryK(keyframe) if isinstance(keyframe, int) else keyframe
        if hasattr(self.policy, "bind"):  # a policy that steers the model too (`rate.RateControl`)
            self.policy.bind(model)
        self.layers = [layer for _, layer in delta_layers(model)]
        # modules that can use per-stream state themselves (e.g. a graph skipping unchanged subgraphs)
        self.aware = [m for m in model.modules() if getattr(m, "supports_stream_state", False)]
        self.layer_states = [layer.__dict__ for layer in self.layers]
        self.lock = _lock_for(model)
        self.aware_states = [m.__dict__ for m in self.aware]
        if not self.layers:
            raise ValueError("model has no delta layers: call deltadistill.convert(model, config) first")
        self.reset()

    def reset(self) -> None:
        """Forget all cached state: the next frame is a keyframe."""
        self.step = 0
        self.shape: torch.Size | None = None
        self.caches: list[dict] = [{} for _ in self.layers]
        self.aware_caches: list[dict] = [{} for _ in self.aware]
        self.last_key: Tensor | bool = True
        self.policy.reset()

    def _check(self, frame: Tensor) -> None:
        if not isinstance(frame, Tensor) or frame.dim() != 4:
            got = tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__
            raise ValueError(f"DeltaStream expects one frame per stream as a (B, C, H, W) tensor, got {got}")
        if self.shape is not None and frame.shape != self.shape:
            raise ValueError(f"frame shape changed mid-stream at step {self.step}: expected {tuple(self.shape)}, "
                             f"got {tuple(frame.shape)}; call reset() to start a new stream")

    def key_mask(self, frame: Tensor) -> bool | Tensor:
        key = self.policy(self.step, frame)  # asked at step 0 too, so a stateful policy sees every frame
        if self.step == 0:
            return True
        if isinstance(key, Tensor):
            key = key.to(torch.bool).reshape(-1)
            if key.numel() != frame.shape[0]:
                raise ValueError(f"keyframe policy gave {key.numel()} decisions for a batch of {frame.shape[0]}")
            if bool(key.all()) or not bool(key.any()):
                key = bool(key.all())
        return bool(key) if not isinstance(key, Tensor) else key

    @torch.no_grad()
    def __call__(self, frame: Tensor):
        self._check(frame)
        key = self.key_mask(frame)
        out = self.step_with(frame, key, self.caches, self.aware_caches)
        self.shape = frame.shape
        self.last_key = key
        self.step += 1
        return out

    def step_with(self, frame: Tensor, key: bool | Tensor, caches: list[dict], aware_caches: list[dict]):
        """Run one frame with the given per-layer state (mutated in place); no policy, no step count.

        `runtime.export` traces this with the state as graph inputs and outputs.
        """
        # Per-frame state goes straight into each module's __dict__: nn.Module.__setattr__ checks for
        # parameters, buffers and submodules on every assignment, which cost ~1.5 ms a frame on selfie.
        with self.lock:
            for state, cache in zip(self.layer_states, caches, strict=True):  # no module-tree walk
                state["mode"], state["cache"], state["key"] = "stream", cache, key
            for state, cache in zip(self.aware_states, aware_caches, strict=True):
                state["stream_state"] = {"key": key, "cache": cache}
            steer = getattr(self.policy, "apply", None)  # a policy that picks each frame's work (rate control)
            if steer is not None:
                steer()
            try:
                return self.runner(frame)
            finally:
                for state in self.layer_states:
                    state["cache"] = None
                for state in self.aware_states:
                    state["stream_state"] = None
                if steer is not None:
                    self.policy.release()
