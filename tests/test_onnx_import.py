"""Importing ONNX teachers: every supported op against onnxruntime, PP-OCRv4 from its wheel, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from deltadistill.teachers import UnsupportedOpError, from_onnx  # noqa: E402
from deltadistill.teachers.onnx_graph import OnnxGraphModule, supported_ops  # noqa: E402


def _ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


class _Graph:
    """A small ONNX graph built node by node, with random weights from one seed."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(0)
        self.n = 0

    def const(self, value: np.ndarray, as_node: bool = False) -> str:
        self.n += 1
        name = f"c{self.n}"
        arr = np.asarray(value)
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name)))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def w(self, *shape: int, scale: float = 0.3) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op: str, ins: list[str], n_out: int = 1, **attrs) -> list[str]:
        self.n += 1
        outs = [f"v{self.n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{self.n}", **attrs))
        return outs

    def model(self, outputs: list[str], in_shape: list, opset: int = 18) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def _every_op_graph() -> tuple[onnx.ModelProto, set[str]]:
    """One graph that runs every op the importer supports (those it folds at import, too)."""
    g = _Graph()
    f32 = np.float32
    (a,) = g.op("Conv", ["x", g.w(8, 3, 3, 3), g.w(8)], pads=[1, 1, 1, 1])
    (a,) = g.op("BatchNormalization", [a, g.const(np.linspace(0.5, 1.5, 8).astype(f32)), g.w(8),
                                       g.w(8), g.const(np.linspace(0.5, 2, 8).astype(f32))], epsilon=1e-5)
    (a,) = g.op("Relu", [a])
    (b,) = g.op("Conv", [a, g.w(8, 1, 3, 3)], group=8, strides=[2, 2], pads=[0, 0, 1, 1])  # asymmetric pads
    (b,) = g.op("Conv", [b, g.w(8, 8, 3, 3), g.w(8)], auto_pad="SAME_UPPER")
    (b,) = g.op("Conv", [b, g.w(8, 8, 3, 3)], pads=[2, 2, 2, 2], dilations=[2, 2])
    (b2,) = g.op("Conv", [b, g.w(8, 8, 1, 1)])
    (b3,) = g.op("BatchNormalization", [b2, *(g.const(np.abs(g.rng.standard_normal(8)).astype(f32) + 0.5)
                                              for _ in range(4))])
    (b,) = g.op("Add", [b, b3])  # b2 has one reader, so this BN folds; b3 is read once more below
    for op in ("Sigmoid", "Tanh", "HardSwish", "Softplus", "Abs", "Neg", "Erf", "Identity", "Floor", "Ceil"):
        (u,) = g.op(op, [b])
        (b,) = g.op("Add", [b, u])
    (b,) = g.op("Mul", [b, g.const(np.full((1, 8, 1, 1), 0.1, f32))])
    (e,) = g.op("Exp", [b])
    (lg,) = g.op("Log", [g.op("Add", [e, g.const(np.array(1.0, f32))])[0]])
    (sq,) = g.op("Sqrt", [g.op("Abs", [lg])[0]])
    (rc,) = g.op("Reciprocal", [g.op("Add", [sq, g.const(np.array(1.0, f32))])[0]])
    (b,) = g.op("Sub", [b, rc])
    for op, attrs in (("LeakyRelu", {"alpha": 0.1}), ("Elu", {"alpha": 0.5}), ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
                      ("Selu", {}), ("Celu", {"alpha": 1.5})):
        (u,) = g.op(op, [b], **attrs)
        (b,) = g.op("Div", [b, g.op("Add", [u, g.const(np.array(2.0, f32))])[0]])
    (b,) = g.op("Clip", [b, g.const(np.array(-0.5, f32), as_node=True), g.const(np.array(6.0, f32))])
    (c6,) = g.op("Clip", [b, g.const(np.array(0.0, f32)), g.const(np.array(6.0, f32))])
    (b,) = g.op("Pow", [g.op("Add", [c6, g.const(np.array(1.0, f32))])[0], g.const(np.array(0.5, f32))])
    (mx,) = g.op("Max", [b, b3, g.const(np.array(0.2, f32))])
    (mn,) = g.op("Min", [b, b3])
    (sm,) = g.op("Sum", [mx, mn, b])
    (me,) = g.op("Mean", [mx, mn])
    (cond,) = g.op("Greater", [sm, me])
    (cond2,) = g.op("Less", [sm, g.const(np.array(3.0, f32))])
    (cond3,) = g.op("Equal", [g.op("Cast", [cond], to=TensorProto.INT64)[0], g.const(np.array(1, np.int64))])
    (both,) = g.op("And", [cond2, g.op("Or", [cond3, g.op("Not", [cond])[0]])[0]])
    (b,) = g.op("Where", [both, sm, me])
    (p1,) = g.op("MaxPool", [b], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    (p2,) = g.op("AveragePool", [b], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
    (p3,) = g.op("MaxPool", [b], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    (p3,) = g.op("Resize", [p3, "", g.const(np.array([1, 1, 2, 2], f32))], mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    (b,) = g.op("Concat", [p1, p2], axis=1)
    (b,) = g.op("Conv", [b, g.w(8, 16, 1, 1)])
    (b,) = g.op("Add", [b, p3])
    (gp,) = g.op("GlobalAveragePool", [b])
    (gm,) = g.op("GlobalMaxPool", [b])
    (se,) = g.op("Mul", [b, g.op("Sigmoid", [g.op("Add", [gp, gm])[0]])[0]])
    (up,) = g.op("ConvTranspose", [se, g.w(8, 4, 2, 2), g.w(4)], strides=[2, 2])
    (up,) = g.op("BatchNormalization", [up, *(g.const(np.abs(g.rng.standard_normal(4)).astype(f32) + 0.5)
                                              for _ in range(4))])  # not folded: a transposed conv's BN
    (r1,) = g.op("Resize", [se, "", "", g.const(np.array([1, 8, 16, 16], np.int64))], mode="linear",
                 coordinate_transformation_mode="half_pixel")
    (r2,) = g.op("Resize", [se, "", g.const(np.array([1, 1, 2, 2], f32))], mode="linear",
                 coordinate_transformation_mode="align_corners")
    (r3,) = g.op("Resize", [se, "", g.const(np.array([1, 1, 2, 2], f32))], mode="linear",
                 coordinate_transformation_mode="asymmetric")
    (r4,) = g.op("Resize", [se, "", g.const(np.array([1, 1, 2, 2], f32))], mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    (b,) = g.op("Concat", [up, r1, r2, r3, r4], axis=1)
    (pd,) = g.op("Pad", [b, g.const(np.array([0, 0, 1, 2, 0, 0, 1, 0], np.int64))], mode="reflect")
    (pd,) = g.op("Slice", [pd, g.const(np.array([1, 0], np.int64)), g.const(np.array([17, 100], np.int64)),
                           g.const(np.array([2, 3], np.int64)), g.const(np.array([1, 1], np.int64))])
    (pd,) = g.op("Slice", [pd, g.const(np.array([0], np.int64)), g.const(np.array([16], np.int64)),
                           g.const(np.array([3], np.int64))])
    (pd,) = g.op("Pad", [pd, g.const(np.array([0, 0, 0, 0, 0, 0, 0, 0], np.int64)), g.const(np.array(0.0, f32))])
    s1, s2 = g.op("Split", [pd, g.const(np.array([20, 16], np.int64))], n_out=2, axis=1)
    (sx,) = g.op("Softmax", [s1], axis=1)
    (ls,) = g.op("LogSoftmax", [s2], axis=1)
    (rm,) = g.op("ReduceMean", [sx, g.const(np.array([1], np.int64))], keepdims=1)
    (rs,) = g.op("ReduceSum", [ls, g.const(np.array([1], np.int64))], keepdims=1)
    (rx,) = g.op("ReduceMax", [ls, g.const(np.array([1], np.int64))], keepdims=1)
    (rn,) = g.op("ReduceMin", [sx, g.const(np.array([1], np.int64))], keepdims=1)
    (mp,) = g.op("Concat", [rm, rs, rx, rn], axis=1)
    (t,) = g.op("Transpose", [mp], perm=[0, 2, 3, 1])
    (t,) = g.op("Reshape", [t, g.const(np.array([0, -1, 4], np.int64))])
    (t,) = g.op("MatMul", [t, g.w(4, 6)])
    (t,) = g.op("Unsqueeze", [t, g.const(np.array([1], np.int64))])
    (t,) = g.op("Squeeze", [t, g.const(np.array([1], np.int64))])
    (fl,) = g.op("Flatten", [g.op("GlobalAveragePool", [pd])[0]], axis=1)
    (gm2,) = g.op("Gemm", [fl, g.w(5, 36), g.w(5)], transB=1, alpha=0.5, beta=2.0)
    # folded at import: arithmetic on constants only
    (k,) = g.op("Mul", [g.const(np.array([2.0], f32)), g.const(np.array([3.0], f32))])
    (gm2,) = g.op("Add", [gm2, k])
    # shape arithmetic, evaluated at import: (1, C, -1) from Shape and Gather, flattening a map by it
    (sh,) = g.op("Shape", [se])
    (ch,) = g.op("Gather", [sh, g.const(np.array([1], np.int64))], axis=0)
    (shp,) = g.op("Concat", [g.const(np.array([1], np.int64)), ch, g.const(np.array([-1], np.int64))], axis=0)
    (fl2,) = g.op("ReduceMax", [g.op("Reshape", [se, shp])[0], g.const(np.array([2], np.int64))], keepdims=0)
    model = g.model([t, gm2, b, fl2], [1, 3, 16, 16])
    used = {n.op_type for n in model.graph.node}
    return model, used


def _old_opset_graph() -> onnx.ModelProto:
    """Ops that newer opsets dropped: Upsample (opset 9)."""
    g = _Graph()
    (a,) = g.op("Conv", ["x", g.w(4, 3, 3, 3)], pads=[1, 1, 1, 1])
    (a,) = g.op("Upsample", [a, g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    return g.model([a], [1, 3, 8, 8], opset=9)


def test_every_supported_op_matches_onnxruntime_at_two_sizes() -> None:
    model, used = _every_op_graph()
    old = _old_opset_graph()
    used |= {n.op_type for n in old.graph.node}
    assert set(supported_ops()) <= used, f"ops without a parity test: {sorted(set(supported_ops()) - used)}"
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(OnnxGraphModule(old)(torch.from_numpy(x))[0].detach().numpy(), _ort(old, x)[0],
                               atol=1e-5)
    graph = OnnxGraphModule(model).eval()
    n_convs = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in graph.convs.values())
    assert n_convs == 7
    # the BN after the 1x1 conv with one reader is folded into it; the others run as scale-and-shift
    rng = np.random.default_rng(1)
    for size in ((16, 16), (24, 32)):  # at 24x32 the Resize to a fixed 16x16 must follow the input
        x = rng.standard_normal((1, 3, *size)).astype(np.float32)
        want = _ort(model if size == (16, 16) else _resized_graph(model, size), x)
        got = graph(torch.from_numpy(x))
        for g_, w_ in zip(got, want, strict=True):
            assert g_.shape == w_.shape
            np.testing.assert_allclose(g_.detach().numpy(), w_, atol=1e-4, rtol=1e-4)


def _resized_graph(model: onnx.ModelProto, size: tuple[int, int]) -> onnx.ModelProto:
    """The every-op graph written for another input size: the fixed Resize target scaled as the input is."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dims = out.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = size
    for init in out.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.int64 and arr.tolist() == [1, 8, 16, 16]:
            init.CopyFrom(numpy_helper.from_array(np.array([1, 8, size[0], size[1]], np.int64), init.name))
    return out


def test_unsupported_op_names_the_op_node_and_inputs() -> None:
    g = _Graph()
    (a,) = g.op("Conv", ["x", g.w(4, 3, 1, 1)])
    g.nodes.append(helper.make_node("NonZero", [a], ["nz"], name="find_them"))
    model = helper.make_model(helper.make_graph(
        g.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("nz", TensorProto.INT64, None)], g.inits),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError) as info:
        OnnxGraphModule(model)
    msg = str(info.value)
    assert "'NonZero'" in msg and "'find_them'" in msg and a in msg and "ONNX" in msg


def test_dynamic_sizes_need_an_input_size(tmp_path) -> None:
    g = _Graph()
    (a,) = g.op("Conv", ["x", g.w(4, 3, 1, 1)])
    model = g.model([a], [1, 3, "h", "w"])
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    with pytest.raises(ValueError, match=r"input_size=\(H, W\)"):
        from_onnx(path)
    t = from_onnx(path, input_size=(32, 48))
    assert t.input_size == (32, 48) and t(torch.rand(1, 3, 32, 48)).shape == (1, 4, 32, 48)


# ---------------------------------------------------------------------------------- PP-OCRv4 from its wheel
def _ppocr_path():
    from deltadistill.teachers.packaged import packaged_path

    try:
        return packaged_path("ppocr-det")
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("size", [(320, 640), (288, 512)])
def test_ppocr_matches_onnxruntime_on_real_frames(size) -> None:
    from deltadistill.video import default_videos, iter_frames

    path = _ppocr_path()
    teacher = from_onnx(path, input_size=size, value_range=(-1, 1))
    frames = np.stack(list(iter_frames(default_videos()["bikes"], size, "letterbox", 24, 26)))  # large text
    x = teacher.preprocess(frames)
    with torch.no_grad():
        got = teacher(x)
    want = _ort(onnx.load(str(path)), (x * 2 - 1).numpy())[0]
    assert got.shape == want.shape == (2, 1, *size)
    assert float(want.max()) > 0.5  # real text responses, not an all-zero map
    assert np.abs(got.numpy() - want).max() <= 1e-4
    assert teacher.size_multiple == 32 and teacher.task == "map"


# ---------------------------------------------------------------------------------- the whole job, by command line
def _small_dynamic_net(path) -> None:
    """A small segmenter with open input sizes: stride-2 conv, conv, 1x1 to one channel, 2x up, sigmoid."""
    g = _Graph()
    (a,) = g.op("Conv", ["x", g.w(8, 3, 3, 3), g.w(8)], strides=[2, 2], pads=[1, 1, 1, 1])
    (a,) = g.op("Relu", [a])
    (a,) = g.op("Conv", [a, g.w(8, 8, 3, 3), g.w(8)], pads=[1, 1, 1, 1])
    (a,) = g.op("Relu", [a])
    (a,) = g.op("Conv", [a, g.w(1, 8, 1, 1), g.w(1)])
    (a,) = g.op("Resize", [a, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    (a,) = g.op("Sigmoid", [a])
    onnx.save(g.model([a], [1, 3, "height", "width"]), path)


def test_imported_teacher_distills_saves_and_runs_from_what_the_model_records(tmp_path) -> None:
    """distill records the ONNX path, the size it chose from the video and the task; run and bench
    then need only --model."""
    import json

    from deltadistill.video import default_videos

    from .test_demo import cli

    net = tmp_path / "net.onnx"
    _small_dynamic_net(net)
    video = str(default_videos()["carphone_pristine"])  # 176x144: the open sizes become 176x144 rounded to 2
    r = cli("distill", "--teacher", str(net), "--videos", video, "--out", str(tmp_path / "d"), "--steps", "2",
            "--task", "segmentation", "--checkpoint-every", "1", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    extra = json.loads((tmp_path / "d" / "model" / "deltadistill.json").read_text())["extra"]
    assert extra["teacher"] == str(net.resolve()) and extra["teacher_input_size"] == [144, 176]
    assert extra["teacher_task"] == "segmentation"
    lines = tmp_path / "out.jsonl"
    r = cli("run", "--model", str(tmp_path / "d" / "model"), "--video", video, "--jsonl", str(lines), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(x) for x in lines.read_text().splitlines()]
    assert len(recs) == 120 and recs[0]["mask"]["size"] == [144, 176]


def test_map_task_scores_probability_maps_by_iou_and_other_maps_by_relative_error() -> None:
    from deltadistill.tasks import MapTask

    rng = np.random.default_rng(0)
    prob = [rng.random((1, 8, 8)).astype(np.float32) for _ in range(3)]
    task = MapTask(threshold=0.5)
    assert task.accuracy(prob, prob)["value"] == 1.0 and task.metric.startswith("mIoU")
    flipped = [1 - p for p in prob]  # every pixel on the other side of 0.5
    assert task.accuracy(flipped, prob)["value"] < 0.1
    raw = [rng.standard_normal((4, 8, 8)).astype(np.float32) for _ in range(3)]  # not a probability map
    r = task.accuracy([x * 1.1 for x in raw], raw)
    assert r["kind"] == "relative_error" and abs(r["value"] - 0.9) < 1e-6 and task.metric == "relative_accuracy_vs_teacher"


def test_a_tfjs_graph_imports_as_a_teacher_like_the_zoo_one() -> None:
    from deltadistill import teachers

    zoo = teachers.load("selfie")
    imported = teachers.from_tfjs(teachers.fetch("selfie") / "selfie.json")
    assert imported.input_size == zoo.input_size and imported.task == "map"
    x = torch.rand(1, 3, *zoo.input_size)
    with torch.no_grad():
        assert torch.equal(imported(x), zoo(x))
