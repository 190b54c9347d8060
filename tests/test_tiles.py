"""The tile runtime (`runtime.tiles.TileStream`) on small random ONNX graphs built node by node.

The graphs hold what IS-Net needs: convs with random biases (strided, dilated, 1x1, asymmetric
pads), ReLU (fused into its conv where it is the only reader, a separate step where not), sigmoid,
add, channel concats, max-pool in ceil mode, bilinear resizes and f32-to-f32 casts, at odd map sizes; the clips change some regions (touching all four edges) and leave others alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import deltadistill as dd  # noqa: E402
from deltadistill.runtime.tile_ops import Alias, Fused  # noqa: E402
from deltadistill.runtime.tiles import TileStream  # noqa: E402
from deltadistill.teachers.onnx_graph import OnnxGraphModule  # noqa: E402

H, W = 37, 45


class _Net:
    """An ONNX graph built node by node, weights and biases from one seed."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def const(self, value: np.ndarray) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, ins: list[str], **attrs) -> str:
        self.n += 1
        out = f"v{self.n}"
        self.nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, relu: bool = True, **attrs) -> str:
        w = self.const((self.rng.standard_normal((cout, cin, k, k)) * (1.5 / np.sqrt(cin * k * k))).astype(np.float32))
        b = self.const((self.rng.standard_normal(cout) * 0.3).astype(np.float32))
        attrs.setdefault("pads", [k // 2] * 4)
        y = self.op("Conv", [x, w, b], kernel_shape=[k, k], **attrs)
        return self.op("Relu", [y]) if relu else y

    def resize(self, x: str, c: int, h: int, w: int) -> str:
        sizes = self.const(np.array([1, c, h, w], dtype=np.int64))
        return self.op("Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")

    def model(self, outputs: list[str]) -> OnnxGraphModule:
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        m.ir_version = 8
        return OnnxGraphModule(m).eval()


def isnet_like(extra: str | None = None) -> OnnxGraphModule:
    """A little U-Net: every op the runtime tiles; ``extra`` inserts an op it cannot tile."""
    g = _Net()
    r1 = g.conv("x", 3, 8)                                                   # 37x45
    r2 = g.conv(r1, 8, 8, strides=[2, 2], pads=[1, 0, 0, 1])                 # asymmetric pads -> 18x22
    p1 = g.op("MaxPool", [r2], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)  # ceil -> 9x11
    r3 = g.conv(p1, 8, 12, dilations=[2, 2], pads=[2, 2, 2, 2])
    if extra == "AveragePool":
        r3 = g.op("AveragePool", [r3], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    if extra == "SE":
        gate = g.op("Sigmoid", [g.op("GlobalAveragePool", [r3])])
        r3 = g.op("Mul", [r3, gate])
    c4 = g.conv(r3, 12, 12, relu=False)
    r4 = g.op("Relu", [g.op("Add", [c4, r3])])
    u1 = g.op("Cast", [g.resize(r4, 12, 18, 22)], to=TensorProto.FLOAT)  # an fp16 file's cast, run in f32
    cat = g.op("Concat", [u1, r2], axis=1)
    r5 = g.conv(cat, 20, 8, k=1)
    u2 = g.resize(r5, 8, H, W)
    cat2 = g.op("Concat", [u2, r1], axis=1)
    out = g.op("Sigmoid", [g.conv(cat2, 16, 1, relu=False)])
    side = g.op("Sigmoid", [g.resize(g.conv(r4, 12, 1, k=1, relu=False), 1, H, W)])
    return g.model([out, side])


def clip(frames: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """A smooth frame with blobs changing at the four edges and corners, the middle left alone."""
    gen = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 10, 12, generator=gen), size=(H, W), mode="bilinear")
    out = [base]
    spots = [(0, 0), (H - 6, W - 7), (15, 0), (0, 20), (H - 5, 25), (20, W - 4)]
    for t in range(1, frames):
        f = out[-1].clone()
        y, x = spots[t % len(spots)]
        f[..., y:y + 6, x:x + 7] += 0.3 * torch.randn(1, 3, min(6, H - y), min(7, W - x), generator=gen)
        out.append(f)
    return out


def sparse_model(graph: OnnxGraphModule, threshold: float) -> OnnxGraphModule:
    model = dd.convert(graph, dd.DeltaConfig(student="sparse"))
    for layer in model.convs.values():
        layer.students["sparse"].threshold.fill_(threshold)
    return dd.deploy(model) or model


@pytest.mark.parametrize("box", [0.0, 4.0])
def test_exact_at_threshold_zero(box: float) -> None:
    """Catches any handler computing the wrong pixels or the wrong values (a halo too narrow for a
    dilated conv, a ceil-mode pool's last window, a resize's taps, an edge, a concat's channel
    offset, a bounding box off by its stride or padding): with thresholds 0 every frame must equal
    the teacher, while computing only part of it."""
    graph = isnet_like()
    frames = clip()
    for model in (graph, sparse_model(isnet_like(), 0.0)):
        stream = TileStream(model, keyframe=100, box=box)
        costs = []
        boxes = 0
        for f in frames:
            got = stream(f)
            with torch.no_grad():
                want = graph(f)
            for a, b in zip(got, want, strict=True):
                assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
            costs.append(stream.last_cost)
            boxes += sum(getattr(h, "last_box", False) for h in stream.handlers)
        assert (boxes > 0) == (box > 0), boxes  # the box kernel ran where asked, and only there
        assert not stream.fallbacks
        assert any(isinstance(h, Alias) for h in stream.handlers) and any(isinstance(h, Fused) for h in stream.handlers)
        assert any(getattr(h, "parts", None) for h in stream.handlers)  # a concat read through by its conv
        assert 0 < max(costs[1:]) < 0.9, costs  # delta frames computed part of the teacher, not all of it


class DenseRule:
    """The rule the runtime applies, written plainly with dense maps: per conv, keep the committed
    input X; active = pixels whose mean |x - X| over channels passes the threshold; X takes them;
    the conv's output is recomputed, densely, where its window holds an active pixel."""

    def __init__(self, model: OnnxGraphModule, reference: str = "last") -> None:
        self.model, self.reference = model, reference
        self.x: dict[str, torch.Tensor] = {}
        self.x_key: dict[str, torch.Tensor] = {}
        self.out: dict[str, torch.Tensor] = {}
        self.computed: dict[str, int] = {}

    def conv_step(self, name: str, run, layer, x: torch.Tensor, key: bool) -> torch.Tensor:
        conv, thr = layer.base, float(layer.student.threshold)
        if key:
            self.x[name], self.x_key[name] = x.clone(), x.clone()
            self.out[name] = run(conv, x)
            return self.out[name]
        if self.reference == "keyframe":  # the student's rule: X = x_k, with x where it moved past thr from x_k
            on = (x - self.x_key[name]).abs().mean(1, keepdim=True) > thr
            new_x = torch.where(on, x, self.x_key[name])
            active = (new_x != self.x[name]).any(1, keepdim=True).float()  # what changed since the last frame
            self.x[name] = new_x
            new = run(conv, new_x)
            reach = run_reach(run, conv, active) > 0
            self.computed[name] = int(reach.sum()) if active.any() else 0
            self.out[name] = torch.where(reach, new, self.out[name])
            return self.out[name]
        active = ((x - self.x[name]).abs().mean(1, keepdim=True) > thr).float()
        self.x[name] = torch.where(active > 0, x, self.x[name])
        new = run(conv, self.x[name])
        reach = (run_reach(run, conv, active) > 0)
        self.computed[name] = int(reach.sum()) if active.any() else 0
        self.out[name] = torch.where(reach, new, self.out[name])
        return self.out[name]

    @torch.no_grad()
    def __call__(self, frame: torch.Tensor, key: bool):
        g = self.model
        env = [None] * g._n_slots
        env[g._input_slots[0]] = frame
        for slot, name in g._const_loads:
            env[slot] = g._buffers[name]
        self.computed = {}
        for fn, ins, outs, mod in g._steps:
            if mod is None:
                r = fn(*[env[j] for j in ins])
            else:
                r = self.conv_step(mod, fn, g.convs[mod], env[ins[0]], key)
            env[outs[0]] = r
        return tuple(env[s] for s in g._output_slots)


def run_reach(run, conv: torch.nn.Conv2d, active: torch.Tensor) -> torch.Tensor:
    """Outputs whose window holds an active pixel: the conv step run on the mask with all-ones weights."""
    ones = torch.nn.Conv2d(1, 1, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False)
    ones.weight.data.fill_(1.0)
    return run(ones, active)


def test_computes_exactly_what_the_thresholds_give() -> None:
    """Catches a runtime that computes more or less than the rule says: per conv and frame, the
    outputs computed must equal those of a dense reference applying the same rule, and its outputs
    the reference's. An always-dense runtime (dense_level 0) must fail the count."""
    model = sparse_model(isnet_like(), 0.02)
    ref = DenseRule(model)
    stream = TileStream(model, keyframe=100, dense_level=1.0)
    dense = TileStream(model, keyframe=100, dense_level=0.0)
    sizes = {}
    differs = False
    for i, f in enumerate(clip(10)):
        want = ref(f, key=i == 0)
        got = stream(f)
        dense(f)
        if i == 0:
            sizes = {h.name: h.out_hw[0] * h.out_hw[1] for h in stream.handlers if hasattr(h, "out_hw")
                     and hasattr(h, "threshold")}
            continue
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, atol=1e-4)
        for name, n in ref.computed.items():
            assert stream.last_layers[name][1] == n, (i, name, stream.last_layers[name], n)
            computed_dense = sizes[name] if dense.last_layers[name][2] else dense.last_layers[name][1]
            differs |= computed_dense != n
        assert 0 < sum(ref.computed.values()) < sum(sizes.values())  # the rule skipped some and kept some
    assert differs, "an always-dense runtime passed the count"


def test_no_drift_under_slow_creep() -> None:
    """Catches error that accumulates: 500 frames of brightness creeping up (each frame's change far
    below the first conv's threshold). Against the teacher, the error must plateau (bounded by the
    thresholds) rather than grow with time, and the keyframe at 250 must reset it to zero. A runtime
    that compared each frame with the previous one, or summed deltas, fails."""
    graph = isnet_like()
    model = sparse_model(isnet_like(), 0.01)
    base = clip(1)[0]
    stream = TileStream(model, keyframe=250)
    errs = []
    for t in range(500):
        f = base + 0.0004 * t
        got = stream(f)
        with torch.no_grad():
            want = graph(f)
        errs.append(max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True)))
        for h in stream.handlers:  # every conv's stored input is within its threshold of its real input
            if hasattr(h, "threshold") and h.x is not None:
                real = h.current(stream.env)
                stored = h.x.index_select(0, h.pad_of)
                assert float((real - stored).abs().mean(1).max()) <= h.threshold + 1e-6
    assert errs[250] < 1e-5
    early, late = max(errs[20:100]), max(errs[150:250])
    assert late <= 1.5 * early + 1e-4, (early, late)
    assert max(errs[270:350]) <= 1.5 * early + 1e-4


