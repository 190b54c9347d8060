"""The graph walk both importers share: a flat plan of steps over numbered slots, run by one loop.

A front end (TF.js ``model.json`` in `tfjs_graph`, ONNX in `onnx_graph`) reads its format, orders
the nodes, and emits *steps* ``(fn, input slots, output slots, conv module name)``. Everything after
that is here and format-free:

* convolutions are registered ``nn.Conv2d`` / ``nn.ConvTranspose2d`` modules in ``self.convs``,
  looked up by name on every call, so `convert` can swap them for delta layers;
* constants become buffers once a step reads them at run time;
* ``forward`` is a flat loop that frees each intermediate after its last use, and under a
  `DeltaStream` reuses the part of the graph that frozen (constant-output) convs make static;
* sizes written into a graph at its native input size (a resize to 64x64, a pool over the whole
  32x32 map) are *fitted*: a probe at the native size records each such step's input shape, and the
  step then scales its size with the input, so the module runs at any size its structure allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Step = tuple[Callable[..., Any], tuple[int, ...], tuple[int, ...], "str | None"]
#: ``make(native input shapes or None) -> step fn``: a step whose sizes the graph fixed at its native input size
SizedMaker = Callable[["list[tuple[int, ...]] | None"], Callable[..., Any]]


class UnsupportedOpError(NotImplementedError):
    """The graph contains an op (or an op setting) this importer does not implement."""

    def __init__(self, op: str, node: str, detail: str = "", inputs: Sequence[str] = (), fmt: str = "TF.js") -> None:
        self.op, self.node, self.inputs = op, node, list(inputs)
        where = f" (inputs: {', '.join(self.inputs)})" if self.inputs else ""
        super().__init__(f"unsupported {fmt} op {op!r} in node {node!r}{where}" + (f": {detail}" if detail else ""))


def module_name(node: str, taken: set[str]) -> str:
    """A unique attribute-safe name for the conv made from graph node ``node``."""
    base = "".join(c if c.isalnum() else "_" for c in node).strip("_") or "conv"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def topo_order(targets: Sequence[str], inputs_of: Callable[[str], Sequence[str]]) -> list[str]:
    """Nodes needed for ``targets``, each after its inputs (iterative DFS: graphs are deep)."""
    order: list[str] = []
    state: dict[str, int] = {}
    for t in targets:
        stack = [(t, False)]
        while stack:
            name, done = stack.pop()
            if done:
                if state.get(name) != 2:
                    state[name] = 2
                    order.append(name)
                continue
            if state.get(name):
                continue
            state[name] = 1
            stack.append((name, True))
            for dep in reversed(inputs_of(name)):
                if not state.get(dep):
                    stack.append((dep, False))
    return order


def scaled_size(native_in: Sequence[int], native_out: Sequence[int], actual_in: Sequence[int]) -> tuple[int, ...]:
    """A spatial size the graph fixed as ``native_out`` for input ``native_in``, for input ``actual_in``."""
    return tuple(max(1, round(a * o / i)) for i, o, a in zip(native_in, native_out, actual_in, strict=True))


class GraphModule(nn.Module):
    """Runs a plan of steps built by a front end; holds the convs as real, swappable modules.

    ``forward(*inputs)`` returns a tuple of outputs in ``self.output_names`` order.
    """

    #: DeltaStream binds ``stream_state = {"key": bool | Tensor, "cache": dict}`` here before each frame.
    supports_stream_state = True

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict()
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._taken: set[str] = set()
        self._slots: dict[tuple[str, int], int] = {}
        self._consts: dict[int, np.ndarray] = {}  # slot -> constant value (for plan-time arguments)
        self._const_loads: list[tuple[int, str]] = []
        self._runtime_consts: set[int] = set()
        self._steps: list[Step] = []
        self._sized: dict[int, SizedMaker] = {}  # step index -> how to re-derive it from native shapes
        self._plans: dict[frozenset[str], tuple[tuple[bool, ...], frozenset[int]]] = {}
        self._input_slots: list[int] = []
        self._output_slots: list[int] = []
        self._release: list[tuple[int, ...]] = []
        self._n_slots = 0
        #: slot -> value to use instead of computing it (`holding`); slots whose values to keep (`recording`)
        self._held: dict[int, Tensor] | None = None
        self._record: dict[int, Tensor | None] | None = None
        #: step index -> (op type, node name, attributes), where a front end says what a step is; a runtime
        #: that executes steps its own way (`runtime.tiles`) reads it, the plain loop never does
        self.step_ops: dict[int, tuple[str, str, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ plan building (front ends call these)
    def _new_slot(self) -> int:
        self._n_slots += 1
        return self._n_slots - 1

    def _slot(self, name: str, idx: int = 0) -> int:
        key = (name, idx)
        if key not in self._slots:
            self._slots[key] = self._new_slot()
        return self._slots[key]

    def _add_input(self, name: str) -> int:
        slot = self._slot(name)
        self.input_names.append(name)
        self._input_slots.append(slot)
        return slot

    def _add_conv(self, node: str, module: nn.Module) -> str:
        name = module_name(node, self._taken)
        self.convs[name] = module
        return name

    def _step(self, fn: Callable[..., Any], ins: Sequence[int], outs: Sequence[int], module: str | None = None,
              op: tuple[str, str, dict[str, Any]] | None = None) -> None:
        if op is not None:
            self.step_ops[len(self._steps)] = op
        self._steps.append((fn, tuple(ins), tuple(outs), module))

    def _sized_step(self, make: SizedMaker, ins: Sequence[int], outs: Sequence[int],
                    op: tuple[str, str, dict[str, Any]] | None = None) -> None:
        """A step whose sizes the graph wrote for its native input size; `_fit_sizes` refits it."""
        self._sized[len(self._steps)] = make
        self._step(make(None), ins, outs, op=op)

    def _register_const(self, slot: int) -> int:
        self._runtime_consts.add(slot)
        t = torch.from_numpy(np.array(self._consts[slot]))  # a copy: onnx arrays may be read-only
        if t.dtype == torch.int32:
            t = t.long()
        self.register_buffer(f"const_{slot}", t, persistent=True)
        self._const_loads.append((slot, f"const_{slot}"))
        return slot

    def _finalize(self, native_inputs: Sequence[Tensor] | None = None) -> None:
        """Compute when each slot dies (so forward frees intermediates early), then fit sizes."""
        keep = set(self._output_slots)
        last_use: dict[int, int] = {}
        for i, (_, ins, _, _) in enumerate(self._steps):
            for s in ins:
                last_use[s] = i
        self._release = [() for _ in self._steps]
        for s, i in last_use.items():
            if s not in keep and s not in self._runtime_consts:
                self._release[i] += (s,)
        if self._sized and native_inputs is not None:
            self._fit_sizes(native_inputs)

    @torch.no_grad()
    def _fit_sizes(self, native_inputs: Sequence[Tensor]) -> None:
        """Run once at the native input size, note each sized step's input shapes, and refit those steps."""
        seen: dict[int, list[tuple[int, ...]]] = {}
        steps = list(self._steps)
        for i in self._sized:
            fn, ins, outs, mod = steps[i]

            def record(*xs: Any, _fn: Callable[..., Any] = fn, _i: int = i) -> Any:
                seen[_i] = [tuple(x.shape) if isinstance(x, Tensor) else () for x in xs]
                return _fn(*xs)

            self._steps[i] = (record, ins, outs, mod)
        try:
            self._probe_run(native_inputs)
        finally:
            self._steps = steps
        for i, make in self._sized.items():
            fn, ins, outs, mod = self._steps[i]
            self._steps[i] = (make(seen.get(i)), ins, outs, mod)

    def _probe_run(self, inputs: Sequence[Tensor]) -> None:
        """Run the plan for its shapes only: on fake tensors (no arithmetic, so a probe at a large native
        size such as IS-Net's 1024x1024 costs milliseconds, not seconds), or for real where a step
        needs values (a fake run raises there)."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        try:
            with FakeTensorMode(allow_non_fake_inputs=True):
                self._run(inputs, stream_state=None)
        except Exception:  # noqa: BLE001 - any step that reads values: the real run below says what is wrong
            self._run(inputs, stream_state=None)

    # ------------------------------------------------------------------ held values (region runtimes)
    @torch.no_grad()
    def global_slots(self, *inputs: Tensor) -> list[int]:
        """Slots that reduce a whole feature map to one value per channel (squeeze-excite pools, global
        means), found by one probe run: a step with an ``(N, C, H, W)`` input, ``H * W > 1``, and an
        ``(N, C', 1, 1)`` output. A runtime that computes part of a frame holds these at their keyframe
        values: computed over a crop they would see only the crop."""
        found: list[int] = []
        steps = list(self._steps)
        for i, (fn, ins, outs, mod) in enumerate(steps):
            def probe(*xs: Any, _fn: Callable[..., Any] = fn, _outs: tuple[int, ...] = outs) -> Any:
                r = _fn(*xs)
                spatial = [x for x in xs if isinstance(x, Tensor) and x.dim() == 4 and x.shape[-2] * x.shape[-1] > 1]
                if spatial and len(_outs) == 1 and isinstance(r, Tensor) and r.dim() == 4 and r.shape[-2:] == (1, 1):
                    found.append(_outs[0])
                return r

            if mod is None:
                self._steps[i] = (probe, ins, outs, mod)
        try:
            self._run(inputs, stream_state=None)
        finally:
            self._steps = steps
        return found

    @contextmanager
    def holding(self, values: dict[int, Tensor]) -> Iterator[None]:
        """Within the block, the steps that produce these slots are skipped and the given values used."""
        previous, self._held = self._held, dict(values)
        try:
            yield
        finally:
            self._held = previous

    @contextmanager
    def recording(self, slots: Sequence[int]) -> Iterator[dict[int, Tensor | None]]:
        """Within the block, each call keeps the values of ``slots`` in the yielded dict."""
        previous, self._record = self._record, dict.fromkeys(slots)
        try:
            yield self._record
        finally:
            self._record = previous

    # ------------------------------------------------------------------ execution
    def _static_plan(self, frozen: frozenset[str]) -> tuple[tuple[bool, ...], frozenset[int]]:
        """Steps whose result can't change between keyframes when the convs in ``frozen`` output constants.

        A step is static if it is a frozen conv, or if all its inputs are static (constants or static
        results). Returns the skip flags and the border: static slots that dynamic steps or the graph's
        outputs read, which a keyframe caches and a delta frame reuses instead of recomputing.
        """
        if frozen in self._plans:
            return self._plans[frozen]
        static = set(self._consts) | {slot for slot, _ in self._const_loads}
        produced: set[int] = set()
        skip = []
        for _, ins, outs, mod in self._steps:
            is_static = mod in frozen if mod is not None else bool(ins) and all(i in static for i in ins)
            skip.append(is_static)
            if is_static:
                static.update(outs)
                produced.update(outs)
        border = {i for (_, ins, _, _), sk in zip(self._steps, skip, strict=True) if not sk for i in ins if i in produced}
        border |= {o for o in self._output_slots if o in produced}
        self._plans[frozen] = (tuple(skip), frozenset(border))
        return self._plans[frozen]

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if len(inputs) != len(self._input_slots):
            raise TypeError(f"expected {len(self._input_slots)} inputs ({self.input_names}), got {len(inputs)}")
        return self._run(inputs, getattr(self, "stream_state", None))

    def _run(self, inputs: Sequence[Tensor], stream_state: dict | None) -> tuple[Tensor, ...]:
        env: list[Any] = [None] * self._n_slots
        for slot, x in zip(self._input_slots, inputs, strict=True):
            env[slot] = x
        buffers, convs = self._buffers, self.convs
        for slot, name in self._const_loads:
            env[slot] = buffers[name]
        skip: tuple[bool, ...] = ()
        border: frozenset[int] = frozenset()
        state = stream_state
        if state is not None and not isinstance(state["key"], bool):
            state["cache"].clear()  # per-stream keyframes in one batch: no shared static part to reuse
        elif state is not None:
            frozen = frozenset(n for n, m in convs.items() if getattr(m, "output_is_constant", False))
            if frozen:
                plan_skip, border = self._static_plan(frozen)
                cache = state["cache"]
                if state["key"]:
                    cache.clear()
                elif cache.get("frozen") == frozen:  # a delta frame: reuse what cannot have changed
                    skip = plan_skip
                    for s_, v in cache["border"].items():
                        env[s_] = v
                    border = frozenset()
        keep: dict[int, Tensor] = {}
        held, record = self._held, self._record
        for i, ((fn, ins, outs, mod), release) in enumerate(zip(self._steps, self._release, strict=True)):
            if skip and skip[i]:
                continue
            if held and len(outs) == 1 and outs[0] in held:
                r = held[outs[0]]
            elif mod is None:
                r = fn(*[env[j] for j in ins])
            else:
                r = fn(convs[mod], env[ins[0]])
            if len(outs) == 1:
                env[outs[0]] = r
            else:
                for o, v in zip(outs, r, strict=True):
                    env[o] = v
            if border:
                keep.update((o, env[o]) for o in outs if o in border)
            if record is not None:
                record.update((o, env[o]) for o in outs if o in record)
            for s_ in release:
                env[s_] = None
        if border and state is not None:  # a keyframe with frozen convs: remember the static part's border values
            state["cache"].update(frozen=frozen, border=keep)
        return tuple(env[s_] for s_ in self._output_slots)


def conv_stats(model: nn.Module, *inputs: Tensor) -> dict[str, int]:
    """Count conv modules (regular / depthwise / transposed) and their multiply-accumulates for one call."""
    macs = 0
    stats = {"conv": 0, "depthwise": 0, "transposed": 0}
    hooks = []

    def hook(m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        if isinstance(m, nn.ConvTranspose2d):
            x = args[0]
            macs += x.numel() * m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            assert isinstance(m, nn.Conv2d)
            macs += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    for m in model.modules():
        if isinstance(m, nn.ConvTranspose2d):
            stats["transposed"] += 1
        elif isinstance(m, nn.Conv2d):
            stats["depthwise" if m.groups > 1 and m.groups == m.in_channels else "conv"] += 1
        else:
            continue
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    stats["macs"] = macs
    return stats
