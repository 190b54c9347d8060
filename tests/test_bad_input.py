"""Bad input to every command: one clear line on stderr, exit code 2, no traceback, no partial output.

One table: the command line (``{V}`` a real video, ``{T}`` a text file named .mp4, ``{D}`` an
existing directory, ``{F}`` a non-empty directory, ``{M}`` a selfie model directory, ``{O}`` the
output the command must not leave behind), the words the message must hold, and the exit code.
Each case runs the command in this process (typer's CliRunner): the code path of the installed
command, in seconds instead of a fresh interpreter each. Real processes exit 2 the same way in
tests/test_runtime.py and tests/test_train.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deltadistill as dd
from deltadistill import teachers
from deltadistill.apps.cli import app
from deltadistill.video import default_videos

CASES = [
    ("distill --teacher nosuch --videos {V} --out {O}", "unknown teacher 'nosuch'"),
    ("distill --teacher tinyseg --videos /nope.mp4 --out {O}", "video not found: /nope.mp4"),
    ("distill --teacher tinyseg --videos {T} --out {O}", "not a video file ffmpeg understands"),
    ("distill --teacher tinyseg --videos {V} --out {O} --budget 1.5", "budget is a fraction"),
    ("distill --teacher tinyseg --videos {V} --out {F}/x.json/sub", "cannot write checkpoints"),
    ("bench --teacher selfie --video {T} --sparse 0.1 --start 20 --json {O}", "not a video file ffmpeg understands"),
    ("bench --teacher selfie --video {V} --sparse 0.1 --start 20 --json {D}", "--json {D} is a directory"),
    ("bench --teacher selfie --video {V} --sparse 0.1 --start 400 --json {O}", "past the end"),
    ("bench --teacher selfie --video {V} --model {D} --json {O}", "not a deltadistill checkpoint"),
    ("bench --teacher selfie --video {V} --model {M} --backend tensorrt --json {O}", "backend must be"),
    ("bench --teacher selfie --video {V} --runtime crop --sparse 0.1 --json {O}", "--runtime crop reruns the teacher"),
    ("bench --teacher selfie --video {V} --sparse 0.1 --runtime bogus --json {O}", "--runtime must be one of"),
    ("run --teacher selfie --video {V} --runtime tiles --jsonl {O}", "--runtime tiles runs a delta model"),
    ("run --teacher selfie --video {V} --runtime tiles --backend openvino --jsonl {O}", "--runtime tiles runs on torch"),
    ("run --teacher selfie --video {V} --runtime crop --backend onnxruntime --jsonl {O}", "--runtime crop runs on"),
    ("demo --teacher nosuch --out {O}", "no demo for teacher 'nosuch'"),
    ("export --model /nope --out {O}", "model directory not found: /nope"),
    ("export --model {M} --out {F}", "exists and is not empty"),
    ("export --model {M} --teacher centernet --out {O}", "was made for teacher 'selfie', not 'centernet'"),
    ("run --teacher selfie --video {T} --jsonl {O}", "not a video file ffmpeg understands"),
    ("run --teacher selfie --video /nope.mp4 --jsonl {O}", "video not found"),
    ("run --teacher nosuch --video {V} --jsonl {O}", "unknown teacher 'nosuch'"),
    ("run --model {M} --teacher centernet --video {V} --jsonl {O}", "was made for teacher 'selfie'"),
    ("run --model {M} --video {V} --out {D} --jsonl {O}", "is a directory"),
    ("run --model {M} --video {V} --backend tensorrt --jsonl {O}", "--backend must be one of"),
    ("run --video {V} --jsonl {O}", "give --teacher"),
    ("run --teacher selfie --video {V} --video {V} --jsonl {O}", "give --out-dir"),
    ("run --teacher selfie --jsonl {O}", "no videos"),
    ("run --teacher selfie --video {V} --videos-from /nope.txt --jsonl {O}", "video list not found"),
    ("run --teacher selfie --videos-from {L} --out-dir {P}", "video not found: /nope.mp4"),
    ("run --teacher {U} --video {V} --jsonl {O}", "unsupported ONNX op 'NonZero' in node 'find_them' (inputs: y)"),
    ("bench --teacher {X} --video {V} --sparse 0.1 --start 20 --json {O}", "is not a readable ONNX model"),
    ("run --teacher ppocr-det --video {V} --input-size 100x7 --jsonl {O}", "multiples of 32, got 100x7"),
    ("run --teacher ppocr-det --video {V} --input-size big --jsonl {O}", "--input-size must be HxW"),
    ("distill --teacher {N} --videos {V} --value-range 1 --out {O}", "--value-range must be low,high"),
    ("run --model {M} --video {V} --target 0.5x --jsonl {O}", "cost target '0.5x' is below 1x"),
    ("run --model {M} --video {V} --target fast --jsonl {O}", "cost target 'fast' is not a ratio like 3x"),
    ("run --model {M} --video {V} --target 500x --jsonl {O}", "500x is above this model's maximum"),
    ("run --teacher selfie --video {V} --target 3x --jsonl {O}", "--target steers a delta model's sparse layers"),
    ("run --model {M} --video {V} --target 3x --backend openvino --jsonl {O}", "--target runs on the torch backend"),
    ("bench --model {M} --video {V} --target 0x --json {O}", "is below 1x"),
    ("demo --target 3y --out {O}", "cost target '3y' is not a ratio"),
    ("demo --teacher centernet --steps 5 --target 3x --out {O}", "--target steers sparse students"),
    ("demo --target 4x --out {O}", "above what a keyframe every 4 frames allows"),
    ("demo --target 3.95x --quick --out {O}", "3.95x is above this model's maximum"),
    # issue 29: tracebacks, and impossible values taken silently
    ("run --teacher selfie --video {V} --threads -1 --jsonl {O}", "--threads must be 0"),
    ("bench --teacher selfie --video {V} --sparse 0.1 --start 20 --threads -1 --json {O}", "--threads must be 0"),
    ("demo --threads -1 --out {O}", "--threads must be 0"),
    ("run --teacher {G} --video {V} --jsonl {O}", "takes 1-channel input; deltadistill feeds RGB frames"),
    ("demo --teacher {G} --out {O}", "takes 1-channel input"),
    ("run --teacher {W} --video {V} --jsonl {O}", "is uint8, but frames go in as floats"),
    ("bench --teacher {Z} --video {V} --runtime crop --start 20 --json {O}", "has no convolutions"),
    ("run --teacher {Z} --video {V} --runtime crop --jsonl {O}", "has no convolutions"),
    ("run --teacher {N} --video {V} --input-size 100000x100000 --jsonl {O}", "too large for this machine"),
    ("bench --teacher selfie --video {V} --sparse nan --start 20 --json {O}", "--sparse must be a finite number"),
    ("bench --teacher selfie --video {V} --sparse inf --start 20 --json {O}", "--sparse must be a finite number"),
    ("bench --teacher selfie --video {V} --sparse -1 --start 20 --json {O}", "cannot be negative"),
    ("run --teacher {N} --video {V} --value-range 0,inf --jsonl {O}", "--value-range must be two finite numbers"),
    ("run --teacher {N} --video {V} --value-range -1e309,1 --jsonl {O}", "--value-range must be two finite"),
    ("run --teacher {N} --video {V} --value-range 1,0 --jsonl {O}", "low below high"),
    ("run --teacher {N} --video {V} --runtime crop --crop-threshold 5 --jsonl {O}", "nothing would ever be recomputed"),
    ("bench --teacher selfie --video {V} --runtime crop --crop-threshold 5 --start 20 --json {O}",
     "nothing would ever be recomputed"),
    ("run --teacher selfie --video {V} --rate-mode bogus --jsonl {O}", "--rate-mode must be one of threshold, topk"),
    ("bench --model {M} --video {V} --rate-mode bogus --json {O}", "--rate-mode must be one of"),
    ("bench --teacher selfie --video {J} --sparse 0.1 --calib-videos {V} --json {O}",
     "bench times frames after a warm-up of 3: frames 0..0 of one.mp4 are 1"),
    ("bench --teacher selfie --video {Q} --sparse 0.1 --start 30 --json {O}", "past the last good frame 22"),
    ("bench --teacher selfie --video {V} --sparse 0.1 --start 20 --sweep --intervals 2,abc --json {O}",
     "--intervals must be comma-separated whole numbers, got '2,abc'"),
    ("run --teacher selfie --video {V} --scene-cut inf --jsonl {O}", "--scene-cut must be a finite number"),
    ("bench --teacher selfie --video {V} --sparse 0.1 --start 20 --scene-cut inf --json {O}", "--scene-cut must be"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    (root / "text.mp4").write_text("not a video\n")
    (root / "dir").mkdir()
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("mine")
    (root / "full" / "x.json").write_text("a file, not a directory")
    teacher = teachers.load("selfie")
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    for _, layer in dd.core.modes.delta_layers(model):
        layer.students["sparse"].threshold.fill_(0.1)
    dd.save(dd.deploy(model), root / "selfie_model", extra={"teacher": "selfie"})
    (root / "text.onnx").write_text("not a graph\n")
    (root / "list.txt").write_text(f"{default_videos()['carphone_pristine']}\n/nope.mp4\n")  # a good one first
    _onnx_files(root)
    _damaged_videos(root)
    return {"V": str(default_videos()["bikes"]), "T": str(root / "text.mp4"), "D": str(root / "dir"),
            "F": str(root / "full"), "M": str(root / "selfie_model"), "root": str(root),
            "U": str(root / "nonzero.onnx"), "X": str(root / "text.onnx"), "N": str(root / "net.onnx"),
            "J": str(root / "one.mp4"), "Q": str(root / "tail.mp4"), "K": str(root / "cut.mkv"),
            "L": str(root / "list.txt"), "P": str(root / "dir" / "never"),
            "G": str(root / "grey.onnx"), "W": str(root / "uint8.onnx"), "Z": str(root / "noconv.onnx")}


def _damaged_videos(root: Path) -> None:
    """``one.mp4``: one frame; ``tail.mp4``: 40 frames declared, its data zeroed from the middle on (frames
    0..22 decode); ``cut.mkv``: 40 frames declared, the file cut at half (frames 0..19 decode)."""
    import av

    from deltadistill.video import iter_frames

    def write(path: Path, fmt: str, n: int) -> bytes:
        with av.open(str(path), mode="w", format=fmt) as out:
            s = out.add_stream("mpeg4", rate=25)
            s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
            for f in iter_frames(default_videos()["bikes"], size=(240, 320), stop=n):
                out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            out.mux(s.encode())
        return path.read_bytes()

    write(root / "one.mp4", "mp4", 1)
    data = bytearray(write(root / "tail.mp4", "mp4", 40))
    moov = data.find(b"moov")  # the index, at the end: the frames before it stay listed
    data[moov // 2:moov - 8] = bytes(moov - 8 - moov // 2)
    (root / "tail.mp4").write_bytes(bytes(data))
    whole = write(root / "cut.mkv", "matroska", 40)
    (root / "cut.mkv").write_bytes(whole[:len(whole) // 2])


def _onnx_files(root: Path) -> None:
    """``nonzero.onnx``: a conv, then an op the importer lacks; ``net.onnx``: a conv the importer takes;
    ``grey.onnx``: one input channel; ``uint8.onnx``: a uint8 input; ``noconv.onnx``: no conv at all."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def x(channels: int = 3, kind: int = TensorProto.FLOAT):
        return helper.make_tensor_value_info("x", kind, [1, channels, 32, 32])

    def w(channels: int = 3):
        return [numpy_helper.from_array(np.ones((4, channels, 1, 1), np.float32), "w")]

    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    for name, nodes, inp, consts, out in (
            ("nonzero", [conv, helper.make_node("NonZero", ["y"], ["z"], name="find_them")], x(), w(), "z"),
            ("net", [conv], x(), w(), "y"),
            ("grey", [conv], x(1), w(1), "y"),
            ("uint8", [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT, name="cast"),
                       helper.make_node("Conv", ["f", "w"], ["y"], name="conv")], x(3, TensorProto.UINT8), w(), "y"),
            ("noconv", [helper.make_node("Relu", ["x"], ["y"], name="relu")], x(), [], "y")):
        graph = helper.make_graph(nodes, name, [inp], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                                  consts)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / f"{name}.onnx")


