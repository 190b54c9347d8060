"""Convert a TF.js *graph model* (``model.json`` + shards) into an executable ``nn.Module``.

The graph is NHWC in TF; we execute it in NCHW. Every 4-D activation that comes out of the input
placeholder, a convolution, a pool or a resize is tracked as ``nchw`` at plan-build time; axis
arguments (Mean, ConcatV2) and broadcast constants are remapped once, and a tensor is permuted back
to NHWC only when it reaches a shape-manipulating op (Reshape, StridedSlice, ...), so results of
those ops match TF exactly.

Convolutions become *registered* ``nn.Conv2d`` / ``nn.ConvTranspose2d`` submodules called as
``module(x)`` (never ``F.conv2d``) so that they can later be swapped for wrapper layers. Fused
bias / folded batch-norm goes into the module's bias; the fused activation runs after the module.

The plan (slots, steps, constant buffers) is built in ``__init__`` on the executor that the ONNX
importer shares (`graph.GraphModule`); this module is only the TF.js front end.
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

from .graph import GraphModule, SizedMaker, UnsupportedOpError, scaled_size, topo_order
from .tfjs_ops import ACTIVATIONS, BINARY, UNARY, avg_pool, max_pool, pad_same, resize_bilinear, same_pads
from .tfjs_weights import load_weights

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


class TFJSGraphModule(GraphModule):
    """Executes a TF.js graph model in NCHW with real ``nn.Conv2d`` modules.

    Args:
        model_json: path of the graph model's ``model.json`` (shards are read from its directory).
        outputs: node names to return (``name`` or ``name:k``); default: the signature's outputs.
            Only the sub-graph needed for these outputs is built, so ops outside it need no support.

    ``forward(x)`` takes an NCHW tensor for a 4-D NHWC placeholder and returns a tuple of outputs in
    ``self.output_names`` order; 4-D outputs are NCHW, others keep TF's layout. Resizes and whole-map
    pools that the graph fixed at the placeholder's size follow the input, so other sizes run too.
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
        self._layout: dict[int, str] = {}  # slot -> "nchw" | "plain"
        self._plain_of: dict[int, int] = {}
        self._nchw_of: dict[int, int] = {}
        self._native_inputs: list[Tensor] | None = []
        self.native_size: tuple[int, int] | None = None  # the placeholder's (H, W), where it gives one
        self.channels = 3
        order = topo_order([_split_ref(o)[0] for o in self.output_names], self._deps)
        for name in order:
            self._build(self._nodes[name])
        self._output_slots = [self._slot(*_split_ref(o)) for o in self.output_names]
        self._finalize(self._native_inputs)
        del self._weights, self._nodes, self._native_inputs

    # ------------------------------------------------------------------ plan building
    def _deps(self, name: str) -> list[str]:
        if name not in self._nodes:
            raise KeyError(f"graph references unknown node {name!r}")
        return [_split_ref(r)[0] for r in self._nodes[name].inputs]

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
            self._step(lambda x: x.permute(0, 2, 3, 1), (slot,), (new,))
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
            self._step(lambda x: x.permute(0, 3, 1, 2), (slot,), (new,))
        return self._nchw_of[slot]

    def _emit(self, fn: Callable[..., Any], ins: Sequence[int], node: _Node, layout: str, n_out: int = 1,
              module: str | None = None, sized: SizedMaker | None = None) -> None:
        outs = tuple(self._slot(node.name, k) for k in range(n_out))
        for o in outs:
            self._layout[o] = layout
        if sized is not None:
            self._sized_step(sized, ins, outs)
        else:
            self._step(fn, ins, outs, module)

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
            dims = [int(d.get("size", -1)) for d in node.attr.get("shape", {}).get("shape", {}).get("dim", [])]
            self._layout[slot] = "nchw" if len(dims) == 4 else "plain"
            self._add_input(node.name)
            if self._native_inputs is not None and dims and all(d > 0 for d in dims) and len(dims) == 4:
                n, h, w, c = dims
                self._native_inputs.append(torch.zeros(n, c, h, w))
                self.native_size, self.channels = (h, w), c
            else:  # a size the graph leaves open: nothing to fit
                self._native_inputs = None
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
        mod_name = self._add_conv(node.name, conv)
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
        mod_name = self._add_conv(node.name, deconv)
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
        if node.op == "ResizeNearestNeighbor" and (ac or hp):
            raise UnsupportedOpError(node.op, node.name, "only legacy nearest mode")
        nearest = node.op == "ResizeNearestNeighbor"

        def make(native: list[tuple[int, ...]] | None) -> Callable[[Tensor], Tensor]:
            def resize(x: Tensor) -> Tensor:  # the size the graph wrote, scaled as the input is
                out = size if native is None else scaled_size(native[0][-2:], size, x.shape[-2:])
                if nearest:
                    return F.interpolate(x, size=out, mode="nearest")
                return resize_bilinear(x, out, ac, hp)
            return resize

        self._emit(None, [src], node, "nchw", sized=make)

    def _build_pool(self, node: _Node) -> None:
        if node.s("data_format", "NHWC") != "NHWC":
            raise UnsupportedOpError(node.op, node.name, "only NHWC data_format")
        k, s = node.ints("ksize"), node.ints("strides")
        kernel, stride, padding = (k[1], k[2]), (s[1], s[2]), node.s("padding", "VALID")
        pool = max_pool if node.op == "MaxPool" else avg_pool
        src = self._as_nchw(self._runtime(node.inputs[0]), node)
        whole = torch.amax if node.op == "MaxPool" else torch.mean

        def make(native: list[tuple[int, ...]] | None) -> Callable[[Tensor], Tensor]:
            if native is not None and padding == "VALID" and tuple(native[0][-2:]) == kernel:
                return lambda x: whole(x, dim=(-2, -1), keepdim=True)  # pools the whole map at any size
            return lambda x: pool(x, kernel, stride, padding)

        self._emit(None, [src], node, "nchw", sized=make)

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
