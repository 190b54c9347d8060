"""deltadistill: make a per-frame video CNN 2-4x cheaper per frame by Delta Distillation.

    import deltadistill as dd
    model = dd.convert(dd.teachers.load("centernet"), dd.DeltaConfig(reduction=16))
    dd.distill(model, clips, steps=300, budget=0.12)   # clips: deltadistill.video.VideoClips
    dd.deploy(model)                                    # hard choices, lean layers
    stream = dd.DeltaStream(model, keyframe=dd.EveryK(8))
    outputs = [stream(x) for x in frames]               # (B, 3, H, W) tensors
    stream = dd.DeltaStream(model, keyframe=dd.RateControl(3.0))  # sparse students: hold 3x fewer MACs
    dd.export_onnx(model, "out/", input_size=(512, 512)) # keyframe.onnx + delta.onnx, state outside
"""

import os as _os

# Before torch loads its OpenMP runtime: worker threads that sleep when idle instead of spinning for
# 200 ms after every op. Spinning threads starve whatever else wants the cores: OpenVINO's threads in
# the same process (its teacher, called between torch ops, took 11.3 ms instead of 2.45) and any other
# busy process (torch's own selfie teacher took 896 ms instead of 16 beside one). BENCHMARKS.md note 31.
# Set OMP_WAIT_POLICY yourself, or import torch first, to keep torch's default.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .core import (  # noqa: E402
    STUDENTS,
    CheckpointError,
    ConversionReport,
    DeltaConfig,
    DeltaConv2d,
    DeployedDeltaConv2d,
    MacReport,
    Student,
    UnsupportedLayerError,
    convert,
    count_macs,
    deploy,
    load,
    mode,
    register_student,
    save,
    set_mode,
)
from .measure import summary  # noqa: E402
from .stream import DeltaStream, EveryK, KeyframePolicy, RateControl  # noqa: E402
from .train import CalibrationResult, DistillResult, TuneResult, calibrate, distill, sparsify, tune_sparse  # noqa: E402

__all__ = [
    "STUDENTS", "CalibrationResult", "CheckpointError", "ConversionReport", "DeltaConfig", "DeltaConv2d", "DeltaStream",
    "DeployedDeltaConv2d", "DistillResult", "EveryK", "KeyframePolicy", "MacReport", "Student", "UnsupportedLayerError",
    "calibrate", "convert", "count_macs", "deploy", "distill", "load", "mode", "register_student", "save", "set_mode", "sparsify", "summary", "tune_sparse", "TuneResult",
    "export_onnx", "OnnxStream", "run_video", "CropStream", "TileStream", "fastest_dense", "RateControl",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Load the heavier subpackages (teachers, video, metrics) only when first used."""
    import importlib

    if name in ("teachers", "video", "metrics", "models", "runtime", "measure", "apps", "train"):
        return importlib.import_module(f".{name}", __name__)
    lazy = {"export_onnx": ".runtime.export", "OnnxStream": ".runtime.onnx_stream", "run_video": ".runtime.run",
            "CropStream": ".runtime.crop", "TileStream": ".runtime.tiles", "fastest_dense": ".runtime.fastest"}
    if name in lazy:  # onnx and onnxscript load only when an export or onnxruntime run is asked for
        return getattr(importlib.import_module(lazy[name], __name__), name)
    raise AttributeError(f"module 'deltadistill' has no attribute {name!r}")
