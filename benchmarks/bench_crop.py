"""Does a crop-dense delta frame cost less *time* than the fastest dense teacher, and beat the rival
at equal time?

For each teacher and video: the plain teacher on its fastest dense path (torch, onnxruntime and
OpenVINO, at the input size and at the video's content size, `runtime.fastest`), and the crop runtime
(`runtime.crop.CropStream` on OpenVINO) at a grid of thresholds and margins, each interleaved with
the OpenVINO teacher over the same frames in one process. Every row gives the measured amortised
time against the fastest dense teacher, the accuracy against the teacher, the rival (the teacher
every K_t frames, repeated) at equal time, the share of tiles that moved and of the frame computed,
and where a delta frame's time went. One figure per teacher: accuracy against speed, with the rival.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import deltadistill as dd
from deltadistill.apps.bench import evaluate_on_video
from deltadistill.apps.report import speed_words
from deltadistill.measure.rival import repeat_at_keys
from deltadistill.stream import keyframe_flags
from deltadistill.tasks import task_for
from deltadistill.video import default_videos

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section

GRID = [{"threshold": 0.05, "margin": 32}, {"threshold": 0.05, "margin": 64}, {"threshold": 0.1, "margin": 32}]


def rival_curve(cmp, task, scene_cut: float, ks=range(1, 17)) -> list[tuple[float, float]]:
    """(speed against the teacher, accuracy) of repeating the teacher's output every K frames."""
    out = []
    for k in ks:
        keys = keyframe_flags(cmp.changes, k, scene_cut) if cmp.changes else [i % k == 0 for i in range(cmp.frames)]
        preds = repeat_at_keys(cmp.teacher_preds, keys)
        out.append((len(keys) / sum(keys), task.accuracy(preds, cmp.teacher_preds)["value"]))
    return out


class _PlanOnly:
    """An engine that runs nothing: the stream plans its crops exactly as it would, at no cost."""

    name = "plan"

    def __init__(self, outputs: tuple[torch.Tensor, ...], scales: list[tuple[float, float]]) -> None:
        self.outputs, self.scales, self.sizes = outputs, scales, []

    def prepare(self, sizes, progress=True) -> None:
        pass

    def key(self, x):
        return self.outputs, ()

    def crop(self, x, gates):
        self.sizes[-1].append(tuple(x.shape[-2:]))
        return tuple(torch.zeros(*o.shape[:2], round(x.shape[-2] * sy), round(x.shape[-1] * sx))
                     for o, (sy, sx) in zip(self.outputs, self.scales, strict=True))


