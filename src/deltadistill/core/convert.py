"""`convert(model, config)`: swap targeted convs for `DeltaConv2d` in place, PEFT/torchao style."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .config import DeltaConfig, explicitly_named, match_target
from .layer import DeltaConv2d
from .students import STUDENTS, Student, check_feature_forms, check_names


class UnsupportedLayerError(ValueError):
    """A layer the user named explicitly can't be converted."""


@dataclass
class LayerRecord:
    """What conversion did with one candidate layer, and why."""

    name: str
    kind: str
    converted: bool
    students: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class ConversionReport:
    """The record of a conversion, kept on the model as ``model.delta_report``."""

    config: DeltaConfig
    layers: list[LayerRecord]

    @property
    def converted(self) -> list[str]:
        return [r.name for r in self.layers if r.converted]

    @property
    def skipped(self) -> dict[str, str]:
        return {r.name: r.reason for r in self.layers if not r.converted}


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        g = "" if m.groups == 1 else (" dw" if m.groups == m.in_channels else f" g{m.groups}")
        return f"Conv2d {m.in_channels}->{m.out_channels} {kh}x{kw}/{m.stride[0]}{g}"
    return type(m).__name__


def _plan_layer(name: str, m: nn.Module, config: DeltaConfig) -> LayerRecord:
    if not isinstance(m, nn.Conv2d):
        return LayerRecord(name, _describe(m), False, reason=f"{type(m).__name__} is not a Conv2d")
    reasons, ok = [], []
    for sname in config.student_names:
        why = STUDENTS[sname].unsupported_reason(m, config)
        (reasons.append(f"{sname}: {why}") if why else ok.append(sname))
    if not ok:
        return LayerRecord(name, _describe(m), False, reason="; ".join(reasons))
    if config.student == "search" and ok == ["full"]:
        reasons.append("only the full student applies, and the plain teacher conv is exact and cheaper")
        return LayerRecord(name, _describe(m), False, reason="; ".join(reasons))
    return LayerRecord(name, _describe(m), True, ok, "; ".join(reasons))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def convert(model: nn.Module, config: DeltaConfig | None = None) -> nn.Module:
    """Replace each targeted ``nn.Conv2d`` of ``model`` with a `DeltaConv2d`, in place.

    By default every Conv2d is targeted, except the first and last (in registration order) when any
    offered student keeps them dense (`Student.keeps_ends_dense`: the low-rank kinds do, the sparse
    kinds do not). Returns the same model, with ``model.delta_report`` listing converted and skipped
    layers.
    """
    config = config or DeltaConfig()
    check_names(config)
    if config.objective == "features":
        check_feature_forms(config.student_names)
    if any(isinstance(m, DeltaConv2d) for m in model.modules()):
        raise ValueError("model is already converted")
    named = [(n, m) for n, m in model.named_modules() if n]
    if config.targets is None:
        convs = [n for n, m in named if isinstance(m, nn.Conv2d)]
        ends_dense = any(STUDENTS[s].keeps_ends_dense for s in config.student_names)
        edge = {convs[0], convs[-1]} if convs and ends_dense else set()
        chosen = [(n, m) for n, m in named if isinstance(m, nn.Conv2d) and n not in edge]
        records = [LayerRecord(n, _describe(m), False, reason="first/last conv is kept dense for these students (the paper's rule for low-rank ones)")
                   for n, m in named if n in edge]
    else:
        chosen = [(n, m) for n, m in named if match_target(config.targets, n, m)]
        # a container matched by a pattern is not itself a layer to convert; its convs may be
        chosen = [(n, m) for n, m in chosen if not (list(m.children()) and not isinstance(m, nn.Conv2d))]
        records = []
        if not chosen:
            raise ValueError(f"targets {config.targets!r} matched no layer of the model")
    planned = [(name, m, _plan_layer(name, m, config)) for name, m in chosen]
    for name, m, rec in planned:  # refuse before touching the model: all or nothing
        if not rec.converted and explicitly_named(config.targets, name, m):
            raise UnsupportedLayerError(f"cannot convert layer {name!r} ({rec.kind}): {rec.reason}")
    for name, m, rec in planned:
        records.append(rec)
        if rec.converted:
            students: dict[str, Student] = {s: STUDENTS[s].from_teacher(m, config) for s in rec.students}
            layer = DeltaConv2d(m, students, config.tau, config.gate_init, config.prefer, config.objective)
            _replace(model, name, layer.train(m.training))  # new layers follow the model's train/eval state
    order = {n: i for i, (n, _) in enumerate(named)}
    records.sort(key=lambda r: order.get(r.name, 0))
    model.delta_report = ConversionReport(config, records)
    return model
