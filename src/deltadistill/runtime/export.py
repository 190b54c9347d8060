"""Export a deployed delta model as two ONNX graphs, with its stream state as named tensors.

A keyframe graph takes a frame and returns the model's outputs plus every layer's state; a delta
graph takes a frame plus that state and returns the outputs plus the state to feed next. Whoever
runs them (`runtime.onnx_stream.OnnxStream`, or any ONNX runtime in any language) holds the state
between frames and picks the graph by the keyframe policy. A manifest (``manifest.json``) names
the state tensors and says how frames must look.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.macs import count_macs, has_measured_macs
from ..core.modes import delta_layers
from ..stream import DeltaStream

MANIFEST = "manifest.json"
FORMAT = "deltadistill-onnx/1"
KEY_GRAPH, DELTA_GRAPH = "keyframe.onnx", "delta.onnx"

#: (which cache list, index in it, key path inside the cache dict)
StatePath = tuple[str, int, tuple[Any, ...]]


class ExportError(ValueError):
    """The model cannot be exported (one line, for the CLI)."""


def _tensors(d: dict, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Tensor]]:
    for k, v in d.items():
        if isinstance(v, Tensor):
            yield (*path, k), v
        elif isinstance(v, dict):
            yield from _tensors(v, (*path, k))


def _skeleton(d: dict) -> dict:
    """``d`` without its tensors: the non-tensor entries a delta frame needs (shapes, plans)."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _skeleton(v)
        elif not isinstance(v, Tensor):
            out[k] = copy.copy(v)
    return out


def _put(d: dict, path: tuple[Any, ...], value: Tensor) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _get(d: dict, path: tuple[Any, ...]) -> Tensor:
    for k in path:
        d = d[k]
    return d  # type: ignore[return-value]


