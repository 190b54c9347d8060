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
from .export import DELTA_GRAPH, FORMAT, KEY_GRAPH, MANIFEST, ExportError, export_onnx, read_manifest


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


#: every name `export_onnx` writes: ``force`` replaces a directory holding these and nothing else
EXPORT_FILES = frozenset((MANIFEST, KEY_GRAPH, DELTA_GRAPH))


def export_dir(model: nn.Module, out: Path, *, force: bool = False, **kw: Any) -> Path:
    """`export_onnx` into ``out`` as one step: built beside it and renamed, so a failure leaves
    ``out`` as it was. An existing non-empty ``out`` is refused unless ``force``, and ``force``
    replaces only an export deltadistill wrote (its manifest, its two graphs, nothing else): never a
    user's folder, a file or a device."""
    if out.is_symlink() or out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
        if not _ours(out):
            raise FileExistsError(f"{out} is not an export deltadistill wrote (a manifest.json and the two graphs, "
                                  "nothing else), so --force will not replace it: choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise PermissionError(f"cannot write {out}: {e.strerror or e}") from e
    try:
        export_onnx(model, tmp, **kw)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)  # an empty directory, or (checked above) an export of ours
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _ours(path: Path) -> bool:
    """Whether ``path`` is a directory (not a link) that deltadistill's export wrote: a manifest in its
    format, and no name `export_onnx` does not write (a damaged graph among them still counts)."""
    if path.is_symlink() or not path.is_dir() or not set(os.listdir(path)) <= EXPORT_FILES:
        return False
    try:
        json_format = json.loads((path / MANIFEST).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return json_format == FORMAT


def cached_export(model: nn.Module, model_dir: Path, **kw: Any) -> Path:
    """The export of checkpoint ``model_dir``, made once into ``model_dir/onnx`` and reused while it
    is newer than the checkpoint and for the same keyframe interval.

    Processes that ask at once (``torchrun ... run --backend onnxruntime``) take turns on a lock of
    the model directory itself (no lock file, so a read-only directory with a fresh export works):
    the first exports, the others find its export, and none replaces a directory another one is
    reading. An export whose graphs are not the ones its manifest records is made again."""
    import fcntl

    try:  # the lock is the model directory itself: no lock file left behind, and a read-only one works
        fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise PermissionError(f"cannot open {model_dir}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _cached_export(model, model_dir, **kw)
    finally:
        os.close(fd)  # releases the lock


def _cached_export(model: nn.Module, model_dir: Path, **kw: Any) -> Path:
    out = model_dir / "onnx"
    try:  # reused while newer than the checkpoint, for the same interval, and its graphs are the ones it wrote
        manifest = read_manifest(out, check=True)
        newest = max((model_dir / f).stat().st_mtime for f in os.listdir(model_dir)
                     if (model_dir / f).is_file() and not f.startswith("."))
        if ((out / MANIFEST).stat().st_mtime >= newest and manifest.get("files")
                and manifest.get("keyframe_interval") == kw.get("keyframe_interval")):
            return out
    except (ExportError, OSError, json.JSONDecodeError):
        pass
    return export_dir(model, out, force=True, **kw)
