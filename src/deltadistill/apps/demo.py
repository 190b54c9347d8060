"""`deltadistill demo`: the main job end to end, on a real pretrained teacher and real video.

fetch teacher (selfie by default) -> convert -> set sparse thresholds (or, with --steps or --budget,
distill low-rank students) on the first 70% of the default videos -> deploy -> evaluate on a video
it never saw, side by side with the teacher -> report.json, side_by_side.mp4, plot.png, model/.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..core.checkpoint import save
from ..core.config import DeltaConfig
from ..core.convert import convert
from ..core.deploy import deploy
from ..stream.rate import TargetError, parse_target, rate_policy
from ..teachers.resolve import teacher_record
from ..train import distill, sparsify
from ..video import VideoClips, default_videos, video_info
from .bench import evaluate_on_video
from .report import plot, table, write_json

TRAIN_FRACTION = 0.7


@dataclass(frozen=True)
class DemoPlan:
    """What the demo does for one teacher; ``quick`` shrinks steps and frames, nothing else."""

    train_videos: tuple[str, ...]
    eval_video: str
    keyframe_interval: int
    budget: float
    steps: int
    quick_steps: int
    quick_frames: int
    reduction: int = 16
    candidates: tuple[str, ...] = ("zero", "pooled", "compressed", "full")
    clip_len: int = 3
    #: when set: no gate search, a `sparse` student in every layer at this threshold (`dd.sparsify`)
    sparse_level: float | None = None
    #: the stem's thresholds (layers that see at least half the input size), as a share of
    #: ``sparse_level`` (`dd.sparsify`)
    sparse_stem: float = 1.0
    #: at most this many frames scored per video even without ``quick``: an expensive teacher's bound
    max_frames: int | None = None


PLANS = {
    # Measured on all of bikes (BENCHMARKS.md, "whole video"): the gate search over low-rank
    # students only repeated keyframes; one threshold everywhere beats repeating keyframes at equal
    # MACs only up to about 1.3x. The stem's thresholds decide the accuracy (note 30): with every
    # layer that sees at least half the input size at 0.05 of the level, and the rest at 0.1,
    # 2.19x fewer MACs, mAP50 0.966 against the rival's 0.815 at K=8 (57% of each frame is bars).
    "centernet": DemoPlan(("bigbuckbunny", "carphone_pristine"), "bikes", keyframe_interval=8, budget=0.10,
                          steps=60, quick_steps=6, quick_frames=24, sparse_level=0.1, sparse_stem=0.05),
    # On bikes (people and a moving camera; the slow carphone clip flatters the rival and the model
    # alike) sparse students at 0.15 in every conv cost 2.36x fewer MACs and beat repeating keyframes
    # at equal MACs by +0.054 mIoU over the whole video (+0.045 at K=8, 2.43x). Much of that saving
    # is the letterbox bars of a wide video in a square input, which the teacher computes and a
    # sparse model skips (BENCHMARKS.md note 29).
    "selfie": DemoPlan(("carphone_pristine", "bigbuckbunny"), "bikes", keyframe_interval=4, budget=0.25,
                       steps=300, quick_steps=30, quick_frames=24, reduction=4, sparse_level=0.15),
    # The expensive kind: IS-Net, 29.9 GMAC at 384x512, 0.5-1 s a frame on this CPU; each video is
    # scored at its own content size, on its first 32 frames (12 with --quick), so the demo ends in
    # minutes. Sparse students at 0.1 in every conv (BENCHMARKS.md, "IS-Net").
    "isnet": DemoPlan(("carphone_pristine", "bigbuckbunny"), "bikes", keyframe_interval=8, budget=0.25,
                      steps=0, quick_steps=0, quick_frames=12, sparse_level=0.1, max_frames=32),
}


def say(msg: str) -> None:
    print(f"[deltadistill demo] {msg}", flush=True)


#: an imported graph (``--teacher model.onnx``): sparse students at a middling threshold, no training
IMPORTED_PLAN = DemoPlan(("carphone_pristine", "bigbuckbunny"), "bikes", keyframe_interval=4, budget=0.25,
                         steps=300, quick_steps=30, quick_frames=24, sparse_level=0.05)


def run_demo(teacher_name: str = "selfie", out: str | Path = "runs/demo", quick: bool = False,
             threads: int | None = None, seed: int = 0, steps: int | None = None,
             budget: float | None = None, teacher_options: dict | None = None,
             target: float | str | None = None) -> dict:
    """Run the whole job; returns the report dict (also written to ``out/report.json``).

    ``steps`` and ``budget`` override the teacher's plan (for longer runs and sweeps); either one turns
    a sparse plan back into the gate search over low-rank students that they describe.
    ``teacher_name`` may also be an ``.onnx`` or TF.js ``model.json`` path; ``teacher_options``
    (``input_size``, ``value_range``, ``task``, as the command line spells them) then apply to it.
    ``target``: evaluate holding this cost ratio (`rate.RateControl`) instead of fixed thresholds.
    """
    from ..teachers.packaged import PACKAGED
    from ..teachers.resolve import parse_range, parse_size, resolve_teacher

    opts = {k: v for k, v in (teacher_options or {}).items() if v}
    imported = Path(teacher_name).suffix in (".onnx", ".json") or teacher_name in PACKAGED
    if not imported and teacher_name not in PLANS:
        raise ValueError(f"no demo for teacher {teacher_name!r}; choose from {sorted([*PLANS, *PACKAGED])} "
                         "or give an .onnx file")
    plan, out = (IMPORTED_PLAN if imported else PLANS[teacher_name]), Path(out)
    if budget is not None:
        plan = replace(plan, budget=budget)
    if target is not None:
        wanted = parse_target(target)  # a malformed target is one line before any work
        if plan.sparse_level is None or steps is not None or budget is not None:
            raise TargetError("--target steers sparse students: use the sparse plan (no --steps or --budget)")
        if wanted >= plan.keyframe_interval:  # a keyframe every K frames costs 1/K on its own
            raise TargetError(f"cost target {wanted:g}x is above what a keyframe every {plan.keyframe_interval} "
                              f"frames allows (less than {plan.keyframe_interval}x)")
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    say(f"1/6 fetching and converting teacher '{teacher_name}' (cached after the first run)")
    videos = default_videos()
    eval_info = video_info(videos[plan.eval_video])
    teacher = resolve_teacher(teacher_name, input_size=parse_size(opts.get("input_size")),
                              value_range=parse_range(opts.get("value_range")), task=opts.get("task"),
                              frame_size=(eval_info.height, eval_info.width))
    teacher_name = getattr(teacher, "name", teacher_name)
    sparse = plan.sparse_level is not None and steps is None and budget is None
    config = DeltaConfig(student="sparse") if sparse else DeltaConfig(reduction=plan.reduction,
                                                                       candidates=plan.candidates)
    model = convert(copy.deepcopy(teacher), config)
    n_conv = len(model.delta_report.converted)
    say(f"2/6 converted {n_conv} convs ({len(model.delta_report.skipped)} kept dense); students: "
        + ("sparse (the teacher's weights on the pixels that moved)" if sparse else
           f"{', '.join(plan.candidates)}, gamma={plan.reduction}"))
    steps = 0 if sparse else steps if steps is not None else plan.quick_steps if quick else plan.steps
    clips = VideoClips([videos[v] for v in plan.train_videos], clip_len=plan.clip_len,
                       max_interval=plan.keyframe_interval, size=tuple(teacher.input_size),
                       frame_range=(0.0, TRAIN_FRACTION), seed=seed, value_range=teacher.input_range,
                       fit="letterbox" if sparse else "crop")
    if sparse:
        say(f"3/6 setting sparse thresholds at {plan.sparse_level:g} x each layer's mean |input| on the first "
            f"{TRAIN_FRACTION:.0%} of {', '.join(plan.train_videos)} (no training needed)")
        cal = sparsify(model, clips, level=plan.sparse_level, stem=plan.sparse_stem)
        trained = {"sparse_level": plan.sparse_level, "sparse_stem": plan.sparse_stem,
                   "calibration_clips": cal.clips}
        choices = {c.name: c.student for c in cal.layers}
    else:
        say(f"3/6 distilling {steps} steps on the first {TRAIN_FRACTION:.0%} of {', '.join(plan.train_videos)} "
            f"(budget: a delta frame at {plan.budget:.0%} of the teacher's MACs)")
        out.mkdir(parents=True, exist_ok=True)  # once the teacher loads: bad input leaves no empty --out behind
        result = distill(model, clips, steps=steps, budget=plan.budget, gate_lr=0.1, seed=seed,
                         num_workers=1, out_dir=out / "train")
        trained = {"distill": result.to_json()}
        choices = result.choices
    deploy(model)
    if target is not None:  # against the calibrated model's own maximum, before --out holds anything
        rate_policy(model, target, plan.keyframe_interval, None, tuple(teacher.input_size))
    out.mkdir(parents=True, exist_ok=True)
    save(model, out / "model", extra={**teacher_record(teacher), **trained})
    info = video_info(videos[plan.eval_video])
    # a video that neither training nor calibration saw is scored whole: its first 70% includes scene cuts
    # and fast motion that its last 30% lacks, and a 75-frame window flattered delta models (BENCHMARKS note 17)
    start = 0 if plan.eval_video not in plan.train_videos else int(TRAIN_FRACTION * info.frames)
    stop = min(info.frames, start + plan.quick_frames) if quick else info.frames
    if plan.max_frames:
        stop = min(stop, start + plan.max_frames)
    say(f"4/6 evaluating on frames {start}..{stop - 1} of {plan.eval_video} (never seen in training), side by side")
    report, cmp = evaluate_on_video(teacher, model, videos[plan.eval_video], keyframe_interval=plan.keyframe_interval,
                                    start=start, stop=stop, out_video=out / "side_by_side.mp4", name=teacher_name,
                                    target=target)
    report["training"] = {"steps": steps, "budget": None if sparse else plan.budget,
                          "sparse_level": plan.sparse_level if sparse else None,
                          "reached_delta_cost": None if sparse else result.reached_cost,
                          "students": _count(choices), "videos": list(plan.train_videos)}
    report["quick"] = quick
    static = _static_camera(teacher, model, videos, plan.keyframe_interval, quick, teacher_name, target,
                            plan.max_frames)
    if static is not None:
        report["static_camera"] = static
    say("5/6 writing report.json, plot.png, side_by_side.mp4 and model/")
    write_json(out / "report.json", report)
    plot(out / "plot.png", cmp, _macs(model, teacher, plan.keyframe_interval),
         f"{teacher_name}: teacher vs delta model on {plan.eval_video}")
    say(f"6/6 done in {time.time() - t0:.0f} s\n\n{table(report)}\n\nstudents chosen: {report['training']['students']}"
        + (f"\n\nthe same model on a static camera ({STATIC_VIDEO}, no model saw it):\n{table(static)}" if static else "")
        + f"\nresults in {out}/")
    return report


#: the one static-camera clip (shipped with deltadistill): where skipping what did not change should pay most
STATIC_VIDEO = "static-hands"


def _static_camera(teacher, model, videos: dict, k: int, quick: bool, name: str,
                   target: float | str | None = None, max_frames: int | None = None) -> dict | None:
    """The same delta model on the static-camera clip, timed against the fastest dense teacher: where
    a delta model's saving should be largest, and the report says whether it is in wall-clock time too.
    A teacher that picks its size per video (``size_for``: IS-Net) runs at this clip's content size."""
    if STATIC_VIDEO not in videos:
        return None
    info = video_info(videos[STATIC_VIDEO])
    stop = min(info.frames, 24) if quick else info.frames
    if max_frames:
        stop = min(stop, max_frames)
    size_for = getattr(teacher, "size_for", None)
    if size_for is not None and tuple(size_for((info.height, info.width))) != tuple(teacher.input_size):
        size = tuple(size_for((info.height, info.width)))
        teacher, model = (copy.deepcopy(m).set_input_size(size) for m in (teacher, model))
    say(f"4b/6 the same model on frames 0..{stop - 1} of {STATIC_VIDEO} (a static camera), against the fastest "
        "dense teacher (torch, onnxruntime and OpenVINO, at full and content size)")
    report, _ = evaluate_on_video(teacher, model, videos[STATIC_VIDEO], keyframe_interval=k, stop=stop, name=name,
                                  target=target)
    return report


def _count(choices: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in choices.values():
        out[c] = out.get(c, 0) + 1
    return out


def _macs(model, teacher, k):
    from ..core.macs import count_macs

    return count_macs(model, (3, *teacher.input_size), k)
