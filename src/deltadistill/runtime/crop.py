"""Crop-dense delta frames: rerun the teacher only on the box around what changed, paste its inside.

The simplest runtime whose delta frames cost time in proportion to what changed, with the stock
dense kernels of the fastest engine. A keyframe runs the whole teacher, keeps its outputs, its
input as the reference, and the values of its global gates (squeeze-excite pools). A delta frame
finds the tiles whose pixels moved past a threshold since the reference (`regions.active_tiles`),
runs the teacher on the few boxes around them plus a margin (`regions.plan_crops`) with the gates
held at their keyframe values, pastes the box's inside into the kept outputs, and moves the
reference there. A frame where nothing moved costs the change test alone.

What it approximates, and where: the inside of the box sees only ``margin`` pixels of context
beyond it (the teacher's receptive field is larger), the gates are the keyframe's, and tiles that
moved less than the threshold keep their last output. Every keyframe resets all three. With reach
and margin at least the receptive field's radius, threshold 0 and no gates, it is exact (tested).

The graph it crops is the plan `teachers.graph.GraphModule` builds (zoo and imported teachers
alike); a plain ``nn.Module`` runs only when it has no global gates to hold (``hold_gates=False``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..stream import EveryK, KeyframePolicy
from ..teachers.graph import GraphModule
from .regions import Crop, active_tiles, check_geometry, plan_crops

BACKENDS = ("torch", "openvino")


class CropError(ValueError):
    """The model cannot run crop by crop (one line, for the CLI)."""


def find_graph(model: nn.Module) -> GraphModule | None:
    """The graph plan inside a teacher (itself, or its ``graph``), if it has one."""
    if isinstance(model, GraphModule):
        return model
    graph = getattr(model, "graph", None)
    return graph if isinstance(graph, GraphModule) else None


def _tuple(out: Any) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class HeldGates(nn.Module):
    """The teacher with its global gates exposed: ``mode="key"`` returns them after the outputs,
    ``mode="crop"`` takes them as inputs after the frame. This is what each engine runs (and exports)."""

    def __init__(self, teacher: nn.Module, graph: GraphModule | None, slots: Sequence[int], mode: str) -> None:
        super().__init__()
        self.model, self.slots, self.mode = teacher, list(slots), mode
        self._graph = [graph]  # a list: not a registered submodule (it is inside ``model`` already)

    def forward(self, x: Tensor, *gates: Tensor) -> tuple[Tensor, ...]:
        graph = self._graph[0]
        if graph is None or not self.slots:
            return _tuple(self.model(x))
        if self.mode == "key":
            with graph.recording(self.slots) as seen:
                outs = _tuple(self.model(x))
            return (*outs, *[seen[s] for s in self.slots])  # type: ignore[misc]
        with graph.holding(dict(zip(self.slots, gates, strict=True))):
            return _tuple(self.model(x))


class TorchEngine:
    """Keyframes and crops in eager torch (channels_last)."""

    name = "torch"

    def __init__(self, teacher: nn.Module, graph: GraphModule | None, slots: Sequence[int]) -> None:
        self.n_gates = len(slots)
        self.key_model = HeldGates(teacher, graph, slots, "key")
        self.crop_model = HeldGates(teacher, graph, slots, "crop")

    def prepare(self, sizes: Sequence[tuple[int, int]], progress: bool = True) -> None:
        """Nothing to build: eager torch runs any size."""

    @torch.no_grad()
    def key(self, x: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        res = self.key_model(x)
        n = len(res) - self.n_gates
        return res[:n], res[n:]

    @torch.no_grad()
    def crop(self, x: Tensor, gates: Sequence[Tensor]) -> tuple[Tensor, ...]:
        return self.crop_model(x.contiguous(memory_format=torch.channels_last), *gates)


class OpenVinoEngine:
    """Keyframes and crops on OpenVINO: one exported graph for the keyframe, one per crop size.

    Each crop size (a bucket) is exported once into ``cache_dir`` (exports take seconds) and compiled
    once per engine; `prepare` builds them all before a stream starts, so no frame waits for one.
    """

    name = "openvino"

    def __init__(self, teacher: nn.Module, graph: GraphModule | None, slots: Sequence[int],
                 size: tuple[int, int], cache_dir: str | Path | None = None, threads: int | None = None) -> None:
        from .cache import cache_dir as exports
        from .cache import fingerprint
        from .openvino import OpenVinoModel

        self._open = lambda f: OpenVinoModel(f, threads)
        self.teacher, self.graph, self.slots, self.size = teacher, graph, list(slots), size
        self.dir = exports(cache_dir) / f"crop-{fingerprint(teacher, list(slots))}"
        self.n_gates = len(slots)
        self._crops: dict[tuple[int, int], Any] = {}
        self._key = self._open(self._export("key", size))

    def _export(self, mode: str, size: tuple[int, int]) -> Path:
        from .cache import cached
        from .export import ExportError

        def make(tmp: Path) -> None:
            frame = torch.rand(1, 3, *size) * float(getattr(self.teacher, "input_range", 1.0))
            args: tuple[Tensor, ...] = (frame,)
            names = ["frame"]
            if mode == "crop" and self.slots:
                with torch.no_grad():
                    gates = HeldGates(self.teacher, self.graph, self.slots, "key")(torch.rand(1, 3, *self.size))
                args += tuple(g.clone() for g in gates[len(gates) - self.n_gates:])
                names += [f"gate{i}" for i in range(self.n_gates)]
            module = HeldGates(self.teacher.eval(), self.graph, self.slots, mode)
            program = torch.onnx.export(module, args, dynamo=True, input_names=names, optimize=True, verbose=False)
            if program is None:
                raise ExportError("torch.onnx.export returned nothing")
            program.save(str(tmp))

        return cached(self.dir / f"{mode}_{size[0]}x{size[1]}.onnx", make)

    def prepare(self, sizes: Sequence[tuple[int, int]], progress: bool = True) -> None:
        todo = [s for s in sizes if s not in self._crops]
        for s in tqdm(todo, desc="crop graphs (exported once, cached)", disable=not progress or not todo):
            self._crops[s] = self._open(self._export("crop", s))

    def key(self, x: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        res = self._key.run(x)
        n = len(res) - self.n_gates
        return res[:n], res[n:]

    def crop(self, x: Tensor, gates: Sequence[Tensor]) -> tuple[Tensor, ...]:
        size = (x.shape[-2], x.shape[-1])
        if size not in self._crops:
            self.prepare([size], progress=False)
        return self._crops[size].run(x.contiguous(), *gates)


class CropStream:
    """A teacher run crop by crop: call it with one frame ``(1, C, H, W)`` at a time.

    ``threshold``: how far a pixel must move from the reference, as a share of the input's range,
    for its tile to be recomputed (0.05 is 13 grey levels). ``tile``: the change test's tile, in
    pixels. ``reach``: also recompute the outputs this far around the moved tiles (a change moves
    outputs up to the receptive field's radius away). ``margin``: context around that, in input
    pixels (default: the total stride).
    ``bucket``: crop sides are rounded up to multiples of it (default: a quarter of each side), so at
    most 16 crop shapes run. ``align``: the teacher's total stride. ``hold_gates``: hold global pools
    at their keyframe values (a model without a graph plan must say False, and must have none).

    ``min_tiles``: groups of fewer moved tiles are left for later; ``max_crops``: at most this many
    crops a frame (`regions.plan_crops`). ``rekey``: a delta frame whose crops would cover this share of
    the frame runs a keyframe instead, which costs about the same and is exact.

    Returns what the teacher returns. Per frame it records ``last_key``, ``last_crops`` (empty when
    nothing moved) and ``last_cost`` (the share of the frame computed: 1 on keyframes).
    """

    def __init__(self, teacher: nn.Module, keyframe: KeyframePolicy | int = 8, *, threshold: float = 0.05,
                 tile: int = 16, margin: int | None = None, reach: int = 0, bucket: int | tuple[int, int] | None = None,
                 align: int | None = None, min_tiles: int = 1, max_crops: int = 4, rekey: float = 0.9,
                 backend: str = "torch",
                 hold_gates: bool = True, threads: int | None = None, cache_dir: str | Path | None = None) -> None:
        size = getattr(teacher, "input_size", None)
        if size is None:
            raise CropError(f"{type(teacher).__name__} has no input_size: a crop runtime needs a fixed frame size")
        self.size = (int(size[0]), int(size[1]))
        if backend not in BACKENDS:
            raise CropError(f"crop backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if not 0 <= threshold < 1:  # NaN too: a pixel moves at most the whole range, a share of 1
            raise CropError(f"the crop threshold is a share of the input's range, at least 0 and below 1, not "
                            f"{threshold:g}: no pixel can move that far, so nothing would ever be recomputed"
                            if threshold >= 1 else f"the crop threshold must be at least 0 and below 1, not {threshold}")
        if tile < 1:
            raise CropError(f"tile must be >= 1, got {tile}")
        if not any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in teacher.modules()):
            raise CropError(f"{getattr(teacher, 'name', type(teacher).__name__)} has no convolutions: a crop runtime "
                            "saves a teacher's conv MACs, and it has none to save")
        graph = find_graph(teacher)
        slots: list[int] = []
        if hold_gates:
            if graph is None:
                raise CropError(f"{type(teacher).__name__} has no graph plan, so its global pools cannot be held; "
                                "give hold_gates=False if it has none")
            with torch.no_grad():
                slots = graph.global_slots(torch.zeros(1, getattr(graph, "channels", 3), *self.size))
        self.gate_slots = slots
        if align is None:  # the teacher's total stride: an imported graph knows its own; the zoo's is 32
            align = int(getattr(teacher, "size_multiple", 32))
        self.align = align
        self.margin = align if margin is None else int(margin)
        if bucket is None:
            bucket = tuple(max(align, s // 4 // align * align) for s in self.size)  # type: ignore[assignment]
        self.bucket = (bucket, bucket) if isinstance(bucket, int) else (int(bucket[0]), int(bucket[1]))
        self.tile = tile
        self.threshold_share = threshold
        self.threshold = threshold * float(getattr(teacher, "input_range", 1.0))
        self.policy: KeyframePolicy = EveryK(keyframe) if isinstance(keyframe, int) else keyframe
        self.engine: TorchEngine | OpenVinoEngine = (
            TorchEngine(teacher, graph, slots) if backend == "torch"
            else OpenVinoEngine(teacher, graph, slots, self.size, cache_dir, threads))
        try:
            check_geometry(self.size, self.margin, align, self.bucket)
        except ValueError as e:
            raise CropError(str(e)) from None
        self.min_tiles, self.max_crops, self.reach, self.rekey = min_tiles, max_crops, int(reach), float(rekey)
        self.reset()

    @property
    def crop_sizes(self) -> list[tuple[int, int]]:
        """Every crop shape a delta frame can run (the full frame excluded: a whole crop is a keyframe's work)."""
        hs = sorted({min(self.size[0], k * self.bucket[0]) for k in range(1, -(-self.size[0] // self.bucket[0]) + 1)})
        ws = sorted({min(self.size[1], k * self.bucket[1]) for k in range(1, -(-self.size[1] // self.bucket[1]) + 1)})
        return [(h, w) for h in hs for w in ws]

    def prepare(self, progress: bool = True) -> CropStream:
        """Build every crop shape's graph now (OpenVINO exports and compiles), so that no frame waits."""
        self.engine.prepare(self.crop_sizes, progress)
        return self

    def reset(self) -> None:
        self.step = 0
        self.last_key = True
        self.last_crops: list[Crop] = []
        self.last_cost = 1.0
        self.last_active = 1.0
        #: where the last delta frame's time went: the change test, the crops' runs, and the pastes
        self.last_ms: dict[str, float] = {}
        self._outputs: tuple[Tensor, ...] = ()
        self._gates: tuple[Tensor, ...] = ()
        self._ref: Tensor | None = None
        self._scales: list[tuple[float, float]] = []
        self.policy.reset()

    def _keyframe(self, x: Tensor) -> None:
        outs, gates = self.engine.key(x)
        scales = []
        for i, o in enumerate(outs):
            if o.dim() != 4:
                raise CropError(f"output {i} has shape {tuple(o.shape)}: a crop runtime pastes spatial maps only")
            sy, sx = o.shape[-2] / self.size[0], o.shape[-1] / self.size[1]
            if (self.align * sy) % 1 or (self.align * sx) % 1:
                raise CropError(f"output {i} ({o.shape[-2]}x{o.shape[-1]}) is not on the stride-{self.align} grid "
                                f"of the {self.size[0]}x{self.size[1]} input")
            scales.append((sy, sx))
        self._outputs, self._gates, self._scales = tuple(outs), tuple(gates), scales
        self._ref = x.detach().clone()

    def _delta(self, x: Tensor) -> bool:
        """Recompute what moved; True when that was most of the frame and a keyframe ran instead."""
        assert self._ref is not None
        t0 = time.perf_counter()
        active = active_tiles(x, self._ref, self.tile, self.threshold)
        plans = plan_crops(active, self.tile, self.size, margin=self.margin, align=self.align, bucket=self.bucket,
                           reach=self.reach, min_tiles=self.min_tiles, max_crops=self.max_crops)
        self.last_crops = plans
        self.last_active = float(active.float().mean())
        self.last_cost = sum(p.crop.area for p in plans) / (self.size[0] * self.size[1])
        t1 = time.perf_counter()
        run = 0.0
        if not plans:
            self.last_ms = {"detect": (t1 - t0) * 1e3, "run": 0.0, "paste": 0.0}
            return False
        if self.last_cost >= self.rekey:  # as dear as a keyframe: run one, exact and with fresh gates
            self._keyframe(x)
            self.last_ms = {"detect": (t1 - t0) * 1e3, "run": (time.perf_counter() - t1) * 1e3, "paste": 0.0}
            self.last_cost = 1.0
            return True
        # copies and pastes in numpy, on one thread (see `regions.active_tiles`); new arrays, so that
        # outputs handed out before stay as they were
        pasted = [kept.detach().numpy().copy(order="K") for kept in self._outputs]
        ref, xs = self._ref.numpy(), x.detach().numpy()
        for plan in plans:
            cy, cx = plan.crop.slices()
            r0 = time.perf_counter()
            outs = self.engine.crop(x[:, :, cy, cx], self._gates)
            run += time.perf_counter() - r0
            inside = plan.inside
            local = inside.shifted(-plan.crop.y0, -plan.crop.x0)
            for out, new, (sy, sx) in zip(pasted, outs, self._scales, strict=True):
                (dy, dx), (ly, lx) = inside.scaled(sy, sx).slices(), local.scaled(sy, sx).slices()
                out[..., dy, dx] = new.detach().numpy()[..., ly, lx]
            iy, ix = inside.slices()
            ref[..., iy, ix] = xs[..., iy, ix]
        self._outputs = tuple(torch.from_numpy(p) for p in pasted)
        self.last_ms = {"detect": (t1 - t0) * 1e3, "run": run * 1e3,
                        "paste": (time.perf_counter() - t1 - run) * 1e3}
        return False

    def __call__(self, frame: Tensor) -> Any:
        if frame.dim() != 4 or frame.shape[0] != 1 or tuple(frame.shape[-2:]) != self.size:
            raise CropError(f"a crop stream takes frames of shape (1, C, {self.size[0]}, {self.size[1]}), "
                            f"got {tuple(frame.shape)}")
        decided = self.policy(self.step, frame)
        key = self.step == 0 or bool(decided if isinstance(decided, bool) else decided.all())
        if key:
            self._keyframe(frame)
            self.last_crops, self.last_cost, self.last_active, self.last_ms = [], 1.0, 1.0, {}
        else:
            key = self._delta(frame)
        self.last_key = key
        self.step += 1
        return self._outputs if len(self._outputs) > 1 else self._outputs[0]
