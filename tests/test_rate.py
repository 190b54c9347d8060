"""Rate control (issue 20): `rate.RateControl` holds a cost target that the user chooses.

Each test names, in its docstring, the breakage it was checked against.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import deltadistill as dd
from deltadistill.core.macs import count_macs, measured_delta_macs
from deltadistill.core.modes import delta_layers
from deltadistill.stream.rate import RateControl, TargetError, parse_target, sparse_students

from .conftest import trained_bn


def sparse_model(net: nn.Module, threshold: float) -> nn.Module:
    model = dd.convert(copy.deepcopy(net), dd.DeltaConfig(student="sparse"))
    for _, layer in delta_layers(model):
        layer.students["sparse"].threshold.fill_(threshold)
    return dd.deploy(model).eval()


def squares_clip(frames: int, size: int = 64, seed: int = 0) -> list[Tensor]:
    """A still textured background with textured squares moving over it; from the middle on, twice
    as many squares: twice the motion."""
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(1, 3, size, size, generator=g)
    patch = torch.randn(1, 3, 12, 12, generator=g) * 2
    out = []
    for t in range(frames):
        f = background.clone()
        count = 1 if t < frames // 2 else 2
        for j in range(count):
            y = (7 * t + 23 * j) % (size - 12)
            x = (5 * t + 31 * j + 11) % (size - 12)
            f[..., y:y + 12, x:x + 12] = patch
        out.append(f)
    return out


def costs_of(model: nn.Module, frames: list[Tensor], policy) -> list[float]:
    """Each frame's cost as a share of the teacher's MACs, as the controller counts it."""
    stream = dd.DeltaStream(model, keyframe=policy)
    report = count_macs(model, tuple(frames[0].shape), 8)
    out = []
    with torch.no_grad():
        for f in frames:
            stream(f)
            out.append(report.keyframe / report.teacher if stream.last_key else
                       measured_delta_macs(model, report) / report.teacher)
    return out


@pytest.fixture(scope="module")
def toy() -> nn.Module:
    from deltadistill.models.toy import TinySegNet

    torch.manual_seed(0)
    return sparse_model(trained_bn(TinySegNet()), 0.05)


@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_the_controller_holds_its_target_when_the_motion_doubles_halfway(toy: nn.Module, mode: str) -> None:
    """Every 32-frame window within 10% of the target, on a clip whose motion doubles halfway, where
    the same model at its fixed thresholds costs far more in the second half (so the clip does test
    the controller), in both modes. Broken against: the knob not applied (`apply` a no-op), top-k
    ignored by the students (`select`), the scale not steered by the last frame's cost, and the
    steady delta cost not leaving room for the window's keyframes. (With the payback gain at 0 it still passes on this clip: the window's keyframe count
    does most of the work there.)"""
    frames = squares_clip(192)
    fixed = costs_of(toy, frames, 8)
    half = len(frames) // 2
    first, second = sum(fixed[:half]) / half, sum(fixed[half:]) / half
    assert second > 1.3 * first, (first, second)  # the motion really doubles the fixed model's cost
    target = 4.0
    rc = RateControl(target, mode=mode, max_interval=8, scene_cut=None)
    costs = costs_of(toy, frames, rc)
    assert rc.costs == pytest.approx(costs)  # the controller counts what the frames cost
    windows = rc.window_ratios(32)
    assert all(abs(w / target - 1) <= 0.10 for w in windows), (min(windows), max(windows))
    assert rc.summary()["within_10pct"] and abs(rc.achieved / target - 1) < 0.05
    assert all("threshold_scale" not in s.__dict__ for s in sparse_students(toy))  # the model is left as it was


def test_a_top_k_budget_gives_the_same_cost_on_every_delta_frame() -> None:
    """With ``keep`` set, a 1x1-conv model's delta frames cost the same MACs whatever moved, while its
    thresholds alone give costs that follow the motion. Broken against: ``select`` ignoring keep."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    model = sparse_model(net, 0.05)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 3, 32, 32, generator=g)
    frames = [base]
    for share in (0.2, 0.5, 0.3, 0.9, 0.4):  # a different share of the pixels moves on each frame
        moved = (torch.rand(1, 1, 32, 32, generator=g) < share).float()
        frames.append(base + moved * torch.randn(1, 3, 32, 32, generator=g))
    plain = costs_of(model, frames, 100)[1:]
    assert max(plain) > 2 * min(plain)
    for s in sparse_students(model):
        s.__dict__["keep"] = 0.1
    try:
        kept = costs_of(model, frames, 100)[1:]
    finally:
        for s in sparse_students(model):
            s.__dict__.pop("keep")
    assert max(kept) == pytest.approx(min(kept), rel=1e-9) and kept[0] < min(plain), kept


