"""Atomic file output: a file appears complete or not at all, with the permissions a plain write gives."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: reading it means setting it, which must not race with other threads' writes.
_UMASK = _read_umask()


def temp_beside(path: Path, suffix: str = "") -> Path:
    """An empty temporary file in ``path``'s directory (created if needed), to be published over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``. mkstemp makes files private (0600); a result should be as
    readable as any file the user writes, so it gets the umask's default mode first."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(tmp_path)`` then rename, so a crash never leaves a half-written file."""
    tmp = temp_beside(path)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_file(path: str | Path, what: str) -> Path:
    """Refuse, before any work is spent, an output file that cannot be written. The error names the
    path as the user gave it (never a temporary file beside it)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} {path} is a directory")
    try:
        probe_writable(p.parent)
    except OSError as e:
        raise PermissionError(f"cannot write {what} {path}: {e.strerror or e}") from e
    return p


def probe_writable(directory: Path) -> None:
    """Raise OSError unless files can be made in ``directory``, or, where it does not exist yet, in
    the nearest existing ancestor that would hold it. Creates nothing: a run that fails later on bad
    input leaves no empty directory behind."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{probe} is not a directory")
    with tempfile.NamedTemporaryFile(dir=probe, prefix=".probe-"):
        pass
