"""Import an ONNX graph as an executable ``nn.Module``: the ONNX front end of the shared graph walk.

ONNX is NCHW like PyTorch, so values keep their layout. Each op type has one handler, registered
with ``@_op(...)``; a handler reads its node and emits steps on `graph.GraphModule`. ``Conv`` and
``ConvTranspose`` become registered ``nn.Conv2d`` / ``nn.ConvTranspose2d`` modules (a
``BatchNormalization`` that only reads one conv is folded into it), so `convert` wraps them like
the convs of any other teacher. Everything else runs as plain torch ops. A node whose inputs are
all constants is folded at import.

Sizes follow the input: ``Resize`` by ``scales`` scales any input; a ``Resize`` to fixed ``sizes``
and a pool over the whole map are refitted from a probe at the native size (`GraphModule`).

Half-precision files (IS-Net's, from ``@imgly/background-removal-data``) run in f32: fp16
initializers and Constants are widened at load, and a ``Cast`` to fp16 casts to f32. Shape arithmetic
(``Shape``, then ``Slice``/``Gather``/``Concat``/``Cast`` on its result) is evaluated at import, from
each value's shape at the native input size, which the importer tracks on fake tensors as it emits
steps. A ``Resize`` whose ``sizes`` come out of it (IS-Net: ``Concat(Shape(x)[0:2], [32, 32])``) is then
a resize to sizes baked at the native size, and follows the input by the rule every such resize
follows here: its target is scaled by its input's size now over its input's size at the native input
(at sides that are multiples of the graph's total stride, the input size over the exported size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .graph import GraphModule, SizedMaker, UnsupportedOpError, scaled_size, topo_order
from .tfjs_ops import resize_bilinear

_Handler = Callable[["OnnxGraphModule", Any], None]
_OPS: dict[str, _Handler] = {}


def _op(*names: str) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        for n in names:
            _OPS[n] = fn
        return fn
    return register


def supported_ops() -> list[str]:
    """The ONNX op types this importer runs."""
    return sorted(_OPS)


class OnnxImportError(ValueError):
    """An ONNX file that cannot be imported as a teacher (not the graph's ops: see UnsupportedOpError)."""


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


#: input element types a frame can be fed as (float32 frames, cast by the graph's own convs)
_FLOAT_INPUTS = (0, 1, 10, 11, 16)  # not given, FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _dims(value_info: Any) -> list[int | None]:
    """A graph input's shape; ``None`` for a dynamic dimension."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


class OnnxGraphModule(GraphModule):
    """Executes an ONNX graph with real ``nn.Conv2d`` modules.

    Args:
        model: path of an ``.onnx`` file, or a loaded ``onnx.ModelProto``.
        input_size: ``(H, W)`` for a graph whose image input has dynamic spatial sizes (required
            then); for a static graph, the size to run at (the graph follows it where it can).

    ``forward(x)`` takes the NCHW image and returns the graph's outputs as a tuple.
    """

    def __init__(self, model: str | Path | Any, input_size: tuple[int, int] | None = None,
                 outputs: Sequence[str] | None = None) -> None:
        super().__init__()
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError as e:  # pragma: no cover - the [onnx] extra is missing
            raise OnnxImportError("importing ONNX teachers needs the onnx package: pip install 'deltadistill[onnx]'") from e
        if not isinstance(model, onnx.ModelProto):
            path = Path(model)
            if not path.is_file():
                raise OnnxImportError(f"ONNX file not found: {path}")
            try:
                model = onnx.load(str(path))
            except Exception as e:  # noqa: BLE001 - onnx raises many kinds for a bad file
                raise OnnxImportError(f"{path} is not a readable ONNX model: {e}") from None
        g = model.graph
        self._numpy_helper = numpy_helper
        for init in g.initializer:
            self._consts[self._slot(init.name)] = _widen(numpy_helper.to_array(init))
        inputs = [i for i in g.input if i.name not in {init.name for init in g.initializer}]
        if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
            raise OnnxImportError(f"a teacher graph takes one NCHW image; this one takes "
                                  f"{[(i.name, _dims(i)) for i in inputs]}")
        dims = _dims(inputs[0])
        if dims[1] is None:
            raise OnnxImportError(f"input {inputs[0].name!r} has a dynamic channel count: {dims}")
        elem = inputs[0].type.tensor_type.elem_type
        if elem not in _FLOAT_INPUTS:  # frames go in as floats: an integer graph would see them unrounded
            raise OnnxImportError(f"input {inputs[0].name!r} is {onnx.TensorProto.DataType.Name(elem).lower()}, "
                                  "but frames go in as floats: export the graph with a float input")
        if input_size is None and None in dims[2:]:
            raise OnnxImportError(f"input {inputs[0].name!r} has dynamic sizes {['?' if d is None else d for d in dims]}:"
                                  " give input_size=(H, W) (on the command line, --input-size HxW)")
        self.native_size: tuple[int, int] = (dims[2], dims[3]) if None not in dims[2:] else tuple(input_size)  # type: ignore[assignment]
        self.channels = int(dims[1])
        self._add_input(inputs[0].name)
        nodes = list(g.node)
        producer = {out: str(i) for i, node in enumerate(nodes) for out in node.output}
        self.output_names = list(outputs) if outputs else [o.name for o in g.output]
        missing = [o for o in self.output_names if o not in producer and o not in {i.name for i in g.input}]
        if missing:
            raise OnnxImportError(f"the graph has no value {missing[0]!r} to output; its outputs: "
                                  f"{[o.name for o in g.output]}")
        order = topo_order([producer[o] for o in self.output_names if o in producer],
                           lambda i: [producer[x] for x in nodes[int(i)].input if x in producer])
        needed = [nodes[int(i)] for i in order]  # only what the outputs need, each node after its inputs
        self._consumers: dict[str, int] = {}
        for node in needed:
            for name in node.input:
                self._consumers[name] = self._consumers.get(name, 0) + 1
        for name in self.output_names:
            self._consumers[name] = self._consumers.get(name, 0) + 1
        self._conv_of: dict[str, str] = {}  # a conv's output value -> its module name (for BN folding)
        # each value's shape at the native size, on fake tensors: only where a Shape node reads one
        self._fake: dict[int, Any] | None = None
        if any(node.op_type == "Shape" for node in needed):
            from torch._subclasses.fake_tensor import FakeTensorMode

            self._fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
            with self._fake_mode:
                self._fake = {self._input_slots[0]: torch.zeros(1, self.channels, *self.native_size)}
        for node in needed:
            handler = _OPS.get(node.op_type)
            if handler is None or node.domain not in ("", "ai.onnx"):
                raise self.unsupported(node)
            if node.op_type not in ("Constant", "Shape") and self._fold(node):
                continue
            handler(self, node)
        self._output_slots = [self._slot(o) for o in self.output_names]
        try:
            self._finalize([torch.zeros(1, self.channels, *self.native_size)])
        except RuntimeError as e:
            h, w = self.native_size
            raise OnnxImportError(f"the graph does not run at {h}x{w}: {str(e).splitlines()[0]}") from None
        del self._numpy_helper, self._consumers, self._fake
        self.__dict__.pop("_fake_mode", None)

    # ------------------------------------------------------------------ helpers for handlers
    def unsupported(self, node: Any, detail: str = "") -> UnsupportedOpError:
        return UnsupportedOpError(node.op_type, node.name or node.output[0], detail, list(node.input), fmt="ONNX")

    def is_const(self, name: str) -> bool:
        return name == "" or self._slot(name) in self._consts

    def const(self, node: Any, i: int, default: Any = None) -> Any:
        """Input ``i`` of ``node`` as a numpy value at import time (``default`` when absent)."""
        if i >= len(node.input) or node.input[i] == "":
            return default
        slot = self._slot(node.input[i])
        if slot not in self._consts:
            raise self.unsupported(node, f"input {node.input[i]!r} must be a constant")
        return self._consts[slot]

    def runtime(self, name: str) -> int:
        """Slot of an input read at run time; a constant becomes a buffer on first such use."""
        slot = self._slot(name)
        if slot in self._consts and slot not in self._runtime_consts:
            self._register_const(slot)
        return slot

    def emit(self, node: Any, fn: Callable[..., Any], ins: Sequence[str], sized: SizedMaker | None = None) -> None:
        slots = [self.runtime(n) for n in ins]
        outs = [self._slot(o) for o in node.output if o]
        op = (node.op_type, node.name or node.output[0], _attrs(node))
        if sized is not None:
            self._sized_step(sized, slots, outs, op=op)
        else:
            self._step(fn, slots, outs, op=op)

    def _step(self, fn: Callable[..., Any], ins: Sequence[int], outs: Sequence[int], module: str | None = None,
              op: tuple[str, str, dict[str, Any]] | None = None) -> None:
        super()._step(fn, ins, outs, module, op=op)
        if self._fake is not None:
            self._track(fn, ins, outs, module)

    def _track(self, fn: Callable[..., Any], ins: Sequence[int], outs: Sequence[int], module: str | None) -> None:
        """The step's outputs on fake tensors at the native size (shapes only); unknown (absent) where
        an input is unknown or the step needs real values."""
        fake = self._fake
        assert fake is not None
        values = []
        for s_ in ins:
            if s_ in fake:
                values.append(fake[s_])
            elif s_ in self._consts:
                t = torch.from_numpy(np.array(self._consts[s_]))
                values.append(t.long() if t.dtype == torch.int32 else t)
            else:
                return
        try:
            with self._fake_mode:
                r = fn(*values) if module is None else fn(self.convs[module], values[0])
        except Exception:  # noqa: BLE001 - a step that reads values: its outputs' shapes stay unknown
            return
        for o, v in zip(outs, (r,) if len(outs) == 1 else r, strict=True):
            if isinstance(v, Tensor):
                fake[o] = v

    def _fold(self, node: Any) -> bool:
        """Compute a node whose inputs are all constants now, once; False when it can't be folded."""
        if not node.input or not all(self.is_const(i) for i in node.input) or node.op_type in _NO_FOLD:
            return False
        probe = OnnxGraphModule.__new__(OnnxGraphModule)
        nn.Module.__init__(probe)
        GraphModule.__init__(probe)
        probe._numpy_helper = self._numpy_helper
        probe._consumers, probe._conv_of, probe._fake = {}, {}, None
        names = [i for i in node.input if i]
        for name in names:
            probe._consts[probe._slot(name)] = self._consts[self._slot(name)]
        _OPS[node.op_type](probe, node)
        probe._output_slots = [probe._slot(o) for o in node.output if o]
        probe._finalize()
        values = probe._run([], None)
        for o, v in zip([o for o in node.output if o], values, strict=True):
            self._consts[self._slot(o)] = v.detach().numpy() if isinstance(v, Tensor) else np.asarray(v)
        return True


_NO_FOLD = {"Conv", "ConvTranspose", "BatchNormalization"}


def _widen(value: np.ndarray) -> np.ndarray:
    """fp16 (and bf16-free) constants as f32: a half-precision file runs in f32 here."""
    return value.astype(np.float32) if value.dtype == np.float16 else value


# ---------------------------------------------------------------------- constants and element-wise ops
@_op("Constant")
def _constant(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    if "value" in a:
        value = g._numpy_helper.to_array(a["value"])
    elif "value_float" in a or "value_int" in a:
        value = np.array(a.get("value_float", a.get("value_int")))
    elif "value_floats" in a or "value_ints" in a:
        value = np.array(a.get("value_floats", a.get("value_ints")))
    else:
        raise g.unsupported(node, f"attribute {sorted(a)}")
    g._consts[g._slot(node.output[0])] = _widen(value)


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Identity": lambda x: x, "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
    "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
    "Floor": torch.floor, "Ceil": torch.ceil, "Reciprocal": torch.reciprocal, "Erf": torch.erf,
    "HardSwish": F.hardswish, "Softplus": F.softplus, "Not": torch.logical_not,
}


@_op(*_UNARY)
def _unary(g: OnnxGraphModule, node: Any) -> None:
    g.emit(node, _UNARY[node.op_type], node.input[:1])


@_op("LeakyRelu", "Elu", "HardSigmoid", "Selu", "Celu")
def _unary_with_attrs(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    if node.op_type == "LeakyRelu":
        alpha = a.get("alpha", 0.01)
        fn: Callable[[Tensor], Tensor] = lambda x: F.leaky_relu(x, alpha)  # noqa: E731
    elif node.op_type == "Elu":
        alpha = a.get("alpha", 1.0)
        fn = lambda x: F.elu(x, alpha)  # noqa: E731
    elif node.op_type == "Celu":
        alpha = a.get("alpha", 1.0)
        fn = lambda x: F.celu(x, alpha)  # noqa: E731
    elif node.op_type == "Selu":
        alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
        fn = lambda x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))  # noqa: E731
    else:
        alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        fn = lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0)  # noqa: E731
    g.emit(node, fn, node.input[:1])


