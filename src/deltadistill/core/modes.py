"""Switch every delta layer of a model between teacher, clip and stream mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from .layer import MODES, DeltaConv2d, DeltaLayer


def delta_layers(model: nn.Module) -> Iterator[tuple[str, DeltaLayer]]:
    """(name, layer) for every delta layer, trainable or deployed, in registration order."""
    for name, m in model.named_modules():
        if isinstance(m, DeltaLayer):
            yield name, m


def set_mode(model: nn.Module, mode: str, clip_len: int = 1) -> nn.Module:
    """Put every delta layer into ``mode`` (``teacher``, ``clip`` or ``stream``)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "clip" and clip_len < 1:
        raise ValueError("clip_len must be >= 1")
    found = False
    for _, layer in delta_layers(model):
        layer.mode, layer.clip_len = mode, clip_len
        found = True
    if not found:
        raise ValueError("model has no delta layers: call deltadistill.core.convert(model, config) first")
    return model


@contextmanager
def mode(model: nn.Module, name: str, clip_len: int = 1) -> Iterator[nn.Module]:
    """Context manager form of `set_mode` that restores the previous modes."""
    layers = list(delta_layers(model))
    before = [(layer.mode, layer.clip_len) for _, layer in layers]
    set_mode(model, name, clip_len)
    try:
        yield model
    finally:
        for (_, layer), (m, c) in zip(layers, before, strict=True):
            layer.mode, layer.clip_len = m, c


def record_true_delta(model: nn.Module, on: bool = True) -> None:
    """Ask every trainable delta layer to also keep the teacher's true delta in clip mode."""
    for _, layer in delta_layers(model):
        if isinstance(layer, DeltaConv2d):
            layer.record_true_delta = on
