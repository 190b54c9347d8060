"""OpenVINO on the CPU: the fastest dense engine here, set up so that its figures are comparable.

Always f32 (on a CPU with AMX it would otherwise pick bf16 and move outputs by about 1e-2), the
latency hint, one stream and the thread count torch uses, so torch, onnxruntime and OpenVINO are
timed alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..extras import require


def compile_file(file: str | Path, threads: int | None = None) -> Any:
    """A compiled OpenVINO model of an ONNX file, at f32 with the latency hint."""
    ov = require("openvino", "the OpenVINO backend")
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
    return ov.Core().compile_model(str(file), "CPU", config)


class OpenVinoModel:
    """A compiled graph as a callable on torch tensors: ``model(*inputs) -> tensor or tuple``."""

    def __init__(self, file: str | Path, threads: int | None = None) -> None:
        self.compiled = compile_file(file, threads)
        self.request = self.compiled.create_infer_request()
        self.n_outputs = len(self.compiled.outputs)

    def run(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        feed = {i: np.ascontiguousarray(x.detach().cpu().numpy()) for i, x in enumerate(inputs)}
        self.request.infer(feed)
        return tuple(torch.from_numpy(self.request.get_output_tensor(i).data.copy()) for i in range(self.n_outputs))

    def __call__(self, *inputs: Tensor) -> Any:
        outs = self.run(*inputs)
        return outs if len(outs) > 1 else outs[0]


class OpenVinoSession:
    """An OpenVINO compiled model behind onnxruntime's ``session.run(None, feed)`` call, so that
    `onnx_stream.OnnxStream` runs exported delta graphs on either engine."""

    def __init__(self, file: str | Path, threads: int | None = None) -> None:
        self.compiled = compile_file(file, threads)
        self.request = self.compiled.create_infer_request()
        self.n_outputs = len(self.compiled.outputs)

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        return [self.request.get_output_tensor(i).data.copy() for i in range(self.n_outputs)]