@_op("Clip")
def _clip(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    lo, hi = g.const(node, 1, a.get("min")), g.const(node, 2, a.get("max"))
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if lo == 0.0 and hi == 6.0:
        g.emit(node, lambda x: F.hardtanh(x, 0.0, 6.0), node.input[:1])
    else:
        g.emit(node, lambda x: torch.clamp(x, lo, hi), node.input[:1])


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
    "Equal": torch.eq, "Greater": torch.gt, "Less": torch.lt, "And": torch.logical_and, "Or": torch.logical_or,
}


@_op(*_BINARY)
def _binary(g: OnnxGraphModule, node: Any) -> None:
    fn = _BINARY[node.op_type]
    if node.op_type == "Div" and _is_int(g, node):
        fn = lambda a, b: torch.div(a, b, rounding_mode="trunc")  # noqa: E731 - ONNX integer Div truncates
    g.emit(node, fn, node.input)


def _is_int(g: OnnxGraphModule, node: Any) -> bool:
    return all(g.is_const(i) and np.issubdtype(np.asarray(g._consts[g._slot(i)]).dtype, np.integer) for i in node.input)


@_op("Sum", "Max", "Min", "Mean")
def _variadic(g: OnnxGraphModule, node: Any) -> None:
    pair = {"Sum": torch.add, "Max": torch.maximum, "Min": torch.minimum, "Mean": torch.add}[node.op_type]
    n, mean = len(node.input), node.op_type == "Mean"

    def fold(*xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = pair(out, x)
        return out / n if mean else out

    g.emit(node, fold, node.input)


@_op("Where")
def _where(g: OnnxGraphModule, node: Any) -> None:
    g.emit(node, lambda c, a, b: torch.where(c.bool(), a, b), node.input)


@_op("Cast")
def _cast(g: OnnxGraphModule, node: Any) -> None:
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(_attrs(node)["to"])
    if dtype == np.float16:  # a half-precision file runs in f32
        dtype = np.dtype(np.float32)
    target = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    g.emit(node, lambda x: x.to(target), node.input[:1])


# ---------------------------------------------------------------------- convolutions
def _conv_pads(node: Any, a: dict[str, Any], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
               ) -> tuple[str, tuple[int, ...]]:
    """("module", (ph, pw)) for symmetric pads, ("explicit", F.pad tuple) otherwise, or ("same_upper"/"same_lower", ())."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return auto.lower(), ()
    if auto not in ("NOTSET", "VALID"):
        raise UnsupportedOpError(node.op_type, node.name, f"auto_pad={auto}", list(node.input), fmt="ONNX")
    pads = list(a.get("pads", [0] * 4)) if auto == "NOTSET" else [0, 0, 0, 0]
    top, left, bottom, right = pads
    if top == bottom and left == right:
        return "module", (top, left)
    return "explicit", (left, right, top, bottom)


def _same_pad(x: Tensor, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], upper: bool) -> Tensor:
    pads = []
    for size, k, s, d in zip(x.shape[-2:], kernel, stride, dilation, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        pads.append((small, big) if upper else (big, small))
    (t, b), (l_, r) = pads
    return F.pad(x, (l_, r, t, b)) if t or b or l_ or r else x


@_op("Conv")
def _conv(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    w = np.array(g.const(node, 1), dtype=np.float32)
    if w.ndim != 4:
        raise g.unsupported(node, f"only 2-D convolutions (weight of rank {w.ndim})")
    bias = g.const(node, 2)
    kernel = tuple(a.get("kernel_shape", w.shape[2:]))
    stride, dilation = tuple(a.get("strides", (1, 1))), tuple(a.get("dilations", (1, 1)))
    groups = int(a.get("group", 1))
    mode, pads = _conv_pads(node, a, kernel, stride, dilation)
    conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], kernel, stride=stride, dilation=dilation, groups=groups,
                     padding=pads if mode == "module" else 0, bias=bias is not None)
    if mode == "module":
        run: Callable[[nn.Module, Tensor], Tensor] = lambda m, x: m(x)  # noqa: E731
    elif mode == "explicit":
        run = lambda m, x: m(F.pad(x, pads))  # noqa: E731
    else:
        upper = mode == "same_upper"
        run = lambda m, x: m(_same_pad(x, kernel, stride, dilation, upper))  # noqa: E731
    _add_conv_step(g, node, conv, w, bias, run, {"pad_mode": mode, "pads": pads})


def _add_conv_step(g: OnnxGraphModule, node: Any, conv: nn.Module, w: np.ndarray, bias: Any,
                   run: Callable[[nn.Module, Tensor], Tensor], extra: dict[str, Any] | None = None) -> None:
    """Load the weights into ``conv``, register it, and emit the step that calls it by name."""
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(np.array(bias, dtype=np.float32)))  # type: ignore[union-attr]
    name = g._add_conv(node.name or node.output[0], conv)
    g._conv_of[node.output[0]] = name
    g._step(run, [g.runtime(node.input[0])], [g._slot(node.output[0])], name,
            op=(node.op_type, node.name or node.output[0], {**_attrs(node), **(extra or {})}))


@_op("ConvTranspose")
def _conv_transpose(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    w = np.array(g.const(node, 1), dtype=np.float32)  # (in, out / group, kh, kw): torch's layout
    if w.ndim != 4 or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or "output_shape" in a:
        raise g.unsupported(node, "only 2-D, with explicit pads")
    bias = g.const(node, 2)
    groups = int(a.get("group", 1))
    kernel = tuple(a.get("kernel_shape", w.shape[2:]))
    stride, dilation = tuple(a.get("strides", (1, 1))), tuple(a.get("dilations", (1, 1)))
    top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
    out_pad = tuple(a.get("output_padding", (0, 0)))
    if (top, left) != (bottom, right):
        raise g.unsupported(node, f"asymmetric pads {a.get('pads')}")
    deconv = nn.ConvTranspose2d(w.shape[0], w.shape[1] * groups, kernel, stride=stride, padding=(top, left),
                                output_padding=out_pad, groups=groups, dilation=dilation, bias=bias is not None)
    _add_conv_step(g, node, deconv, w, bias, lambda m, x: m(x))


@_op("BatchNormalization")
def _batch_norm(g: OnnxGraphModule, node: Any) -> None:
    eps = float(_attrs(node).get("epsilon", 1e-5))
    gamma, beta, mean, var = (np.asarray(g.const(node, i), dtype=np.float64) for i in range(1, 5))
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    src = node.input[0]
    conv_name = g._conv_of.get(src)
    conv = g.convs[conv_name] if conv_name is not None else None
    if isinstance(conv, nn.Conv2d) and g._consumers.get(src, 0) == 1:  # fold into the conv that alone feeds it
        with torch.no_grad():
            conv.weight.mul_(torch.from_numpy(scale).float().view(-1, 1, 1, 1))
            old = conv.bias.double() if conv.bias is not None else torch.zeros(len(scale), dtype=torch.float64)
            conv.bias = nn.Parameter((old * torch.from_numpy(scale) + torch.from_numpy(shift)).float())
        # the conv's output is now the BN's: point the BN's output at the conv's slot
        g._slots[(node.output[0], 0)] = g._slot(src)
        g._conv_of[node.output[0]] = conv_name
        return
    s = torch.from_numpy(scale).float().view(1, -1, 1, 1)
    b = torch.from_numpy(shift).float().view(1, -1, 1, 1)
    g._consts[g._slot(node.output[0] + "::scale")] = s.numpy()
    g._consts[g._slot(node.output[0] + "::shift")] = b.numpy()
    g.emit(node, lambda x, s_, b_: x * s_ + b_, [src, node.output[0] + "::scale", node.output[0] + "::shift"])


# ---------------------------------------------------------------------- pools and resizes
def _pool_args(g: OnnxGraphModule, node: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], bool]:
    a = _attrs(node)
    kernel = tuple(a["kernel_shape"])
    stride = tuple(a.get("strides", (1,) * len(kernel)))
    if len(kernel) != 2 or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(d != 1 for d in a.get("dilations", (1, 1))):
        raise g.unsupported(node, "only 2-D pools with explicit pads")
    top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
    return kernel, stride, (left, right, top, bottom), bool(a.get("ceil_mode", 0))


@_op("MaxPool", "AveragePool")
def _pool(g: OnnxGraphModule, node: Any) -> None:
    kernel, stride, pads, ceil = _pool_args(g, node)
    if len(node.output) > 1 and node.output[1]:
        raise g.unsupported(node, "MaxPool indices output")
    is_max = node.op_type == "MaxPool"
    count_pad = bool(_attrs(node).get("count_include_pad", 0))
    symmetric = pads[0] == pads[1] and pads[2] == pads[3] and pads[0] <= kernel[1] // 2 and pads[2] <= kernel[0] // 2

    def pool(x: Tensor) -> Tensor:
        if is_max:
            if symmetric:
                return F.max_pool2d(x, kernel, stride, (pads[2], pads[0]), ceil_mode=ceil)
            return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride, ceil_mode=ceil)
        if symmetric:
            return F.avg_pool2d(x, kernel, stride, (pads[2], pads[0]), ceil_mode=ceil, count_include_pad=count_pad)
        if count_pad:
            return F.avg_pool2d(F.pad(x, pads), kernel, stride, ceil_mode=ceil)
        summed = F.avg_pool2d(F.pad(x, pads), kernel, stride, ceil_mode=ceil, divisor_override=1)
        count = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), pads), kernel, stride, ceil_mode=ceil, divisor_override=1)
        return summed / count

    def make(native: list[tuple[int, ...]] | None) -> Callable[[Tensor], Tensor]:
        if native is not None and not any(pads) and tuple(native[0][-2:]) == kernel:  # a whole-map pool
            return (lambda x: torch.amax(x, dim=(-2, -1), keepdim=True)) if is_max else (
                lambda x: torch.mean(x, dim=(-2, -1), keepdim=True))
        return pool

    g.emit(node, None, node.input[:1], sized=make)  # type: ignore[arg-type]


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(g: OnnxGraphModule, node: Any) -> None:
    if node.op_type == "GlobalAveragePool":
        g.emit(node, lambda x: torch.mean(x, dim=(-2, -1), keepdim=True), node.input[:1])
    else:
        g.emit(node, lambda x: torch.amax(x, dim=(-2, -1), keepdim=True), node.input[:1])


@_op("Resize", "Upsample")
def _resize(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    if node.op_type == "Upsample":
        scales, sizes = g.const(node, 1, a.get("scales")), None
    elif len(node.input) == 2:  # opset 10: (X, scales)
        scales, sizes = g.const(node, 1), None
    else:
        scales, sizes = g.const(node, 2), g.const(node, 3)
    scales = None if scales is None or np.size(scales) == 0 else [float(v) for v in np.ravel(scales)]
    sizes = None if sizes is None or np.size(sizes) == 0 else [int(v) for v in np.ravel(sizes)]
    if (scales and scales[:2] != [1.0, 1.0]) or (sizes and len(sizes) != 4):
        raise g.unsupported(node, "only spatial resizes of NCHW maps")
    if mode == "nearest":
        nearest_mode = a.get("nearest_mode", "round_prefer_floor")
        if coord != "asymmetric" or (nearest_mode != "floor" and not _integer(scales)):
            raise g.unsupported(node, f"nearest with {coord}/{nearest_mode} (asymmetric floor is supported)")

        def sample(x: Tensor, size: tuple[int, ...]) -> Tensor:
            return F.interpolate(x, size=size, mode="nearest")
    elif mode == "linear":
        if coord in ("half_pixel", "pytorch_half_pixel"):
            def sample(x: Tensor, size: tuple[int, ...]) -> Tensor:
                return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        elif coord == "align_corners":
            def sample(x: Tensor, size: tuple[int, ...]) -> Tensor:
                return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        elif coord == "asymmetric":
            def sample(x: Tensor, size: tuple[int, ...]) -> Tensor:
                return resize_bilinear(x, size)
        else:
            raise g.unsupported(node, f"linear with coordinate_transformation_mode={coord}")
    else:
        raise g.unsupported(node, f"mode={mode}")
    if scales is not None:
        fy, fx = scales[2], scales[3]
        g.emit(node, lambda x: sample(x, (int(x.shape[-2] * fy), int(x.shape[-1] * fx))), node.input[:1])
        return
    fixed = tuple(sizes[2:])  # type: ignore[index]

    def make(native: list[tuple[int, ...]] | None) -> Callable[[Tensor], Tensor]:
        if native is None:
            return lambda x: sample(x, fixed)
        return lambda x: sample(x, scaled_size(native[0][-2:], fixed, x.shape[-2:]))

    g.emit(node, None, node.input[:1], sized=make)  # type: ignore[arg-type]


def _integer(scales: list[float] | None) -> bool:
    return scales is not None and all(float(s).is_integer() for s in scales)


# ---------------------------------------------------------------------- shapes, reductions, matmul
@_op("Concat")
def _concat(g: OnnxGraphModule, node: Any) -> None:
    axis = int(_attrs(node)["axis"])
    g.emit(node, lambda *xs: torch.cat(xs, dim=axis), node.input)


@_op("Shape")
def _shape(g: OnnxGraphModule, node: Any) -> None:
    """A shape is a constant at import: the input's shape at the native size (tracked on fake tensors)."""
    src = node.input[0]
    if g.is_const(src):
        shape = list(np.shape(g._consts[g._slot(src)]))
    else:
        fake = g._fake.get(g._slot(src)) if g._fake is not None else None
        if fake is None:
            raise g.unsupported(node, f"the shape of {src!r} is not known at import")
        shape = list(fake.shape)
    a = _attrs(node)
    start, end = int(a.get("start", 0)), a.get("end")
    g._consts[g._slot(node.output[0])] = np.array(shape[start:None if end is None else int(end)], dtype=np.int64)


@_op("Gather")
def _gather(g: OnnxGraphModule, node: Any) -> None:
    axis = int(_attrs(node).get("axis", 0))
    index = torch.from_numpy(np.array(g.const(node, 1), dtype=np.int64))

    def gather(x: Tensor) -> Tensor:
        i = torch.where(index < 0, index + x.shape[axis], index)
        return torch.index_select(x, axis, i.reshape(-1)).reshape(*x.shape[:axis], *i.shape, *x.shape[axis + 1:])

    g.emit(node, gather, node.input[:1])


@_op("Reshape")
def _reshape(g: OnnxGraphModule, node: Any) -> None:
    shape = [int(v) for v in np.ravel(g.const(node, 1))]
    allow_zero = bool(_attrs(node).get("allowzero", 0))

    def reshape(x: Tensor) -> Tensor:
        dims = [x.shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(shape)]
        return x.reshape(dims)

    g.emit(node, reshape, node.input[:1])


@_op("Flatten")
def _flatten(g: OnnxGraphModule, node: Any) -> None:
    axis = int(_attrs(node).get("axis", 1))

    def flatten(x: Tensor) -> Tensor:
        return x.reshape(math.prod(x.shape[: axis % x.ndim]) if axis else 1, -1)

    g.emit(node, flatten, node.input[:1])


@_op("Transpose")
def _transpose(g: OnnxGraphModule, node: Any) -> None:
    perm = _attrs(node).get("perm")
    g.emit(node, lambda x: x.permute(*(perm or range(x.ndim - 1, -1, -1))), node.input[:1])


def _axes(g: OnnxGraphModule, node: Any, index: int = 1) -> list[int] | None:
    a = _attrs(node)
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    value = g.const(node, index)
    return None if value is None else [int(v) for v in np.ravel(value)]


@_op("Squeeze", "Unsqueeze")
def _squeeze(g: OnnxGraphModule, node: Any) -> None:
    axes = _axes(g, node)
    if node.op_type == "Squeeze":
        g.emit(node, lambda x: x.squeeze(tuple(axes)) if axes else x.squeeze(), node.input[:1])
        return
    if axes is None:
        raise g.unsupported(node, "Unsqueeze without axes")

    def unsqueeze(x: Tensor) -> Tensor:
        rank = x.ndim + len(axes)
        for ax in sorted(a % rank for a in axes):
            x = x.unsqueeze(ax)
        return x

    g.emit(node, unsqueeze, node.input[:1])


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(g: OnnxGraphModule, node: Any) -> None:
    axes = _axes(g, node)
    keep = bool(_attrs(node).get("keepdims", 1))
    fn = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}[node.op_type]
    g.emit(node, lambda x: fn(x, dim=tuple(axes) if axes else tuple(range(x.ndim)), keepdim=keep), node.input[:1])


