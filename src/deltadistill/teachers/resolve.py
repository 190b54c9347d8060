"""Turn a teacher name or path, as given on the command line or recorded in a model, into a module."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import TinySegNet

BUILTIN = {"tinyseg": lambda: TinySegNet()}


class TeacherError(ValueError):
    """An unknown teacher name or an unusable teacher file."""


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"HxW"`` (or one number for a square) -> ``(H, W)``."""
    if not text:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise TeacherError(f"--input-size must be HxW, e.g. 480x640, not {text!r}") from None
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) <= 0:
        raise TeacherError(f"--input-size must be HxW with positive sides, not {text!r}")
    need, have = FEATURE_FACTOR * 3 * 4 * size[0] * size[1], physical_memory()
    if have and need > have:  # refused before torch tries to allocate it
        raise TeacherError(f"--input-size {size[0]}x{size[1]} is too large for this machine: one frame's feature "
                           f"maps need about {need / 1e9:.0f} GB ({FEATURE_FACTOR}x the float frame), and it has "
                           f"{have / 1e9:.0f} GB of memory")
    return size  # type: ignore[return-value]


#: a CNN's feature maps, at their largest, hold many times its input frame: the bound `parse_size` uses
FEATURE_FACTOR = 64


def physical_memory() -> int:
    """Bytes of memory this machine has (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def parse_range(text: str | None) -> tuple[float, float] | None:
    """``"lo,hi"`` -> ``(lo, hi)``: what the graph expects for black and white."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise TeacherError(f"--value-range must be low,high, e.g. -1,1, not {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):  # else every pixel maps to one value
        raise TeacherError(f"--value-range must be two finite numbers, low below high, not {text!r}")
    return lo, hi


def resolve_teacher(name_or_path: str, input_size: tuple[int, int] | None = None,
                    value_range: tuple[float, float] | None = None, task: str | None = None,
                    frame_size: tuple[int, int] | None = None) -> nn.Module:
    """``tinyseg`` (built-in, random weights: for tests), a zoo name (``centernet``, ``selfie``, ``isnet``), the
    path of an ONNX model (``.onnx``) or of a TF.js graph model (``model.json``).

    ``input_size`` runs the teacher at that size. Without it, a graph whose sizes are open takes
    ``frame_size`` (the video's), rounded up to the multiple its strides need. ``value_range`` and
    ``task`` apply to imported graphs (see `teachers.from_onnx`).
    """
    if name_or_path in BUILTIN:
        if input_size or value_range or task:
            raise TeacherError(f"{name_or_path} is built in: --input-size, --value-range and --task are for imported graphs")
        torch.manual_seed(0)
        model = BUILTIN[name_or_path]().eval()
        model.source = name_or_path
        return model
    from .. import teachers
    from .packaged import PACKAGED, load_packaged

    path = Path(name_or_path)
    if path.suffix in (".onnx", ".json"):
        if not path.is_file():
            raise TeacherError(f"teacher file not found: {path}")
        make = teachers.from_onnx if path.suffix == ".onnx" else teachers.from_tfjs
        kwargs: dict[str, Any] = {"value_range": value_range or (0.0, 1.0), "task": task or "map"}
        return _imported(lambda size: make(path, input_size=size, **kwargs), input_size, frame_size)
    if name_or_path in PACKAGED:
        if value_range:
            raise TeacherError(f"{name_or_path} has its own value range {PACKAGED[name_or_path].value_range}")
        return _imported(lambda size: load_packaged(name_or_path, size, task), input_size, frame_size)
    if name_or_path == "isnet":  # an ONNX file from npm; by default at the video's content size
        if value_range or (task and task != "segmentation"):
            raise TeacherError("isnet is a segmentation teacher with its own value range (-0.5, 0.5)")
        from .isnet import default_size

        return teachers.load("isnet", input_size=input_size or default_size(frame_size))
    if name_or_path in teachers.available():
        if value_range or (task and task != teachers.zoo.SPECS[name_or_path].task):
            raise TeacherError(f"{name_or_path} is a zoo teacher with its own value range and task")
        return teachers.load(name_or_path, input_size=input_size)
    raise TeacherError(f"unknown teacher {name_or_path!r}: choose one of "
                       f"{sorted([*BUILTIN, *teachers.available(), *PACKAGED])} or give an .onnx or TF.js "
                       "model.json path")


def _imported(make: Callable[[tuple[int, int] | None], nn.Module], input_size: tuple[int, int] | None,
              frame_size: tuple[int, int] | None) -> nn.Module:
    """``make(input_size)``, and for a graph whose sizes are open, at ``frame_size`` rounded up to its strides."""
    from .imported import round_up
    from .onnx_graph import OnnxImportError

    try:
        try:
            teacher = make(None)  # a graph with a size of its own keeps it, unless told otherwise
        except (OnnxImportError, ValueError) as e:
            if "input_size" not in str(e) or (input_size is None and frame_size is None):
                raise
            teacher = make((256, 256))  # its sizes are open: this only learns its strides
            if input_size is None:
                input_size = round_up(frame_size, teacher.size_multiple)  # type: ignore[arg-type]
    except (OnnxImportError, FileNotFoundError) as e:
        raise TeacherError(str(e)) from None
    if input_size is not None:
        teacher.set_input_size(input_size)  # checks the size suits the graph's strides
    return teacher


def teacher_record(teacher: nn.Module) -> dict[str, Any]:
    """What a saved model records so that `resolve_recorded` makes the same teacher again."""
    rec: dict[str, Any] = {"teacher": getattr(teacher, "source", None) or getattr(teacher, "name", None)}
    if hasattr(teacher, "input_size"):
        rec["teacher_input_size"] = list(teacher.input_size)
    if hasattr(teacher, "value_range"):
        rec["teacher_value_range"] = list(teacher.value_range)
        rec["teacher_task"] = teacher.task
    return rec


def resolve_recorded(name: str, record: Mapping[str, Any] | None, input_size: tuple[int, int] | None = None,
                     value_range: tuple[float, float] | None = None, task: str | None = None) -> nn.Module:
    """The teacher a model directory was made for, at the size (range, task) it records unless given."""
    record = record or {}
    size = input_size or (tuple(record["teacher_input_size"]) if record.get("teacher_input_size") else None)
    if size is not None and name in BUILTIN:
        size = None
    if name not in BUILTIN and Path(name).suffix not in (".onnx", ".json") and size is not None:
        from .. import teachers

        if name in teachers.zoo.SPECS and tuple(size) == teachers.zoo.SPECS[name].input_size:
            size = None  # the native size: load it plainly
    from .packaged import PACKAGED

    vr = value_range or (tuple(record["teacher_value_range"]) if record.get("teacher_value_range") else None)
    if name in PACKAGED or name == "isnet":
        vr = None  # a packaged teacher's range is its own
    return resolve_teacher(name, input_size=size, value_range=vr, task=task or record.get("teacher_task"))