@pytest.mark.parametrize("line,words", CASES, ids=[c[0].split(" --")[0] + ": " + c[1] for c in CASES])
def test_bad_input_gets_one_line_and_exit_2_and_leaves_nothing(places: dict[str, str], line: str, words: str,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "never" / "out.json"
    before = {p: sorted(Path(places[p]).rglob("*")) for p in ("D", "F", "M")}
    args = line.format(**places, O=out).split()
    r = CliRunner().invoke(app, args)  # in this process: the same code path as the command, without a
    err = [x for x in r.stderr.splitlines() if x.strip()]  # fresh interpreter and torch import per case
    assert r.exit_code == 2, (r.stderr[-2000:], r.exception)
    assert len(err) == 1 and words.format(**places) in err[0] and err[0].startswith("error: "), err
    assert not (tmp_path / "never").exists()  # no output, not even its directory
    assert {p: sorted(Path(places[p]).rglob("*")) for p in ("D", "F", "M")} == before  # nothing touched


@pytest.mark.parametrize("data,words", [(b"", "no frames on standard input: it is empty"),
                                        (b"garbage\n", "cannot read video from standard input")])
def test_bad_standard_input_is_one_line_without_a_progress_bar(places: dict[str, str], data: bytes, words: str,
                                                               tmp_path: Path) -> None:
    """`run --video -` on an empty or garbage pipe, in a real process with a real stdin: only the error
    line on stderr. Breakage caught: the progress bar drawn before the first frame was read (two
    lines), and an empty pipe reported as ffmpeg's "Invalid data found" (issue 29, 14)."""
    import os
    import subprocess
    import sys

    src = str(Path(dd.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "never" / "seen.jsonl"
    r = subprocess.run([sys.executable, "-m", "deltadistill", "run", "--teacher", places["N"], "--video", "-",
                        "--jsonl", str(out)], input=data, capture_output=True, env=env, timeout=300)
    err = [x for x in r.stderr.decode().splitlines() if x.strip()]
    assert r.returncode == 2 and len(err) == 1 and words in err[0] and err[0].startswith("error: "), err
    assert not (tmp_path / "never").exists()


def test_a_damaged_video_warns_once_in_one_line(places: dict[str, str], tmp_path: Path) -> None:
    """`run` on a video cut off at half: one warning line on stderr, naming the file and the last good
    frame, without the library's source path, then the run on the good frames. Breakage caught:
    Python's default format (``reader.py:NNN: VideoWarning: ...`` and the source line) and the
    warning printed twice, once when counting frames and once when running (issue 29, 18)."""
    out = tmp_path / "seen.jsonl"
    r = CliRunner().invoke(app, ["run", "--teacher", places["N"], "--video", places["K"], "--jsonl", str(out)])
    assert r.exit_code == 0, r.stderr[-2000:]
    said = [x for x in r.stderr.splitlines() if "last good" in x or "reader.py" in x or "warnings.warn" in x]
    assert said == ["warning: cut.mkv: frame 19 is the last good one; the file declares 40 frames: it is cut off "
                    "or damaged. Using the 20 frames before the damage."], said
    assert len(out.read_text().splitlines()) == 20
