"""The two objectives: delta distillation (the paper's) and feature distillation (its baseline).

On one linear conv, each objective's student converges to its own target and not to the other's;
a feature-objective model streams, deploys, saves and loads as ``g(x_t) + b``; the CLI trains one
end to end and `bench` scores it; bad objectives and students without a feature form are refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import deltadistill as dd
from deltadistill.video import default_videos

ROOT = Path(__file__).resolve().parent.parent
RANK = 2  # 8 channels, reduction 4: a rank-2 kernel split, too small to learn both subspaces at once


class OneConv(nn.Module):
    """A single linear 8->8 1x1 conv with a random weight and bias: the whole teacher."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(8, 8, 1, 1, generator=g))
            self.conv.bias.copy_(torch.randn(8, generator=g))
        self.task_loss = "mse"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def split_clips(n: int = 8, t: int = 3, size: int = 6, seed: int = 0) -> torch.Tensor:
    """Clips (N, T, 8, H, W) whose *content* lives in channels 0-1 (large, fixed within a clip) and
    whose *motion* lives in channels 2-3 (small, new every frame). A rank-2 student can fit the
    output map (content) or the output's change (motion), not both."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, t, 8, size, size)
    x[:, :, :2] = 1.0 + torch.randn(n, 1, 2, size, size, generator=g)  # not zero-mean: the bias matters
    x[:, :, 2:4] = 0.05 * torch.randn(n, t, 2, size, size, generator=g)
    return x


def trained(objective: str, steps: int = 300) -> nn.Module:
    model = dd.convert(OneConv(), dd.DeltaConfig(student="compressed", reduction=4, targets=["conv"],
                                                 objective=objective))
    if steps:
        dd.distill(model, split_clips(), steps=steps, lr=2e-2, w_task=0.0, batch_size=4, progress=False)
    return model


def student_of(model: nn.Module) -> nn.Module:
    layer = model.conv
    assert layer.student_names == ["compressed"] and layer.students["compressed"].rank == RANK
    return layer.students["compressed"]


@torch.no_grad()
def errors(model: nn.Module) -> dict[str, float]:
    """On held-out clips, the student's relative error at each objective's own target:
    ``features``: g(x_t) against the teacher's output map W x_t (bias aside, which both add);
    ``delta``: g(x_t - x_k) against the output's change W(x_t - x_k)."""
    g, w = student_of(model), model.conv.base
    x = split_clips(n=4, seed=99)
    xt, d = x[:, 1:].flatten(0, 1), (x[:, 1:] - x[:, :1]).flatten(0, 1)

    def rel(pred: torch.Tensor, true: torch.Tensor) -> float:
        return float((pred - true).norm() / true.norm())

    return {"features": rel(g(xt), w._conv_forward(xt, w.weight, None)),
            "delta": rel(g(d), w._conv_forward(d, w.weight, None))}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {obj: trained(obj) for obj in ("delta", "features")}


def test_each_objective_learns_its_own_target_and_not_the_others(models) -> None:
    """Catches: the feature objective still training g on x_t - x_k (or the delta one on x_t), the
    bias left out of ``g(x_t) + b`` in training (the feature student would absorb it and miss), a
    loss that does not reach the student. Untrained, the SVD split fails both tests: training
    makes each pass its own, and each then fails the other's."""
    untrained = errors(trained("delta", steps=0))
    assert untrained["features"] > 0.3 and untrained["delta"] > 0.3, untrained
    feat, delta = errors(models["features"]), errors(models["delta"])
    assert feat["features"] < 0.1, feat  # converged to the output map
    assert delta["delta"] < 0.05, delta  # converged to the output's change
    assert feat["delta"] > 0.5, feat  # ... and each fails the other's test
    assert delta["features"] > 0.5, delta