@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_a_keyframe_is_chosen_when_a_delta_frame_costs_as_much_as_one(toy: nn.Module, mode: str) -> None:
    """The frame after one where everything changed (no scene-cut test) is a keyframe, by cost, at
    each mode's default ``key_cost``; with the rule off it is not. Under top-k the frame's own cost is
    capped, so what is weighed is what the calibrated thresholds would have computed. Broken against:
    `_needs_key` always False; top-k weighing its capped cost; top-k's default at 0.9, where it
    never fired (issue 29: this test had passed only with 0.5 given)."""
    frames = squares_clip(24)
    frames[10:] = [f + 3 * torch.randn_like(f) for f in frames[10:]]  # everything changes at frame 10
    # under top-k the estimate at the calibrated thresholds runs low (0.58 of a keyframe here, where the
    # scaled thresholds measure 0.95): later layers only see the deltas top-k let through
    rc = RateControl(4.0, mode=mode, max_interval=16, scene_cut=None)  # the default key_cost
    assert rc.key_cost == (0.9 if mode == "threshold" else 0.5)
    costs = costs_of(toy, frames, rc)
    assert not rc.keys[10] and (costs[10] >= 0.9 * costs[0] if mode == "threshold" else costs[10] < 0.5), costs[10]
    assert rc.keys[11] and rc.reasons[11] == "cost"
    off = RateControl(4.0, mode=mode, max_interval=16, scene_cut=None, key_cost=None)
    costs_of(toy, frames, off)
    assert not off.keys[11]


@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_budget_left_over_buys_a_keyframe(toy: nn.Module, mode: str) -> None:
    """A still camera: delta frames cost nothing, so a keyframe every 8 frames alone holds 8x. At a 6x
    target the controller spends what is left on earlier keyframes, and every window stays within
    10% of 6x; with the rule off the windows sit at 8x. Broken against: `_affords_key` always False,
    and weighing it without the keyframe it would add (keyframes every other frame)."""
    still = squares_clip(1) * 96
    rc = RateControl(6.0, mode=mode, max_interval=8, scene_cut=None)
    costs_of(toy, still, rc)
    windows = rc.window_ratios()
    assert all(abs(w / 6.0 - 1) <= 0.10 for w in windows), (min(windows), max(windows))
    assert "budget" in rc.reasons
    off = RateControl(6.0, mode=mode, max_interval=8, scene_cut=None, budget_key=False)
    costs_of(toy, still, off)
    assert min(off.window_ratios()) > 1.1 * 6.0 and "budget" not in off.reasons


def test_a_loose_target_keys_more_often_and_still_holds_its_cost(toy: nn.Module) -> None:
    """At 2x a keyframe every 3 frames leaves each delta frame a quarter of a keyframe, so the
    controller keys every 3 frames, not every 8, and still holds every window; at 4x no interval
    below 8 leaves that much, so it keys every 8. Broken against: the interval rule ignored (every
    8), and the plan's keyframe rate taken from ``max_interval`` (the windows drift off 2x)."""
    frames = squares_clip(96)
    rc = RateControl(2.0, max_interval=8, scene_cut=None, budget_key=False)
    costs_of(toy, frames, rc)
    assert rc.interval == 3 and [i for i, k in enumerate(rc.keys) if k][:4] == [0, 3, 6, 9]
    assert all(abs(w / 2.0 - 1) <= 0.10 for w in rc.window_ratios()), rc.window_ratios()
    assert RateControl(4.0, max_interval=8).interval == 8
    assert RateControl(2.0, max_interval=8, min_delta=None).interval == 8


