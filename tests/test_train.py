"""Distillation training: the delta loss falls, the budget steers the gates, resume is exact, bad input is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import deltadistill as dd
from deltadistill.models import TinySegNet
from deltadistill.train.losses import CostModel, distill_loss
from deltadistill.video import default_videos
from tests.conftest import free_port, make_video, trained_bn

ROOT = Path(__file__).resolve().parent.parent


def clips(n: int = 4, size: int = 32, t: int = 3) -> torch.Tensor:
    return torch.stack([torch.cat(make_video(frames=t, size=size, seed=s)) for s in range(n)])


def fresh(student: str = "search", **kw) -> TinySegNet:
    torch.manual_seed(0)
    return dd.convert(trained_bn(TinySegNet()), dd.DeltaConfig(student=student, **kw))


def delta_error(model: TinySegNet, clip: torch.Tensor) -> float:
    """The distillation loss as training computes it: a teacher pass, then the clip pass."""
    dd.core.modes.record_true_delta(model)
    with torch.no_grad(), dd.mode(model, "teacher"):
        model(clip)
    with torch.no_grad(), dd.mode(model, "clip", clip_len=clip.shape[0]):
        model(clip)
    return distill_loss(model).item()


def test_distillation_reduces_the_delta_loss_on_a_fixed_clip() -> None:
    model, data = fresh("compressed", reduction=8), clips(n=1)
    before = delta_error(model, data[0])
    dd.distill(model, data, steps=40, lr=3e-3, w_task=0.0, progress=False)
    after = delta_error(model, data[0])
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("budget,expected", [(0.05, "compressed"), (1.0, "full")])
def test_budget_steers_the_gates(budget: float, expected: str) -> None:
    model = fresh()
    result = dd.distill(model, clips(), steps=60, budget=budget, gate_lr=0.1, w_cost=50.0, progress=False)
    choices = set(result.choices.values())
    assert choices == {expected}, result.choices
    report = dd.count_macs(model, (3, 32, 32))
    assert result.reached_cost == pytest.approx(report.delta / report.teacher)
    if expected == "compressed":
        assert result.reached_cost < 0.5


class ThreeByOnes(torch.nn.Module):
    """Three 8->8 1x1 convs: at 10x10 each costs 8*8*100 = 6400 MACs, by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Conv2d(8, 8, 1, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.a(x)) + torch.relu(self.b(x)))


def test_cost_model_against_hand_computed_costs_and_a_measured_delta_frame() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = dd.convert(ThreeByOnes(), dd.DeltaConfig(candidates=("zero", "compressed", "full"), reduction=4,
                                                     targets=["a", "b"]))
    layers = [m for _, m in dd.core.modes.delta_layers(model)]
    for layer in layers:  # random gates
        layer.gate.logits.data.copy_(torch.randn(3))
    cost = CostModel(model, (8, 10, 10))
    # zero 0, compressed rank 8/4 = 2: 2 * (8 + 8) * 100 = 3200, full 6400; c stays dense (6400)
    per_student = torch.tensor([0.0, 3200.0, 6400.0])
    with torch.no_grad():
        want = (6400 + sum(float((layer.gate.probs() * per_student).sum()) for layer in layers)) / 19200
    assert cost.expected().item() == pytest.approx(want, rel=1e-6)
    hard = (6400 + sum(float(per_student[layer.gate.choice()]) for layer in layers)) / 19200
    assert cost.hard() == pytest.approx(hard)
    # and what a deployed delta frame really multiplies, by torch's own counter
    dd.deploy(model)
    stream = dd.DeltaStream(model, 4)
    stream(torch.randn(1, 8, 10, 10))
    with FlopCounterMode(display=False) as counter:
        stream(torch.randn(1, 8, 10, 10))
    assert counter.get_total_flops() // 2 == round(hard * 19200)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path) -> None:
    data = clips(n=6)
    calls = []

    def loss(student, teacher, target):
        calls.append(1)
        return torch.nn.functional.mse_loss(student, teacher)

    kw = dict(budget=0.3, progress=False, checkpoint_every=3, seed=7, task_loss=loss)
    dd.distill(full := fresh(), data, steps=8, out_dir=tmp_path / "a", **kw)
    dd.distill(fresh(), data, steps=5, out_dir=tmp_path / "b", **kw)  # "killed" after step 5
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == "step-0000005"
    resumed = fresh()
    with torch.no_grad():  # what the checkpoint holds (students, gates) starts wrong: only a real resume fixes it
        for name, p in resumed.named_parameters():
            if ".students." in name or ".gate." in name:
                p.add_(torch.randn_like(p))
    calls.clear()
    result = dd.distill(resumed, data, steps=8, out_dir=tmp_path / "b", resume=True, **kw)
    assert len(calls) == 3  # steps 6, 7 and 8 ran, not all eight
    assert [h["step"] for h in result.history] == list(range(1, 9))
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def test_unwritable_output_is_refused_before_training(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="cannot write checkpoints"):
        dd.distill(fresh(), clips(n=1), steps=1, out_dir=blocker / "out", progress=False)


