"""The tile runtime: a sparse model's delta frames computed only where its thresholds say, in time.

A sparse model (`SparseStudent` in every conv) saves MACs but, run by `DeltaStream`, not time: each
layer still runs a dense conv on a masked delta. `TileStream` executes the same model's graph plan
(`teachers.graph.GraphModule`) step by step with its own handlers (`tile_conv`, `tile_ops`):

* a **keyframe** runs the teacher whole (torch, channels-last) and keeps every slot's map and every
  conv's input;
* a **delta frame** carries, from step to step, the set of pixels each map rewrote. A conv takes the
  rewritten input pixels whose mean ``|change|`` against its stored input passes its layer's
  threshold (read from the model's sparse students), stores them, and recomputes the outputs they
  reach, from the stored input (im2col over those pixels and one matmul, or the stock dense conv
  when they pass ``dense_level`` of the map). Other ops recompute where their inputs changed.
  A recomputed pixel that moved less than the next conv's threshold does not wake that conv.

Threshold 0 reproduces the teacher on every frame (tested to 1e-4). With thresholds, the error at
each conv's input is at most its threshold (per pixel, mean over channels) and does not accumulate:
values are recomputed from stored maps, never summed deltas. Unlike `SparseStudent` under
`DeltaStream`, the reference is the last value a conv used, not the keyframe's (CBinfer's rule), so
a pixel that moved once and then stood still is paid for once.

Every frame records what it computed: ``last_macs`` (conv MACs actually run), ``last_cost`` (their
share of the teacher's), and per conv ``last_layers``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.students import SparseStudent
from ..stream import EveryK, KeyframePolicy
from ..teachers.graph import GraphModule
from .tile_conv import TileConv, conv_pads
from .tile_maps import Changed, Slot, rows_view, threads, to_rows
from .tile_ops import PIXELWISE, Alias, Dense, Fused, Gathered, Pixelwise, max_pool, resize


class TileError(ValueError):
    """The model cannot run on the tile runtime (one line, for the CLI)."""


@dataclass
class ConvRule:
    """What a conv's threshold test reads off the model: the teacher conv, the threshold, the
    channel weights of a weighted score (or None)."""

    conv: nn.Conv2d
    threshold: float
    weights: Tensor | None


def conv_rules(graph: GraphModule) -> dict[str, ConvRule]:
    """Per conv module of the graph: its teacher conv and its sparse student's threshold.

    A plain conv (not converted) gets threshold 0 (exact); a `zero` student, infinity (its output
    never moves). Other students have no pixel rule, so they run exactly (threshold 0)."""
    rules = {}
    for name, layer in graph.convs.items():
        base = getattr(layer, "base", layer)
        student = getattr(layer, "student", None)
        if student is None and hasattr(layer, "students"):
            student = layer.students[layer.chosen()]
        threshold, weights = 0.0, None
        if isinstance(student, SparseStudent):
            if student.keep is not None:
                raise TileError(f"layer {name}: a top-k share (rate control's topk mode) has no fixed threshold; "
                                "use --rate-mode threshold with the tile runtime")
            threshold = float(student.threshold) * float(student.threshold_scale)
            weights = student.weights if student.weighted else None
        elif getattr(student, "name", None) == "zero":
            threshold = float("inf")
        rules[name] = ConvRule(base, threshold, weights)
    return rules


def find_graph(model: nn.Module) -> GraphModule | None:
    if isinstance(model, GraphModule):
        return model
    graph = getattr(model, "graph", None)
    return graph if isinstance(graph, GraphModule) else None


class TileStream:
    """A sparse model (or a teacher: thresholds 0) run on the tile runtime, one frame ``(1, C, H, W)``
    at a time. Same call shape as `DeltaStream` and `CropStream`: ``stream(frame) -> outputs``,
    ``reset()``, a keyframe policy or an int K.

    ``threshold_scale``: a multiplier on every layer's threshold. ``dense_level``: a conv whose
    outputs to recompute pass this share of its map runs the stock dense conv instead. ``tile``:
    round each conv's recomputed outputs up to whole ``tile`` x ``tile`` tiles (1: single pixels).
    ``reference``: ``"last"`` (CBinfer: a conv's threshold test is against the input it last used) or
    ``"keyframe"`` (the sparse student's rule, against the keyframe's input: the same outputs as the
    model under `DeltaStream`). ``delta_threads``: torch threads during a delta frame (the keyframe keeps
    the caller's; None, the default: the caller's too). On a quiet host 2 threads made delta frames 1.4x
    faster; on a shared host a 2-thread region waits for a descheduled thread at every barrier, and 1
    was 1.3-10x faster (BENCHMARKS.md, the tile runtime's levers). ``matmul_threads``: threads for a conv's large gathered
    matmuls and dense fallbacks (`tile_conv.PARALLEL_MACS`; None: ``delta_threads``). ``box``: a conv
    whose reached outputs fill at least ``1 / box`` of their bounding box runs the stock conv over the
    box (0: never). ``deep_scale``: ``(stride, scale)``, a further multiplier on the thresholds of convs
    whose output map is at that stride of the frame or coarser: accuracy bought where MACs are cheap in
    time (the deep maps are small; `benchmarks/tiles_layers.png`). ``keyframe_engine``: ``"torch"``, or
    ``"openvino"`` (`tile_key`: the teacher with every map the delta frames read as an output; the first
    keyframe still runs in torch, to build the handlers).
    """

    def __init__(self, model: nn.Module, keyframe: KeyframePolicy | int = 8, *, threshold_scale: float = 1.0,
                 dense_level: float = 0.5, tile: int = 1, warn: bool = True, reference: str = "last",
                 delta_threads: int | None = None, matmul_threads: int | None = None, box: float = 0.0,
                 deep_scale: tuple[int, float] | None = None, keyframe_engine: str = "torch") -> None:
        if reference not in ("last", "keyframe"):
            raise TileError(f"reference must be 'last' or 'keyframe', got {reference!r}")
        if keyframe_engine not in ("torch", "openvino"):
            raise TileError(f"keyframe_engine must be 'torch' or 'openvino', got {keyframe_engine!r}")
        self.reference, self.delta_threads, self.keyframe_engine = reference, delta_threads, keyframe_engine
        self.matmul_threads, self.box, self.deep_scale = matmul_threads, box, deep_scale
        self._ov: Any = None
        graph = find_graph(model)
        if graph is None:
            raise TileError(f"{type(model).__name__} has no graph plan (teachers.graph.GraphModule): "
                            "the tile runtime runs imported and zoo teachers")
        self.model, self.graph = model, graph
        lo, hi = getattr(model, "value_range", (0.0, 1.0))
        self.value_range = (float(lo), float(hi))
        self.rules = conv_rules(graph)
        self.threshold_scale, self.dense_level, self.tile, self.warn = threshold_scale, dense_level, tile, warn
        self.policy: KeyframePolicy = EveryK(keyframe) if isinstance(keyframe, int) else keyframe
        self._built_for: tuple[int, ...] | None = None  # the frame shape the handlers were built for
        self.handlers: list[Any] = []
        #: steps that run dense, and why: (step, op type, node, reason)
        self.fallbacks: list[tuple[int, str, str, str]] = []
        self.teacher_macs = 0
        self.reset()

    @property
    def built(self) -> bool:
        """Whether a keyframe has built the handlers (the first one also compiles: set-up, not cost)."""
        return self._built_for is not None

    def set_threshold_scale(self, scale: float) -> None:
        """Every conv's threshold at ``scale`` times the model's, from the next delta frame on: the knob
        a time target turns (`tile_rate`)."""
        self.threshold_scale = float(scale)
        for h in self.handlers:
            if isinstance(h, TileConv):
                h.threshold = h.unit_threshold * self.threshold_scale

    def reset(self) -> None:
        self.step = 0
        #: kept when an OpenVINO keyframe will refill it: its constants and shapes come from the build
        self.env: list[Slot] = self.env if self._ov is not None else []
        self.last_key = True
        self.last_macs = 0
        self.last_cost = 1.0
        self.last_layers: dict[str, tuple[int, int, bool]] = {}
        self.last_ms: dict[str, float] = {}
        #: per handler, the ms it took on the last delta frame (where time goes)
        self.last_step_ms: list[float] = []
        self.policy.reset()

    # ------------------------------------------------------------------ keyframe
    def _prepare(self, x: Tensor) -> Tensor:
        lo, hi = self.value_range
        x = x * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else x
        return x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def _keyframe(self, x: Tensor) -> None:
        g = self.graph
        if self._ov is not None and self._built_for == tuple(x.shape):
            for s in self.env:
                s.changed, s.dirty = None, False
            self.env[g._input_slots[0]].value = to_rows(x)
            self._ov.run(x, self.env)
            with threads(self.delta_threads):  # the handlers' copies: small regions, as in a delta frame
                for h in self.handlers:
                    h.key(self.env)
            return
        values: list[Any] = [None] * g._n_slots
        for slot, v in zip(g._input_slots, [x], strict=True):
            values[slot] = v
        for slot, name in g._const_loads:
            values[slot] = g._buffers[name]
        for fn, ins, outs, mod in g._steps:
            r = fn(self.rules[mod].conv, values[ins[0]]) if mod is not None else fn(*[values[j] for j in ins])
            if len(outs) == 1:
                values[outs[0]] = r
            else:
                for o, v in zip(outs, r, strict=True):
                    values[o] = v
        seen: set[int] = set()
        env = []
        for v in values:  # no two maps may share storage: each is written in place
            slot = Slot.of(v)
            if slot.spatial:
                ptr = slot.value.untyped_storage().data_ptr()
                if ptr in seen:
                    slot.value = slot.value.clone()
                seen.add(slot.value.untyped_storage().data_ptr())
            env.append(slot)
        self.env = env
        shape = tuple(x.shape)
        if self._built_for != shape:
            self._build(values)
            self._built_for = shape
            if self.keyframe_engine == "openvino":
                from .tile_key import OpenVinoKeyframe

                convs = {name: rule.conv for name, rule in self.rules.items()}
                slots = self.keyframe_slots(values)
                self._ov = OpenVinoKeyframe(g, convs, slots, [(*self.env[s].hw, self.env[s].value.shape[1]) if self.env[s].spatial else None for s in slots], x)
        for h in self.handlers:
            h.key(self.env)

    def keyframe_slots(self, values: list[Any]) -> list[int]:
        """The slots a keyframe must fill for the delta frames: every float tensor a step makes, except
        an `Alias`'s (the input's map), what a fusion left unkept, and what nothing reads."""
        g = self.graph
        read = {s for _, ins, _, _ in g._steps for s in ins} | set(g._output_slots)
        skip = {h.dst for h in self.handlers if isinstance(h, Alias)} | self.unkept
        return [s for _, _, outs, _ in g._steps for s in outs
                if s in read and s not in skip and isinstance(values[s], Tensor) and values[s].is_floating_point()]

    def _build(self, values: list[Any]) -> None:
        """One handler per step, chosen by op type and the shapes the keyframe saw."""
        g = self.graph
        self.handlers, self.fallbacks, self.teacher_macs = [], [], 0
        for i, (fn, ins, outs, mod) in enumerate(g._steps):
            op, node, attrs = g.step_ops.get(i, ("?", f"step {i}", {}))
            handler, why = self._handler(i, fn, ins, outs, mod, op, attrs, values)
            if handler is None and mod is None and not any(self.env[j].spatial for j in (*ins, *outs)):
                handler = Dense(fn, ins, outs)  # gates, shapes, scalars: nothing spatial to tile, cheap whole
            if handler is None:
                conv = self.rules[mod].conv if mod is not None else None
                macs = _dense_macs(conv, values[ins[0]], values[outs[0]]) if conv is not None else 0
                handler = Dense(fn, ins, outs, conv, macs)
                self.fallbacks.append((i, op, node, why))
            if isinstance(handler, TileConv):
                self.teacher_macs += handler.macs_per_pixel // handler.conv.groups * handler.out_hw[0] * handler.out_hw[1]
            elif isinstance(handler, Dense):
                self.teacher_macs += handler.macs
            self.handlers.append(handler)
        if self.warn and self.fallbacks:  # one line per kind of op, naming it, however many steps it has
            kinds: dict[tuple[str, str], list[str]] = {}
            for _, op, node, why in self.fallbacks:
                kinds.setdefault((op, why), []).append(node)
            for (op, why), nodes in kinds.items():
                more = f" and {len(nodes) - 1} more" if len(nodes) > 1 else ""
                what = "" if op == "?" else f"{op} "
                warnings.warn(f"tile runtime: {what}{nodes[0]!r}{more} run{'' if more else 's'} dense: {why}",
                              stacklevel=3)
        self._fuse()

    def _fuse(self) -> None:
        """A ReLU step right after a tiled conv, and its only reader, moves into the conv's write; a
        channel concat whose only reader is a tiled conv moves into the conv's reads. ``unkept``: the
        slots that then no handler keeps (the conv's pre-activation, the concat's map)."""
        g = self.graph
        readers: dict[int, int] = {s: 1 for s in g._output_slots}
        for _, ins, _, _ in g._steps:
            for s in ins:
                readers[s] = readers.get(s, 0) + 1
        made_by = {outs[0]: i for i, (_, _, outs, _) in enumerate(g._steps)}
        self.unkept: set[int] = set()
        for i, h in enumerate(self.handlers):
            if not isinstance(h, TileConv) or h.grouped:
                continue
            j = made_by.get(h.src)
            if j is not None and g.step_ops.get(j, ("?",))[0] == "Concat" and readers.get(h.src) == 1 \
                    and isinstance(self.handlers[j], Pixelwise) and all(self.env[p].spatial for p in g._steps[j][1]):
                h.parts = g._steps[j][1]
                self.handlers[j] = Fused(h.name)
                self.unkept.add(h.src)
            if i + 1 == len(self.handlers):
                continue
            _, ins, outs, _ = g._steps[i + 1]
            if g.step_ops.get(i + 1, ("?",))[0] == "Relu" and ins == (h.dst,) and readers.get(h.dst) == 1 \
                    and isinstance(self.handlers[i + 1], Pixelwise):
                self.unkept.add(h.dst)
                h.relu, h.dst = True, outs[0]
                self.handlers[i + 1] = Fused(h.name)

    def _handler(self, i: int, fn: Callable[..., Any], ins: tuple[int, ...], outs: tuple[int, ...], mod: str | None,
                 op: str, attrs: dict, values: list[Any]) -> tuple[Any, str]:
        env = self.env
        out = env[outs[0]]
        if mod is not None:
            rule = self.rules[mod]
            src = env[ins[0]]
            if type(rule.conv) is not nn.Conv2d:
                return None, f"a {type(rule.conv).__name__}, not a Conv2d"
            if op != "Conv":
                return None, f"a {op} step (only ONNX Conv steps say their padding)"
            if not (src.spatial and out.spatial):
                return None, "input or output is not a batch-1 map"
            pads = conv_pads(rule.conv, attrs, src.hw)
            if pads is None:
                return None, "padding it cannot read"
            unit = rule.threshold  # the threshold at threshold_scale 1
            frame = env[self.graph._input_slots[0]].hw
            if self.deep_scale is not None and frame is not None and round(frame[0] / out.hw[0]) >= self.deep_scale[0]:
                unit *= self.deep_scale[1]
            h = TileConv(mod, rule.conv, ins, outs, pads, src.hw, out.hw, unit * self.threshold_scale,
                         rule.weights, self.dense_level, self.tile, self.reference)
            h.mm_threads, h.box, h.unit_threshold = self.matmul_threads, self.box, unit
            if rule.conv.groups != 1:
                return h, ""  # grouped: the rule holds, the kernel is the dense one (TileConv.delta)
            h.key(env)
            if not torch.allclose(h.dense(), out.value, atol=1e-4, rtol=1e-3):
                return None, "its padding, as read, does not reproduce the step"
            return h, ""
        if len(outs) != 1:
            return None, "several outputs"
        if op == "Cast" and len(ins) == 1 and values[outs[0]] is values[ins[0]] and env[ins[0]].spatial:
            return Alias(ins[0], outs[0]), ""
        if not out.spatial:
            return None, "output is not a batch-1 map"
        if op in PIXELWISE or (op == "Concat" and attrs.get("axis") in (1, -3)):
            spatial = [env[j] for j in ins if env[j].spatial]
            if any(s.hw != out.hw for s in spatial) or any(
                    isinstance(values[j], Tensor) and values[j].dim() == 4 and not env[j].spatial
                    and values[j].shape[-2:] != (1, 1) for j in ins):
                return None, "inputs of other sizes broadcast"
            return Pixelwise(fn, ins, outs, out.hw), ""
        if op in ("MaxPool", "Resize", "Upsample"):
            src = env[ins[0]]
            if not src.spatial:
                return None, "input is not a batch-1 map"
            h = max_pool(ins[0], outs[0], attrs, src.hw, out.hw) if op == "MaxPool" else \
                resize(fn, ins[0], outs[0], src.hw, out.hw)
            if h is None:
                return None, "not a window or separable linear map"
            return h, ""
        if op == "?":  # the TF.js front end does not yet say what its steps are
            return None, "the graph's front end does not say what this step is (TF.js graphs are not tiled yet)"
        return None, f"no tile handler for {op}"

    # ------------------------------------------------------------------ delta frame
    @torch.no_grad()
    def _delta(self, x: Tensor) -> None:
        with threads(self.delta_threads):
            self._delta_steps(x)

    def _delta_steps(self, x: Tensor) -> None:
        g = self.graph
        env = self.env
        for s in env:
            s.changed, s.dirty = None, False
        inp = env[g._input_slots[0]]
        rows = to_rows(x)
        moved = (rows != inp.value).any(1)
        inp.value = rows
        inp.changed = Changed(inp.hw, moved) if bool(moved.any()) else None  # type: ignore[arg-type]
        macs = 0
        layers: dict[str, tuple[int, int, bool]] = {}
        t_conv = t_other = 0.0
        step_ms = self.last_step_ms = [0.0] * len(self.handlers)
        for i, h in enumerate(self.handlers):
            t0 = time.perf_counter()
            macs += h.delta(env)
            dt = time.perf_counter() - t0
            step_ms[i] = dt * 1e3
            if isinstance(h, TileConv):
                layers[h.name] = h.last
                t_conv += dt
            else:
                t_other += dt
        self.last_macs, self.last_layers = macs, layers
        self.last_cost = macs / max(1, self.teacher_macs)
        self.last_ms = {"conv": t_conv * 1e3, "other": t_other * 1e3}

    def outputs(self) -> Any:
        outs = []
        for s in self.graph._output_slots:
            slot = self.env[s]
            outs.append(rows_view(slot.value, slot.hw).clone() if slot.spatial else slot.value)
        return tuple(outs) if len(outs) > 1 else outs[0]

    def __call__(self, frame: Tensor) -> Any:
        if frame.dim() != 4 or frame.shape[0] != 1:
            raise TileError(f"a tile stream takes one frame (1, C, H, W), got {tuple(frame.shape)}")
        if self._built_for is not None and tuple(frame.shape) != self._built_for:
            raise TileError(f"frame shape changed mid-stream: {tuple(frame.shape)}, was {self._built_for}; "
                            "call reset() and start a new stream")
        decided = self.policy(self.step, frame)
        key = self.step == 0 or bool(decided if isinstance(decided, bool) else decided.all())
        x = self._prepare(frame)
        if key:
            t0 = time.perf_counter()
            self._keyframe(x)
            self.last_macs, self.last_cost, self.last_layers = self.teacher_macs, 1.0, {}
            self.last_ms = {"key": (time.perf_counter() - t0) * 1e3}
        else:
            self._delta(x)
        self.last_key = key
        self.step += 1
        return self.outputs()


def _dense_macs(conv: nn.Module, x: Any, out: Any) -> int:
    """A conv's MACs on one whole frame, counted as `graph.conv_stats` counts them."""
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):
        return int(x.numel() * w.shape[1] * w.shape[2] * w.shape[3])
    return int(out.numel() * w.shape[1] * w.shape[2] * w.shape[3])


__all__ = ["TileError", "TileStream", "conv_rules", "Gathered"]
