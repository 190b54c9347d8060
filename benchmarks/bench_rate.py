"""Rate control (issue 20): accuracy against cost, like a rate-distortion curve in video coding.

For each teacher and video, three things at costs from about 1.5x to 6x fewer MACs than the teacher:

* the controller (`rate.RateControl`) at targets 1.5x, 2x, 3x, 4x and 6x, in both of its modes
  (``threshold``: every sparse threshold scaled by feedback; ``topk``: the same share of pixels kept
  in every sparse layer), with the longest keyframe interval K;
* fixed thresholds: the same model with every threshold scaled by a constant, at the same K;
* the rival: the teacher every K' frames, repeated, with the same scene-cut keyframes.

One sparse model per teacher, its thresholds calibrated on the first 70% of carphone and
bigbuckbunny (`dd.sparsify`, as `make demo` does); scored on bikes and the static-camera clip whole,
and on the last 30% of the two calibration videos. Cost is MACs (the share of the teacher's, every
keyframe counted), not time: our delta models run slower than the teacher in wall-clock time
(issue 19). Each run is appended to the JSON as it ends, and a rerun skips the runs already there.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

import deltadistill as dd
from deltadistill.core.macs import count_macs, measured_delta_macs
from deltadistill.measure.rival import repeat_at_keys, rival_equal_macs
from deltadistill.stream import SceneCut, frame_change, keyframe_flags
from deltadistill.stream.rate import RateControl, TargetError, sparse_students
from deltadistill.tasks import task_for
from deltadistill.video import VideoClips, default_videos, iter_frames, video_info

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section

TARGETS = (1.5, 2.0, 3.0, 4.0, 6.0)
SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)
#: teacher -> (sparse level, stem share, keyframe intervals), as the demo's plans
PLANS = {"selfie": (0.15, 1.0, (4, 8)), "centernet": (0.1, 0.05, (8,))}
CALIBRATION = ("carphone_pristine", "bigbuckbunny")
CUT = 0.15


def build(name: str):
    teacher = dd.teachers.load(name).eval()
    level, stem, _ = PLANS[name]
    videos = default_videos()
    clips = VideoClips([videos[v] for v in CALIBRATION], size=tuple(teacher.input_size),
                       frame_range=(0.0, 0.7), value_range=teacher.input_range, fit="letterbox")
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    dd.sparsify(model, clips, level=level, stem=stem)
    return teacher, dd.deploy(model).eval()


def frames_of(video: str) -> tuple[int, int]:
    n = video_info(default_videos()[video]).frames
    return (int(0.7 * n), n) if video in CALIBRATION else (0, n)


def run(model, xs, policy, scale: float | None) -> tuple[list, list[float], list[bool]]:
    """Each frame's output and cost (share of the teacher's MACs), and the keyframes."""
    stream = dd.DeltaStream(model, keyframe=policy)
    report = count_macs(model, tuple(xs[0].shape), 8)
    steered = sparse_students(model)
    outs, costs, keys = [], [], []
    try:
        for s in steered if scale is not None else ():
            s.__dict__["threshold_scale"] = scale
        with torch.no_grad():
            for x in xs:
                outs.append(stream(x))
                keys.append(bool(stream.last_key))
                costs.append(report.keyframe / report.teacher if keys[-1] else
                             measured_delta_macs(model, report) / report.teacher)
    finally:
        for s in steered:
            s.__dict__.pop("threshold_scale", None)
    return outs, costs, keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teachers", default="selfie,centernet")
    ap.add_argument("--videos", default="static-hands,bikes,bigbuckbunny,carphone_pristine")
    ap.add_argument("--centernet-videos", default="static-hands,bikes", help="centernet is 5x slower: fewer videos")
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)))
    ap.add_argument("--modes", default="threshold,topk")
    ap.add_argument("--scales", default=",".join(map(str, SCALES)), help="fixed threshold scales")
    ap.add_argument("--json", default="benchmarks/rate.json")
    ap.add_argument("--section", default="rate-control")
    ap.add_argument("--report-only", action="store_true", help="plot and write the section from the JSON")
    args = ap.parse_args()
    torch.set_num_threads(2)
    path = Path(args.json)
    rows: list[dict] = json.loads(path.read_text())["rows"] if path.is_file() else []
    curves: dict = json.loads(path.read_text())["rivals"] if path.is_file() else {}
    done = {(r["teacher"], r["video"], r["kind"], r["k"], r.get("target"), r.get("scale"), r.get("mode")) for r in rows}
    targets = [float(t) for t in args.targets.split(",")]
    for name in [] if args.report_only else args.teachers.split(","):
        teacher, model = build(name)
        task = task_for(teacher)
        size = tuple(teacher.input_size)
        videos = args.centernet_videos if name == "centernet" else args.videos
        for vid in videos.split(","):
            start, stop = frames_of(vid)
            xs = [teacher.preprocess(f) for f in iter_frames(default_videos()[vid], size, "letterbox", start, stop)]
            with torch.no_grad():
                tp = [task.single(teacher.postprocess(teacher(x))) for x in tqdm(xs, desc=f"{name} {vid} teacher",
                                                                                    leave=False)]
            changes = [0.0] + [float(frame_change(a, b).mean()) for a, b in zip(xs, xs[1:], strict=False)]

            def score(preds: list, tp: list = tp, task=task) -> float:
                return task.accuracy(preds, tp)["value"]

            def keys_at(k: int, changes: list = changes) -> list[bool]:
                return keyframe_flags(changes, k, CUT)

            curves[f"{name}|{vid}"] = [(len(xs) / sum(keys_at(k)), 1.0 if k == 1 else score(repeat_at_keys(tp, keys_at(k))))
                                       for k in range(1, 17)]
            settings = []
            for k in PLANS[name][2]:
                settings += [("fixed", k, None, float(s), None) for s in args.scales.split(",")]
                settings += [("controller", k, t, None, m) for m in args.modes.split(",") for t in targets]
            for kind, k, target, scale, mode in settings:
                if (name, vid, kind, k, target, scale, mode) in done:
                    continue
                policy = SceneCut(k, CUT) if kind == "fixed" else RateControl(target, mode=mode, max_interval=k,
                                                                               scene_cut=CUT)
                if kind == "controller":
                    try:
                        policy.check(model, tuple(xs[0].shape))
                    except TargetError as e:  # above what the model can hold at this K: said, not run
                        print(f"{name} {vid} K={k} {target}x {mode}: {e}", flush=True)
                        done.add((name, vid, kind, k, target, scale, mode))
                        continue
                t0 = time.time()
                outs, costs, keys = run(model, xs, policy, scale)
                preds = [task.single(teacher.postprocess(o)) for o in outs]
                acc = score(preds)
                ratio = len(costs) / sum(costs)
                windows = [32 / sum(costs[i:i + 32]) for i in range(len(costs) - 31)]
                rival = rival_equal_macs(tp, score, 1.0, 1.0 / ratio, acc, keys_at=keys_at)
                rows.append({"teacher": name, "video": vid, "frames": [start, stop], "kind": kind, "k": k,
                             "target": target, "scale": scale, "mode": mode, "ratio": ratio, "accuracy": acc,
                             "metric": task.metric, "window_min": min(windows), "window_max": max(windows),
                             "keyframes": sum(keys), "rival": {x: rival[x] for x in ("interval", "value", "margin",
                                                                                     "margin_needed", "beats")},
                             "reasons": ({r: policy.reasons.count(r) for r in set(policy.reasons) if r}
                                         if kind == "controller" else None), "seconds": time.time() - t0})
                done.add((name, vid, kind, k, target, scale, mode))
                print(f"{name} {vid} {kind} K={k} {target or scale} {mode or ''}: {ratio:.2f}x "
                      f"(windows {min(windows):.2f}-{max(windows):.2f}) {acc:.3f} vs rival {rival['value']:.3f}",
                      flush=True)
                path.write_text(json.dumps({"rows": rows, "rivals": curves}, indent=1))
    _plot(rows, curves, path.with_suffix(".png"))
    write_section(args.section, "Rate control: accuracy against cost, with the rival and fixed thresholds (issue 20)",
                  _body(rows, args))


def _interp(points: list[tuple[float, float]], x: float) -> float | None:
    """Accuracy of a curve of (ratio, accuracy) points at ratio ``x``, linear in 1/ratio; None outside it."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            w = (1 / x0 - 1 / x) / (1 / x0 - 1 / x1) if x1 != x0 else 0.0
            return y0 + w * (y1 - y0)
    return None