def test_bad_clips_are_refused() -> None:
    with pytest.raises(ValueError, match="T >= 2"):
        dd.distill(fresh(), torch.rand(2, 1, 3, 32, 32), steps=1, progress=False)
    with pytest.raises(ValueError, match="budget"):
        dd.distill(fresh(), clips(n=1), steps=1, budget=2.0, progress=False)
    with pytest.raises(ValueError, match="no trainable delta layers"):
        dd.distill(dd.deploy(fresh()), clips(n=1), steps=1, progress=False)


def _cli(*args: str, timeout: int = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt"])
def test_cli_rejects_bad_videos_with_one_clear_line(tmp_path, kind: str) -> None:
    video = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        video.write_bytes(b"")
    elif kind == "corrupt":
        video.write_bytes(os.urandom(4096))
    r = _cli("deltadistill", "distill", "--teacher", "tinyseg", "--videos", str(video), "--out", str(tmp_path / "o"),
             "--steps", "1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and str(video) in r.stderr and "Traceback" not in r.stderr


def test_cli_distill_with_calibration(tmp_path) -> None:
    out = tmp_path / "cal"
    args = ("deltadistill", "distill", "--teacher", "tinyseg", "--videos", str(default_videos()["bikes"]),
            "--out", str(out), "--steps", "2", "--size", "48", "--workers", "0", "--calibrate")
    r = _cli(*args)
    assert r.returncode == 2 and "--calibrate needs --budget" in r.stderr and "Traceback" not in r.stderr
    r = _cli(*args, "--budget", "0.3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "calibrated: a delta frame costs" in r.stdout
    meta = json.loads((out / "model" / "deltadistill.json").read_text())
    ranks = {tuple(sorted(info["specs"].get("compressed", {}).items())) for info in meta["layers"].values()}
    assert all(len(info["students"]) == 1 for info in meta["layers"].values())
    assert len(ranks) > 1  # per-layer choices, not one gamma everywhere


def test_torchrun_two_processes_agree(tmp_path) -> None:
    """2 ranks, gloo, a few steps on real video; each rank dumps its weights and they must be identical."""
    out = tmp_path / "ddp"
    r = _cli("torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "deltadistill",
             "distill", "--teacher", "tinyseg", "--videos", str(default_videos()["bikes"]), "--out", str(out),
             "--steps", "3", "--size", "48", "--workers", "0", "--checkpoint-every", "3",
             timeout=300, env={"DELTADISTILL_DUMP_RANK_WEIGHTS": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    w0, w1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert w0.keys() == w1.keys() and len(w0) > 10
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    saved = load_file(str(out / "model" / "students.safetensors"))
    assert all(torch.equal(saved[k], w0[k]) for k in saved)
    # the same teacher and config as the CLI's, before any step: training must have moved the students
    from deltadistill.core.config import DeltaConfig
    from deltadistill.teachers.resolve import resolve_teacher

    config = DeltaConfig.from_json(json.loads((out / "model" / "deltadistill.json").read_text())["config"])
    config.targets = None
    start = dd.convert(resolve_teacher("tinyseg"), config).state_dict()
    assert saved.keys() <= start.keys()
    moved = [k for k in saved if not torch.equal(w0[k], start[k])]
    assert moved and all(".students." in k or ".gate." in k for k in moved)
    assert all(torch.equal(w0[k], start[k]) for k in w0 if ".base." in k)  # the teacher stayed frozen


class LabelledClips(torch.utils.data.Dataset):
    """Clips with per-frame ground-truth label maps: class 1 where the first channel is positive."""

    def __init__(self) -> None:
        self.clips = clips(n=4)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        c = self.clips[i]
        return c, (c[:, 0] > 0).long()


def test_ground_truth_labels_replace_pseudo_labels() -> None:
    seen = []

    def loss(student, teacher, target):
        seen.append(target)
        return torch.nn.functional.cross_entropy(student, target)

    data = LabelledClips()
    dd.distill(fresh(), data, steps=2, task_loss=loss, progress=False)
    assert len(seen) == 2
    for step, target in enumerate(seen):  # batch 1, one process: step s trains on clip s; its non-key frames
        torch.testing.assert_close(target, data[step][1][1:])
