"""Fetch IS-Net from the npm package ``@imgly/background-removal-data`` and rebuild its ONNX file.

Why this package: it carries the IS-Net (DIS) background-removal network as ONNX, on a registry
with an ordinary client (``npm pack``), as the zoo's weights are. The file is split: ``dist/
resources.json`` maps ``/models/medium`` (fp16, 88,188,479 bytes) to an ordered list of 4 MiB chunks,
each a file in ``dist/`` named by its sha256. Rebuilding joins them in order and checks every hash
and the total size; the result goes into the cache through a staging directory renamed into place,
so a failed or interrupted fetch never leaves a half-written model. Never committed here.

Licences: the package is AGPL-3.0 (its ``LICENSE.md``, kept beside the model); its
``ThirdPartyLicenses.json`` lists the IS-Net weights (github.com/xuebinqin/DIS) as MIT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from .fetch import TeacherFetchError, cache_root, model_dir

PACKAGE = "@imgly/background-removal-data"
VERSION = "1.4.5"
#: what ``npm pack`` writes, and what a user may drop into the cache root by hand
TARBALL = f"imgly-background-removal-data-{VERSION}.tgz"
RESOURCE = "/models/medium"
MODEL_FILE = "isnet.onnx"
LICENCE_FILES = ("LICENSE.md", "ThirdPartyLicenses.json")
NAME = "isnet"


def isnet_file(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the rebuilt ONNX file is (or will be) kept."""
    return model_dir(NAME, cache_dir) / MODEL_FILE


def _hint(cache_dir: str | os.PathLike[str] | None) -> str:
    return (f"where npm works, run `npm pack {PACKAGE}@{VERSION}` and put {TARBALL} in "
            f"{cache_root(cache_dir)}/ (or set DELTADISTILL_CACHE to a directory holding isnet/{MODEL_FILE})")


def fetch_isnet(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached ``isnet.onnx``; on first use fetched with ``npm pack`` (or taken from a tarball
    dropped into the cache root) and rebuilt. Every failure is one line (`TeacherFetchError`)."""
    path = isnet_file(cache_dir)
    if path.is_file():
        return path
    dropped = cache_root(cache_dir) / TARBALL
    if dropped.is_file():
        return install_isnet(dropped, cache_dir)
    npm = shutil.which("npm")
    if npm is None:  # before anything is created: a failed fetch leaves nothing behind
        raise TeacherFetchError("the 'isnet' teacher is not in the cache and 'npm' is not on PATH to fetch it: "
                                + _hint(cache_dir))
    with tempfile.TemporaryDirectory(prefix="deltadistill-npm-") as work:
        try:
            proc = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=work, capture_output=True,
                                  text=True, timeout=1200, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise TeacherFetchError(f"npm pack {PACKAGE}@{VERSION} failed: {e}; " + _hint(cache_dir)) from None
        tgzs = sorted(Path(work).glob("*.tgz"))
        if proc.returncode != 0 or not tgzs:
            last = (proc.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise TeacherFetchError(f"npm pack {PACKAGE}@{VERSION} failed (exit {proc.returncode}: {last}); "
                                    + _hint(cache_dir))
        return install_isnet(tgzs[0], cache_dir)


def install_isnet(tgz: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Rebuild ``isnet.onnx`` from the package tarball ``tgz`` into the cache, atomically; its path."""
    tgz = Path(tgz)
    dest = model_dir(NAME, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=dest.parent))
    try:
        files = _read_members(tgz, lambda n: n in ("dist/resources.json", *LICENCE_FILES))
        if "dist/resources.json" not in files:
            raise TeacherFetchError(f"{tgz.name} has no dist/resources.json: not the {PACKAGE} package")
        try:
            entry = json.loads(files["dist/resources.json"])[RESOURCE]
        except (ValueError, KeyError, TypeError):
            raise TeacherFetchError(f"{tgz.name}: dist/resources.json does not list {RESOURCE}") from None
        wanted = {str(c["hash"]) for c in entry["chunks"]}
        chunks = _read_members(tgz, lambda n: n.startswith("dist/") and n[5:] in wanted)
        with open(staging / MODEL_FILE, "wb") as out:
            assemble(entry, lambda h: chunks.get(f"dist/{h}"), out.write, where=f"{RESOURCE} in {tgz.name}")
        for name in LICENCE_FILES:
            if name in files:
                (staging / name).write_bytes(files[name])
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the cache is not secret
        if not (dest / MODEL_FILE).is_file():  # else another process finished first: keep its copy
            if dest.exists():
                shutil.rmtree(dest)  # an incomplete leftover
            os.replace(staging, dest)
    except TeacherFetchError:
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TeacherFetchError(f"could not rebuild isnet from {tgz.name}: {e}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest / MODEL_FILE


def assemble(entry: dict, read_chunk: Callable[[str], bytes | None], write: Callable[[bytes], object],
             where: str = RESOURCE) -> int:
    """Join the chunks ``entry`` (one ``resources.json`` record) lists, in order, through ``write``; each
    must be present, of the length its offsets give, and hash to its name, and all must add up to
    ``entry["size"]``. Returns the bytes written; the first bad chunk raises a one-line error."""
    total, n = 0, len(entry["chunks"])
    for i, chunk in enumerate(entry["chunks"], 1):
        h = str(chunk["hash"])
        data = read_chunk(h)
        if data is None:
            raise TeacherFetchError(f"chunk {i} of {n} of {where} ({h[:12]}...) is missing from the package")
        if hashlib.sha256(data).hexdigest() != h:
            raise TeacherFetchError(f"chunk {i} of {n} of {where} does not match its sha256 ({h[:12]}...): "
                                    "the download is damaged; delete it and fetch again")
        lo, hi = (int(v) for v in chunk.get("offsets", (total, total + len(data))))
        if lo != total or hi - lo != len(data):
            raise TeacherFetchError(f"chunk {i} of {n} of {where} has {len(data)} bytes at offset {total}, "
                                    f"resources.json says {hi - lo} at {lo}")
        write(data)
        total += len(data)
    if "size" in entry and total != int(entry["size"]):
        raise TeacherFetchError(f"{where}: the chunks add up to {total} bytes, resources.json says {entry['size']}")
    return total


def _read_members(tgz: Path, keep: Callable[[str], bool]) -> dict[str, bytes]:
    """The files under ``package/`` of ``tgz`` whose relative names ``keep`` accepts, read whole."""
    out: dict[str, bytes] = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            name = member.name.removeprefix("package/")
            if member.isfile() and keep(name):
                src = tar.extractfile(member)
                assert src is not None
                with src:
                    out[name] = src.read()
    return out
