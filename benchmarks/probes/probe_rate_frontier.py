"""Can any keyframe interval and top-k share beat the rival? A probe of the frontier (issue 20).

A rate controller under top-k picks two things: how often to key (``K``) and what share of
pixels each delta frame keeps (``keep``, the same in every sparse layer). The rival is one corner
of that space: ``keep = 0`` (a delta frame that computes nothing repeats the keyframe). So the
best any such controller can do at a cost is the upper envelope of the grid (K, keep), each point
run over a whole video with the same scene-cut keyframes. If that envelope does not clear the
rival by the margin a report asks for, no choice of K and share will, and the lever must be
elsewhere (where in the frame the share goes, or cheaper keyframes).

``--band B`` tries a second way to place the share, for a segmentation teacher (selfie): each
sparse layer's pixel scores weighed by whether the keyframe's output is near its decision there
(probability within ``B`` of 0.5, the band widened by ``--dilate`` output pixels and max-pooled to
each layer's size; elsewhere a weight of 1e-3), so top-k spends where a change can flip the mask.
Rows go to a JSON, resumable; each is printed against the rival at the same cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from deltadistill.core.macs import count_macs, measured_delta_macs
from deltadistill.measure.rival import margin_needed, repeat_at_keys
from deltadistill.stream import DeltaStream, SceneCut, frame_change, keyframe_flags
from deltadistill.stream.rate import sparse_students
from deltadistill.tasks import task_for
from deltadistill.video import default_videos, iter_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: shared helpers
try:
    from _report import write_section
    from bench_rate import CUT, build, cost_axis, frames_of
except ImportError:
    from benchmarks._report import write_section
    from benchmarks.bench_rate import CUT, build, cost_axis, frames_of


def weighed(student, near: dict):
    """``student``'s pixel scores times the keyframe's near-decision map, pooled to the layer's size."""
    plain = type(student).score

    def score(delta):
        v = plain(student, delta)
        return v if near.get("map") is None else v * (1e-3 + F.adaptive_max_pool2d(near["map"], v.shape[-2:]))
    return score


