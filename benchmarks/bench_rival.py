"""Does a delta model beat the free rival (teacher every K frames, output repeated) at equal MACs?

For each teacher: calibrate delta models on videos the evaluation never sees (output-aware
objective, students zero / kernel split / sparse / full, or any subset), deploy, and score them on
held-out frames of another video at several keyframe intervals. Each row gives the measured MAC
ratio, the accuracy against the teacher, the rival at the same K and at equal MACs, whether the
model beats it (issue 9's margin), the share of the output's change recovered, and wall clock.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import deltadistill as dd
from deltadistill.apps.bench import evaluate_on_video
from deltadistill.apps.report import speed_words
from deltadistill.teachers.resolve import parse_size, resolve_teacher
from deltadistill.video import VideoClips, default_videos, video_info

try:
    from _report import write_section
    from _videos import subtitled_bikes
except ImportError:
    from benchmarks._report import write_section
    from benchmarks._videos import subtitled_bikes

#: calibrate on these, evaluate on held-out frames of a video neither saw
PLANS = {
    "centernet": {"calib": ("bigbuckbunny", "carphone_pristine"), "eval": "bikes"},
    "selfie": {"calib": ("carphone_pristine", "bigbuckbunny"), "eval": "bikes"},
    # PP-OCRv4 text detection (ONNX, from the rapidocr-onnxruntime wheel), at bikes' frame size
    "ppocr-det": {"calib": ("bigbuckbunny", "carphone_pristine"), "eval": "bikes"},
}
HELD_OUT = 0.7


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher", default="centernet", choices=sorted(PLANS))
    ap.add_argument("--budgets", default="0.15,0.25,0.35")
    ap.add_argument("--intervals", default="4,8")
    ap.add_argument("--students", default="zero,compressed,sparse,full")
    ap.add_argument("--objective", default="output")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--probes", type=int, default=2)
    ap.add_argument("--clip-len", type=int, default=3)
    ap.add_argument("--uniform", default="", help="instead of calibrating: sparse students everywhere, each at "
                    "this multiple of its layer's mean |input| on calibration keyframes, e.g. 0.02,0.04")
    ap.add_argument("--weighted", action="store_true", help="with --uniform: weight channels by the teacher "
                    "weights they feed when scoring pixels")
    ap.add_argument("--running", action="store_true", help="with --uniform: the sparse_running student, whose "
                    "reference moves with what it computed (DeltaCNN's accumulated buffers)")
    ap.add_argument("--element", action="store_true", help="with --uniform: drop delta elements, not pixels")
    ap.add_argument("--ends-dense", action="store_true", help="with --uniform or --tune: keep the first and last "
                    "conv dense, as every run before note 29 did (sparse students now take them by default)")
    ap.add_argument("--first", type=float, default=None, help="with --uniform: the first conv's threshold as a "
                    "share of the level (default: dd.sparsify's, 0.25; the runs before note 29 had no first conv)")
    ap.add_argument("--stem", type=float, default=1.0, help="with --uniform: the threshold of every other layer "
                    "that sees at least half the input size, as a share of the level (dd.sparsify's stem)")
    ap.add_argument("--input-size", default="", help="HxW to run the teacher at (default: its own)")
    ap.add_argument("--bits", type=int, default=0, help="with --uniform: sparse students send their delta "
                    "quantised to this many bits, symmetric, max-scaled per --bits-scale (a lever tried in note 28)")
    ap.add_argument("--bits-scale", default="tensor", choices=("tensor", "pixel"))
    ap.add_argument("--norm", default="mean", choices=("mean", "rms", "max"), help="with --uniform: score a pixel by "
                    "this norm of its delta over channels (a lever tried in note 26; the library scores by the mean)")
    ap.add_argument("--tune", action="store_true", help="sparse students at --start-level, then dd.tune_sparse "
                    "to each of --budgets (thresholds searched by measuring whole models)")
    ap.add_argument("--start-level", type=float, default=0.035)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--eval", default="", help="score on this video instead of the plan's (and calibrate on the "
                    "other two); 'subtitled': bikes with burnt-in subtitles (made once under runs/videos)")
    ap.add_argument("--distill", type=int, default=0, help="after calibrating: this many distillation steps on the "
                    "calibration videos (students only, pseudo-labels from the teacher)")
    ap.add_argument("--start", type=float, default=HELD_OUT, help="score from this share of the video on "
                    "(default 0.7, as the demo; 0: the whole video, which calibration never sees either)")
    ap.add_argument("--untimed", action="store_true", help="leave wall clock out of the section (when other "
                    "work shares the CPU; bench_teachers times the models)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--section", default="", help="write a BENCHMARKS.md section with this suffix")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.norm != "mean":
        _score_by(args.norm)
    if args.bits:
        _quantise_deltas(args.bits, args.bits_scale)
    plan, videos = dict(PLANS[args.teacher]), default_videos()
    if args.eval == "subtitled":
        videos["bikes_subtitled"] = subtitled_bikes()
        plan["eval"] = "bikes_subtitled"
    elif args.eval:
        if args.eval not in videos:
            raise SystemExit(f"--eval: no video {args.eval!r}; have {', '.join(sorted(videos))}")
        plan = {"eval": args.eval, "calib": tuple(v for v in sorted(videos) if v != args.eval)}
    info = video_info(videos[plan["eval"]])
    teacher = resolve_teacher(args.teacher, input_size=parse_size(args.input_size) if args.input_size else None,
                              frame_size=(info.height, info.width))
    size = tuple(teacher.input_size)
    intervals = [int(k) for k in args.intervals.split(",")]
    ev = videos[plan["eval"]]
    start = int(args.start * video_info(ev).frames)
    rows = []
    levels = [float(a) for a in args.uniform.split(",")] if args.uniform else [float(b) for b in args.budgets.split(",")]
    for budget, k in [(b, k) for b in levels for k in intervals]:
        # frames as deployment sees them (letterboxed), at the keyframe distances K gives (1..K-1)
        calib = VideoClips([videos[v] for v in plan["calib"]], clip_len=args.clip_len, max_interval=k - 1, size=size,
                           value_range=teacher.input_range, seed=1, fit="letterbox")
        ends = {"targets": lambda n, m, skip=_ends(teacher): isinstance(m, torch.nn.Conv2d) and n not in skip} \
            if args.ends_dense else {}
        sparse = args.tune or args.uniform
        model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse" if sparse else "compressed", **ends))
        t0 = time.process_time()
        tuned = None
        if args.tune:
            cal = dd.sparsify(model, calib, level=args.start_level, clips=args.clips, running=args.running)
            tuned = dd.tune_sparse(model, calib, budget=budget, clips=args.clips, rounds=args.rounds)
            cal.predicted_recovered = tuned.recovered
            print(json.dumps({"tuned": tuned.groups, "history": tuned.history}), flush=True)
        elif args.uniform:
            first = {} if args.first is None else {"first": args.first}
            cal = dd.sparsify(model, calib, level=budget, clips=args.clips, weighted=args.weighted,
                              running=args.running, element=args.element, stem=args.stem, **first)
        else:
            cal = dd.calibrate(model, calib, budget=budget, clips=args.clips, objective=args.objective,
                               students=tuple(args.students.split(",")), probes=args.probes)
        if args.distill:
            clips = VideoClips([videos[v] for v in plan["calib"]], clip_len=args.clip_len, max_interval=k - 1,
                               size=size, value_range=teacher.input_range, seed=2)
            dd.distill(model, clips, steps=args.distill, lr=3e-4, seed=0, progress=False)
        cpu = time.process_time() - t0
        dd.deploy(model)
        if True:
            rep, _ = evaluate_on_video(teacher, model, ev, keyframe_interval=k, start=start, progress=False)
            acc = rep["accuracy"]
            riv = acc["rival_equal_macs"]
            row = {"budget": budget, "k": k, "students": cal.counts() or {"sparse": "all, uniform"}, "calibration_cpu_s": round(cpu),
                   "predicted_recovered": cal.predicted_recovered, "mac_ratio": rep["mac_ratio"],
                   "accuracy": acc["value"], "rival_same_k": acc["hold_keyframe_baseline"],
                   "rival_equal_macs": riv, "recovered": rep["detail"]["output_change_recovered"],
                   "speedup": rep["speedup"], "metric": acc["metric"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.section:
        how = (f"sparse students at {args.start_level:g} x each layer's mean |input|, then `dd.tune_sparse` "
               f"({args.rounds} rounds; the recovered share in brackets is what it measured on the "
               "calibration clips)" if args.tune else
               f"{'element-' if args.element else ''}{'running ' if args.running else ''}sparse students in every conv{' but the first and last' if args.ends_dense else ''}, "
               f"thresholds {args.uniform} x each layer's "
               f"{'weighted ' if args.weighted else ''}mean |input|"
               + (f", pixels scored by the {args.norm} of |delta| over channels (and the scale is each layer's mean "
                  f"{args.norm} of |input|)" if args.norm != "mean" else "")
               + (f", deltas sent as {args.bits}-bit integers (max-scaled per {args.bits_scale})" if args.bits else "")
               + ("" if args.ends_dense else
                  f" (the first conv's at {0.25 if args.first is None else args.first:g} of that: it sees the frame)")
               + (f"; the stem's (other layers that see at least half the input size) at {args.stem:g} of it"
                  if args.stem != 1.0 else "")
               if args.uniform
               else f"calibrated ({args.objective} objective, students {args.students})")
        body = [f"{args.teacher} at {size[0]}x{size[1]}: {how}; statistics from "
                f"{args.clips} clips of {', '.join(plan['calib'])}; scored on frames {start}.. of "
                f"`{plan['eval']}`, a video calibration never saw. MAC ratios are measured (sparse students "
                "cost what their frames make them cost).", "",
                f"| {'threshold' if args.uniform else 'budget'} | K | students | MAC ratio | {rows[0]['metric']} | rival, same K | rival at equal MACs "
                "(K_eq) | beats it? | output change recovered (predicted) | wall clock |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        if args.untimed:
            body[-2], body[-1] = body[-2].rsplit(" wall clock |", 1)[0], body[-1][:-4]
        for r in rows:
            riv = r["rival_equal_macs"]
            verdict = f"**yes**, {riv['margin']:+.3f}" if riv["beats"] else f"no, {riv['margin']:+.3f} (needs {riv['margin_needed']:+.3f})"
            body.append(f"| {r['budget']:g} | {r['k']} | {r['students']} | {r['mac_ratio']:.2f}x | {r['accuracy']:.3f} | "
                        f"{r['rival_same_k']:.3f} | {riv['value']:.3f} (K={riv['interval']:.2f}) | {verdict} | "
                        f"{r['recovered']:.2f} ({_num(r['predicted_recovered'])}) |"
                        + ("" if args.untimed else f" {speed_words(r['speedup'])} |"))
        kind = ("tuned sparse" if args.tune else "uniform sparse, weighted" if args.uniform and args.weighted
                else "uniform element-running sparse" if args.uniform and args.element and args.running
                else "uniform element sparse" if args.uniform and args.element
                else "uniform running sparse" if args.uniform and args.running
                else "uniform sparse" if args.uniform
                else "calibrated, sparse only" if args.students == "sparse" else "calibrated")
        kind += f", distilled {args.distill} steps" if args.distill else ""
        whole = ", whole video" if start == 0 else ""
        write_section(f"rival-{args.teacher}{args.section}", f"{args.teacher}: delta models against the rival at "
                      f"equal MACs ({kind}){whole}", "\n".join(body))


def _ends(model: torch.nn.Module) -> set[str]:
    """The names of the model's first and last conv (what `convert` kept dense before note 29)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return {convs[0], convs[-1]}


