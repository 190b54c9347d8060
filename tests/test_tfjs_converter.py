"""TF.js graph-model converter: TF numerics helpers, synthetic graphs, and parity with the TF.js runtime.

Parity tolerance: the fixtures come from the official TF.js CPU backend (scripts/tfjs_reference.js).
Both runtimes compute in float32 but sum convolutions in different orders, so after ~90 layers the
outputs differ by float32 rounding noise. Running our converted graph in float64 gives the same
distance to TF.js as in float32 (centernet box maps: 1.9e-3 on values up to 440, i.e. 4e-6 relative),
so that residual is TF.js's own rounding. We assert ``max|ours - tfjs| <= 1e-4 * max|tfjs|`` per
output, ~20x above what we observe and far below any change in decoded results.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deltadistill.teachers import TFJSGraphModule, UnsupportedOpError, conv_stats, fetch
from deltadistill.teachers.tfjs_ops import avg_pool, max_pool, pad_same, resize_bilinear, same_pads
from deltadistill.teachers.tfjs_weights import load_weights

FIXTURES = Path(__file__).parent / "fixtures"
CONV_OPS = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative", "Conv2DBackpropInput"}


# ---------------------------------------------------------------- synthetic graph helpers
def _s(text: str) -> dict[str, str]:
    import base64

    return {"s": base64.b64encode(text.encode()).decode()}


def _ilist(values: list[int]) -> dict[str, dict[str, list[str]]]:
    return {"list": {"i": [str(v) for v in values]}}


def _write_model(tmp_path: Path, nodes: list[dict], weights: dict[str, np.ndarray], input_hw: tuple[int, int, int],
                 outputs: list[str]) -> Path:
    """Write a graph-model json + one float32 shard; weights become Const nodes."""
    h, w, c = input_hw
    placeholder = {"name": "x", "op": "Placeholder",
                   "attr": {"shape": {"shape": {"dim": [{"size": "1"}, {"size": str(h)}, {"size": str(w)},
                                                         {"size": str(c)}]}}}}
    consts = [{"name": k, "op": "Const", "attr": {"value": {"tensor": {}}}} for k in weights]
    specs = [{"name": k, "shape": list(v.shape), "dtype": "int32" if v.dtype.kind == "i" else "float32"}
             for k, v in weights.items()]
    blob = b"".join(np.ascontiguousarray(v, dtype="<i4" if v.dtype.kind == "i" else "<f4").tobytes()
                    for v in weights.values())
    (tmp_path / "w.bin").write_bytes(blob)
    spec = {
        "format": "graph-model",
        "modelTopology": {"node": [placeholder, *consts, *nodes]},
        "signature": {"outputs": {o: {"name": o} for o in outputs}},
        "weightsManifest": [{"paths": ["w.bin"], "weights": specs}],
    }
    path = tmp_path / "model.json"
    path.write_text(json.dumps(spec))
    return path


def _conv_node(name: str, inp: str, weight: str, stride: int, padding: str = "SAME", op: str = "Conv2D",
               extra_inputs: tuple[str, ...] = (), fused: tuple[str, ...] = ()) -> dict:
    attr = {"strides": _ilist([1, stride, stride, 1]), "padding": _s(padding), "dilations": _ilist([1, 1, 1, 1])}
    if fused:
        import base64

        attr["fused_ops"] = {"list": {"s": [base64.b64encode(f.encode()).decode() for f in fused]}}
        attr["num_args"] = {"i": str(len(extra_inputs))}
    return {"name": name, "op": op, "input": [inp, weight, *extra_inputs], "attr": attr}


def _nhwc(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- TF numerics helpers
@pytest.mark.parametrize(
    ("size", "k", "s", "expected"),
    [(256, 3, 2, (0, 1)), (5, 3, 2, (1, 1)), (7, 5, 1, (2, 2)), (4, 2, 1, (0, 1)), (10, 1, 2, (0, 0)), (256, 5, 2, (1, 2))],
)
def test_same_pads_hand_cases(size: int, k: int, s: int, expected: tuple[int, int]) -> None:
    assert same_pads(size, k, s) == expected


def test_pad_same_puts_extra_pixel_bottom_right() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = pad_same(x, (3, 3), (2, 2))
    assert y.shape == (1, 1, 5, 5)
    assert torch.equal(y[0, 0, :4, :4], x[0, 0]) and y[0, 0, 4].abs().sum() == 0 and y[0, 0, :, 4].abs().sum() == 0


@pytest.mark.parametrize("shape", [(1, 64, 64, 64), (2, 5, 7, 9), (1, 1, 4, 4), (1, 3, 1, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("value", [0.0, -1.5])
def test_pad_same_equals_f_pad_and_keeps_the_layout(shape, channels_last: bool, value: float) -> None:
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for kernel, stride in (((3, 3), (2, 2)), ((5, 5), (2, 2)), ((4, 4), (1, 1)), ((1, 3), (1, 2))):
        top, bottom = same_pads(shape[2], kernel[0], stride[0])
        left, right = same_pads(shape[3], kernel[1], stride[1])
        out = pad_same(x, kernel, stride, value=value)
        assert torch.equal(out, torch.nn.functional.pad(x, (left, right, top, bottom), value=value))
        if channels_last and out is not x:
            assert out.is_contiguous(memory_format=torch.channels_last)


def test_legacy_bilinear_resize_hand_cases() -> None:
    # TF1 legacy mode samples at dst * in/out: [0, 10] -> 4 gives src 0, .5, 1, 1.5(clamped) -> 0, 5, 10, 10
    x = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2)
    assert resize_bilinear(x, (1, 4)).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    # torch's align_corners=False (half-pixel) would give 0, 2.5, 7.5, 10 -- a different function
    x3 = torch.tensor([0.0, 3.0, 6.0]).view(1, 1, 1, 3)
    assert resize_bilinear(x3, (1, 2)).flatten().tolist() == [0.0, 4.5]
    x2 = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    expected = torch.tensor([[0, 0.5, 1, 1], [1, 1.5, 2, 2], [2, 2.5, 3, 3], [2, 2.5, 3, 3]])
    assert torch.equal(resize_bilinear(x2, (4, 4))[0, 0], expected)
    # the other two TF modes agree with torch
    r = torch.rand(1, 3, 5, 7)
    hp = resize_bilinear(r, (9, 4), half_pixel_centers=True)
    assert torch.allclose(hp, torch.nn.functional.interpolate(r, size=(9, 4), mode="bilinear", align_corners=False))
    ac = resize_bilinear(r, (9, 4), align_corners=True)
    assert torch.allclose(ac, torch.nn.functional.interpolate(r, size=(9, 4), mode="bilinear", align_corners=True))


def test_avg_pool_same_excludes_padding_and_max_pool_ignores_it() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert avg_pool(x, (2, 2), (2, 2), "SAME")[0, 0].tolist() == [[2.0, 3.5], [6.5, 8.0]]
    neg = -torch.ones(1, 1, 3, 3)
    assert torch.equal(max_pool(neg, (2, 2), (2, 2), "SAME"), -torch.ones(1, 1, 2, 2))
    assert torch.equal(max_pool(neg, (3, 3), (1, 1), "SAME"), neg)


# ---------------------------------------------------------------- weights manifest
def test_weights_quantization_formats(tmp_path: Path) -> None:
    q8 = np.array([0, 1, 255], dtype=np.uint8)
    q16 = np.array([0, 2, 65535], dtype="<u2")
    f16 = np.array([0.5, -2.25], dtype="<f2")
    (tmp_path / "a.bin").write_bytes(q8.tobytes() + q16.tobytes() + f16.tobytes())
    manifest = [{"paths": ["a.bin"], "weights": [
        {"name": "u8", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "u16", "shape": [3], "dtype": "float32",
         "quantization": {"dtype": "uint16", "scale": 0.25, "min": 1.0}},
        {"name": "f16", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
    ]}]
    (tmp_path / "m.json").write_text(json.dumps({"weightsManifest": manifest}))
    w = load_weights(tmp_path / "m.json")
    assert w["u8"].tolist() == [-1.0, -0.5, 126.5]
    assert w["u16"].tolist() == [1.0, 1.5, 65535 * 0.25 + 1.0]
    assert w["f16"].tolist() == [0.5, -2.25] and w["f16"].dtype == np.float32


# ---------------------------------------------------------------- synthetic graphs
def test_same_stride2_conv_matches_hand_computation(tmp_path: Path) -> None:
    ones = np.ones((3, 3, 1, 1), np.float32)
    path = _write_model(tmp_path, [_conv_node("conv", "x", "w", 2)], {"w": ones}, (4, 4, 1), ["conv"])
    model = TFJSGraphModule(path)
    (y,) = model(torch.arange(16.0).view(1, 1, 4, 4))
    assert y[0, 0].tolist() == [[45.0, 39.0], [66.0, 50.0]]
    assert isinstance(model.convs["conv"], nn.Conv2d)


def test_fused_depthwise_bias_relu6_and_nhwc_axes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dw = rng.normal(size=(3, 3, 2, 2)).astype(np.float32)  # channel multiplier 2 -> 4 outputs
    bias = rng.normal(size=(4,)).astype(np.float32)
    nodes = [
        _conv_node("dw", "x", "dw_w", 1, op="FusedDepthwiseConv2dNative", extra_inputs=("dw_b",),
                   fused=("BiasAdd", "Relu6")),
        {"name": "mean", "op": "Mean", "input": ["dw", "axes"], "attr": {"keep_dims": {"b": True}}},
        {"name": "mul", "op": "Mul", "input": ["dw", "mean"]},
        {"name": "cat", "op": "ConcatV2", "input": ["mul", "dw", "cat_axis"]},
    ]
    path = _write_model(tmp_path, nodes, {"dw_w": dw, "dw_b": bias, "axes": np.array([1, 2], np.int32),
                                          "cat_axis": np.array(3, np.int32)}, (5, 6, 2), ["cat"])
    model = TFJSGraphModule(path)
    x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
    (y,) = model(_nhwc(x))
    # reference in NHWC numpy: depthwise with TF's channel order out = c * mult + m
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.zeros((1, 5, 6, 4), np.float32)
    for i in range(5):
        for j in range(6):
            patch = xp[0, i : i + 3, j : j + 3, :]  # 3,3,2
            ref[0, i, j] = np.einsum("hwc,hwcm->cm", patch, dw).reshape(-1)
    ref = np.clip(ref + bias, 0, 6)
    ref = np.concatenate([ref * ref.mean(axis=(1, 2), keepdims=True), ref], axis=3)
    np.testing.assert_allclose(y.permute(0, 2, 3, 1).detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    assert model.convs["dw"].groups == 2


def test_transposed_conv_same_crops_like_tf(tmp_path: Path) -> None:
    # 2x2 ones, 3x3 ones kernel, stride 2, SAME -> 4x4. Full output coverage per axis is [1, 1, 2, 1, 1];
    # TF pads the (virtual) forward conv by (0, 1), so it keeps the first 4 positions.
    node = {"name": "up", "op": "Conv2DBackpropInput", "input": ["sizes", "k", "x"],
            "attr": {"strides": _ilist([1, 2, 2, 1]), "padding": _s("SAME")}}
    path = _write_model(tmp_path, [node], {"sizes": np.array([1, 4, 4, 1], np.int32),
                                           "k": np.ones((3, 3, 1, 1), np.float32)}, (2, 2, 1), ["up"])
    model = TFJSGraphModule(path)
    (y,) = model(torch.ones(1, 1, 2, 2))
    line = torch.tensor([1.0, 1.0, 2.0, 1.0])
    assert torch.equal(y[0, 0], line[:, None] * line[None, :])
    assert isinstance(model.convs["up"], nn.ConvTranspose2d)


def test_unknown_op_names_op_and_node(tmp_path: Path) -> None:
    nodes = [{"name": "weird/node", "op": "FancyOp", "input": ["x"]}]
    path = _write_model(tmp_path, nodes, {}, (4, 4, 1), ["weird/node"])
    with pytest.raises(UnsupportedOpError, match="FancyOp") as info:
        TFJSGraphModule(path)
    assert "weird/node" in str(info.value) and info.value.op == "FancyOp"


def test_swapped_conv_module_is_what_runs(tmp_path: Path) -> None:
    """Later stages replace conv modules by wrappers; execution must follow the swap (and deepcopy)."""
    w = np.ones((1, 1, 1, 1), np.float32)
    path = _write_model(tmp_path, [_conv_node("c", "x", "w", 1)], {"w": w}, (2, 2, 1), ["c"])
    model = TFJSGraphModule(path)
    twin = copy.deepcopy(model)

    class Double(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.inner(x)

    model.convs["c"] = Double(model.convs["c"])
    x = torch.ones(1, 1, 2, 2)
    assert model(x)[0].sum().item() == 8.0
    assert twin(x)[0].sum().item() == 4.0
    twin.convs["c"].weight.data.fill_(3.0)
    assert twin(x)[0].sum().item() == 12.0


# ---------------------------------------------------------------- real graphs vs TF.js
def _close(ours: np.ndarray, ref: np.ndarray) -> float:
    err = float(np.abs(ours - ref).max())
    assert err <= 1e-4 * float(np.abs(ref).max()), err
    return err


@pytest.fixture(scope="module")
def centernet_graph() -> TFJSGraphModule:
    return TFJSGraphModule(fetch("centernet") / "centernet.json").eval()


@pytest.fixture(scope="module")
def selfie_graph() -> TFJSGraphModule:
    return TFJSGraphModule(fetch("selfie") / "selfie.json").eval()


def test_centernet_parity_with_tfjs(centernet_graph: TFJSGraphModule) -> None:
    torch.set_num_threads(2)
    x = _nhwc(np.load(FIXTURES / "centernet_input.npy")[None])
    assert centernet_graph.output_names == ["tower_0/wh", "tower_0/keypoints", "tower_0/detections"]
    with torch.no_grad():
        wh, heat, det = centernet_graph(x)
    stats = json.loads((FIXTURES / "centernet_tfjs.json").read_text())
    _close(heat.permute(0, 2, 3, 1).numpy()[:, ::4, ::4], np.load(FIXTURES / "centernet_keypoints.npy"))
    _close(wh.permute(0, 2, 3, 1).numpy(), np.load(FIXTURES / "centernet_wh.npy"))
    assert abs(heat.double().sum().item() - stats["keypoints"]["sum"]) < 1e-5 * stats["keypoints"]["sum"]
    assert abs(heat.max().item() - stats["keypoints"]["max"]) < 1e-5
    # the in-graph decoder (TopKV2, GatherV2, FloorDiv/Mod, StridedSlice, ...) on rows with clear peaks
    ref_det = np.load(FIXTURES / "centernet_detections.npy")
    top = ref_det[0, :, 4] > 0.05
    _close(det.numpy()[0, top], ref_det[0, top])


def test_selfie_parity_with_tfjs(selfie_graph: TFJSGraphModule) -> None:
    torch.set_num_threads(2)
    x = _nhwc(np.load(FIXTURES / "selfie_input.npy")[None]) / 255.0
    with torch.no_grad():
        (mask,) = selfie_graph(x)
    _close(mask.permute(0, 2, 3, 1).numpy(), np.load(FIXTURES / "selfie_mask.npy"))


def _graph_conv_nodes(json_path: Path) -> int:
    nodes = json.loads(json_path.read_text())["modelTopology"]["node"]
    return sum(n["op"] in CONV_OPS for n in nodes)


@pytest.mark.parametrize(("name", "size", "expected"), [
    ("centernet", 512, {"conv": 63, "depthwise": 26, "transposed": 0}),
    ("selfie", 256, {"conv": 43, "depthwise": 11, "transposed": 1}),
])
def test_all_convolutions_are_registered_modules(name: str, size: int, expected: dict[str, int], request) -> None:
    graph: TFJSGraphModule = request.getfixturevalue(f"{name}_graph")
    kinds = {type(m) for m in graph.modules()} - {TFJSGraphModule, nn.ModuleDict}
    assert kinds <= {nn.Conv2d, nn.ConvTranspose2d}
    assert len(graph.convs) == _graph_conv_nodes(fetch(name) / f"{name}.json")
    calls: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, a, o: calls.append(m)) for m in graph.convs.values()]
    stats = conv_stats(graph, torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    assert len(calls) == len(graph.convs) == len(set(map(id, calls)))  # each conv runs once, as a module
    assert {k: stats[k] for k in expected} == expected
    if name == "centernet":
        assert 1.25e9 < stats["macs"] < 1.35e9  # measured 1.295 GMAC