def test_the_whole_stream_lands_on_the_target_from_its_first_frame(toy: nn.Module) -> None:
    """Moving squares at 5x, a keyframe every 8 frames: the first window and the whole clip land
    within 2% of the target. Broken against: the keyframe rate counted over the last 31 frames
    (four keyframes in 7 phases of 8, so every delta frame planned under budget) with the stream's
    first keyframe counted beside an assumed rate: 5.18x over the clip."""
    rc = RateControl(5.0, max_interval=8, scene_cut=None, budget_key=False)
    costs_of(toy, squares_clip(96), rc)
    assert abs(rc.achieved / 5.0 - 1) < 0.02 and abs(rc.window_ratios()[0] / 5.0 - 1) < 0.02, \
        (rc.achieved, rc.window_ratios()[0])


@pytest.mark.parametrize("text,words", [("0.5x", "below 1x"), ("fast", "not a ratio like 3x"), ("3y", "not a ratio"),
                                        ("-2", "not a ratio")])
def test_a_bad_target_is_one_line(text: str, words: str) -> None:
    with pytest.raises(TargetError, match=words):
        parse_target(text)


def test_a_target_above_what_the_model_can_hold_is_refused_before_any_frame(toy: nn.Module) -> None:
    """Above 1 / (keyframe share + delta floor) no thresholds can hold it. Broken against: no check."""
    rc = RateControl(50.0, max_interval=8)
    with pytest.raises(TargetError, match="above this model's maximum of 8.00x"):
        rc.check(toy, (1, 3, 64, 64))
    assert parse_target("3x") == parse_target("3") == parse_target(3.0) == 3.0


@pytest.fixture(scope="module")
def selfie_run(tmp_path_factory) -> dict:
    """A 64-frame clip of bikes and a selfie sparse model saved as a model directory."""
    from deltadistill import teachers
    from deltadistill.video import VideoWriter, default_videos, iter_frames

    root = tmp_path_factory.mktemp("rate")
    clip = root / "clip.mp4"
    with VideoWriter(clip, fps=25.0) as w:
        for f in iter_frames(default_videos()["bikes"], (144, 256), "letterbox", 0, 64):
            w.write(f)
    model = sparse_model(teachers.load("selfie"), 0.1)
    dd.save(model, root / "m", extra={"teacher": "selfie"})
    return {"clip": str(clip), "model": str(root / "m"), "root": root}