def test_a_feature_model_streams_deploys_and_reloads_as_g_of_x_plus_bias(models, tmp_path) -> None:
    """Catches: a feature model run as ``z_k + g(x_t - x_k)`` in a stream or once deployed (deploy
    keeping ``c = z_k - g(x_k)``), the keyframe MACs charging a student pass it does not need, and
    ``save``/``load`` losing the objective (a reloaded model would stream as a delta model)."""
    model = models["features"]
    x = split_clips(n=1, t=4, seed=5)[0]
    g, base = student_of(model), model.conv.base
    stream = dd.DeltaStream(model, 4)
    outs = [stream(f[None]) for f in x]
    with torch.no_grad():
        torch.testing.assert_close(outs[0], base(x[:1]))  # keyframe: the teacher
        for i in (1, 2, 3):
            want = g(x[i:i + 1]) + base.bias.view(1, -1, 1, 1)
            torch.testing.assert_close(outs[i], want)
            assert float((outs[i] - base(x[i:i + 1])).norm() / base(x[i:i + 1]).norm()) < 0.1
    path = dd.save(model, tmp_path / "m")
    meta = json.loads((path / "deltadistill.json").read_text())
    assert meta["config"]["objective"] == "features"
    for reloaded in (dd.load(OneConv(), path), dd.deploy(dd.load(OneConv(), path))):
        assert reloaded.conv.objective == "features"
        again = dd.DeltaStream(reloaded, 4)
        for f, want in zip(x, outs, strict=True):
            torch.testing.assert_close(again(f[None]), want)
    deployed = dd.deploy(dd.load(OneConv(), path))
    dd.save(deployed, tmp_path / "d")
    assert dd.load(OneConv(), tmp_path / "d").conv.objective == "features"
    report = dd.count_macs(deployed, (8, 6, 6))
    assert report.keyframe == report.teacher  # g(x_k) is never needed


def test_students_without_a_feature_form_are_refused() -> None:
    """Catches: zero or sparse students silently run as ``g(x_t) + b`` (a bias map, or a sparse conv
    of the frame) instead of being refused at conversion, at a gate search and by set_students."""
    for student in ("zero", "sparse", "sparse_running"):
        with pytest.raises(ValueError, match="no feature form"):
            dd.convert(OneConv(), dd.DeltaConfig(student=student, targets=["conv"], objective="features"))
    with pytest.raises(ValueError, match="no feature form"):
        dd.convert(OneConv(), dd.DeltaConfig(candidates=("zero", "compressed"), targets=["conv"],
                                             objective="features"))
    model = trained("features", steps=0)
    with pytest.raises(ValueError, match="no feature form"):
        model.conv.set_students({"zero": dd.core.students.STUDENTS["zero"].from_teacher(model.conv.base,
                                                                                         dd.DeltaConfig())})
    with pytest.raises(ValueError, match="objective"):
        dd.DeltaConfig(objective="feature")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deltadistill", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def test_cli_features_objective_end_to_end_and_bench_scores_it(tmp_path) -> None:
    """Catches: ``--objective`` not reaching the config (the saved model would record ``delta``), a
    feature model that `distill` cannot train or `bench` cannot load and stream. (selfie, from the
    cache `make` fills: the built-in tinyseg has no task for `bench` to score.)"""
    out, video = tmp_path / "feat", str(default_videos()["bikes"])
    r = _cli("distill", "--teacher", "selfie", "--videos", video, "--out", str(out), "--steps", "2",
             "--size", "64", "--workers", "0", "--objective", "features")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(features objective)" in r.stdout
    meta = json.loads((out / "model" / "deltadistill.json").read_text())
    assert meta["config"]["objective"] == "features"
    report = tmp_path / "r.json"
    r = _cli("bench", "--model", str(out / "model"), "--video", video, "--frames", "6", "--keyframe-interval", "3",
             "--no-fastest", "--json", str(report))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["frames"] == 6 and 0.0 <= rep["accuracy"]["value"] <= 1.0
    assert rep["detail"]["gmacs_keyframe"] == pytest.approx(rep["gmacs_per_frame"]["teacher"])  # no c pass


@pytest.mark.parametrize("args,words", [
    (("--objective", "feature"), "--objective must be one of delta, features"),
    (("--objective", "features", "--candidates", "zero,compressed"), "no feature form"),
])
def test_cli_bad_objective_is_one_line_exit_2_and_leaves_nothing(tmp_path, args, words) -> None:
    """Catches: a traceback or a half-made output directory for a bad ``--objective``, or for a
    student that has no feature form."""
    out = tmp_path / "never"
    r = _cli("distill", "--teacher", "tinyseg", "--videos", str(default_videos()["bikes"]), "--out", str(out),
             "--steps", "1", "--size", "48", "--workers", "0", *args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()