class StreamStep(nn.Module):
    """One frame of a `DeltaStream` as a pure function: ``(frame, *state) -> (*outputs, *state)``.

    ``key``: a keyframe (takes no state) or a delta frame. ``layout``: the state's paths and the
    non-tensor parts of a delta frame's caches, from one eager keyframe (`state_layout`).
    """

    def __init__(self, model: nn.Module, key: bool, layout: StateLayout) -> None:
        super().__init__()
        self.model = model
        self.key = key
        self.layout = layout
        self.__dict__["stream"] = DeltaStream(model, 1)  # binds state; not a submodule

    def forward(self, frame: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        lay = self.layout
        if self.key:
            caches: list[dict] = [{} for _ in lay.layer_skeletons]
            aware: list[dict] = [{} for _ in lay.aware_skeletons]
        else:
            caches = [_skeleton(s) for s in lay.layer_skeletons]
            aware = [_skeleton(s) for s in lay.aware_skeletons]
            for (kind, i, path), value in zip(lay.paths, state, strict=True):
                _put((caches if kind == "layer" else aware)[i], path, value)
        out = self.stream.step_with(frame, self.key, caches, aware)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return (*outs, *[_get((caches if k == "layer" else aware)[i], p) for k, i, p in lay.paths])


@dataclass
class StateLayout:
    paths: list[StatePath]
    names: list[str]
    shapes: list[list[int]]
    layer_skeletons: list[dict]
    aware_skeletons: list[dict]
    n_outputs: int


def state_layout(model: nn.Module, frame: Tensor) -> StateLayout:
    """Run one keyframe and one delta frame eagerly; read off the state tensors they keep."""
    stream = DeltaStream(model, 2)
    with torch.no_grad():
        out = stream(frame)
        stream(frame)  # a delta frame: every cache now holds what the next frame reads
    layer_names = [n for n, _ in delta_layers(model)]
    paths: list[StatePath] = []
    names: list[str] = []
    shapes: list[list[int]] = []
    for kind, caches, label in (("layer", stream.caches, lambda i: layer_names[i]),
                                ("aware", stream.aware_caches, lambda i: f"graph{i}")):
        for i, cache in enumerate(caches):
            for path, t in _tensors(cache):
                paths.append((kind, i, path))
                names.append("state." + label(i) + "." + ".".join(str(p) for p in path))
                shapes.append(list(t.shape))
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    return StateLayout(paths, names, shapes, [_skeleton(c) for c in stream.caches],
                       [_skeleton(c) for c in stream.aware_caches], n_out)


def export_onnx(model: nn.Module, out_dir: str | Path, *, input_size: tuple[int, int] | None = None,
                keyframe_interval: int = 4, meta: dict[str, Any] | None = None) -> Path:
    """Write ``keyframe.onnx``, ``delta.onnx`` and ``manifest.json`` for a deployed delta model.

    ``input_size`` defaults to the teacher's; ``meta`` (teacher name, task, value range...) goes
    into the manifest as is. Returns ``out_dir``.
    """
    if not list(delta_layers(model)):
        raise ExportError("model has no delta layers: convert (and deploy) it first")
    hw = tuple(input_size or getattr(model, "input_size", ()) or ())
    if len(hw) != 2:
        raise ExportError("input_size is needed: the model does not say what frame size it takes")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    frame = torch.rand(1, 3, *hw) * float(getattr(model, "input_range", 1.0))
    layout = state_layout(model, frame)
    out_names = [f"output{i}" for i in range(layout.n_outputs)]
    with torch.no_grad():
        key_state = StreamStep(model, True, layout)(frame)[layout.n_outputs:]
    graphs = ((KEY_GRAPH, StreamStep(model, True, layout), (frame,), ["frame"], out_names + layout.names),
              (DELTA_GRAPH, StreamStep(model, False, layout), (frame, *key_state), ["frame", *layout.names],
               out_names + [n + ".next" for n in layout.names]))
    for file, step, args, ins, outs in graphs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(step, args, dynamo=True, input_names=ins, output_names=outs,
                                        optimize=True, verbose=False)
        if program is None:
            raise ExportError("torch.onnx.export returned nothing")
        program.save(str(out_dir / file))
    report = count_macs(model, (3, *hw), keyframe_interval)
    macs = {"teacher": report.teacher, "keyframe": report.keyframe, "delta": report.delta,
            "amortised": report.amortised, "data_dependent": has_measured_macs(model)}
    manifest = {"format": FORMAT, "keyframe_graph": KEY_GRAPH, "delta_graph": DELTA_GRAPH,
                "input": {"name": "frame", "shape": [1, 3, *hw]}, "outputs": out_names,
                "keyframe_interval": keyframe_interval, "macs": macs,
                "state": [{"name": n, "shape": s} for n, s in zip(layout.names, layout.shapes, strict=True)],
                "files": {g: file_record(out_dir / g) for g in (KEY_GRAPH, DELTA_GRAPH)},
                **(meta or {})}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out_dir


class _Wrapped(nn.Module):
    """Holds the model one level down: a top-level submodule named ``graph`` (as the zoo teachers
    have) collides with the FX GraphModule's own ``graph`` attribute during export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        return self.model(x)


def export_plain_onnx(model: nn.Module, file: str | Path, input_size: tuple[int, int]) -> Path:
    """A plain model (a teacher) as one ONNX graph ``frame -> outputs``: what a delta model is timed against."""
    frame = torch.rand(1, 3, *input_size) * float(getattr(model, "input_range", 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Wrapped(model.eval()), (frame,), dynamo=True, input_names=["frame"], optimize=True,
                                    verbose=False)
    if program is None:
        raise ExportError("torch.onnx.export returned nothing")
    program.save(str(file))
    return Path(file)


def file_record(file: Path) -> dict[str, Any]:
    """What the manifest records of a graph file, so that a truncated or altered one is found."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": file.stat().st_size, "sha256": h.hexdigest()}


def check_files(path: str | Path, manifest: dict[str, Any]) -> None:
    """Refuse, in one line, a graph whose size or sha256 is not what the manifest records (a copy cut
    short, a file edited since). A manifest from before it recorded them (no ``files``) passes."""
    for g, want in (manifest.get("files") or {}).items():
        file = Path(path) / g
        size = file.stat().st_size if file.is_file() else None
        if size != want.get("bytes") or file_record(file)["sha256"] != want.get("sha256"):
            what = "missing" if size is None else f"{size} bytes, the manifest says {want.get('bytes')}" if (
                size != want.get("bytes")) else "its sha256 is not the manifest's"
            raise ExportError(f"{file} is damaged ({what}): export the model again")


def read_manifest(path: str | Path, check: bool = False) -> dict[str, Any]:
    """The manifest of export ``path``; with ``check``, its graphs checked against it (`check_files`)."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise ExportError(f"{path} is not an exported delta model (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{file} is corrupt: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{file} is not in format {FORMAT}")
    for g in (manifest["keyframe_graph"], manifest["delta_graph"]):
        if not (path / g).is_file():
            raise ExportError(f"{path} lacks {g}")
    if check:
        check_files(path, manifest)
    return manifest
