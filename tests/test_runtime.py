"""ONNX export (keyframe and delta graphs with the state outside), the onnxruntime stream, and `deltadistill run`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
import torch

import deltadistill as dd
from deltadistill import teachers
from deltadistill.apps.demo import PLANS
from deltadistill.core.modes import delta_layers
from deltadistill.runtime import export_onnx, read_manifest
from deltadistill.runtime.onnx_stream import OnnxStream
from deltadistill.video import VideoClips, VideoWriter, default_videos, iter_frames

from .conftest import free_port, make_video
from .test_demo import cli


def demo_like_model(name: str, input_size: tuple[int, int] | None = None) -> torch.nn.Module:
    """The model `make demo` ships for ``name``: sparse students at the plan's level, set on the plan's
    videos (at ``input_size``, where given, instead of the teacher's own)."""
    teacher, plan, videos = teachers.load(name, input_size=input_size), PLANS[name], default_videos()
    clips = VideoClips([videos[v] for v in plan.train_videos], clip_len=3, max_interval=plan.keyframe_interval - 1,
                       size=tuple(teacher.input_size), value_range=teacher.input_range, seed=1, fit="letterbox")
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    dd.sparsify(model, clips, level=plan.sparse_level)
    return dd.deploy(model)


def bikes(teacher, n: int, start: int = 150) -> list[torch.Tensor]:
    frames = iter_frames(default_videos()["bikes"], size=tuple(teacher.input_size), start=start, stop=start + n)
    return [teacher.preprocess(f[None]) for f in frames]


def assert_same_stream(model: torch.nn.Module, onnx_dir: Path, frames: list[torch.Tensor], k: int,
                       flips: bool = False) -> int:
    """Torch and onnxruntime over the same frames agree to 1e-4 of each output's scale, beyond what
    onnxruntime already loses on the teacher itself (the keyframe graph run on that frame, or on the
    last keyframe, whose features a delta frame builds on).

    That floor is not ours: on selfie, the plain teacher exported differs from torch by up to 9e-4 at
    a few dozen of 65536 pixels (torch fp32 against fp64: 1.2e-4; onnxruntime against fp64: 8e-4).

    ``flips``: sparse students compare each pixel's score with a threshold, and that float noise
    flips the pixels that sit on it. A flip moves the output by about what sparsity itself moves it
    at that pixel (on centernet at threshold 0.01, one frame in 30: 5% of the box values by up to
    0.9 px). So on delta frames the two backends may differ beyond the bound by at most a tenth of
    the model's own largest error against the teacher, and on average by a twentieth of its average
    error; keyframes, where the model is the teacher, keep the strict bound. A wrong or stale state
    moves outputs by as much as the model's own error, or more, and fails.
    """
    torch_stream, ort_stream = dd.DeltaStream(model, k), OnnxStream(onnx_dir, keyframe=k)
    teacher = copy.deepcopy(model)
    keys, key_floor = 0, []
    for x in frames:
        want, got = torch_stream(x), ort_stream(x)
        want = want if isinstance(want, tuple) else (want,)
        got = got if isinstance(got, tuple) else (got,)
        with torch.no_grad(), dd.core.modes.mode(teacher, "teacher"):
            plain = teacher(x)
        plain = plain if isinstance(plain, tuple) else (plain,)
        plain_ort = ort_stream.key_session.run(None, {"frame": x.numpy()})[:len(plain)]
        assert ort_stream.last_key == torch_stream.last_key
        keys += bool(ort_stream.last_key)
        floors = [float((p - torch.from_numpy(po)).abs().max()) for p, po in zip(plain, plain_ort, strict=True)]
        if ort_stream.last_key:
            key_floor = floors
        for w, g, p, f, kf in zip(want, got, plain, floors, key_floor, strict=True):
            scale = max(1.0, float(w.abs().max()))  # float32 sums: box sizes in pixels reach ~400
            err = (w - g).abs()
            bound = max(f, kf) + 1e-4 * scale
            if flips:
                own = (w - p).abs()  # the delta model's own error against the teacher on this frame
                assert float(err.max()) <= bound + 0.1 * float(own.max())
                assert float(err.mean()) <= bound + 0.05 * float(own.mean())
            else:
                assert float(err.max()) <= bound
    return keys


# centernet at 256x256, not its own 512x512: onnxruntime runs it 3-7x slower than torch, and 30 frames
# at 512 took over 3 minutes of the suite. The graphs and the state are the same at any size.
@pytest.mark.parametrize("name, size", [("selfie", None), ("centernet", (256, 256))])
def test_exported_demo_model_matches_the_torch_stream_over_30_frames(name: str, size, tmp_path: Path) -> None:
    model = demo_like_model(name, size)
    teacher = teachers.load(name, input_size=size)
    export_onnx(model, tmp_path, input_size=tuple(teacher.input_size), keyframe_interval=4, meta={"teacher": name})
    manifest = read_manifest(tmp_path)
    delta_inputs = [i.name for i in onnx.load(str(tmp_path / "delta.onnx"), load_external_data=False).graph.input]
    assert delta_inputs == ["frame", *[s["name"] for s in manifest["state"]]]
    assert manifest["teacher"] == name and manifest["macs"]["data_dependent"] is True
    # a sparse student keeps its keyframe's input and output: two state tensors per layer
    assert len(manifest["state"]) == 2 * len(list(delta_layers(model)))
    assert assert_same_stream(model, tmp_path, bikes(teacher, 30), k=4, flips=True) == 8


def test_exported_graph_that_skips_zero_students_stays_exact(tmp_path: Path) -> None:
    teacher = teachers.load("selfie")
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="compressed", reduction=4))
    layers = list(delta_layers(model))
    for _, layer in layers[len(layers) // 2:]:  # the second half repeats its keyframe output: skipped work
        layer.set_students({"zero": dd.STUDENTS["zero"].from_teacher(layer.base, model.delta_report.config)})
    dd.deploy(model)
    skipped = dd.DeltaStream(model, 4)
    frames = bikes(teacher, 6)
    skipped(frames[0])
    skipped(frames[1])
    assert any(c for c in skipped.aware_caches), "the graph should cache its static border on a keyframe"
    export_onnx(model, tmp_path, input_size=tuple(teacher.input_size))
    names = [s["name"] for s in read_manifest(tmp_path)["state"]]
    assert any(n.startswith("state.graph") for n in names)  # the cached border travels as state
    assert any(n.endswith(".c") for n in names)  # linear students keep only c = z_k - g(x_k)
    assert assert_same_stream(model, tmp_path, frames, k=4) == 2


def test_running_students_export_with_their_moving_reference(tiny, tmp_path: Path) -> None:
    model = dd.convert(copy.deepcopy(tiny), dd.DeltaConfig(student="sparse_running"))
    for _, layer in delta_layers(model):
        layer.students["sparse_running"].threshold.fill_(0.05)
    dd.deploy(model)
    export_onnx(model, tmp_path, input_size=(32, 32))
    assert assert_same_stream(model, tmp_path, make_video(frames=9, size=32, seed=4), k=8) == 2


def _short_clip(path: Path, n: int = 10, start: int = 200) -> Path:
    with VideoWriter(path, fps=25) as w:
        for f in iter_frames(default_videos()["bikes"], start=start, stop=start + n):
            w.write(f)
    return path


@pytest.fixture(scope="module")
def selfie_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("selfie") / "model"
    dd.save(demo_like_model("selfie"), out, extra={"teacher": "selfie"})
    return out


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_run_writes_an_annotated_video_and_one_json_line_per_frame(selfie_dir: Path, tmp_path: Path,
                                                                   backend: str) -> None:
    clip = _short_clip(tmp_path / "clip.mp4")
    out, lines = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    r = cli("run", "--model", str(selfie_dir), "--video", str(clip), "--out", str(out), "--jsonl", str(lines),
            "--backend", backend, "--keyframe-interval", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "10 frames (3 keyframes)" in r.stdout and f"frames/s on {backend}" in r.stdout
    assert ("GMAC per frame (measured" in r.stdout) == (backend == "torch")
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert sum(1 for _ in c.decode(video=0)) == 10 and (s.width, s.height) == (256, 256)
    recs = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame"] for r in recs] == list(range(10)) and [r["keyframe"] for r in recs][:5] == [True] + [False] * 3 + [True]
    assert all(r["mask"]["size"] == [256, 256] and 0 <= r["mask"]["foreground"] <= 1 for r in recs)
    if backend == "onnxruntime":
        assert read_manifest(selfie_dir / "onnx")["keyframe_interval"] == 4  # exported once, beside the model


def test_run_detections_are_in_source_pixels_and_the_teacher_runs_alone(tmp_path: Path) -> None:
    clip = _short_clip(tmp_path / "clip.mp4", n=3)
    lines = tmp_path / "t.jsonl"
    r = cli("run", "--teacher", "centernet", "--video", str(clip), "--jsonl", str(lines))
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(recs) == 3 and all(r["keyframe"] for r in recs)
    boxes = np.array([d["box"] for r in recs for d in r["detections"]])
    w, h = next(iter_frames(clip)).shape[1::-1]
    assert len(boxes) and boxes[:, [0, 2]].max() <= w + 1 and boxes[:, [1, 3]].max() <= h + 1
    assert boxes[:, [0, 1]].min() >= -1 and all(isinstance(d["label"], str) for r in recs for d in r["detections"])


def test_export_cli_refuses_to_overwrite_and_run_refuses_bad_input(tmp_path: Path) -> None:
    """On a small imported ONNX teacher (the command is the same for any model, and it exports in
    seconds): export, refuse to export over it, and refuse to run an export on the torch backend."""
    from deltadistill.teachers.resolve import teacher_record

    from .test_onnx_import import _small_dynamic_net

    net = tmp_path / "net.onnx"
    _small_dynamic_net(net)
    teacher = teachers.from_onnx(net, input_size=(48, 64))
    model = dd.deploy(dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="compressed", reduction=2)))
    model_dir = tmp_path / "model"
    dd.save(model, model_dir, extra=teacher_record(teacher))
    out = tmp_path / "exp"
    assert cli("export", "--model", str(model_dir), "--out", str(out)).returncode == 0
    before = sorted(p.name for p in out.iterdir())
    assert before == ["delta.onnx", "keyframe.onnx", "manifest.json"]
    again = cli("export", "--model", str(model_dir), "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr and sorted(p.name for p in out.iterdir()) == before
    clip = _short_clip(tmp_path / "clip.mp4", n=2)
    lines = tmp_path / "never.jsonl"  # the other bad input to run is in tests/test_bad_input.py's table
    r = cli("run", "--model", str(out), "--video", str(clip), "--jsonl", str(lines))
    assert r.returncode == 2 and "--backend onnxruntime" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and not lines.exists()


def test_bench_times_the_exported_graphs_and_says_which_backend(selfie_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = cli("bench", "--teacher", "selfie", "--model", str(selfie_dir), "--video", str(default_videos()["bikes"]),
            "--start", "200", "--frames", "8", "--keyframe-interval", "4", "--backend", "onnxruntime",
            "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backend"] == "onnxruntime" and "CPU ms/frame (onnxruntime)" in r.stdout
    assert report["macs_measured"] and report["ms_per_frame"]["delta"] > 0
    traffic = report["bytes_per_frame"]  # a sparse delta frame reads x, x_k, z_k and the masked delta
    assert traffic["delta_mb"] > traffic["teacher_mb"] and "MB moved/frame" in r.stdout
    assert 0.5 < report["accuracy"]["value"] <= 1  # the graphs' outputs were scored, not garbage


def test_bench_with_scene_cuts_gives_the_rival_the_same_policy(selfie_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"  # bikes cuts to another shot at frame 30
    r = cli("bench", "--teacher", "selfie", "--model", str(selfie_dir), "--video", str(default_videos()["bikes"]),
            "--start", "24", "--frames", "12", "--keyframe-interval", "8", "--scene-cut", "0.15", "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["keyframe_policy"] == "SceneCut(8, threshold=0.15)" and report["keyframe_interval"] == 8
    assert report["frames_per_keyframe"] == pytest.approx(12 / 2)  # keys at 24 (the first) and 30 (the cut)
    rival = report["accuracy"]["rival_equal_macs"]
    assert rival["policy"] == "same as the delta model's" and rival["costs_at"]["2"] == 0.5  # 24, 26, ..., 34


def test_run_reads_a_pipe_as_frames_arrive(tmp_path: Path) -> None:
    import subprocess
    import sys

    writer = ("import av, sys\nfrom deltadistill.video import default_videos, iter_frames\n"
              "out = av.open(sys.stdout.buffer, mode='w', format='mpegts')\n"
              "s = out.add_stream('mpeg2video', rate=25); s.width, s.height, s.pix_fmt = 320, 240, 'yuv420p'\n"
              "for f in iter_frames(default_videos()['bikes'], size=(240, 320), start=0, stop=6):\n"
              "    [out.mux(p) for p in s.encode(av.VideoFrame.from_ndarray(f, format='rgb24'))]\n"
              "[out.mux(p) for p in s.encode()]\nout.close()\n")
    lines = tmp_path / "live.jsonl"
    root = Path(__file__).resolve().parent.parent
    env = {**__import__("os").environ, "PYTHONPATH": str(root / "src")}
    feed = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, env=env)
    r = subprocess.run([sys.executable, "-m", "deltadistill", "run", "--teacher", "selfie", "--video", "-",
                        "--jsonl", str(lines)], stdin=feed.stdout, capture_output=True, text=True, timeout=300,
                       cwd=root, env=env)
    feed.stdout.close()
    assert feed.wait(timeout=60) == 0
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [x["frame"] for x in recs] == list(range(6)) and "6 frames" in r.stdout


def test_run_re_keys_at_a_scene_cut_by_default(selfie_dir: Path, tmp_path: Path) -> None:
    clip = _short_clip(tmp_path / "cut.mp4", n=8, start=183)  # bikes cuts to another shot at frame 187
    lines = tmp_path / "cut.jsonl"
    for flag, keys in ((), [0, 4]), (("--scene-cut", "0"), [0]):
        r = cli("run", "--model", str(selfie_dir), "--video", str(clip), "--keyframe-interval", "8",
                "--jsonl", str(lines), *flag)
        assert r.returncode == 0, r.stderr[-3000:]
        recs = [json.loads(line) for line in lines.read_text().splitlines()]
        assert [x["frame"] for x in recs if x["keyframe"]] == keys


def test_run_shards_videos_over_torchrun_and_a_rerun_skips_what_is_done(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    clips = [_short_clip(tmp_path / f"clip{i}.mp4", n=3 + i, start=40 * i) for i in range(3)]
    listing = tmp_path / "videos.txt"
    listing.write_text("# three clips\n" + "\n".join(str(c) for c in clips[1:]) + "\n")
    out = tmp_path / "out"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "deltadistill", "run", "--teacher", "selfie", "--video", str(clips[0]), "--videos-from",
           str(listing), "--out-dir", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for i, clip in enumerate(clips):
        lines = (out / f"{clip.stem}.jsonl").read_text().splitlines()
        assert len(lines) == 3 + i  # each video once, whole, by one of the two ranks
    assert "[rank 0]" in r.stdout and "[rank 1]" in r.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 3


def test_processes_asking_for_the_same_export_at_once_make_it_once(tiny, tmp_path: Path, monkeypatch) -> None:
    """`torchrun ... run --backend onnxruntime`: every rank asks for MODEL/onnx at the same moment."""
    import threading

    from deltadistill.runtime import resolve

    model = dd.deploy(dd.convert(copy.deepcopy(tiny), dd.DeltaConfig(student="compressed", reduction=2)))
    dd.save(model, tmp_path / "m")
    made, real = [], resolve.export_onnx

    def counting(*a, **kw):
        made.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(resolve, "export_onnx", counting)
    got, errors = [], []

    def ask() -> None:
        try:
            got.append(resolve.cached_export(model, tmp_path / "m", input_size=(32, 32), keyframe_interval=4))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(made) == 1 and len(got) == 3
    assert read_manifest(tmp_path / "m" / "onnx")["keyframe_interval"] == 4