@_op("Softmax", "LogSoftmax")
def _softmax(g: OnnxGraphModule, node: Any) -> None:
    axis = int(_attrs(node).get("axis", -1))
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    g.emit(node, lambda x: fn(x, dim=axis), node.input[:1])


@_op("Pad")
def _pad(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    pads = [int(v) for v in np.ravel(g.const(node, 1, a.get("pads")))]
    value = float(np.ravel(g.const(node, 2, np.array([a.get("value", 0.0)])))[0])
    mode = a.get("mode", "constant")
    if len(node.input) > 3 and node.input[3]:
        raise g.unsupported(node, "Pad with axes")
    n = len(pads) // 2
    flat = tuple(v for i in reversed(range(n)) for v in (pads[i], pads[i + n]))
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise g.unsupported(node, f"mode={mode}")
    while len(flat) > 4 and flat[-2:] == (0, 0):  # torch pads only the last dims for reflect/replicate
        flat = flat[:-2]
    g.emit(node, lambda x: F.pad(x, flat, mode=torch_mode, value=value if torch_mode == "constant" else None),
           node.input[:1])


@_op("Slice")
def _slice(g: OnnxGraphModule, node: Any) -> None:
    starts, ends = (np.ravel(g.const(node, i)).astype(np.int64) for i in (1, 2))
    axes = np.ravel(g.const(node, 3, np.arange(len(starts)))).astype(np.int64)
    steps = np.ravel(g.const(node, 4, np.ones(len(starts)))).astype(np.int64)
    if (steps <= 0).any():
        raise g.unsupported(node, "non-positive steps")

    def slice_(x: Tensor) -> Tensor:
        index: list[Any] = [slice(None)] * x.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
            dim = x.shape[int(ax)]
            index[int(ax)] = slice(int(max(min(s, dim), -dim)), int(max(min(e, dim), -dim - 1)), int(st))
        return x[tuple(index)]

    g.emit(node, slice_, node.input[:1])


@_op("Split")
def _split(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    axis = int(a.get("axis", 0))
    split = a.get("split")
    if split is None and len(node.input) > 1 and node.input[1]:
        split = [int(v) for v in np.ravel(g.const(node, 1))]
    n = len(node.output)
    g.emit(node, lambda x: tuple(torch.split(x, list(split) if split else x.shape[axis] // n, dim=axis)),
           node.input[:1])


@_op("MatMul")
def _matmul(g: OnnxGraphModule, node: Any) -> None:
    g.emit(node, torch.matmul, node.input)


@_op("Gemm")
def _gemm(g: OnnxGraphModule, node: Any) -> None:
    a = _attrs(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = bool(a.get("transA", 0)), bool(a.get("transB", 0))

    def gemm(x: Tensor, w: Tensor, c: Tensor | None = None) -> Tensor:
        y = alpha * ((x.t() if ta else x) @ (w.t() if tb else w))
        return y + beta * c if c is not None else y

    g.emit(node, gemm, [i for i in node.input if i])