def _fixed_at(rows: list[dict], r: dict) -> float | None:
    """The fixed-threshold curve (same teacher, video, K) at a controller row's achieved ratio."""
    pts = [(f["ratio"], f["accuracy"]) for f in rows if f["kind"] == "fixed" and
           (f["teacher"], f["video"], f["k"]) == (r["teacher"], r["video"], r["k"])]
    return _interp(pts, r["ratio"])


def cost_axis(ax, right: float) -> None:
    """The x axis every rate figure shares: cost ratio against the teacher, log scale, 1.5x-6x ticks."""
    ax.set_xscale("log")
    ax.set_xlim(1.3, right)
    ax.set_xticks([1.5, 2, 3, 4, 6])
    ax.set_xticklabels(["1.5x", "2x", "3x", "4x", "6x"])
    ax.set_xlabel("fewer MACs than the teacher (keyframes counted)")


def _plot(rows: list[dict], curves: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in dict.fromkeys(r["teacher"] for r in rows):
        vids = list(dict.fromkeys(r["video"] for r in rows if r["teacher"] == name))
        fig, axes = plt.subplots(1, len(vids), figsize=(4.6 * len(vids), 4.0), squeeze=False)
        for ax, vid in zip(axes[0], vids, strict=True):
            mine = [r for r in rows if (r["teacher"], r["video"]) == (name, vid)]
            rival = curves.get(f"{name}|{vid}", [])
            ax.plot([p[0] for p in rival], [p[1] for p in rival], "k--", lw=1.2, label="rival: teacher every K, repeated")
            colors = iter(("tab:blue", "tab:orange", "tab:green", "tab:red"))
            for k in dict.fromkeys(r["k"] for r in mine):
                fixed = sorted((r["ratio"], r["accuracy"]) for r in mine if r["kind"] == "fixed" and r["k"] == k)
                c = next(colors)
                ax.plot([p[0] for p in fixed], [p[1] for p in fixed], "s:", color=c, ms=4,
                        label=f"fixed thresholds, K={k}")
                for mode, marker in (("threshold", "o-"), ("topk", "^-")):
                    pts = sorted((r["ratio"], r["accuracy"]) for r in mine
                                 if r["kind"] == "controller" and r["k"] == k and r["mode"] == mode)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, color=c, ms=5,
                                label=f"controller ({mode}), K<={k}")
            cost_axis(ax, 8)
            ax.set_ylabel(mine[0]["metric"])
            ax.set_title(f"{name}, {vid}")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(png.with_name(f"{png.stem}_{name}.png"), dpi=110)
        plt.close(fig)


