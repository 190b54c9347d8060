"""Go/no-go for the tile runtime (issue 19, item 1): predict its time before building it.

A tile runtime recomputes, on a delta frame, only the tiles of each feature map that the moved input
tiles reach, from persistent maps a keyframe filled. How much that is depends on the graph, so it is
measured here on the real teachers and the static-camera clip, with no runtime built:

* **Active share per stride.** The input tiles that moved past the threshold (against a reference
  that moves only where they were taken, as the runtime would) are pasted into the previous
  composite frame, and the teacher runs on it with every slot recorded. A slot's active positions
  are where its value differs from the previous composite's. This is exact propagation with perfect
  re-sparsification after every op (a position whose value did not change is not counted), so it is
  a *lower bound* on what a tile runtime computes. Each slot's positions are counted in tiles of
  ``tile / stride`` pixels (at least ``min_tile``), grown by a ``halo``, as a batch of gathered tiles
  would run them. A stride's share is that of the union over its slots (one gather per segment).
* **Time per stride.** OpenVINO's own per-layer times (``PERF_COUNT``) of the plain teacher at full
  size, grouped by each layer's output stride.
* **Prediction.** A delta frame costs the sum over strides of time x share, plus the change test and
  a fixed cost per segment (the issue's prototype measured 0.4 ms per gather, block and write);
  a keyframe costs the OpenVINO teacher. Amortised over K against the fastest dense teacher.
* **Accuracy**, for the approximations the time needs: the teacher run on the composite frames with
  the global gates, and then also every slot at stride >= S (``--hold-strides``), held at keyframe values.

The designs: ``exact`` (nothing held), ``gates`` (global pools held), ``deepS`` (gates and every
stage from stride S held).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import deltadistill as dd
from deltadistill.measure.rival import repeat_at_keys
from deltadistill.runtime.crop import find_graph
from deltadistill.runtime.fastest import dense_runner, fastest_dense, median_ms
from deltadistill.runtime.regions import active_tiles
from deltadistill.tasks import task_for
from deltadistill.video import default_videos, iter_frames

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section

def openvino_ms_per_stride(teacher, size: tuple[int, int], runs: int = 30) -> tuple[dict[int, float], float, float]:
    """OpenVINO's per-layer real time of the plain teacher, summed by output stride and scaled to sum to
    the teacher's time without profiling (profiling made centernet 1.8x slower); that time; and the
    profiled total."""
    import openvino as ov

    from deltadistill.runtime.cache import cache_dir, fingerprint

    dense_runner(teacher, "openvino", size)  # makes (or finds) the export
    file = cache_dir() / f"teacher-{fingerprint(teacher)}_{size[0]}x{size[1]}.onnx"
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERF_COUNT": True}
    compiled = ov.Core().compile_model(str(file), "CPU", config)
    shapes = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        ps = op.get_output_partial_shape(0) if op.get_output_size() else None
        if ps is not None and ps.rank.is_static and ps.rank.get_length() == 4 and ps[2].is_static:
            shapes[op.get_friendly_name()] = ps[2].get_length()
    req = compiled.create_infer_request()
    x = np.random.rand(1, 3, *size).astype(np.float32) * float(getattr(teacher, "input_range", 1.0))
    per: dict[int, list[float]] = {}
    totals = []
    for r in range(runs + 3):
        t0 = time.perf_counter()
        req.infer({0: x})
        if r < 3:
            continue
        totals.append((time.perf_counter() - t0) * 1e3)
        acc: dict[int, float] = {}
        for p in req.get_profiling_info():
            h = shapes.get(p.node_name)
            stride = max(1, round(size[0] / h)) if h else 0  # 0: layers with no spatial map
            acc[stride] = acc.get(stride, 0.0) + p.real_time.total_seconds() * 1e3
        for s, v in acc.items():
            per.setdefault(s, []).append(v)
    profiled = statistics.median(totals)
    plain = dense_runner(teacher, "openvino", size)
    xt = torch.from_numpy(x)
    plain_ms = median_ms(plain, xt, runs)[0]
    scale = plain_ms / sum(statistics.median(v) for v in per.values())
    return {s: statistics.median(v) * scale for s, v in per.items()}, plain_ms, profiled


def slot_strides(graph, x: torch.Tensor) -> dict[int, int]:
    """Each spatial slot's stride against the input (probe run with every slot recorded)."""
    with torch.no_grad(), graph.recording(range(graph._n_slots)) as rec:
        graph(x)
    h = x.shape[-2]
    return {s: max(1, round(h / v.shape[-2])) for s, v in rec.items()
            if isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[-2] * v.shape[-1] > 1}


