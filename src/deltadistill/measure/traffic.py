"""Bytes moved per frame: what every op reads and writes, for the teacher, a keyframe and a delta frame.

Why: on a CPU the mobile teachers' thin convs and the elementwise work around them are bound by
memory traffic, not by MACs. A delta frame that does half the MACs but moves as many bytes is no
faster. Counting the bytes each ATen op reads (its tensor inputs) and writes (its outputs), with no
fusion and no cache reuse, gives an upper bound on traffic, and ``teacher / delta`` bytes the
speedup that traffic allows. Views move nothing and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..core.modes import mode
from ..stream import DeltaStream


class _CountBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.read = 0
        self.written = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if getattr(func, "is_view", False) or func in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
            return out
        ins, _ = tree_flatten((args, kwargs or {}))
        outs, _ = tree_flatten(out)
        self.read += sum(t.numel() * t.element_size() for t in ins if isinstance(t, Tensor))
        self.written += sum(t.numel() * t.element_size() for t in outs if isinstance(t, Tensor))
        return out


def _bytes(fn: Any, *args: Any) -> int:
    with torch.no_grad(), _CountBytes() as c:
        fn(*args)
    return c.read + c.written


@dataclass(frozen=True)
class Traffic:
    """Bytes per image moved by the teacher, a keyframe and a delta frame of the delta model."""

    teacher: int
    keyframe: int
    delta: int
    keyframe_interval: float

    @property
    def amortised(self) -> float:
        k = self.keyframe_interval
        return (self.keyframe + (k - 1) * self.delta) / k

    @property
    def speedup_bound(self) -> float:
        """The speedup a memory-bound run could reach: teacher bytes over amortised delta-model bytes."""
        return self.teacher / self.amortised

    def as_dict(self) -> dict[str, float]:
        mb = 1 / 2**20
        return {"teacher_mb": self.teacher * mb, "keyframe_mb": self.keyframe * mb, "delta_mb": self.delta * mb,
                "amortised_mb": self.amortised * mb, "speedup_bound": self.speedup_bound}


def measure_traffic(model: nn.Module, key: Tensor, delta: Tensor, keyframe_interval: int) -> Traffic:
    """Bytes moved by ``model`` (converted or deployed) on keyframe ``key`` then delta frame ``delta``,
    and by its teacher (the same model in teacher mode) on ``delta``: real frames, since a sparse
    student's work depends on what moved."""
    with mode(model, "teacher"):
        teacher = _bytes(model, delta)
    stream = DeltaStream(model, 2)  # one keyframe, then one delta frame
    keyframe = _bytes(stream, key)
    delta_bytes = _bytes(stream, delta)
    return Traffic(teacher, keyframe, delta_bytes, keyframe_interval)