def _body(rows: list[dict], args) -> str:
    lines = ["Rows made by `python benchmarks/bench_rate.py --teachers selfie` and `python benchmarks/bench_rate.py "
             "--teachers centernet --targets 2,3,4,6` (resumable: each row is kept in the JSON as it ends), this "
             "section and the figures by `--report-only`. "
             "Cost is MACs, as a share of the teacher's with every keyframe counted (not time: see issue 19). "
             "Thresholds calibrated on the first 70% of carphone and bigbuckbunny; those two are scored on their "
             "last 30%, bikes and static-hands whole. `windows` is the ratio held over each 32-frame window "
             "(min-max; within 10% of the target means 0.9-1.1x it). `rival` is the teacher every K' frames "
             "at the same cost with the same scene-cut keyframes; `fixed` the fixed-threshold curve at the same K "
             f"at the same cost (interpolated in 1/cost). Figures: `{Path(args.json).stem}_<teacher>.png`.", "",
             "| teacher | video | K | mode | target | held | windows | within 10%? | accuracy | rival | margin (needed) "
             "| beats rival? | fixed at same cost | keyframes (cuts, by cost, by budget) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["kind"] == "controller"),
                    key=lambda r: (r["teacher"], r["video"], r["k"], r["mode"], r["target"])):
        fixed = _fixed_at(rows, r)
        within = all(abs(w / r["target"] - 1) <= 0.1 for w in (r["window_min"], r["window_max"]))
        rv, reasons = r["rival"], r["reasons"] or {}
        lines.append(
            f"| {r['teacher']} | {r['video']} | {r['k']} | {r['mode']} | {r['target']:g}x | {r['ratio']:.2f}x | "
            f"{r['window_min']:.2f}-{r['window_max']:.2f} | {'yes' if within else 'no'} | {r['accuracy']:.3f} | "
            f"{rv['value']:.3f} | {rv['margin']:+.3f} ({rv['margin_needed']:+.3f}) | {'yes' if rv['beats'] else 'no'} | "
            f"{'-' if fixed is None else f'{fixed:.3f}'} | {r['keyframes']} ({reasons.get('cut', 0)}, "
            f"{reasons.get('cost', 0)}, {reasons.get('budget', 0)}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
