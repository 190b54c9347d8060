"""Exact MAC accounting for teacher, keyframe, delta frame, and the amortised cost per frame.

What is counted: multiply-accumulates of convolutions and matrix products (conv, linear, matmul),
one MAC per multiply-add, for one image. The unconverted part of the network is measured with
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2); each delta layer's teacher and student
costs are computed analytically from their geometry. What is left out: elementwise work (the add
``z_k + g(.)``, the subtraction ``x_t - x_k``, BN, activations, resizes, pooling) and bias adds.

A deployed keyframe also runs each linear student once, to store ``c = z_k - g(x_k)``; that is
counted (not under the feature objective, whose delta frames need nothing of the keyframe). A
data-dependent student (`SparseStudent`) is counted at its calibrated expectation here;
`measured_delta_macs` gives what the last delta frame really cost, which reports use instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layer import DeltaConv2d, DeltaLayer, DeployedDeltaConv2d
from .modes import delta_layers, mode


@dataclass
class LayerMacs:
    name: str
    teacher: int
    delta: int
    student: str
    students: dict[str, int] = field(default_factory=dict)


@dataclass
class MacReport:
    """MACs for one image (batch 1). ``amortised`` assumes one keyframe every ``keyframe_interval``."""

    teacher: int
    keyframe: int
    delta: int
    keyframe_interval: int
    layers: list[LayerMacs]

    @property
    def amortised(self) -> float:
        k = self.keyframe_interval
        return (self.keyframe + (k - 1) * self.delta) / k

    @property
    def ratio(self) -> float:
        """Teacher MACs over amortised delta-model MACs (the paper's 'x fewer MACs')."""
        return self.teacher / self.amortised

    @property
    def delta_ratio(self) -> float:
        """A delta frame's cost as a fraction of the teacher's."""
        return self.delta / self.teacher

    def table(self) -> str:
        lines = [f"{'layer':40s} {'teacher MMAC':>12s} {'delta MMAC':>11s}  student"]
        for r in self.layers:
            lines.append(f"{r.name[-40:]:40s} {r.teacher / 1e6:12.2f} {r.delta / 1e6:11.2f}  {r.student}")
        lines.append(f"{'TOTAL teacher':40s} {self.teacher / 1e9:11.3f}G")
        lines.append(f"{'keyframe / delta frame':40s} {self.keyframe / 1e9:11.3f}G {self.delta / 1e9:10.3f}G")
        lines.append(f"{'amortised @K=' + str(self.keyframe_interval):40s} {self.amortised / 1e9:11.3f}G"
                     f"  ({self.ratio:.2f}x fewer than the teacher)")
        return "\n".join(lines)


def has_measured_macs(model: nn.Module) -> bool:
    """True when some delta layer's student costs what its data makes it cost (MACs must be measured)."""
    return any(getattr(s, "data_dependent", False) for _, layer in delta_layers(model) for s in layer_students(layer))


def measured_delta_macs(model: nn.Module, report: MacReport) -> int:
    """MACs of the delta frame ``model`` just ran: ``report.delta`` with each data-dependent student's
    nominal cost replaced by what its last call measured (per image)."""
    total = report.delta
    for (_, layer), row in zip(delta_layers(model), report.layers, strict=True):
        measured = counted_student(layer, row).measured_macs()
        if measured is not None:
            total += measured - row.delta
    return total


def layer_students(layer: DeltaLayer) -> list[nn.Module]:
    """The students a layer holds: its one deployed student, or all of a trainable layer's."""
    if isinstance(layer, DeployedDeltaConv2d):
        return [layer.student]
    return list(getattr(layer, "students", {}).values())


def counted_student(layer: DeltaLayer, row: LayerMacs) -> nn.Module:
    """The student a delta frame of ``layer`` runs, as its MAC report row counts it."""
    return layer.student if isinstance(layer, DeployedDeltaConv2d) else layer.students[row.student]


def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward as FlopCounterMode sees it (its FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def _shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(input_shape) == 3:
        return (1, *input_shape)
    if len(input_shape) == 4 and input_shape[0] == 1:
        return tuple(input_shape)
    raise ValueError(f"input_shape must be (C, H, W) or (1, C, H, W), got {tuple(input_shape)}")


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], keyframe_interval: int = 4) -> MacReport:
    """MACs per image of a converted or deployed model: teacher, keyframe, delta and amortised.

    A trainable model is counted as it would deploy (each gate at its most probable student).
    """
    if keyframe_interval < 1:
        raise ValueError("keyframe_interval must be >= 1")
    layers = list(delta_layers(model))
    if not layers:
        raise ValueError("model has no delta layers: call deltadistill.core.convert(model, config) first")
    p = next(iter(model.parameters()), None)
    x = torch.zeros(_shape(input_shape), device=p.device if p is not None else None,
                    dtype=p.dtype if p is not None else None)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with mode(model, "teacher"):
            teacher = flop_counter_macs(model, x)
    finally:
        for m, flag in flags:
            m.training = flag
    rows, key_extra = [], 0
    for name, layer in layers:
        rows.append(_layer_row(name, layer))
        if isinstance(layer, DeployedDeltaConv2d) and layer.student.linear and layer.objective == "delta":
            # c = z_k - g(x_k); the feature objective keeps no c
            key_extra += rows[-1].delta
    delta = teacher - sum(r.teacher for r in rows) + sum(r.delta for r in rows)
    return MacReport(teacher, teacher + key_extra, delta, keyframe_interval, rows)


def _layer_row(name: str, layer: DeltaLayer) -> LayerMacs:
    costs = layer.student_macs()
    choice = layer.chosen() if isinstance(layer, (DeltaConv2d, DeployedDeltaConv2d)) else next(iter(costs))
    return LayerMacs(name, layer.teacher_macs(), costs[choice], choice, costs)
