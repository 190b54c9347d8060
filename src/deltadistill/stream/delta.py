"""Frame-by-frame inference with cached keyframe state, under a pluggable keyframe policy."""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor, nn

from ..core.modes import delta_layers
from .policies import EveryK, KeyframePolicy

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
            raise ValueError("model has no delta layers: call deltadistill.core.convert(model, config) first")
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
