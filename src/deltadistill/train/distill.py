"""`distill(model, data)`: train students and gates on unlabelled clips, towards a MAC budget.

Each step runs a batch of clips twice: in teacher mode (no grad) for the pseudo-labels, and in
clip mode for the delta model. The loss is ``w_task * task + w_distill * delta-MSE + w_cost * cost``.
Everything random in a step (the clips, the Gumbel noise) is a function of ``(seed, step, rank)``,
so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..core.checkpoint import save
from ..core.layer import DeltaConv2d
from ..core.modes import delta_layers, mode, record_true_delta
from ..files import atomic_write
from . import checkpointing as ckpt
from .ddp import Dist, barrier, init_from_env
from .losses import CostModel, TaskLoss, distill_loss, resolve_task_loss


@dataclass
class DistillResult:
    """What a run did: the loss history and the cost the hard gates reach (delta frame / teacher)."""

    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    expected_cost: float = 1.0
    reached_cost: float = 1.0
    budget: float | None = None
    choices: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _StepIndices(Sampler[int]):
    """Dataset indices for steps ``start..steps``: step s, rank r, item j -> ((s*world + r)*B + j) mod n."""

    def __init__(self, start: int, steps: int, batch: int, d: Dist, n: int) -> None:
        self.start, self.steps, self.batch, self.d, self.n = start, steps, batch, d, n

    def __iter__(self) -> Iterator[int]:
        for s in range(self.start, self.steps):
            for j in range(self.batch):
                yield ((s * self.d.world + self.d.rank) * self.batch + j) % self.n

    def __len__(self) -> int:
        return (self.steps - self.start) * self.batch


def _as_dataset(data: Any) -> Dataset | Sequence:
    if isinstance(data, Tensor):
        if data.dim() == 4:
            data = data.unsqueeze(0)
        if data.dim() != 5:
            raise ValueError(f"clips must be (N, T, C, H, W) or (T, C, H, W), got {tuple(data.shape)}")
        return list(data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ValueError("no training clips")
        return data
    raise TypeError("data must be a Dataset / sequence of (T, C, H, W) clips, or a tensor of clips")


def _non_key(out: Any, t: int) -> Any:
    """Keep only the non-key frames of a clip-major (N*T, ...) output (or each tensor in a tuple/list)."""
    if isinstance(out, Tensor):
        return out.view(-1, t, *out.shape[1:])[:, 1:].flatten(0, 1)
    if isinstance(out, dict):
        return {k: _non_key(v, t) for k, v in out.items()}
    return type(out)(_non_key(o, t) for o in out)


def _flat(target: Any, device: str) -> Any:
    """(N, T, ...) labels, or a tuple/list of them, to clip-major (N*T, ...) on ``device``."""
    if isinstance(target, Tensor):
        return target.to(device).flatten(0, 1)
    return type(target)(_flat(t, device) for t in target)


def _param_groups(model: nn.Module, lr: float, gate_lr: float, finetune_teacher: bool,
                  teacher_lr: float) -> list[dict[str, Any]]:
    students, gates = [], []
    for _, layer in delta_layers(model):
        if isinstance(layer, DeltaConv2d):
            students += list(layer.students.parameters())
            if layer.gate is not None:
                gates.append(layer.gate.logits)
    if not students:
        raise ValueError("model has no trainable delta layers: convert it with deltadistill.core.convert first")
    groups = [{"params": students, "lr": lr, "name": "students"}]
    if gates:
        groups.append({"params": gates, "lr": gate_lr, "weight_decay": 0.0, "name": "gates"})
    if finetune_teacher:
        own = {id(p) for g in groups for p in g["params"]}
        teacher = [p for p in model.parameters() if id(p) not in own]
        for p in teacher:
            p.requires_grad_(True)
        groups.append({"params": teacher, "lr": teacher_lr, "name": "teacher"})
    return groups


def _train_flags(model: nn.Module) -> None:
    """Teacher parts (BN statistics above all) stay in eval; the delta layers' gates sample."""
    model.eval()
    for _, layer in delta_layers(model):
        layer.train()


