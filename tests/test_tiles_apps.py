"""`--runtime tiles` end to end (issue 28): bench and run open the tile runtime by name, and it runs the
same model the dense runtime runs, computing part of each delta frame."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from deltadistill import convert, deploy
from deltadistill.apps.bench import evaluate_on_video
from deltadistill.core.config import DeltaConfig
from deltadistill.core.modes import delta_layers
from deltadistill.runtime.run import run_video
from deltadistill.teachers import from_onnx
from deltadistill.video import default_videos

from .test_onnx_import import _small_dynamic_net


def _sparse(teacher: torch.nn.Module, threshold: float) -> torch.nn.Module:
    model = convert(copy.deepcopy(teacher), DeltaConfig(student="sparse"))
    for _, layer in delta_layers(model):
        layer.students["sparse"].threshold.fill_(threshold)
    return deploy(model).eval()


def test_bench_with_the_tile_runtime_matches_the_dense_runtime(tmp_path) -> None:
    """The tile runtime itself (the guard off: its choices rest on time). At threshold 0 its predictions are the teacher's (mIoU 1: on a real video every
    pixel moves a little, so it recomputes nearly everything); its settings and stages reach the report.
    At a positive threshold it computes part of each delta frame, and the report counts what it did.
    Breakage caught: a bench that ran the dense runtime for ``--runtime tiles`` (no tile stages, and the
    dense sparse student's MAC count instead of the runtime's)."""
    _small_dynamic_net(tmp_path / "net.onnx")
    teacher = from_onnx(tmp_path / "net.onnx", input_size=(144, 176)).eval()
    video = default_videos()["static-hands"]
    exact, _ = evaluate_on_video(teacher, _sparse(teacher, 0.0), video, keyframe_interval=4, start=64, stop=80,
                                 progress=False, engines=None, runtime="tiles", crop={"keyframe_engine": "torch", "guard": 0})
    assert exact["accuracy"]["value"] == 1.0
    assert exact["runtime"] == "tiles" and exact["tiles"]["dense_ops"] == []
    assert 0 < exact["tiles_stages"]["mean_computed"] <= 1 and exact["macs_measured"]
    sparse, _ = evaluate_on_video(teacher, _sparse(teacher, 0.05), video, keyframe_interval=4, start=64, stop=80,
                                  progress=False, engines=None, runtime="tiles", crop={"keyframe_engine": "torch", "guard": 0})
    computed = sparse["tiles_stages"]["mean_computed"]
    assert computed < 0.5 and sparse["mac_ratio"] > exact["mac_ratio"]
    k = sparse["frames_per_keyframe"]  # the amortised MACs are the runtime's own count: (key + (k-1) delta) / k
    assert sparse["mac_ratio"] == pytest.approx(k / (1 + (k - 1) * computed), rel=0.05)


def test_run_with_the_tile_runtime_writes_the_dense_runtimes_masks(tmp_path) -> None:
    """`run_video(runtime="tiles")` at threshold 0 writes the same JSON lines as the dense runtime (the
    same keyframes, the same masks), and counts the MACs it computed."""
    _small_dynamic_net(tmp_path / "net.onnx")
    teacher = from_onnx(tmp_path / "net.onnx", input_size=(144, 176)).eval()
    model = _sparse(teacher, 0.0)
    video = str(default_videos()["carphone_pristine"])
    outs = {}
    for runtime in ("dense", "tiles"):
        lines = tmp_path / f"{runtime}.jsonl"
        summary = run_video(teacher, video, model=model, keyframe_interval=4, jsonl=lines, progress=False,
                            runtime=runtime, crop={"keyframe_engine": "torch", "guard": 0})
        outs[runtime] = [json.loads(x) for x in lines.read_text().splitlines()][:24]
        assert summary.macs_per_frame is not None and summary.macs_measured
    assert [r["keyframe"] for r in outs["tiles"]] == [r["keyframe"] for r in outs["dense"]]
    assert [r["mask"]["counts"] for r in outs["tiles"]] == [r["mask"]["counts"] for r in outs["dense"]]


def test_bench_with_the_guard_on_stays_exact_and_reports_its_modes(tmp_path) -> None:
    """With the guard on (the default), whichever frames run dense and whichever tiled, at threshold 0
    every prediction is the teacher's, and the report counts the frames of each mode: one dense frame
    at least (the first, which times the dense teacher), every frame in some mode."""
    _small_dynamic_net(tmp_path / "net.onnx")
    teacher = from_onnx(tmp_path / "net.onnx", input_size=(144, 176)).eval()
    video = default_videos()["static-hands"]
    report, _ = evaluate_on_video(teacher, _sparse(teacher, 0.0), video, keyframe_interval=4, start=64, stop=76,
                                  progress=False, engines=None, runtime="tiles", crop={"keyframe_engine": "torch"})
    assert report["accuracy"]["value"] == 1.0
    assert "mean of every frame" in report["detail"]["timing"]  # its frames follow no K
    g = report["tiles"]["guard"]
    assert g["guard"] == 1.0 and g["dense"] >= 1 and g["dense"] + g["key"] + g["delta"] >= 12


def test_bench_with_a_frame_rate_reports_what_it_held(tmp_path) -> None:
    """`--fps` end to end: at 1 fps the small teacher alone is in time (and exact), so every frame runs
    it; the report gives the target, what was held, and the rate a still input could reach."""
    _small_dynamic_net(tmp_path / "net.onnx")
    teacher = from_onnx(tmp_path / "net.onnx", input_size=(144, 176)).eval()
    video = default_videos()["static-hands"]
    report, _ = evaluate_on_video(teacher, _sparse(teacher, 0.05), video, keyframe_interval=4, start=64, stop=76,
                                  progress=False, engines=None, runtime="tiles",
                                  crop={"keyframe_engine": "torch", "fps": 1.0})
    rate, guard = report["tiles"]["rate"], report["tiles"]["guard"]
    assert rate["fps"] == 1.0 and rate["held"] and rate["achieved_fps"] > 1.0 and rate["reachable_fps"] > 1.0
    assert guard["key"] == guard["delta"] == 0 and guard["dense"] >= 12
    assert report["accuracy"]["value"] == 1.0
