"""Training checkpoints: weights and optimiser state as safetensors, the rest as JSON, written atomically.

Layout: ``DIR/step-000100/`` holds ``model/`` (`deltadistill.save`), ``optimizer.safetensors`` and
``state.json``; ``DIR/latest`` names the newest complete one. A checkpoint is written into a temp
directory, renamed into place, and only then does ``latest`` move (itself by atomic rename), so a
crash at any point leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.checkpoint import CheckpointError, save
from ..files import atomic_write, probe_writable

KEEP = 2


def check_writable(directory: str | Path) -> Path:
    """Refuse an output directory that can't be written, before any training time is spent (creating nothing)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise PermissionError(f"cannot write checkpoints to {d}: it is a file")
    try:
        probe_writable(d)
    except OSError as e:
        raise PermissionError(f"cannot write checkpoints to {d}: {e.strerror or e}") from e
    return d


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def save_training(directory: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer,
                  state: dict[str, Any], include_teacher: bool = False) -> Path:
    """Write checkpoint ``step`` and point ``latest`` at it; keep the newest ``KEEP``."""
    final = directory / f"step-{step:07d}"
    directory.mkdir(parents=True, exist_ok=True)  # made at the first write, not when checked
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=directory))
    try:
        save(model, tmp / "model", include_teacher=include_teacher)
        tensors, meta = _optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": meta, **state}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(directory / "latest", lambda p: p.write_text(final.name))
    for old in sorted(directory.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(directory: str | Path) -> Path | None:
    pointer = Path(directory) / "latest"
    if not pointer.is_file():
        return None
    ckpt = Path(directory) / pointer.read_text().strip()
    if not (ckpt / "state.json").is_file():
        raise CheckpointError(f"{pointer} points to {ckpt}, which is not a complete checkpoint")
    return ckpt


def load_training(ckpt: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore students, gates (and a fine-tuned teacher) and the optimiser; return the JSON state."""
    from safetensors import SafetensorError

    state = json.loads((ckpt / "state.json").read_text())
    try:
        weights = load_file(str(ckpt / "model" / "students.safetensors"))
        opt_tensors = load_file(str(ckpt / "optimizer.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {e}") from e
    own = model.state_dict()
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise CheckpointError(f"checkpoint {ckpt} does not fit this model (e.g. {unknown[:3]})")
    model.load_state_dict(weights, strict=False)
    meta = state["optimizer"]
    per_param: dict[int, dict[str, Any]] = {}
    for key, v in opt_tensors.items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    return state