def predict(teacher, video, cfg: dict, k: int, frames: int, scene_cut: float, fastest_ms: float) -> dict:
    """The go/no-go estimate, from the plan alone: each delta frame costs the OpenVINO time of the
    crop shapes it would run (each shape timed once, alone), a keyframe the OpenVINO teacher's."""
    from deltadistill.runtime.crop import CropStream
    from deltadistill.runtime.fastest import dense_runner, median_ms
    from deltadistill.stream import SceneCut
    from deltadistill.video import iter_frames

    size = tuple(teacher.input_size)
    with torch.no_grad():
        outs = teacher(torch.zeros(1, 3, *size))
    outs = outs if isinstance(outs, tuple) else (outs,)
    scales = [(o.shape[-2] / size[0], o.shape[-1] / size[1]) for o in outs]
    stream = CropStream(teacher, SceneCut(k, scene_cut), backend="torch", **cfg)
    engine = stream.engine = _PlanOnly(outs, scales)  # type: ignore[assignment]
    keys = []
    for f in iter_frames(video, size, "letterbox", 0, frames or None):
        engine.sizes.append([])
        stream(teacher.preprocess(f))
        keys.append(stream.last_key)
    ov = CropStream(teacher, k, backend="openvino", **cfg).prepare(progress=False)
    need = {s for frame in engine.sizes for s in frame}
    scale = float(getattr(teacher, "input_range", 1.0))
    gates = ov.engine.key(torch.rand(1, 3, *size) * scale)[1]
    cost = {s: median_ms(lambda x: ov.engine.crop(x, gates), torch.rand(1, 3, *s) * scale, 10)[0] for s in need}
    key_ms = median_ms(dense_runner(teacher, "openvino", size), torch.rand(1, 3, *size) * scale, 10)[0]
    delta = [sum(cost[s] for s in frame) for frame, key in zip(engine.sizes, keys, strict=True) if not key]
    amortised = (sum(keys) * key_ms + sum(delta)) / len(keys)
    return {"predicted_ms": amortised, "predicted_vs_fastest": fastest_ms / amortised}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teachers", default="centernet,selfie")
    ap.add_argument("--videos", default="static-hands,bikes")
    ap.add_argument("--keyframe-interval", type=int, default=8)
    ap.add_argument("--frames", type=int, default=0, help="frames per video (0: all)")
    ap.add_argument("--grid", default="", help="JSON list of crop settings (default: threshold 0.05 with margins "
                                                "32 and 64, and 0.1 with 32)")
    ap.add_argument("--scene-cut", type=float, default=0.15)
    ap.add_argument("--json", default="benchmarks/crop.json")
    ap.add_argument("--section", default="crop-runtime")
    ap.add_argument("--append", action="store_true", help="add to the rows already in --json (one process per "
                    "setting: OpenVINO's thread pools from earlier settings slow later ones in one process)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    grid = json.loads(args.grid) if args.grid else GRID
    videos = default_videos()
    rows: list[dict] = []
    curves: dict = {}
    if args.append and Path(args.json).is_file():
        saved = json.loads(Path(args.json).read_text())
        rows = saved["rows"]
        curves = {tuple(k.split("|")): [tuple(p) for p in v] for k, v in saved["curves"].items()}
    for name in args.teachers.split(","):
        teacher = dd.teachers.load(name)
        task = task_for(teacher)
        for vid in args.videos.split(","):
            for cfg in grid:
                report, cmp = evaluate_on_video(teacher, None, videos[vid], keyframe_interval=args.keyframe_interval,
                                                stop=args.frames or None, runtime="crop", backend="openvino",
                                                crop=cfg, scene_cut=args.scene_cut, progress=False, name=name)
                acc = report["accuracy"]
                rows.append({"teacher": name, "video": vid, **cfg, "frames": report["frames"],
                             "accuracy": acc["value"], "metric": acc["metric"],
                             "speedup_vs_fastest_dense": report["speedup_vs_fastest_dense"],
                             "speedup_vs_openvino_teacher": report["speedup"],
                             "fastest_dense": {k: v for k, v in report["fastest_dense"].items() if k != "candidates"},
                             "candidates": report["fastest_dense"]["candidates"],
                             "ms": report["ms_per_frame"], "ms_keyframe": report["detail"]["ms_keyframe"],
                             "ms_delta_frame": report["detail"]["ms_delta_frame"], "latency": report["latency_ms"],
                             "rival_equal_time": {k: acc["rival_equal_time"][k] for k in
                                                  ("interval", "value", "margin", "margin_needed", "beats")},
                             "rival_same_k": acc["hold_keyframe_baseline"], "mac_ratio": report["mac_ratio"],
                             "stages": report["crop_stages"], "letterbox_share": report["letterbox_share"]})
                r = rows[-1]
                r.update(predict(teacher, videos[vid], cfg, args.keyframe_interval, args.frames, args.scene_cut,
                                 report["fastest_dense"]["ms"]))
                print(f"{name} {vid} {cfg}: {speed_words(r['speedup_vs_fastest_dense'])} than the fastest dense, "
                      f"{r['metric']} {r['accuracy']:.3f} vs rival at equal time {r['rival_equal_time']['value']:.3f}",
                      flush=True)
                if (name, vid) not in curves:  # the rival runs the fastest dense teacher every K frames: K times faster
                    curves[(name, vid)] = rival_curve(cmp, task, args.scene_cut)
    Path(args.json).write_text(json.dumps({"rows": rows, "curves": {"|".join(k): v for k, v in curves.items()}},
                                          indent=1))
    _plot(rows, curves, Path(args.json).with_suffix(".png"))
    write_section(args.section, "Crop-dense delta frames against the fastest dense teacher (issue 19)", _body(rows, args))


def _plot(rows: list[dict], curves: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = list(dict.fromkeys(r["teacher"] for r in rows))
    fig, axes = plt.subplots(1, len(teachers), figsize=(6 * len(teachers), 4.2), squeeze=False)
    for ax, name in zip(axes[0], teachers, strict=True):
        for vid, color in zip(dict.fromkeys(r["video"] for r in rows if r["teacher"] == name), ("tab:blue", "tab:orange"),
                              strict=False):
            pts = [r for r in rows if r["teacher"] == name and r["video"] == vid]
            ax.plot([p["speedup_vs_fastest_dense"] for p in pts], [p["accuracy"] for p in pts], "o", color=color,
                    label=f"crop runtime, {vid}")
            for p in pts:
                ax.annotate(f"t={p['threshold']:g} m={p['margin']}", (p["speedup_vs_fastest_dense"], p["accuracy"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
            curve = curves[(name, vid)]
            ax.plot([k for k, _ in curve], [a for _, a in curve], "--", color=color, alpha=0.7,
                    label=f"rival: fastest dense teacher every K frames, {vid}")
        ax.axvline(1.0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speed against the fastest dense teacher (amortised, x)")
        ax.set_ylabel(rows[0]["metric"] if name == teachers[0] else next(r["metric"] for r in rows if r["teacher"] == name))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _body(rows: list[dict], args) -> str:
    lines = [f"K={args.keyframe_interval} (and a keyframe at scene cuts, for the rival too). Each crop run is "
             "timed interleaved with the OpenVINO teacher at full size; `vs fastest` divides the fastest dense "
             "teacher's median ms (whichever engine and size won, below) by the crop runtime's amortised ms. The "
             "rival at equal time repeats the fastest dense teacher every K_t = that ratio frames. Stages are "
             "medians over delta frames: tiles moved, share of the frame computed, crops per frame, and ms in the "
             "change test, the OpenVINO crop runs and the pastes. `predicted` is the go/no-go estimate made from the "
             "plan alone (`predict`): the crops each frame would run, each shape's OpenVINO time measured alone, "
             "and the OpenVINO teacher's time per keyframe.", "",
             "| teacher | video | threshold | margin | predicted | vs fastest dense | accuracy | rival at equal time (K_t) | beats? "
             "| tiles moved | computed | ms key / delta | p95 / max ms | detect / run / paste ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rv, st, lat = r["rival_equal_time"], r["stages"], r["latency"]["delta"]
        lines.append(f"| {r['teacher']} | {r['video']} | {r['threshold']:g} | {r['margin']} | "
                     f"{speed_words(r['predicted_vs_fastest'])} | {speed_words(r['speedup_vs_fastest_dense'])} | {r['accuracy']:.3f} | {rv['value']:.3f} "
                     f"({rv['interval']:.2f}) | {'**yes**' if rv['beats'] else 'no'} ({rv['margin']:+.3f}, needs "
                     f"{rv['margin_needed']:+.3f}) | {st['active']:.0%} | {st['mean_computed']:.0%} | "
                     f"{r['ms_keyframe']:.1f} / {r['ms_delta_frame']:.1f} | {lat['p95']:.1f} / {lat['max']:.1f} | "
                     f"{st['detect']:.2f} / {st['run']:.1f} / {st['paste']:.2f} |")
    lines += ["", "The fastest dense teacher per teacher and video (median ms, f32, 2 threads, one stream):", ""]
    seen = set()
    for r in rows:
        key = (r["teacher"], r["video"])
        if key in seen:
            continue
        seen.add(key)
        cands = ", ".join(f"{c['backend']} {c['input_size'][0]}x{c['input_size'][1]} {c['ms']:.1f}"
                          for c in r["candidates"] if "ms" in c)
        lines.append(f"- {r['teacher']} on {r['video']}: {cands}.")
    lines += ["", f"![crop runtime against the rival at equal time]({Path(args.json).with_suffix('.png').as_posix()})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
