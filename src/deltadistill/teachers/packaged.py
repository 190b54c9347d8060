"""Teachers that ship as ONNX files inside installed packages (never downloaded at run time).

``ppocr-det``: PP-OCRv4 text detection (a DBNet with a thin backbone and an FPN; Apache-2.0), from
the ``rapidocr-onnxruntime`` wheel. Its input is RGB normalised as ``(x - 0.5) / 0.5``; its output
is a one-channel text probability map at the input's size, which PP-OCR binarises at 0.3.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedOnnx:
    package: str
    file: str
    value_range: tuple[float, float]
    task: str
    map_threshold: float
    install: str


PACKAGED: dict[str, PackagedOnnx] = {
    "ppocr-det": PackagedOnnx("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", (-1.0, 1.0), "map", 0.3,
                              "pip install --no-deps rapidocr-onnxruntime==1.4.4"),
}


def packaged_path(name: str) -> Path:
    """Where the installed package keeps teacher ``name``'s ONNX file; a clear error if it is not installed."""
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"teacher {name!r} ships in the {entry.package} package, which is not installed: "
                                f"{entry.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise FileNotFoundError(f"{entry.package} is installed but has no {entry.file}: {entry.install}")
    return path


def load_packaged(name: str, input_size: tuple[int, int] | None = None, task: str | None = None):
    """Teacher ``name`` from its package, with the value range and threshold its makers use."""
    from .imported import from_onnx

    entry = PACKAGED[name]
    teacher = from_onnx(packaged_path(name), input_size=input_size, value_range=entry.value_range,
                        task=task or entry.task, map_threshold=entry.map_threshold)
    teacher.name = teacher.source = name
    return teacher
