"""Run an exported delta model with onnxruntime, holding the stream state between frames in Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..stream import EveryK, KeyframePolicy
from .export import read_manifest


def session(file: str | Path, threads: int | None = None, engine: str = "onnxruntime"):
    """An onnxruntime CPU session with every graph optimisation on; or, with ``engine="openvino"``,
    an OpenVINO compiled model behind the same ``run(None, feed)`` call."""
    if engine == "openvino":
        from .openvino import OpenVinoSession

        return OpenVinoSession(file, threads)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])


class OnnxModel:
    """A plain exported model (`export_plain_onnx`) as a callable on torch tensors."""

    def __init__(self, file: str | Path, threads: int | None = None) -> None:
        self.session = session(file, threads)

    def __call__(self, x: Tensor) -> Any:
        res = self.session.run(None, {"frame": x.detach().cpu().contiguous().numpy()})
        outs = tuple(torch.from_numpy(r) for r in res)
        return outs if len(outs) > 1 else outs[0]


class OnnxStream:
    """The onnxruntime twin of `DeltaStream`: call it with one frame ``(1, 3, H, W)`` at a time
    (``engine="openvino"`` runs the same graphs on OpenVINO).

    Returns the model's outputs as torch tensors (a tuple when the model has several), so a teacher's
    ``postprocess`` reads them as it reads the PyTorch model's.
    """

    def __init__(self, path: str | Path, keyframe: KeyframePolicy | int | None = None,
                 threads: int | None = None, engine: str = "onnxruntime") -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path, check=True)  # a truncated graph is one line, not a parse error
        self.key_session = session(self.path / self.manifest["keyframe_graph"], threads, engine)
        self.delta_session = session(self.path / self.manifest["delta_graph"], threads, engine)
        k = keyframe if keyframe is not None else int(self.manifest["keyframe_interval"])
        self.policy: KeyframePolicy = EveryK(k) if isinstance(k, int) else k
        self.state_names = [s["name"] for s in self.manifest["state"]]
        self.n_outputs = len(self.manifest["outputs"])
        self.shape = tuple(self.manifest["input"]["shape"])
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.state: list[np.ndarray] | None = None
        self.last_key = True
        self.policy.reset()

    def __call__(self, frame: Tensor | np.ndarray) -> Any:
        x = frame.detach().cpu().contiguous().numpy() if isinstance(frame, Tensor) else np.ascontiguousarray(frame)
        if tuple(x.shape) != self.shape:
            raise ValueError(f"exported model takes frames of shape {self.shape}, got {tuple(x.shape)}")
        x = x.astype(np.float32, copy=False)
        decided = self.policy(self.step, torch.from_numpy(x))  # asked at step 0 too (stateful policies)
        key = self.step == 0 or bool(decided if isinstance(decided, bool) else decided.all())
        if key:
            res = self.key_session.run(None, {"frame": x})
        else:
            assert self.state is not None
            feed = {"frame": x, **dict(zip(self.state_names, self.state, strict=True))}
            res = self.delta_session.run(None, feed)
        self.state = res[self.n_outputs:]
        self.last_key = key
        self.step += 1
        outs = tuple(torch.from_numpy(r) for r in res[:self.n_outputs])
        return outs if self.n_outputs > 1 else outs[0]
