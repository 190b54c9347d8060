"""Turn a teacher name or path, as given on the command line, into a module."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .models import TinySegNet

BUILTIN = {"tinyseg": lambda: TinySegNet()}


class TeacherError(ValueError):
    """An unknown teacher name or an unusable teacher file."""


def resolve_teacher(name_or_path: str) -> nn.Module:
    """``tinyseg`` (built-in, random weights: for tests), a zoo name (``centernet``, ``selfie``),
    or the path of a TF.js graph model (``model.json``)."""
    if name_or_path in BUILTIN:
        torch.manual_seed(0)
        return BUILTIN[name_or_path]().eval()
    from . import teachers

    path = Path(name_or_path)
    if path.suffix == ".json":
        if not path.is_file():
            raise TeacherError(f"teacher file not found: {path}")
        return teachers.from_tfjs(path)
    if name_or_path in teachers.available():
        return teachers.load(name_or_path)
    raise TeacherError(f"unknown teacher {name_or_path!r}: choose one of "
                       f"{sorted([*BUILTIN, *teachers.available()])} or give a TF.js model.json path")
