"""`tune_sparse(model, clips, budget)`: per-group sparse thresholds chosen by *measuring* combinations.

Why: pricing each layer alone and adding the prices up (`calibrate(objective="output")`) ranks
single layers well but combinations badly: on centernet its choices lost to one uniform threshold
(BENCHMARKS.md note 14). Here every candidate is the whole model, streamed over calibration clips:
its error is the share of the output's change it fails to recover, and its cost the MACs its delta
frames really spent. Layers are grouped by input resolution and conv kind (1x1, depthwise, other),
and a coordinate descent scales one group's thresholds at a time, keeping a move only when the
measured model gets better: less error within the budget, or closer to the budget when over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..core.geometry import ConvGeometry
from ..core.layer import DeltaConv2d
from ..core.macs import MacReport, count_macs
from ..core.modes import delta_layers, mode
from ..core.students import SparseStudent
from ..measure.recovery import first_output_map, stream_change

FACTORS = (0.5, 2.0)
OVER_BUDGET_PENALTY = 10.0


@dataclass
class TuneResult:
    """What the search measured on the calibration clips, and the scale it gave each group."""

    budget: float
    cost: float
    recovered: float
    groups: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _group(layer: DeltaConv2d) -> str:
    geo = ConvGeometry.of(layer.base)
    kind = "1x1" if geo.kernel == (1, 1) else "depthwise" if geo.depthwise else "conv"
    h, w = layer._hw()
    return f"{h}x{w} {kind}"


def _measure(model: nn.Module, clips: Sequence[Tensor], wants: list[list[Tensor]], macs: MacReport) -> tuple[float, float]:
    """(error = 1 - recovered share, delta-frame MACs / teacher) of ``model`` streamed over ``clips``."""
    err, energy, spent = stream_change(model, clips, wants, macs)
    return err / max(energy, 1e-30), (spent or 0.0) / macs.teacher


def tune_sparse(model: nn.Module, data: Any, *, budget: float, clips: int = 8, rounds: int = 4,
                factors: Sequence[float] = FACTORS, progress: bool = True) -> TuneResult:
    """Scale the thresholds of a model's `sparse` students, group by group, to recover the most of
    the output's change on ``clips`` clips of ``data`` while a delta frame costs at most ``budget``
    of the teacher's MACs (measured). In place; start from `sparsify`."""
    if not 0 < budget <= 1:
        raise ValueError(f"budget is a fraction of the teacher's MACs in (0, 1], got {budget}")
    layers = [m for _, m in delta_layers(model) if isinstance(m, DeltaConv2d)]
    students = {id(m): m.students[m.chosen()] for m in layers}
    if not layers or not all(isinstance(s, SparseStudent) for s in students.values()):
        raise ValueError("tune_sparse needs a model whose every delta layer holds a sparse student "
                         "(convert with DeltaConfig(student='sparse'), then dd.sparsify)")
    items = [data[i] for i in range(min(clips, len(data)))]
    items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
    if not items:
        raise ValueError("no calibration clips")
    model.eval()
    with torch.no_grad(), mode(model, "teacher"):
        wants = [[first_output_map(model(f[None])).clone() for f in clip] for clip in items]
    macs = count_macs(model, tuple(items[0].shape[1:]))  # once: thresholds change what is measured, not this
    groups: dict[str, list[SparseStudent]] = {}
    for m in layers:
        groups.setdefault(_group(m), []).append(students[id(m)])
    base = {g: [float(s.threshold) for s in ss] for g, ss in groups.items()}
    scale = dict.fromkeys(groups, 1.0)

    def apply(sc: dict[str, float]) -> None:
        for g, ss in groups.items():
            for s, t0 in zip(ss, base[g], strict=True):
                s.threshold.fill_(t0 * sc[g])

    def score(err: float, cost: float) -> float:
        return err + OVER_BUDGET_PENALTY * max(0.0, cost - budget)

    err, cost = _measure(model, items, wants, macs)
    result = TuneResult(budget, cost, 1 - err)
    result.history.append({"round": 0, "move": None, "error": err, "cost": cost})
    best = score(err, cost)
    bar = tqdm(total=rounds * len(groups) * len(factors), desc="tune sparse thresholds", disable=not progress)
    for r in range(1, rounds + 1):
        trial_best: tuple[float, str, float, float, float] | None = None
        for g in groups:
            for f in factors:
                trial = {**scale, g: scale[g] * f}
                apply(trial)
                e, c = _measure(model, items, wants, macs)
                bar.update(1)
                s = score(e, c)
                if s < best - 1e-6 and (trial_best is None or s < trial_best[0]):
                    trial_best = (s, g, f, e, c)
        apply(scale)
        if trial_best is None:
            break
        best, g, f, err, cost = trial_best
        scale[g] *= f
        apply(scale)
        result.history.append({"round": r, "move": f"{g} x{f:g}", "error": err, "cost": cost})
    bar.close()
    result.cost, result.recovered, result.groups = cost, 1 - err, dict(scale)
    return result