def tile_share(changed: torch.Tensor, stride: int, tile: int, min_tile: int, halo: int) -> torch.Tensor:
    """``(H, W)`` bool of the positions a tile runtime computes: the tiles holding a change, grown by ``halo``."""
    t = max(min_tile, tile // stride)
    m = changed.float()[None, None]
    tiles = F.max_pool2d(m, t, t, ceil_mode=True)
    area = F.interpolate(tiles, scale_factor=t, mode="nearest")[..., : m.shape[-2], : m.shape[-1]]
    if halo:
        area = F.max_pool2d(area, 2 * halo + 1, 1, halo)
    return area[0, 0] > 0


def segments(graph, strides: dict[int, int], skip: set[int]) -> int:
    """Runs of consecutive steps at one output stride (a tile runtime's gather-run-write units)."""
    runs, last = 0, None
    for _, _, outs, _ in graph._steps:
        st = next((strides[o] for o in outs if o in strides and o not in skip), None)
        if st is not None and st != last:
            runs += 1
        if st is not None:
            last = st
    return runs


@torch.no_grad()
def measure(teacher, video, k: int, threshold: float, tile: int, min_tile: int, halo: int,
            hold_strides: list[int], frames: int | None) -> dict:
    graph = find_graph(teacher)
    size = tuple(teacher.input_size)
    scale = float(getattr(teacher, "input_range", 1.0))
    xs = [teacher.preprocess(f) for f in iter_frames(video, size, "letterbox", 0, frames)]
    strides = slot_strides(graph, xs[0])
    gates = graph.global_slots(xs[0])
    held = {"exact": [], "gates": gates}
    for h in hold_strides:
        held[f"deep{h}"] = gates + [s for s, st in strides.items() if st >= h]
    designs = list(held)
    task = task_for(teacher)
    every = list(range(graph._n_slots))
    teacher_preds: list = []
    preds: dict[str, list] = {d: [] for d in designs}
    shares: dict[str, dict[int, list[float]]] = {d: {} for d in designs}
    moved, keys = [], []
    for i, x in enumerate(tqdm(xs, desc="go/no-go", leave=False)):
        teacher_preds.append(task.single(teacher.postprocess(teacher(x))))
        key = i % k == 0
        keys.append(key)
        if key:
            ref = comp = x.clone()
            with graph.recording(every) as rec:
                graph(x)
            key_vals = {s: v for s, v in rec.items() if isinstance(v, torch.Tensor)}
            prev = {d: key_vals for d in designs}
            for d in designs:
                preds[d].append(teacher_preds[-1])
            continue
        act = active_tiles(x, ref, tile, threshold * scale)
        moved.append(float(act.float().mean()))
        up = act.repeat_interleave(tile, 0).repeat_interleave(tile, 1)[: size[0], : size[1]]
        comp = torch.where(up, x, comp)
        ref = comp
        for d in designs:
            hold = {s: key_vals[s] for s in held[d]}
            with graph.holding(hold), graph.recording(every) as rec:
                out = graph(comp)
            union: dict[int, torch.Tensor] = {}
            for s, st in strides.items():
                v, p = rec.get(s), prev[d].get(s)
                if v is None or p is None or s in hold:
                    continue
                area = tile_share((v != p).any(dim=1)[0], st, tile, min_tile, halo)
                union[st] = union[st] | area if st in union else area
            for st, area in union.items():
                shares[d].setdefault(st, []).append(float(area.float().mean()))
            prev[d] = {s: v for s, v in rec.items() if isinstance(v, torch.Tensor)}
            preds[d].append(task.single(teacher.postprocess(out if len(out) > 1 else out[0])))
    return {"moved": statistics.mean(moved), "keys": keys, "n_gates": len(gates),
            "share": {d: {st: statistics.mean(v) for st, v in sorted(sh.items())} for d, sh in shares.items()},
            "segments": {d: segments(graph, strides, set(held[d])) for d in designs},
            "accuracy": {d: task.accuracy(preds[d], teacher_preds)["value"] for d in designs},
            "rival": task.accuracy(repeat_at_keys(teacher_preds, keys), teacher_preds)["value"],
            "teacher_preds": teacher_preds, "task": task}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teachers", default="centernet,selfie")
    ap.add_argument("--video", default="static-hands")
    ap.add_argument("--keyframe-interval", type=int, default=8)
    ap.add_argument("--frames", type=int, default=0, help="frames (0: all)")
    ap.add_argument("--threshold", type=float, default=0.05, help="share of the input range, as `--runtime crop`")
    ap.add_argument("--tile", type=int, default=16)
    ap.add_argument("--min-tile", type=int, default=2, help="smallest tile side in a feature map")
    ap.add_argument("--halo", type=int, default=1, help="pixels of halo per gathered tile at every stride")
    ap.add_argument("--hold-strides", default="16,8", help="one `deepS` design per stride S: gates and every "
                    "slot at stride >= S held")
    ap.add_argument("--segment-ms", type=float, default=0.4, help="fixed cost per segment (gather, call, write)")
    ap.add_argument("--detect-ms", type=float, default=2.0, help="the change test per delta frame")
    ap.add_argument("--json", default="benchmarks/tile_gonogo.json")
    ap.add_argument("--section", default="tile-gonogo")
    ap.add_argument("--reuse", action="store_true", help="take the active shares and accuracies from --json; "
                    "time again only")
    args = ap.parse_args()
    torch.set_num_threads(2)
    video = default_videos()[args.video]
    rows = []
    saved = {r["teacher"]: r for r in json.loads(Path(args.json).read_text())} if args.reuse else {}
    for name in args.teachers.split(","):
        teacher = dd.teachers.load(name).eval()
        size = tuple(teacher.input_size)
        per_stride, ov_ms, profiled_ms = openvino_ms_per_stride(teacher, size)
        fastest = fastest_dense(teacher, _frame_hw(video), runs=20)
        holds = [int(h) for h in args.hold_strides.split(",") if h]
        if name in saved:  # the shares and accuracies of an earlier run; only the timings are new
            r = saved[name]
            m = {"moved": r["moved"], "rival": r["rival_same_k"], "n_gates": r["n_gates"],
                 **{f: {d: ({int(k): v for k, v in x[f].items()} if f == "share" else x[f])
                        for d, x in r["designs"].items()} for f in ("share", "segments", "accuracy")}}
        else:
            m = measure(teacher, video, args.keyframe_interval, args.threshold, args.tile, args.min_tile, args.halo,
                        holds, args.frames or None)
        k = args.keyframe_interval
        row = {"teacher": name, "video": args.video, "ov_ms": ov_ms, "ov_profiled_ms": profiled_ms,
               "ov_ms_per_stride": per_stride,
               "fastest": {kk: v for kk, v in fastest.items() if kk != "candidates"}, "moved": m["moved"],
               "rival_same_k": m["rival"], "n_gates": m["n_gates"], "designs": {}}
        for d in m["share"]:
            hold = int(d[4:]) if d.startswith("deep") else 10**9
            share = m["share"][d]
            def cost_share(st: int, d: str = d, hold: int = hold, share: dict = share) -> float:
                if st == 0:  # layers with no spatial map: run in full
                    return 1.0
                if st > 64:  # global pools: recomputed unless the gates are held
                    return 1.0 if d == "exact" else 0.0
                return 0.0 if st >= hold else share.get(st, 0.0)

            compute = sum(ms * cost_share(st) for st, ms in per_stride.items())
            fixed = args.detect_ms + args.segment_ms * m["segments"][d]
            delta = compute + fixed
            amortised = (ov_ms + (k - 1) * delta) / k
            row["designs"][d] = {"hold": hold, "share": share, "segments": m["segments"][d], "compute_ms": compute,
                                 "fixed_ms": fixed, "delta_ms": delta, "amortised_ms": amortised,
                                 "vs_fastest": fastest["ms"] / amortised, "accuracy": m["accuracy"][d]}
            print(f"{name} {d}: delta {delta:.1f} ms (compute {compute:.1f} + fixed {fixed:.1f}), amortised "
                  f"{amortised:.1f} vs fastest {fastest['ms']:.1f} -> {fastest['ms'] / amortised:.2f}x; "
                  f"accuracy {m['accuracy'][d]:.3f} (repeat at K: {m['rival']:.3f})", flush=True)
        rows.append(row)
    Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    write_section(args.section, "Tile runtime go/no-go: predicted time from the active share per stride (issue 19)",
                  _body(rows, args))


def _frame_hw(video) -> tuple[int, int]:
    first = next(iter_frames(video, None, "letterbox", 0, 1))
    return first.shape[0], first.shape[1]


def _body(rows: list[dict], args) -> str:
    lines = [f"`{args.video}`, K={args.keyframe_interval}, input tiles of {args.tile} px moved past "
             f"{args.threshold} of the input range, feature tiles of max({args.min_tile}, {args.tile}/stride) px "
             f"with a {args.halo}-px halo; `deepS` holds the global gates and every slot at stride >= S; fixed costs "
             f"{args.detect_ms} ms change test + {args.segment_ms} ms per segment. Share per stride = mean over delta "
             "frames of the union of its slots' computed tiles (a lower bound: exact propagation with "
             "re-sparsification after every op). Time per stride = OpenVINO's per-layer times of the full-size "
             "teacher (`PERF_COUNT`), scaled to sum to its time unprofiled. Accuracy is measured (the teacher run on the composite frames with the held slots), "
             "time is predicted.", ""]
    for r in rows:
        f = r["fastest"]
        strides = sorted(s for s in r["ov_ms_per_stride"] if s)
        lines += [f"**{r['teacher']}**: OpenVINO teacher {r['ov_ms']:.1f} ms at full size; fastest dense "
                  f"{f['ms']:.1f} ms ({f['backend']}, {f['input_size'][0]}x{f['input_size'][1]}); input tiles moved "
                  f"{r['moved']:.0%}; {r['n_gates']} global gates; repeating keyframes at "
                  f"the same K scores {r['rival_same_k']:.3f}.", "",
                  "| design | " + " | ".join(f"share s{s} ({r['ov_ms_per_stride'][s]:.1f} ms)" for s in strides)
                  + " | segments | compute + fixed ms | delta ms | amortised ms | vs fastest dense | accuracy |",
                  "|---" * (len(strides) + 7) + "|"]
        for d, v in r["designs"].items():
            cells = " | ".join("held" if args.hold_strides and s >= v["hold"] and s <= 64 else f"{v['share'].get(s, 0.0):.0%}"
                               for s in strides)
            lines.append(f"| {d} | {cells} | {v['segments']} | {v['compute_ms']:.1f} + {v['fixed_ms']:.1f} | "
                         f"{v['delta_ms']:.1f} | {v['amortised_ms']:.1f} | {v['vs_fastest']:.2f}x | "
                         f"{v['accuracy']:.3f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
