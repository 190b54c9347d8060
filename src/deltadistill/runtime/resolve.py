"""Find what a model directory holds (a checkpoint or an ONNX export) and the teacher it was made for."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..core.checkpoint import CheckpointError, read_meta
from .export import MANIFEST, ExportError, export_onnx, read_manifest


def is_export(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def model_record(path: str | Path) -> dict[str, Any]:
    """What a checkpoint or export records of its teacher (`teachers.resolve.teacher_record`)."""
    path = Path(path)
    if is_export(path):
        return dict(read_manifest(path))
    return dict(read_meta(path).get("extra") or {})


def model_teacher(path: str | Path) -> str | None:
    """The teacher name a checkpoint or export records, if any."""
    return model_record(path).get("teacher")


def pick_teacher(model_dir: Path | None, given: str | None) -> str:
    """``given`` (checked against what the model directory records) or the recorded name."""
    if model_dir is not None and not model_dir.is_dir():
        raise CheckpointError(f"model directory not found: {model_dir}")
    recorded = model_teacher(model_dir) if model_dir is not None else None
    if given and recorded and Path(given).stem != Path(recorded).stem:
        raise CheckpointError(f"{model_dir} was made for teacher {recorded!r}, not {given!r}")
    name = given or recorded
    if not name:
        raise ValueError("give --teacher: the model directory does not record which teacher it was made for")
    return name


def export_dir(model: nn.Module, out: Path, *, force: bool = False, **kw: Any) -> Path:
    """`export_onnx` into ``out`` as one step: built beside it and renamed, so a failure leaves
    ``out`` as it was. An existing non-empty ``out`` is refused unless ``force``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise PermissionError(f"cannot write {out}: {e.strerror or e}") from e
    try:
        export_onnx(model, tmp, **kw)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cached_export(model: nn.Module, model_dir: Path, **kw: Any) -> Path:
    """The export of checkpoint ``model_dir``, made once into ``model_dir/onnx`` and reused while it
    is newer than the checkpoint and for the same keyframe interval.

    Processes that ask at once (``torchrun ... run --backend onnxruntime``) take turns on a lock
    file: the first exports, the others find its export, and none replaces a directory another
    one is reading."""
    import fcntl

    try:
        lock = open(model_dir / ".onnx.lock", "a")  # noqa: SIM115 - held for the whole export
    except OSError as e:
        raise PermissionError(f"cannot write beside {model_dir}: {e.strerror or e}") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _cached_export(model, model_dir, **kw)


def _cached_export(model: nn.Module, model_dir: Path, **kw: Any) -> Path:
    out = model_dir / "onnx"
    try:
        manifest = read_manifest(out)
        newest = max((model_dir / f).stat().st_mtime for f in os.listdir(model_dir)
                     if (model_dir / f).is_file() and not f.startswith("."))
        if (out / MANIFEST).stat().st_mtime >= newest and manifest.get("keyframe_interval") == kw.get("keyframe_interval"):
            return out
    except (ExportError, OSError, json.JSONDecodeError):
        pass
    return export_dir(model, out, force=True, **kw)
