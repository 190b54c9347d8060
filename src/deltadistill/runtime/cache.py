"""Graphs exported from a teacher, made once per weights and input size and kept on disk.

An ONNX export takes seconds (about 5-8 s for the zoo's teachers here); the crop runtime needs one
per crop shape and the fastest-dense search one per size, so each is keyed by a fingerprint of
what it depends on and written atomically beside the teacher cache.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

from torch import nn


def fingerprint(teacher: nn.Module, *extra: object) -> str:
    """What an export of ``teacher`` depends on: its class, its weights, and ``extra``."""
    h = hashlib.sha1(f"{type(teacher).__qualname__} {extra!r}".encode())
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_dir(root: str | Path | None = None) -> Path:
    """``root``, else ``exports/`` beside the teacher cache (``$DELTADISTILL_CACHE`` or ~/.cache)."""
    from ..teachers.fetch import cache_root

    return Path(root) if root is not None else cache_root().parent / "exports"


def cached(file: Path, make: Callable[[Path], object]) -> Path:
    """``file``, made by ``make(tmp)`` and renamed into place if it is not there yet."""
    if file.is_file():
        return file
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make(tmp)
    tmp.replace(file)
    return file