def run_fixed(model, xs, k: int, keep: float | None, band: float | None = None,
              dilate: int = 8) -> tuple[list, float]:
    """Outputs and the MAC ratio of the model at interval ``k`` (with scene cuts) and top-k share
    ``keep``; with ``band``, the scores weighed by the keyframe output's near-decision map."""
    stream = DeltaStream(model, keyframe=SceneCut(k, CUT))
    report = count_macs(model, tuple(xs[0].shape), k)
    steered = sparse_students(model)
    outs, costs, near = [], [], {}
    try:
        for s in steered:
            if keep is not None:
                s.__dict__["keep"] = keep
            if band is not None:
                s.__dict__["score"] = weighed(s, near)
        with torch.no_grad():
            for x in xs:
                outs.append(stream(x))
                if stream.last_key and band is not None:
                    near["map"] = F.max_pool2d(((outs[-1] - 0.5).abs() < band).float(), 2 * dilate + 1, 1, dilate)
                costs.append(report.keyframe / report.teacher if stream.last_key else
                             measured_delta_macs(model, report) / report.teacher)
    finally:
        for s in steered:
            s.__dict__.pop("keep", None)
            s.__dict__.pop("score", None)
    return outs, len(costs) / sum(costs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher", default="selfie")
    ap.add_argument("--video", default="static-hands")
    ap.add_argument("--intervals", default="2,3,4,6,8")
    ap.add_argument("--keeps", default="0.02,0.05,0.1,0.2,0.4")
    ap.add_argument("--band", type=float, default=None, help="weigh scores by the keyframe's near-decision map")
    ap.add_argument("--dilate", type=int, default=8)
    ap.add_argument("--json", default="benchmarks/rate_frontier.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    path = Path(args.json)
    saved = json.loads(path.read_text()) if path.is_file() else {}
    rows, rivals = saved.get("rows", []), saved.get("rivals", {})
    teacher, model = build(args.teacher)
    task = task_for(teacher)
    size = tuple(teacher.input_size)
    start, stop = frames_of(args.video)
    xs = [teacher.preprocess(f) for f in iter_frames(default_videos()[args.video], size, "letterbox", start, stop)]
    with torch.no_grad():
        tp = [task.single(teacher.postprocess(teacher(x))) for x in tqdm(xs, desc="teacher", leave=False)]
    changes = [0.0] + [float(frame_change(a, b).mean()) for a, b in zip(xs, xs[1:], strict=False)]

    def score(preds: list) -> float:
        return task.accuracy(preds, tp)["value"]

    rival = []
    for k in range(1, 13):
        keys = keyframe_flags(changes, k, CUT)
        rival.append((len(xs) / sum(keys), 1.0 if k == 1 else score(repeat_at_keys(tp, keys))))
    print("rival:", " ".join(f"{r:.2f}x {a:.3f}" for r, a in rival), flush=True)
    rivals[f"{args.teacher}|{args.video}"] = rival
    placement = "uniform" if args.band is None else f"near decision (band {args.band:g}, dilate {args.dilate})"
    done = {(r["teacher"], r["video"], r["k"], r["keep"], r.get("placement", "uniform")) for r in rows}
    for k in map(int, args.intervals.split(",")):
        for keep in map(float, args.keeps.split(",")):
            if (args.teacher, args.video, k, keep, placement) in done:
                continue
            t0 = time.time()
            outs, ratio = run_fixed(model, xs, k, keep, args.band, args.dilate)
            acc = score([task.single(teacher.postprocess(o)) for o in outs])
            riv = _interp(rival, ratio)
            rows.append({"teacher": args.teacher, "video": args.video, "k": k, "keep": keep, "placement": placement,
                         "ratio": ratio,
                         "accuracy": acc, "rival": riv, "seconds": time.time() - t0})
            print(f"{placement} K={k} keep={keep}: {ratio:.2f}x {acc:.3f} rival {riv:.3f} margin {acc - riv:+.3f} "
                  f"(needs {margin_needed(riv):+.3f})", flush=True)
            path.write_text(json.dumps({"rows": rows, "rivals": rivals}, indent=1))
    path.write_text(json.dumps({"rows": rows, "rivals": rivals}, indent=1))
    plot(rows, rivals, path.with_suffix(".png"))
    write_section("rate-frontier", "Rate control's frontier: every keyframe interval and top-k share against "
                  "the rival (issue 20)", body(rows, path))


MADE_BY = ('Rows made by `python benchmarks/probe_rate_frontier.py` (selfie, the default grid; the near-decision rows with'
           ' `--band 0.45 --dilate 8 --intervals 2,3,4,8 --keeps 0.05,0.2`, stopped at its time limit after K=3) and `--teacher centernet --intervals 3,4,8 --keeps 0.05,0.2`; the JSON keeps every row. ')


def body(rows: list[dict], path: Path) -> str:
    """The grid as a table, best margin first within each teacher and video."""
    lines = [f"{MADE_BY}Each row is the sparse model of `bench_rate.py` run over the whole clip at a fixed keyframe "
             "interval K (scene cuts keyed too) with the same top-k share in every sparse layer: a corner of "
             "what a rate controller can choose. `rival` is the teacher every K' frames, repeated, at the same "
             "MAC cost (interpolated in 1/cost); `needed` is the margin a report asks (`rival.margin_needed`). "
             f"Figure: `{path.with_suffix('.png').name}`.", "",
             "| teacher | video | placement | K | keep | fewer MACs | accuracy | rival | margin (needed) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["teacher"], r["video"], r["placement"], r["k"], r["keep"])):
        lines.append(f"| {r['teacher']} | {r['video']} | {r['placement']} | {r['k']} | {r['keep']:g} | "
                     f"{r['ratio']:.2f}x | {r['accuracy']:.3f} | {r['rival']:.3f} | {r['accuracy'] - r['rival']:+.3f} "
                     f"({margin_needed(r['rival']):+.3f}) |")
    return "\n".join(lines)


def plot(rows: list[dict], rivals: dict, png: Path) -> None:
    """One panel per teacher and video: the rival's curve, its +margin line, and every grid point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rivals), figsize=(5.5 * len(rivals), 4.2), squeeze=False)
    for ax, (key, curve) in zip(axes[0], rivals.items(), strict=True):
        pts = sorted(curve)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", lw=1.2, label="rival: teacher every K, repeated")
        ax.plot([p[0] for p in pts], [p[1] + margin_needed(p[1]) for p in pts], "k:", lw=0.8,
                label="rival + the margin a report asks")
        mine = [r for r in rows if f"{r['teacher']}|{r['video']}" == key]
        colors = dict(zip(sorted({r["k"] for r in mine}), plt.cm.viridis([0.0, 0.25, 0.5, 0.7, 0.9]), strict=False))
        for placement, marker in (("uniform", "o"), ("near", "^")):
            for k, c in colors.items():
                sel = sorted((r["ratio"], r["accuracy"]) for r in mine if r["k"] == k and
                             r.get("placement", "uniform").startswith(placement))
                if sel:
                    ax.plot([p[0] for p in sel], [p[1] for p in sel], marker + "-", color=c, ms=5, lw=0.8,
                            label=f"K={k}, top-k {placement}")
        cost_axis(ax, 7)
        ax.set_ylabel("accuracy against the teacher")
        ax.set_title(f"{key.replace('|', ', ')}: every K and top-k share")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _interp(curve: list[tuple[float, float]], x: float) -> float:
    pts = sorted(curve)
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            w = (1 / x0 - 1 / x) / (1 / x0 - 1 / x1) if x1 != x0 else 0.0
            return y0 + w * (y1 - y0)
    return pts[-1][1]


if __name__ == "__main__":
    main()