def test_run_with_a_target_says_what_it_held(selfie_run: dict, tmp_path) -> None:
    """`deltadistill run --model M --video V --target 2x` works and its summary gives the held cost
    and the frames per second; its JSON lines mark the keyframes the controller chose."""
    import json

    from typer.testing import CliRunner

    from deltadistill.apps.cli import app

    r = CliRunner().invoke(app, ["run", "--model", selfie_run["model"], "--video", selfie_run["clip"], "--target",
                                 "2x", "--keyframe-interval", "8", "--jsonl", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if "frames/s" in x)
    assert "target 2x, held" in line and "over every 32 frames" in line, line
    held = float(line.split("held ")[1].split("x")[0])
    assert 1.8 <= held <= 2.2, line
    records = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(records) == 64 and records[0]["keyframe"] and sum(r["keyframe"] for r in records) >= 8


def test_run_target_keyframe_flags_are_the_controllers_choices(selfie_run: dict, tmp_path) -> None:
    """The JSON lines of `run --target 2x` mark exactly the keyframes a `RateControl` chooses on the
    same frames, driven here without the CLI (frames letterboxed and preprocessed as `run` does), and
    the summary's held cost is that controller's. Breakage caught: flags written from the keyframe
    interval, or from anything but the stream's own choice (checked to fail with
    ``i % keyframe_interval == 0`` as the flag in `run_video`), and a summary of another policy."""
    import json

    from typer.testing import CliRunner

    from deltadistill.apps.bench import load_delta_model
    from deltadistill.apps.cli import app
    from deltadistill.stream.rate import rate_policy
    from deltadistill.video import fit_frame, iter_frames

    lines = tmp_path / "o.jsonl"
    r = CliRunner().invoke(app, ["run", "--model", selfie_run["model"], "--video", selfie_run["clip"], "--target",
                                 "2x", "--keyframe-interval", "8", "--jsonl", str(lines)])
    assert r.exit_code == 0, r.output
    flags = [json.loads(x)["keyframe"] for x in lines.read_text().splitlines()]
    teacher = dd.teachers.load("selfie")
    model = load_delta_model(teacher, selfie_run["model"])
    size = tuple(teacher.input_size)
    rc = rate_policy(model, "2x", 8, 0.15, size)  # run's defaults: scene cut 0.15, top-k
    stream = dd.DeltaStream(model, rc)
    with torch.no_grad():
        for raw in iter_frames(selfie_run["clip"]):
            frame, _ = fit_frame(raw, size, "letterbox")
            stream(teacher.preprocess(frame[None]).contiguous(memory_format=torch.channels_last))
    assert flags == rc.keys and 8 <= sum(flags) < len(flags)
    assert not all(flags[1:8]) and set(rc.reasons) - {""}
    line = next(x for x in r.stdout.splitlines() if "frames/s" in x)
    assert f"held {rc.achieved:.2f}x" in line, (line, rc.achieved)


def test_bench_with_a_target_gives_the_rival_the_same_budget(selfie_run: dict, tmp_path) -> None:
    """`bench --target 2x`: the report holds the target beside what was held, the rival runs at the
    model's own measured cost (its keyframe share is the model's cost share), and a verdict in words.
    Broken against: the rival at the interval K instead of the held cost; the rival at the target's
    cost instead of the held one (which the 15% tolerance let pass: caught by the exact share).
    The verdict (beats, margin, words) is tied to the numbers the report gives."""
    import json

    from typer.testing import CliRunner

    from deltadistill.apps.cli import app

    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["bench", "--model", selfie_run["model"], "--video", selfie_run["clip"], "--target",
                                 "2x", "--keyframe-interval", "8", "--no-fastest", "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    held, rival = report["rate"], report["accuracy"]["rival_equal_macs"]
    assert held["target"] == 2.0 and abs(held["achieved"] / 2.0 - 1) < 0.1
    assert rival["interval"] == pytest.approx(report["mac_ratio"], rel=0.15)  # same budget, not K=8
    assert rival["words"].startswith("at 2x the delta model")
    # pinned (issue 29): the rival's cost is the model's *held* cost, which the target alone cannot give:
    # between the two whole intervals around it, its keyframe share is interpolated to 1 / mac_ratio exactly
    share, costs = 1 / report["mac_ratio"], {int(k): c for k, c in rival["costs_at"].items()}
    lo = int(rival["interval"])
    w = rival["interval"] - lo
    assert {lo, lo + 1} <= set(costs), (rival["interval"], costs)
    assert costs[lo] >= share >= costs[lo + 1] and (1 - w) * costs[lo] + w * costs[lo + 1] == pytest.approx(share,
                                                                                                            abs=1e-9)
    assert abs(share - 1 / held["target"]) > 1e-6  # the check above tells the held cost from the target
    # the verdict follows from the numbers the report gives
    assert rival["margin"] == pytest.approx(report["accuracy"]["value"] - rival["value"], abs=1e-12)
    assert rival["beats"] == (rival["margin"] > 0 and rival["margin"] >= rival["margin_needed"] - 1e-12)
    assert f"{rival['margin']:+.3f}" in rival["words"]
    assert ("beats the rival" in rival["words"]) == rival["beats"]
    assert "cost target" in r.stdout and "note: at 2x" in r.stdout