def _score_by(norm: str) -> None:
    """Make sparse students and `sparsify` score pixels by the root mean square or the max of |delta|."""
    import deltadistill.core.students as students
    import deltadistill.train.calibrate as calibrate

    def scores(delta: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if norm == "rms":
            return delta.pow(2).mean(1, keepdim=True).sqrt()
        return delta.abs().amax(1, keepdim=True)

    students.pixel_scores = calibrate.pixel_scores = scores


def _quantise_deltas(bits: int, per: str) -> None:
    """Make sparse students send ``round(delta / s) * s`` with ``bits``-bit levels; ``s`` from the max |delta|
    of the whole map (per frame and layer) or of each pixel. MACs are counted as before."""
    import deltadistill.core.students as students

    levels = 2 ** (bits - 1) - 1
    plain = students.SparseStudent.forward

    def forward(self: students.SparseStudent, delta: torch.Tensor) -> torch.Tensor:
        plain(self, delta)  # the mask and the measured MACs
        sent = self.__dict__["last_sent"]
        top = sent.abs().amax() if per == "tensor" else sent.abs().amax(1, keepdim=True)
        scale = top.clamp_min(1e-12) / levels
        return self.conv(torch.round(sent / scale) * scale)

    students.SparseStudent.forward = forward


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    main()
