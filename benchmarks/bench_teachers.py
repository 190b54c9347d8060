"""Teacher vs delta model on held-out frames of the demo's video: MACs, time, accuracy, the rival at equal MACs.

Run after the demo has trained a model, e.g.
    deltadistill demo --out runs/demo                       # selfie (the default), K=4
    python benchmarks/bench_teachers.py --teacher selfie --model runs/demo/model --k 4
    deltadistill demo --teacher centernet --out runs/demo-centernet
    python benchmarks/bench_teachers.py --teacher centernet --model runs/demo-centernet/model --k 8
"""

from __future__ import annotations

import argparse

import torch

from deltadistill import teachers
from deltadistill.apps.bench import calibrated_model, evaluate_on_video, load_delta_model
from deltadistill.apps.demo import PLANS, TRAIN_FRACTION
from deltadistill.apps.report import REPEAT_NOTE, rival_words, speed_words
from deltadistill.video import VideoClips, default_videos, video_info

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section

TARGETS = {"centernet": {"mac_ratio": 4.0, "accuracy": 0.90, "wall_share": 0.75},
           "selfie": {"mac_ratio": 2.0, "accuracy": 0.95, "wall_share": None}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="centernet", choices=sorted(PLANS))
    ap.add_argument("--model", help="a trained model directory (e.g. the demo's)")
    ap.add_argument("--budget", type=float, help="instead of --model: calibrate one at this budget (no training)")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plan = PLANS[args.teacher]
    k = args.k or plan.keyframe_interval
    teacher = teachers.load(args.teacher)
    videos = default_videos()
    if (args.model is None) == (args.budget is None):
        ap.error("give exactly one of --model and --budget")
    if args.model:
        model = load_delta_model(teacher, args.model)
    else:
        clips = VideoClips([videos[v] for v in plan.train_videos], clip_len=3, max_interval=k,
                           size=tuple(teacher.input_size), frame_range=(0.0, TRAIN_FRACTION), seed=0,
                           value_range=teacher.input_range)
        model = calibrated_model(teacher, clips, args.budget)
    video = videos[plan.eval_video]
    start = int(TRAIN_FRACTION * video_info(video).frames)
    report, _ = evaluate_on_video(teacher, model, video, keyframe_interval=k, start=start, name=args.teacher,
                                  compile=args.compile)
    t = TARGETS[args.teacher]
    wall_share = report["speedup"] / report["mac_ratio"]
    ok = lambda good: "met" if good else "**not met**"  # noqa: E731
    g, ms, acc, tc = report["gmacs_per_frame"], report["ms_per_frame"], report["accuracy"], report["temporal_consistency"]
    d, rival = report["detail"], report["accuracy"]["rival_equal_macs"]
    body = f"""Held-out frames {start}..{report['frames'] + start - 1} of `{plan.eval_video}` ({report['frames']} frames), K={k}, batch 1, channels_last, {report['threads']} threads, teacher and delta model interleaved in one process{', both through torch.compile (timed after warm-up)' if args.compile else ''}.

| | teacher | delta model | ratio |
|---|---|---|---|
| GMAC / frame (amortised) | {g['teacher']:.3f} | {g['delta']:.3f} | **{report['mac_ratio']:.2f}x** fewer |
| GMAC keyframe / delta frame | | {d['gmacs_keyframe']:.3f} / {d['gmacs_delta_frame']:.3f} | |
| CPU ms / frame (amortised) | {ms['teacher']:.1f} | {ms['delta']:.1f} | **{speed_words(report['speedup'])}** |
| CPU ms keyframe / delta frame | | {d['ms_keyframe']:.1f} / {d['ms_delta_frame']:.1f} | |
| {acc['metric']} | 1.000 | {acc['value']:.3f} | repeating the teacher's keyframe output instead, same K: {acc['hold_keyframe_baseline']:.3f} |
| rival at equal MACs (K_eq = {rival['interval']:.2f}) | | {rival['value']:.3f} | {rival_words(acc['value'], rival)} |
| temporal consistency | {tc['teacher']:.3f} | {tc['delta']:.3f} | |

Delta frames whose output was their keyframe's, bit for bit: {d['delta_frames_repeating_keyframe']:.0%}{': ' + REPEAT_NOTE if d['delta_frames_repeating_keyframe'] == 1.0 else '.'}

Targets: MAC ratio >= {t['mac_ratio']}: {ok(report['mac_ratio'] >= t['mac_ratio'])}; accuracy >= {t['accuracy']}: {ok(acc['value'] >= t['accuracy'])}; wall-clock speedup is {wall_share:.0%} of the MAC ratio{'' if t['wall_share'] is None else f" (target {t['wall_share']:.0%}: {ok(wall_share >= t['wall_share'])})"}.
"""
    suffix = ("-calibrated" if args.budget else "") + ("-compiled" if args.compile else "")
    what = f", calibrated at budget {args.budget} (no training)" if args.budget else ""
    title = f"{args.teacher}: teacher vs delta model, K={k}{what}{', torch.compile' if args.compile else ''}"
    print(write_section(f"teacher-{args.teacher}{suffix}", title, body))


if __name__ == "__main__":
    main()