def distill(
    model: nn.Module,
    data: Any,
    *,
    steps: int = 100,
    budget: float | None = None,
    lr: float = 1e-3,
    gate_lr: float = 5e-2,
    task_loss: str | TaskLoss = "auto",
    w_task: float = 1.0,
    w_distill: float = 1.0,
    w_cost: float = 2.0,
    finetune_teacher: bool = False,
    teacher_lr: float = 1e-5,
    batch_size: int = 1,
    num_workers: int = 0,
    out_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> DistillResult:
    """Distil ``model`` (converted with `deltadistill.core.convert`) on clips of unlabelled video.

    ``data``: a dataset (e.g. `deltadistill.video.VideoClips`) or tensor of clips (N, T, C, H, W),
    in the value range the model expects. Items may also be ``(clip, labels)`` pairs with per-frame
    ground truth (T, ...); the task loss then uses the labels instead of the teacher's predictions. ``budget``: target cost of a delta frame as a fraction of
    the teacher's MACs (0.25 = a quarter); gates are pushed down only while above it.
    With ``out_dir``, checkpoints go to ``out_dir/checkpoints`` every ``checkpoint_every`` steps
    and at the end, and the final model to ``out_dir/model``; ``resume`` continues the latest one.
    """
    if steps < 0:
        raise ValueError("steps must be >= 0")
    if budget is not None and not 0 < budget <= 1:
        raise ValueError(f"budget is a fraction of the teacher's MACs in (0, 1], got {budget}")
    d = init_from_env(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and d.main:
        ckpt.check_writable(out / "checkpoints")  # refuse before any training time is spent
    dataset = _as_dataset(data)
    sample = dataset[0]
    if isinstance(sample, (tuple, list)):  # (clip, ground truth) pairs: labels where the user has them
        sample = sample[0]
    if sample.dim() != 4 or sample.shape[0] < 2:
        raise ValueError(f"a clip must be (T >= 2, C, H, W), got {tuple(sample.shape)}")
    t_len = sample.shape[0]
    model.to(device)
    task_fn = resolve_task_loss(model, task_loss)
    cost_model = CostModel(model, tuple(sample.shape[1:]))
    opt = torch.optim.AdamW(_param_groups(model, lr, gate_lr, finetune_teacher, teacher_lr), weight_decay=0.0)
    result = DistillResult(steps=steps, budget=budget)
    start = 0
    if resume and out is not None and (last := ckpt.latest(out / "checkpoints")) is not None:
        state = ckpt.load_training(last, model, opt)
        start, result.history = state["step"], state["history"]
    _train_flags(model)
    record_true_delta(model, True)
    runner: nn.Module = model
    if d.world > 1:
        runner = DistributedDataParallel(model, device_ids=None if device == "cpu" else [torch.device(device)])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        sampler=_StepIndices(start, steps, batch_size, d, len(dataset)))
    bar = tqdm(total=steps, initial=start, desc="distill", disable=not (progress and d.main), dynamic_ncols=True)
    step = start
    for batch in loader:
        torch.manual_seed(seed * 1_000_003 + step * 7919 + d.rank)  # Gumbel noise: a function of the step
        clips, target = batch if isinstance(batch, (tuple, list)) else (batch, None)
        clips = clips.to(device, non_blocking=True)
        if target is not None:  # per-frame labels (N, T, ...): keep the non-key frames, like the outputs
            target = _non_key(_flat(target, device), t_len)
        # Plain NCHW on purpose: oneDNN's 1x1 weight-gradient kernel in torch 2.13 CPU can spin
        # forever on channels_last inputs of some shapes (seen at 56x56 and 64x64).
        frames = clips.flatten(0, 1).contiguous()
        with torch.no_grad(), mode(model, "teacher"):
            reference = model(frames)  # also leaves each layer's teacher features for its delta target
        with mode(model, "clip", clip_len=t_len):
            pred = runner(frames)
        task = task_fn(_non_key(pred, t_len), _non_key(reference, t_len), target)
        dist_l = distill_loss(model)
        cost = cost_model.loss(budget)
        loss = w_task * task + w_distill * dist_l + w_cost * cost
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        row = {"step": step, "loss": loss.item(), "task": task.item(), "distill": dist_l.item(),
               "cost": cost_model.expected().item(), "hard_cost": cost_model.hard()}
        result.history.append(row)
        bar.update(1)
        bar.set_postfix(task=f"{row['task']:.4f}", distill=f"{row['distill']:.4f}",
                        cost=f"{row['cost']:.3f}", hard=f"{row['hard_cost']:.3f}")
        if out is not None and d.main and (step % checkpoint_every == 0 or step == steps):
            ckpt.save_training(out / "checkpoints", step, model, opt,
                               {"history": result.history, "seed": seed, "budget": budget},
                               include_teacher=finetune_teacher)
    bar.close()
    record_true_delta(model, False)
    for _, layer in delta_layers(model):
        if isinstance(layer, DeltaConv2d):
            layer.last_pred_delta = layer.last_true_delta = layer.last_gate = None
    model.eval()
    result.expected_cost = cost_model.expected().item()
    result.reached_cost = cost_model.hard()
    result.choices = {n: layer.chosen() for n, layer in delta_layers(model) if isinstance(layer, DeltaConv2d)}
    if out is not None and os.environ.get("DELTADISTILL_DUMP_RANK_WEIGHTS"):  # lets tests compare ranks
        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        out.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(out / f"rank{d.rank}.safetensors"))
    if out is not None and d.main:
        from ..teachers.resolve import teacher_record

        save(model, out / "model", include_teacher=finetune_teacher,
             extra={"distill": result.to_json(), **teacher_record(model)})
        atomic_write(out / "result.json", lambda p: p.write_text(json.dumps(result.to_json(), indent=1)))
    barrier(d)
    return result