def test_keyframe_reference_is_the_sparse_students_rule() -> None:
    """Catches ``reference="keyframe"`` testing against the wrong value (the last used input, or the
    previous frame) or recomputing the wrong outputs: per conv and frame, the outputs computed equal
    a dense reference's applying the student's rule (those reached by input pixels whose entry of
    X = x_k + mask (x - x_k) changed since the last frame), the outputs equal the model's own under
    `DeltaStream` (`SparseStudent`), and differ from the CBinfer rule's."""
    model = sparse_model(isnet_like(), 0.02)
    ref = DenseRule(model, reference="keyframe")
    stream = TileStream(model, keyframe=5, reference="keyframe")
    last = TileStream(model, keyframe=5)
    student = dd.DeltaStream(model, keyframe=5)
    apart = 0.0
    for i, f in enumerate(clip(10)):
        want = ref(f, key=i % 5 == 0)
        got = stream(f)
        other = last(f)
        with torch.no_grad():
            theirs = student(f)
        for a, b, c, d in zip(got, want, theirs, other, strict=True):
            assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
            assert torch.allclose(a, c, atol=1e-4), float((a - c).abs().max())
            apart = max(apart, float((a - d).abs().max()))
        if i % 5:
            for name, n in ref.computed.items():
                assert stream.last_layers[name][1] == n, (i, name, stream.last_layers[name], n)
    assert apart > 1e-3, "the keyframe reference gave the CBinfer rule's outputs"


