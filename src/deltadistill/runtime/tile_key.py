"""The tile runtime's keyframe on OpenVINO: the teacher's graph with every map the delta frames read
as an output.

A delta frame reads, from the keyframe, every map its handlers keep (each conv's input, each op's
output). In torch the teacher costs IS-Net 4-8x OpenVINO on this host, so at K=8 the keyframe alone
would cost 0.5-1x OpenVINO amortised. Here the same plan (`GraphModule._steps`, the teacher's convs)
is traced once with those maps as outputs, converted and compiled with OpenVINO at f32 (the settings
of `runtime.openvino`), and kept as IR in the export cache.

Each map comes out channels-last (OpenVINO's pre/post-processing writes NHWC) straight into the
runtime's own row tensors, bound as the request's output buffers: no copy, no transpose in torch. The
delta frames then write into those same tensors in place, which is safe: the next keyframe rewrites
every one of them whole.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..extras import require
from ..teachers.graph import GraphModule
from .tile_maps import Slot


class _Maps(nn.Module):
    """The plan run with the teacher's convs, returning the values of ``slots``."""

    def __init__(self, graph: GraphModule, convs: dict[str, nn.Module], slots: Sequence[int]) -> None:
        super().__init__()
        self.plan = [graph]  # a plain list: the graph's own modules (delta layers) are not what runs here
        self.slots = list(slots)
        self.convs = nn.ModuleDict(convs)
        for slot, name in graph._const_loads:
            self.register_buffer(f"const_{slot}", graph._buffers[name])

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        g = self.plan[0]
        values: list[Any] = [None] * g._n_slots
        values[g._input_slots[0]] = x
        for slot, _ in g._const_loads:
            values[slot] = getattr(self, f"const_{slot}")
        for fn, ins, outs, mod in g._steps:
            r = fn(self.convs[mod], values[ins[0]]) if mod is not None else fn(*[values[j] for j in ins])
            if len(outs) == 1:
                values[outs[0]] = r
            else:
                for o, v in zip(outs, r, strict=True):
                    values[o] = v
        return tuple(values[s] for s in self.slots)


class OpenVinoKeyframe:
    """``run(x)`` fills the given slots of an env from one OpenVINO run of the teacher on ``x``
    (an NCHW frame, already in the teacher's value range)."""

    def __init__(self, graph: GraphModule, convs: dict[str, nn.Module], slots: Sequence[int],
                 hwc: Sequence[tuple[int, int, int] | None], example: Tensor, threads: int | None = None,
                 workdir: str | Path | None = None) -> None:
        ov = require("openvino", "the OpenVINO keyframe")
        from .cache import cache_dir, fingerprint

        self.slots = list(slots)
        key = fingerprint(nn.ModuleDict(convs), type(graph).__qualname__, len(graph._steps), tuple(example.shape),
                          tuple(self.slots))
        file = cache_dir(workdir) / f"tilekey-{key}.xml"
        if not file.exists():
            maps = _Maps(graph, convs, self.slots).eval()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.export.export(maps, (example.contiguous(),))  # TorchScript tracing trips on shapes
                model = ov.convert_model(program)
            tmp = file.parent / f".tmp-tilekey-{os.getpid()}"
            tmp.mkdir(parents=True, exist_ok=True)
            ov.save_model(model, str(tmp / "m.xml"), compress_to_fp16=False)
            (tmp / "m.bin").replace(file.with_suffix(".bin"))
            (tmp / "m.xml").replace(file)  # last: the xml's presence says the pair is whole
            tmp.rmdir()
        core = ov.Core()
        model = core.read_model(str(file))
        ppp = ov.preprocess.PrePostProcessor(model)
        for i, hw in enumerate(hwc):
            if hw is not None:
                ppp.output(i).tensor().set_layout(ov.Layout("NHWC"))
                ppp.output(i).model().set_layout(ov.Layout("NCHW"))
        # the settings of `runtime.openvino.compile_file`: f32, latency, one stream, the caller's threads
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self.compiled = core.compile_model(ppp.build(), "CPU", config)
        self.request = self.compiled.create_infer_request()
        #: per output, the rows tensor OpenVINO writes into (None: a non-spatial value, copied out)
        self.rows: list[Tensor | None] = []
        for i, hw in enumerate(hwc):
            if hw is None:
                self.rows.append(None)
                continue
            rows = torch.empty(hw[0] * hw[1], hw[2])
            self.request.set_output_tensor(i, ov.Tensor(rows.numpy().reshape(1, *hw), shared_memory=True))
            self.rows.append(rows)
        # the first inference sets OpenVINO's kernels up (2-3 s for IS-Net): done here, in the keyframe
        # that builds the stream, not in the next one, where it would read as a keyframe's cost
        self.request.infer({0: example.detach().contiguous().numpy()})

    def run(self, x: Tensor, env: list[Slot]) -> None:
        self.request.infer({0: x.detach().contiguous().numpy()})
        for i, s in enumerate(self.slots):
            rows = self.rows[i]
            env[s].value = rows if rows is not None else torch.from_numpy(self.request.get_output_tensor(i).data).clone()
