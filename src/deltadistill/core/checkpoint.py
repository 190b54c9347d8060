"""`save` / `load`: students, gates and config as safetensors + JSON (never pickle).

A checkpoint is a directory holding ``students.safetensors`` and ``deltadistill.json``. The
teacher's weights are not stored (the user has the teacher) unless it was fine-tuned. Loading
checks, layer by layer, that the checkpoint was made for this teacher's architecture.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_write
from .config import DeltaConfig
from .convert import _replace, convert
from .fold import fold_batchnorm
from .layer import DeltaConv2d, DeployedDeltaConv2d
from .modes import delta_layers
from .students import STUDENTS

FORMAT = "deltadistill/1"
WEIGHTS, META = "students.safetensors", "deltadistill.json"
TEACHER_PREFIX = "teacher:"  # with include_teacher: the teacher's tensors outside the delta layers


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or made for another model."""


def _layer_meta(layer: nn.Module) -> dict[str, Any]:
    if isinstance(layer, DeployedDeltaConv2d):
        students, deployed = {layer.student_name: layer.student}, layer.student_name
    else:
        assert isinstance(layer, DeltaConv2d)
        students, deployed = dict(layer.students.items()), None
    specs = {n: s.spec() for n, s in students.items() if s.spec()}  # e.g. a calibrated rank
    return {"students": list(students), "deployed": deployed, "specs": specs}


def _rebuild_students(layer: DeltaConv2d, info: dict[str, Any], config: DeltaConfig) -> None:
    """Give ``layer`` the students the checkpoint lists, shaped as stored (per-layer ranks and all)."""
    specs = info.get("specs") or {}
    if layer.student_names == info["students"] and all(
            layer.students[n].spec() == specs.get(n, {}) for n in layer.student_names):
        return  # conversion already built these shapes; the weights come from the file
    try:
        students = {n: STUDENTS[n].from_spec(layer.base, config, specs.get(n, {})) for n in info["students"]}
    except KeyError as e:
        raise CheckpointError(f"checkpoint uses student {e} that is not registered here; "
                              f"registered: {sorted(STUDENTS)}") from e
    layer.set_students(students, config.gate_init, config.prefer)


def _outside_delta_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers that no delta layer holds (a fine-tuned teacher's BN, heads...)."""
    prefixes = tuple(f"{name}." for name, _ in delta_layers(model))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def save(model: nn.Module, path: str | Path, include_teacher: bool = False, extra: dict | None = None) -> Path:
    """Store the delta layers of ``model`` in directory ``path`` (created if needed)."""
    path = Path(path)
    report = getattr(model, "delta_report", None)
    if report is None:
        raise ValueError("model was not converted with deltadistill.core.convert")
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    for name, layer in delta_layers(model):
        meta = _layer_meta(layer)
        meta["teacher_weight"] = list(layer.base.weight.shape)
        layers[name] = meta
        for k, v in layer.state_dict().items():
            if include_teacher or not k.startswith("base."):
                tensors[f"{name}.{k}"] = v.detach().cpu().contiguous().clone()
    if include_teacher:  # the rest of a fine-tuned teacher too: BN, unconverted convs, heads
        for k, v in _outside_delta_layers(model).items():
            tensors[TEACHER_PREFIX + k] = v.detach().cpu().contiguous().clone()
    meta = {"format": FORMAT, "config": report.config.to_json(), "layers": layers,
            "include_teacher": include_teacher, "bn_folded": bool(getattr(model, "delta_bn_folded", 0)),
            "extra": extra or {}}
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    meta["weights_sha256"] = _sha256(path / WEIGHTS)  # load refuses weights altered or truncated since
    atomic_write(path / META, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return path


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not a deltadistill checkpoint (needs {META} and {WEIGHTS})")
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / META} is corrupt: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / META} is not in format {FORMAT}")
    return meta


def load(teacher: nn.Module, path: str | Path) -> nn.Module:
    """Convert ``teacher`` as the checkpoint was, then load its students and gates (in place)."""
    path = Path(path)
    meta = read_meta(path)
    layers: dict[str, Any] = meta["layers"]
    modules = dict(teacher.named_modules())
    for name, info in layers.items():
        m = modules.get(name)
        if not isinstance(m, nn.Conv2d):
            raise CheckpointError(f"checkpoint {path} was made for another architecture: the model has no "
                                  f"Conv2d named {name!r}")
        if list(m.weight.shape) != info["teacher_weight"]:
            raise CheckpointError(f"checkpoint {path} was made for another architecture: layer {name!r} has "
                                  f"weight {list(m.weight.shape)}, checkpoint expects {info['teacher_weight']}")
    want = meta.get("weights_sha256")  # absent only in checkpoints written before checksums
    if want is not None and _sha256(path / WEIGHTS) != want:
        raise CheckpointError(f"{path / WEIGHTS} was altered or truncated since it was saved (checksum mismatch)")
    try:  # safetensors only: nothing in a model directory is ever unpickled or executed
        tensors = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / WEIGHTS} is not a readable safetensors file: {e}") from e
    config = DeltaConfig.from_json(meta["config"])
    config.targets = list(layers)
    convert(teacher, config)
    for name, layer in delta_layers(teacher):
        info = layers[name]
        _rebuild_students(layer, info, config)
        if info["deployed"]:
            _replace(teacher, name, DeployedDeltaConv2d(layer.base, layer.students[info["deployed"]],
                                                        info["deployed"], config.objective))
    if meta.get("bn_folded"):  # fold the teacher's BN the same way; saved students are already scaled
        teacher.delta_bn_folded = fold_batchnorm(teacher.eval())
    state = {}
    for name, layer in delta_layers(teacher):
        for k, v in layer.state_dict().items():
            if meta["include_teacher"] or not k.startswith("base."):
                state[f"{name}.{k}"] = v
    rest = _outside_delta_layers(teacher) if meta["include_teacher"] else {}
    state.update({TEACHER_PREFIX + k: v for k, v in rest.items()})
    expected = set(state)
    missing, unexpected = expected - tensors.keys(), tensors.keys() - expected
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit this model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    for k, v in tensors.items():
        if state[k].shape != v.shape:
            raise CheckpointError(f"checkpoint tensor {k} has shape {tuple(v.shape)}, model has {tuple(state[k].shape)}")
    teacher.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(TEACHER_PREFIX)}, strict=False)
    if rest:
        teacher.load_state_dict({k[len(TEACHER_PREFIX):]: v for k, v in tensors.items()
                                 if k.startswith(TEACHER_PREFIX)}, strict=False)
    if any(info["deployed"] for info in layers.values()):
        teacher.eval().requires_grad_(False)
    return teacher
