"""The three losses: task (vs the teacher's own predictions), per-layer delta distillation, MAC cost.

Task losses form a registry, one function per kind of output, so a new task is one function.
Each takes ``(student_out, teacher_out, target)``; ``target`` is ground truth when the user has it,
else None and the teacher's output is the pseudo-label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.layer import DeltaConv2d
from ..core.macs import count_macs
from ..core.modes import delta_layers

TaskLoss = Callable[[Any, Any, Any], Tensor]
TASK_LOSSES: dict[str, TaskLoss] = {}


def register_task_loss(name: str) -> Callable[[TaskLoss], TaskLoss]:
    def wrap(fn: TaskLoss) -> TaskLoss:
        TASK_LOSSES[name] = fn
        return fn
    return wrap


@register_task_loss("seg_ce")
def seg_soft_ce(student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
    """Multi-class logits (N, C, H, W): cross-entropy against the teacher's softmax, or labels (N, H, W)."""
    if target is not None:
        return F.cross_entropy(student, target.long(), ignore_index=255)
    return -(teacher.softmax(1) * student.log_softmax(1)).sum(1).mean()


@register_task_loss("seg_bce")
def seg_bce(student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
    """Probability masks (N, 1, H, W) in 0..1: BCE against the teacher's soft mask, or a binary label."""
    ref = teacher if target is None else target.float()
    return F.binary_cross_entropy(student.clamp(1e-6, 1 - 1e-6), ref.clamp(0, 1))


@register_task_loss("centernet")
def centernet_loss(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], target: Any = None) -> Tensor:
    """CenterNet heads (heatmap probabilities, box regression): peak-weighted BCE plus L1 on boxes at peaks.

    Almost every heatmap pixel is ~0, so a plain mean BCE barely notices a stale or missing peak
    (a delta model that freezes its head at the keyframe scores well on it). Each pixel's BCE is
    weighted by how strongly either map fires there, as CenterNet's focal loss normalises by peaks.
    The box term counts only at the reference's peaks. ``target`` may be a ground-truth pair.
    """
    s_heat, s_box = student
    t_heat, t_box = teacher if target is None else target
    t_heat = t_heat.clamp(0, 1)
    bce = F.binary_cross_entropy(s_heat.clamp(1e-6, 1 - 1e-6), t_heat, reduction="none")
    focus = 1 + 50 * torch.maximum(t_heat, s_heat.detach())
    heat = (focus * bce).sum() / focus.sum()
    weight = t_heat.amax(1, keepdim=True)
    weight = weight * (weight >= F.max_pool2d(weight, 3, 1, 1)).float()  # peaks only
    box = (weight * (s_box - t_box).abs()).sum() / weight.sum().clamp_min(1e-6)
    return heat + box / 160  # box maps are in input pixels (tens to hundreds); keep both terms comparable


@register_task_loss("mse")
def mse(student: Any, teacher: Any, target: Any = None) -> Tensor:
    """Any output structure: mean squared error, leaf by leaf."""
    ref = teacher if target is None else target
    if isinstance(student, Tensor):
        return F.mse_loss(student, ref)
    return torch.stack([mse(s, r) for s, r in zip(student, ref, strict=True)]).mean()


def resolve_task_loss(model: nn.Module, task_loss: str | TaskLoss) -> TaskLoss:
    """``"auto"`` uses the model's declared ``task_loss`` (teachers declare one), else soft cross-entropy."""
    if callable(task_loss):
        return task_loss
    if task_loss == "auto":
        task_loss = getattr(model, "task_loss", "seg_ce")
    if task_loss not in TASK_LOSSES:
        raise ValueError(f"unknown task loss {task_loss!r}; registered: {sorted(TASK_LOSSES)}")
    return TASK_LOSSES[task_loss]


def distill_loss(model: nn.Module) -> Tensor:
    """Mean over layers of MSE(predicted delta, teacher delta), each normalised by its delta's energy.

    Under the feature objective a layer records its estimate ``g(x_t) + b`` and the teacher's
    ``z_t`` in the same two fields, so this is then each layer's relative error on its output: each
    objective is normalised by the energy of its own target. (Normalising the feature error by the
    delta's energy instead, as a first version did, weights near-static clips without bound: the
    loss reached 3e8 within ten steps on selfie.)

    Normalising by ``mean(true_delta^2)`` makes each layer count alike, whatever its scale. Under
    DDP that energy is the whole batch's (the ranks' equal parts averaged), not each rank's own, so
    that the ranks' averaged gradients are those of one process on the whole batch.
    """
    pairs = [(layer.last_pred_delta, layer.last_true_delta) for _, layer in delta_layers(model)
             if isinstance(layer, DeltaConv2d) and layer.last_pred_delta is not None
             and layer.last_true_delta is not None]
    if not pairs:
        raise RuntimeError("no layer recorded deltas: run the model in clip mode with record_true_delta on")
    energy = torch.stack([true.detach().pow(2).mean() for _, true in pairs])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(energy)
        energy = energy / dist.get_world_size()
    return torch.stack([F.mse_loss(pred, true) / (e + 1e-8) for (pred, true), e in zip(pairs, energy, strict=True)]).mean()


class CostModel:
    """Expected MAC cost of a delta frame, as a fraction of the teacher, differentiable in the gates."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int]) -> None:
        report = count_macs(model, input_shape)
        self.teacher = float(report.teacher)
        self.layers: list[tuple[DeltaConv2d, Tensor]] = []
        fixed = self.teacher
        for (_, layer), row in zip(delta_layers(model), report.layers, strict=True):
            fixed -= row.teacher
            if isinstance(layer, DeltaConv2d) and layer.gate is not None:
                costs = torch.tensor([float(row.students[n]) for n in layer.student_names])
                self.layers.append((layer, costs))
            else:
                fixed += row.delta
        self.fixed = fixed

    def expected(self) -> Tensor:  # noqa: D102
        """Σ gate probabilities x student MACs, plus fixed costs, over the teacher's MACs."""
        total = torch.tensor(self.fixed)
        for layer, costs in self.layers:
            total = total + (layer.gate.probs() * costs.to(layer.gate.logits.device)).sum()
        return total / self.teacher

    def hard(self) -> float:
        """The same with every gate at its hard choice: what deploy will get."""
        total = self.fixed
        for layer, costs in self.layers:
            total += float(costs[layer.gate.choice()])
        return total / self.teacher

    def loss(self, budget: float | None) -> Tensor:
        """With a budget, only the excess over it is penalised; without one, the expected cost itself."""
        cost = self.expected()
        return cost if budget is None else torch.relu(cost - budget)
