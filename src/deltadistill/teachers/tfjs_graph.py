"""Convert a TF.js *graph model* (``model.json`` + shards) into an executable ``nn.Module``.

The graph is NHWC in TF; we execute it in NCHW. Every 4-D activation that comes out of the input
placeholder, a convolution, a pool or a resize is tracked as ``nchw`` at plan-build time; axis
arguments (Mean, ConcatV2) and broadcast constants are remapped once, and a tensor is permuted back
to NHWC only when it reaches a shape-manipulating op (Reshape, StridedSlice, ...), so results of
those ops match TF exactly.

Convolutions become *registered* ``nn.Conv2d`` / ``nn.ConvTranspose2d`` submodules called as
``module(x)`` (never ``F.conv2d``) so that they can later be swapped for wrapper layers. Fused
bias / folded batch-norm goes into the module's bias; the fused activation runs after the module.

The whole execution plan (slot indices, closures, constant buffers) is built in ``__init__``;
``forward`` is a flat loop over precomputed steps.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tfjs_ops import ACTIVATIONS, BINARY, UNARY, avg_pool, max_pool, pad_same, resize_bilinear, same_pads
from .tfjs_weights import load_weights


class UnsupportedOpError(NotImplementedError):
    """The graph contains an op this converter does not implement."""

    def __init__(self, op: str, node: str, detail: str = "") -> None:
        self.op, self.node = op, node
        super().__init__(f"unsupported TF.js op {op!r} in node {node!r}" + (f": {detail}" if detail else ""))


# NHWC axis -> NCHW axis
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}

_TF_DTYPES = {"DT_FLOAT": torch.float32, "DT_INT32": torch.int32, "DT_BOOL": torch.bool, "DT_INT64": torch.int64}

_CONV_OPS = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str]
    attr: dict[str, Any] = field(default_factory=dict)

    def s(self, key: str, default: str = "") -> str:
        v = self.attr.get(key, {}).get("s")
        return base64.b64decode(v).decode() if v is not None else default

    def ints(self, key: str) -> list[int]:
        return [int(i) for i in self.attr.get(key, {}).get("list", {}).get("i", [])]

    def i(self, key: str, default: int = 0) -> int:
        return int(self.attr.get(key, {}).get("i", default))

    def b(self, key: str, default: bool = False) -> bool:
        return bool(self.attr.get(key, {}).get("b", default))

    def f(self, key: str, default: float = 0.0) -> float:
        return float(self.attr.get(key, {}).get("f", default))

    def strs(self, key: str) -> list[str]:
        return [base64.b64decode(v).decode() for v in self.attr.get(key, {}).get("list", {}).get("s", [])]


def _split_ref(ref: str) -> tuple[str, int]:
    """``'node:1'`` -> ('node', 1); ``'node'`` -> ('node', 0)."""
    name, _, idx = ref.partition(":")
    return name, int(idx) if idx else 0


def _module_name(node: str, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() else "_" for c in node).strip("_") or "conv"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _call_module(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)


def _conv_runner(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], pad_mode: str,
                 explicit_pad: tuple[int, int, int, int] | None, act: Callable[[Tensor], Tensor] | None
                 ) -> Callable[[nn.Module, Tensor], Tensor]:
    """Step ``fn(module, x)`` for a conv: TF SAME / explicit padding if needed, module call, activation.

    The module is passed in at call time (looked up by name in ``self.convs``), so swapping or
    deep-copying the conv modules changes what runs. ``pad_mode``: "module" (the conv pads
    symmetrically itself), "tf_same" (input-size dependent, possibly asymmetric TF SAME padding via
    F.pad each call) or "explicit".
    """
    pad: Callable[[Tensor], Tensor] | None = None
    if pad_mode == "explicit":
        assert explicit_pad is not None
        pad = lambda x: F.pad(x, explicit_pad)  # noqa: E731
    elif pad_mode == "tf_same":
        pad = lambda x: pad_same(x, kernel, stride, dilation)  # noqa: E731
    if pad is None and act is None:
        return _call_module
    if pad is None:
        return lambda m, x: act(m(x))  # type: ignore[misc]
    if act is None:
        return lambda m, x: m(pad(x))
    return lambda m, x: act(m(pad(x)))


class TFJSGraphModule(nn.Module):
    """Executes a TF.js graph model in NCHW with real ``nn.Conv2d`` modules.

    Args:
        model_json: path of the graph model's ``model.json`` (shards are read from its directory).
        outputs: node names to return (``name`` or ``name:k``); default: the signature's outputs.
            Only the sub-graph needed for these outputs is built, so ops outside it need no support.

    ``forward(x)`` takes an NCHW tensor for a 4-D NHWC placeholder and returns a tuple of outputs in
    ``self.output_names`` order; 4-D outputs are NCHW, others keep TF's layout.
    """

    def __init__(self, model_json: str | Path, outputs: Sequence[str] | None = None) -> None:
        super().__init__()
        model_json = Path(model_json)
        spec = json.loads(model_json.read_text())
        self._weights = load_weights(model_json, spec.get("weightsManifest", []))
        nodes = [
            _Node(n["name"], n["op"], [i for i in n.get("input", []) if not i.startswith("^")], n.get("attr") or {})
            for n in spec["modelTopology"]["node"]
        ]
        self._nodes = {n.name: n for n in nodes}
        sig = spec.get("signature") or {}
        if outputs is None:
            outputs = [o.get("name", k) for k, o in (sig.get("outputs") or {}).items()]
        self.output_names = [o[:-2] if o.endswith(":0") else o for o in outputs]
        self.convs = nn.ModuleDict()
        self._taken: set[str] = set()
        self._slots: dict[tuple[str, int], int] = {}
        self._layout: dict[int, str] = {}  # slot -> "nchw" | "plain"
        self._consts: dict[int, np.ndarray] = {}  # slot -> constant value (for plan-time args)
        self._const_loads: list[tuple[int, str]] = []
        self._plain_of: dict[int, int] = {}
        self._nchw_of: dict[int, int] = {}
        # (fn, input slots, output slots, conv module name or None); a named module is passed as fn's 1st arg
        self._steps: list[tuple[Callable[..., Any], tuple[int, ...], tuple[int, ...], str | None]] = []
        self._plans: dict[frozenset[str], tuple[tuple[bool, ...], frozenset[int]]] = {}
        self.input_names: list[str] = []
        self._input_slots: list[int] = []
        self._runtime_consts: set[int] = set()
        self._n_slots = 0
        order = self._topo_order([_split_ref(o)[0] for o in self.output_names])
        for name in order:
            self._build(self._nodes[name])
        self._output_slots = [self._slot(*_split_ref(o)) for o in self.output_names]
        self._finalize()
        del self._weights, self._nodes

    # ------------------------------------------------------------------ plan building
    def _topo_order(self, targets: list[str]) -> list[str]:
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
                if name not in self._nodes:
                    raise KeyError(f"graph references unknown node {name!r}")
                state[name] = 1
                stack.append((name, True))
                for ref in reversed(self._nodes[name].inputs):
                    dep = _split_ref(ref)[0]
                    if not state.get(dep):
                        stack.append((dep, False))
        return order

    def _slot(self, name: str, idx: int = 0) -> int:
        key = (name, idx)
        if key not in self._slots:
            self._slots[key] = self._new_slot()
        return self._slots[key]

    def _new_slot(self) -> int:
        self._n_slots += 1
        return self._n_slots - 1

    def _const(self, ref: str, node: _Node) -> np.ndarray:
        slot = self._slot(*_split_ref(ref))
        if slot not in self._consts:
            raise UnsupportedOpError(node.op, node.name, f"input {ref!r} must be a constant")
        return self._consts[slot]

    def _runtime(self, ref: str) -> int:
        """Slot of an input used at run time; constants become buffers on first such use."""
        slot = self._slot(*_split_ref(ref))
        if slot in self._consts and slot not in self._runtime_consts:
            self._register_const(slot)
        return slot

    def _as_plain(self, slot: int) -> int:
        if self._layout.get(slot) != "nchw":
            return slot
        if slot not in self._plain_of:
            new = self._new_slot()
            self._plain_of[slot] = new
            self._layout[new] = "plain"
            self._steps.append((lambda x: x.permute(0, 2, 3, 1), (slot,), (new,), None))
        return self._plain_of[slot]

    def _as_nchw(self, slot: int, node: _Node) -> int:
        if self._layout.get(slot) == "nchw":
            return slot
        if slot in self._consts:
            raise UnsupportedOpError(node.op, node.name, "constant image input")
        if slot not in self._nchw_of:
            new = self._new_slot()
            self._nchw_of[slot] = new
            self._layout[new] = "nchw"
            self._steps.append((lambda x: x.permute(0, 3, 1, 2), (slot,), (new,), None))
        return self._nchw_of[slot]

    def _emit(self, fn: Callable[..., Any], ins: Sequence[int], node: _Node, layout: str, n_out: int = 1,
              module: str | None = None) -> None:
        outs = tuple(self._slot(node.name, k) for k in range(n_out))
        for o in outs:
            self._layout[o] = layout
        self._steps.append((fn, tuple(ins), outs, module))

    def _build(self, node: _Node) -> None:
        op = node.op
        if op == "Const":
            if node.name not in self._weights:
                raise UnsupportedOpError(op, node.name, "constant value missing from weightsManifest")
            slot = self._slot(node.name)
            self._consts[slot] = self._weights[node.name]
            self._layout[slot] = "plain"
        elif op == "Placeholder":
            slot = self._slot(node.name)
            dims = node.attr.get("shape", {}).get("shape", {}).get("dim", [])
            self._layout[slot] = "nchw" if len(dims) == 4 else "plain"
            self.input_names.append(node.name)
            self._input_slots.append(slot)
        elif op in _CONV_OPS:
            self._build_conv(node)
        elif op == "Conv2DBackpropInput":
            self._build_deconv(node)
        elif op in UNARY:
            src = self._runtime(node.inputs[0])
            self._emit(UNARY[op], [src], node, self._layout[src])
        elif op == "LeakyRelu":
            alpha = node.f("alpha", 0.2)
            src = self._runtime(node.inputs[0])
            self._emit(lambda x: F.leaky_relu(x, alpha), [src], node, self._layout[src])
        elif op == "Cast":
            dst = _TF_DTYPES.get(node.attr.get("DstT", {}).get("type", ""))
            if dst is None:
                raise UnsupportedOpError(op, node.name, "destination dtype")
            dst = torch.long if dst == torch.int32 else dst
            src = self._runtime(node.inputs[0])
            self._emit(lambda x: x.to(dst), [src], node, self._layout[src])
        elif op in BINARY or op == "AddN":
            self._build_elementwise(node)
        elif op in ("Mean", "Sum", "Max", "Min"):
            self._build_reduce(node)
        elif op == "ConcatV2":
            self._build_concat(node)
        elif op in ("ResizeBilinear", "ResizeNearestNeighbor"):
            self._build_resize(node)
        elif op in ("MaxPool", "AvgPool"):
            self._build_pool(node)
        else:
            self._build_shape_op(node)

    def _conv_geometry(self, node: _Node) -> tuple[tuple[int, int], tuple[int, int], str, tuple[int, int, int, int] | None]:
        if node.s("data_format", "NHWC") != "NHWC":
            raise UnsupportedOpError(node.op, node.name, "only NHWC data_format")
        strides = node.ints("strides") or [1, 1, 1, 1]
        dil = node.ints("dilations") or [1, 1, 1, 1]
        padding = node.s("padding", "VALID")
        explicit = None
        if padding == "EXPLICIT":
            p = node.ints("explicit_paddings")
            explicit = (p[4], p[5], p[2], p[3])
        return (strides[1], strides[2]), (dil[1], dil[2]), padding, explicit

    def _build_conv(self, node: _Node) -> None:
        op = node.op
        stride, dil, padding, explicit = self._conv_geometry(node)
        w = self._const(node.inputs[1], node).astype(np.float32)
        kh, kw = w.shape[0], w.shape[1]
        depthwise = "Depthwise" in op
        if depthwise:  # [kh, kw, in, mult] -> [in*mult, 1, kh, kw]
            cin, mult = w.shape[2], w.shape[3]
            weight = torch.from_numpy(np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)))
            cout, groups = cin * mult, cin
        else:  # [kh, kw, in, out] -> [out, in, kh, kw]
            cin, cout, groups = w.shape[2], w.shape[3], 1
            weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        scale, bias, act = self._fused_epilogue(node, cout)
        if scale is not None:
            weight = weight * scale.view(-1, 1, 1, 1)
        pad: tuple[int, int] = (0, 0)
        mode = "explicit" if explicit is not None else "module"
        if padding == "SAME" and all(s == 1 for s in stride) and kh % 2 == 1 and kw % 2 == 1:
            pad = (dil[0] * (kh - 1) // 2, dil[1] * (kw - 1) // 2)  # stride 1, odd kernel: symmetric
        elif padding == "SAME" and (kh, kw) != (1, 1):
            mode = "tf_same"  # depends on the input size; may be asymmetric
        elif padding == "SAME":
            mode = "tf_same" if stride != (1, 1) else "module"
        conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=pad, dilation=dil, groups=groups,
                         bias=bias is not None)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)  # type: ignore[union-attr]
        mod_name = _module_name(node.name, self._taken)
        self.convs[mod_name] = conv
        src = self._as_nchw(self._runtime(node.inputs[0]), node)
        self._emit(_conv_runner((kh, kw), stride, dil, mode, explicit, act), [src], node, "nchw", module=mod_name)

    def _fused_epilogue(self, node: _Node, cout: int
                        ) -> tuple[Tensor | None, Tensor | None, Callable[[Tensor], Tensor] | None]:
        """(weight scale, bias, activation) of a fused conv: BiasAdd or a FusedBatchNorm to fold."""
        if not node.op.startswith(("_Fused", "Fused")):
            return None, None, None
        fused = node.strs("fused_ops")
        extra = [self._const(r, node).astype(np.float32) for r in node.inputs[2:]]
        bias: Tensor | None = None
        scale: Tensor | None = None
        rest = fused
        if fused and fused[0] == "BiasAdd":
            bias = torch.from_numpy(np.broadcast_to(extra[0], (cout,)).copy())
            rest = fused[1:]
        elif fused and fused[0] == "FusedBatchNorm":
            gamma, beta, mean, var = extra[:4]
            k = (gamma / np.sqrt(var + node.f("epsilon", 1e-3))).astype(np.float32)
            scale = torch.from_numpy(k)
            bias = torch.from_numpy((beta - mean * k).astype(np.float32))
            rest = fused[1:]
        if len(rest) > 1 or (rest and rest[0] not in ACTIVATIONS):
            if rest == ["LeakyRelu"]:
                alpha = node.f("leakyrelu_alpha", 0.2)
                return scale, bias, lambda x: F.leaky_relu(x, alpha)
            raise UnsupportedOpError(node.op, node.name, f"fused_ops={fused}")
        return scale, bias, (ACTIVATIONS[rest[0]] if rest else None)

    def _build_deconv(self, node: _Node) -> None:
        stride, dil, padding, explicit = self._conv_geometry(node)
        if dil != (1, 1) or explicit is not None:
            raise UnsupportedOpError(node.op, node.name, "dilation/explicit padding")
        w = self._const(node.inputs[1], node).astype(np.float32)  # [kh, kw, out, in]
        kh, kw, cout, cin = w.shape
        deconv = nn.ConvTranspose2d(cin, cout, (kh, kw), stride=stride, bias=False)
        with torch.no_grad():
            deconv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))))
        mod_name = _module_name(node.name, self._taken)
        self.convs[mod_name] = deconv
        same = padding == "SAME"

        def run(module: nn.Module, x: Tensor) -> Tensor:
            y = module(x)
            h, w_ = x.shape[-2], x.shape[-1]
            out_h = h * stride[0] if same else (h - 1) * stride[0] + kh
            out_w = w_ * stride[1] if same else (w_ - 1) * stride[1] + kw
            if (out_h, out_w) == tuple(y.shape[-2:]):
                return y
            top = same_pads(out_h, kh, stride[0])[0]
            left = same_pads(out_w, kw, stride[1])[0]
            return y[..., top : top + out_h, left : left + out_w]

        src = self._as_nchw(self._runtime(node.inputs[2]), node)
        self._emit(run, [src], node, "nchw", module=mod_name)

    def _build_elementwise(self, node: _Node) -> None:
        slots = [self._slot(*_split_ref(r)) for r in node.inputs]
        runtime_layouts = {self._layout[s] for s in slots if s not in self._consts}
        to_nchw = runtime_layouts == {"nchw"}
        ins: list[int] = []
        for ref, s in zip(node.inputs, slots, strict=True):
            if s in self._consts and to_nchw:
                ins.append(self._nchw_const(s, node))
            elif s in self._consts:
                ins.append(self._runtime(ref))
            else:
                ins.append(s if to_nchw else self._as_plain(s))
        layout = "nchw" if to_nchw else "plain"
        if node.op == "AddN":
            def add_n(*xs: Tensor) -> Tensor:
                out = xs[0]
                for x in xs[1:]:
                    out = out + x
                return out
            self._emit(add_n, ins, node, layout)
        else:
            self._emit(BINARY[node.op], ins, node, layout)

    def _nchw_const(self, slot: int, node: _Node) -> int:
        """A constant broadcast against NCHW data: re-lay it out as [.., C, H, W] once."""
        value = self._consts[slot]
        if value.ndim == 0 or (value.ndim == 1 and value.shape[0] == 1):
            return self._derived_const(slot, value.reshape(()))
        if value.ndim > 4:
            raise UnsupportedOpError(node.op, node.name, f"constant of rank {value.ndim} with NCHW data")
        v4 = value.reshape((1,) * (4 - value.ndim) + value.shape)
        return self._derived_const(slot, np.ascontiguousarray(v4.transpose(0, 3, 1, 2)), suffix="nchw")

    def _derived_const(self, slot: int, value: np.ndarray, suffix: str = "") -> int:
        """Buffer slot for a plan-time transformed copy of constant ``slot`` (made once, shared)."""
        key = (f"__const{suffix}__", slot)
        if key in self._slots:
            return self._slots[key]
        new = self._new_slot()
        self._slots[key] = new
        self._consts[new] = value
        self._layout[new] = "plain"
        return self._register_const(new)

    def _register_const(self, slot: int) -> int:
        self._runtime_consts.add(slot)
        t = torch.from_numpy(np.ascontiguousarray(self._consts[slot]))
        if t.dtype == torch.int32:
            t = t.long()
        self.register_buffer(f"const_{slot}", t, persistent=True)
        self._const_loads.append((slot, f"const_{slot}"))
        return slot

    def _build_reduce(self, node: _Node) -> None:
        axes = [int(a) for a in np.atleast_1d(self._const(node.inputs[1], node))]
        keep = node.b("keep_dims")
        src = self._runtime(node.inputs[0])
        reducer = {"Mean": torch.mean, "Sum": torch.sum, "Max": torch.amax, "Min": torch.amin}[node.op]
        if self._layout[src] == "nchw" and keep:
            dims = tuple(_NHWC_TO_NCHW[a % 4] for a in axes)
            self._emit(lambda x: reducer(x, dim=dims, keepdim=True), [src], node, "nchw")
        else:
            src = self._as_plain(src)
            dims = tuple(axes)
            self._emit(lambda x: reducer(x, dim=dims, keepdim=keep), [src], node, "plain")

    def _build_concat(self, node: _Node) -> None:
        axis = int(self._const(node.inputs[-1], node))
        refs = node.inputs[:-1]
        slots = [self._runtime(r) for r in refs]
        if all(self._layout[s] == "nchw" for s in slots):
            dim = _NHWC_TO_NCHW[axis % 4]
            self._emit(lambda *xs: torch.cat(xs, dim=dim), slots, node, "nchw")
        else:
            slots = [self._as_plain(s) for s in slots]
            self._emit(lambda *xs: torch.cat(xs, dim=axis), slots, node, "plain")

    def _build_resize(self, node: _Node) -> None:
        size = tuple(int(v) for v in self._const(node.inputs[1], node))
        ac, hp = node.b("align_corners"), node.b("half_pixel_centers")
        src = self._as_nchw(self._runtime(node.inputs[0]), node)
        if node.op == "ResizeNearestNeighbor":
            if ac or hp:
                raise UnsupportedOpError(node.op, node.name, "only legacy nearest mode")
            self._emit(lambda x: F.interpolate(x, size=size, mode="nearest"), [src], node, "nchw")
        else:
            self._emit(lambda x: resize_bilinear(x, size, ac, hp), [src], node, "nchw")

    def _build_pool(self, node: _Node) -> None:
        if node.s("data_format", "NHWC") != "NHWC":
            raise UnsupportedOpError(node.op, node.name, "only NHWC data_format")
        k, s = node.ints("ksize"), node.ints("strides")
        kernel, stride, padding = (k[1], k[2]), (s[1], s[2]), node.s("padding", "VALID")
        pool = max_pool if node.op == "MaxPool" else avg_pool
        src = self._as_nchw(self._runtime(node.inputs[0]), node)
        self._emit(lambda x: pool(x, kernel, stride, padding), [src], node, "nchw")

    def _build_shape_op(self, node: _Node) -> None:
        """Ops executed in TF layout (NHWC) because they depend on exact shapes / axis order."""
        op = node.op
        src = self._as_plain(self._runtime(node.inputs[0])) if node.inputs else -1
        if op == "Reshape":
            shape = tuple(int(v) for v in self._const(node.inputs[1], node))
            self._emit(lambda x: x.reshape(shape), [src], node, "plain")
        elif op == "Squeeze":
            dims = tuple(node.ints("squeeze_dims"))
            self._emit(lambda x: x.squeeze(dims) if dims else x.squeeze(), [src], node, "plain")
        elif op == "ExpandDims":
            dim = int(self._const(node.inputs[1], node))
            self._emit(lambda x: x.unsqueeze(dim), [src], node, "plain")
        elif op == "Transpose":
            perm = tuple(int(v) for v in self._const(node.inputs[1], node))
            self._emit(lambda x: x.permute(perm), [src], node, "plain")
        elif op == "Pad":
            pads = self._const(node.inputs[1], node).astype(int)
            flat = tuple(int(v) for pair in pads[::-1] for v in pair)
            self._emit(lambda x: F.pad(x, flat), [src], node, "plain")
        elif op == "StridedSlice":
            self._build_strided_slice(node, src)
        elif op == "TopKV2":
            k = int(self._const(node.inputs[1], node))
            self._emit(lambda x: tuple(torch.topk(x, k, dim=-1, sorted=True)), [src], node, "plain", n_out=2)
        elif op == "GatherV2":
            axis = int(self._const(node.inputs[2], node))
            if node.i("batch_dims") != 0:
                raise UnsupportedOpError(op, node.name, "batch_dims != 0")
            idx = self._as_plain(self._runtime(node.inputs[1]))

            def gather(p: Tensor, i: Tensor) -> Tensor:
                ax = axis % p.ndim
                out = p.index_select(ax, i.reshape(-1).long())
                return out.reshape(p.shape[:ax] + i.shape + p.shape[ax + 1 :])

            self._emit(gather, [src, idx], node, "plain")
        else:
            raise UnsupportedOpError(op, node.name)

    def _build_strided_slice(self, node: _Node, src: int) -> None:
        begin, end, strides = (self._const(r, node).astype(int).tolist() for r in node.inputs[1:4])
        if node.i("ellipsis_mask") or node.i("new_axis_mask"):
            raise UnsupportedOpError(node.op, node.name, "ellipsis/new_axis masks")
        bm, em, sm = node.i("begin_mask"), node.i("end_mask"), node.i("shrink_axis_mask")
        index: list[Any] = []
        for d, (b, e, s) in enumerate(zip(begin, end, strides, strict=True)):
            if s <= 0:
                raise UnsupportedOpError(node.op, node.name, "non-positive stride")
            if sm >> d & 1:
                index.append(b)
                continue
            index.append(slice(None if bm >> d & 1 else b, None if em >> d & 1 else e, s))
        key = tuple(index)
        self._emit(lambda x: x[key], [src], node, "plain")

    def _finalize(self) -> None:
        """Compute when each slot dies so forward can drop intermediate tensors early."""
        keep = set(self._output_slots)
        last_use: dict[int, int] = {}
        for i, (_, ins, _, _) in enumerate(self._steps):
            for s in ins:
                last_use[s] = i
        self._release: list[tuple[int, ...]] = [() for _ in self._steps]
        for s, i in last_use.items():
            if s not in keep and s not in self._runtime_consts:
                self._release[i] += (s,)

    # ------------------------------------------------------------------ execution
    #: DeltaStream binds ``stream_state = {"key": bool | Tensor, "cache": dict}`` here before each frame.
    supports_stream_state = True

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
        env: list[Any] = [None] * self._n_slots
        for slot, x in zip(self._input_slots, inputs, strict=True):
            env[slot] = x
        buffers, convs = self._buffers, self.convs
        for slot, name in self._const_loads:
            env[slot] = buffers[name]
        skip: tuple[bool, ...] = ()
        border: frozenset[int] = frozenset()
        state = getattr(self, "stream_state", None)
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
        for i, ((fn, ins, outs, mod), release) in enumerate(zip(self._steps, self._release, strict=True)):
            if skip and skip[i]:
                continue
            if mod is None:
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
            for s_ in release:
                env[s_] = None
        if border:  # a keyframe with frozen convs: remember the static part's border values
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