def test_openvino_keyframe_maps_equal_torch(tmp_path, monkeypatch) -> None:
    """Catches an OpenVINO keyframe that leaves a map the delta frames read stale (a slot missing from
    the export), writes one in the wrong layout, or runs at reduced precision: after every keyframe,
    each kept map and each conv's stored input equals the torch keyframe's to 1e-4, and so does
    every output of the delta frames after it."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("DELTADISTILL_CACHE", str(tmp_path / "teachers"))
    model = sparse_model(isnet_like(), 0.02)
    ov = TileStream(model, keyframe=3, keyframe_engine="openvino")
    pt = TileStream(model, keyframe=3)
    for i, f in enumerate(clip(8)):
        got, want = ov(f), pt(f)
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, atol=1e-4), (i, float((a - b).abs().max()))
        if i % 3 == 0:
            for s in ov.keyframe_slots([ov.env[j].nchw for j in range(len(ov.env))]):
                a, b = ov.env[s].value, pt.env[s].value
                assert torch.allclose(a, b, atol=1e-4), (i, s, float((a - b).abs().max()))
            for h, k in zip(ov.handlers, pt.handlers, strict=True):
                if hasattr(h, "x") and h.x is not None:
                    assert torch.allclose(h.x, k.x, atol=1e-4)
    assert ov._ov is not None and len(list((tmp_path / "exports").glob("tilekey-*.xml"))) == 1


@pytest.mark.parametrize("extra", ["AveragePool", "SE"])
def test_op_it_cannot_tile_runs_dense_with_one_warning(extra: str) -> None:
    """Catches a runtime that crashes on an op it lacks, warns every frame, or gets it wrong: the op
    runs dense with one warning naming it, and the stream stays exact at threshold 0."""
    graph = isnet_like(extra)
    name = "AveragePool" if extra == "AveragePool" else "GlobalAveragePool"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        stream = TileStream(graph, keyframe=4)
        for f in clip(9):
            got = stream(f)
            with torch.no_grad():
                want = graph(f)
            for a, b in zip(got, want, strict=True):
                assert torch.allclose(a, b, atol=1e-4)
    named = [w for w in seen if name in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in seen]
    assert [op for _, op, _, _ in stream.fallbacks] == [name]


def test_thread_count_is_restored() -> None:
    """Catches ``delta_threads`` leaking into the caller: after keyframes and delta frames (and one that
    raises), torch runs at the caller's thread count again, so the caller's own work is not slowed."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stream = TileStream(sparse_model(isnet_like(), 0.02), keyframe=3, delta_threads=1)
        for f in clip(5):
            stream(f)
            assert torch.get_num_threads() == 2
        with pytest.raises(Exception):  # noqa: B017 - any error inside a delta frame
            stream._delta(torch.zeros(1, 3, H + 1, W))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_deep_scale_scales_only_the_deep_convs() -> None:
    """Catches ``deep_scale`` ignored, applied to every conv, or to the wrong side of its stride: with
    (2, 0.5), convs whose output is at stride 2 or coarser get half the threshold, those at full size
    keep it."""
    model = sparse_model(isnet_like(), 0.02)
    stream = TileStream(model, keyframe=4, deep_scale=(2, 0.5))
    stream(clip(1)[0])
    got = {(h.out_hw[0] < H, round(h.threshold, 6)) for h in stream.handlers if hasattr(h, "threshold")}
    assert got == {(False, 0.02), (True, 0.01)}, got
