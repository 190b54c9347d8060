"""The tile runtime (issue 28) in time: one conv (micro), and IS-Net's sparse model on a clip (stream).

``micro``: one IS-Net-like conv at a share of active output pixels, three ways, interleaved in one
process: the tile runtime's kernel (`TileConv.gathered`: im2col over the active pixels, one matmul,
chunked), the stock dense conv in torch (channels-last), and, with ``--openvino``, OpenVINO's dense
conv (f32). Ratios to OpenVINO, medians of ``--runs`` with the spread (min-max).

``stream``: IS-Net at 384x512 (content size of the 640x480 clip), its sparse model as ``bench
--sparse L`` makes it (thresholds on carphone and bigbuckbunny), run by `TileStream` at K=8 on the
first ``--frames`` frames of ``static-hands``, each frame interleaved with the fastest dense teacher
(OpenVINO f32, 2 threads), whose output is also the reference. Reports the amortised time, the
speedup against OpenVINO, p95/worst, the MAC ratio actually computed, mIoU of the mask (> 0.5)
against the teacher, and the rival (the keyframe's output repeated).

    python benchmarks/bench_tiles.py micro --openvino
    python benchmarks/bench_tiles.py stream --level 0.1 --frames 41 --json benchmarks/tiles_static_l010.json
    python benchmarks/bench_tiles.py stream --level 0.25 --variant last=reference:last key=reference:keyframe
    python benchmarks/bench_tiles.py figure benchmarks/tiles_*.json   # tiles_layers.png
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
from torch import nn

import deltadistill as dd
from deltadistill.runtime.tile_conv import TileConv
from deltadistill.runtime.tile_maps import to_rows

#: (name, cin, cout, map h, w, dilation): IS-Net's kinds of 3x3 conv at 384x512
SHAPES = [("s2 64->64", 64, 64, 192, 256, 1), ("s2 128->64", 128, 64, 192, 256, 1),
          ("s8 256->128 d2", 256, 128, 48, 64, 2), ("s16 1024->256", 1024, 256, 24, 32, 1),
          ("s32 512->512 d4", 512, 512, 12, 16, 4)]


def _ov_conv(conv: nn.Conv2d, x: torch.Tensor, threads: int):
    import openvino as ov

    model = ov.convert_model(conv.eval(), example_input=x)
    core = ov.Core()
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    arr = x.numpy()
    return lambda: req.infer([arr])


def micro(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    rows = []
    for name, cin, cout, h, w, d in SHAPES:
        conv = nn.Conv2d(cin, cout, 3, padding=d, dilation=d).eval()
        x = torch.randn(1, cin, h, w).contiguous(memory_format=torch.channels_last)
        tc = TileConv(name, conv, (0,), (1,), (d, d, d, d), (h, w), (h, w), 0.0, None, 1.0)
        tc.x = to_rows(F.pad(x, (d, d, d, d)))
        ov = _ov_conv(conv, x.contiguous(), args.threads) if args.openvino else None
        for share in args.shares:
            n = max(1, round(share * h * w))
            # active pixels in blobs, as motion makes them: a run of whole rows in the middle
            start = (h * w - n) // 2
            outs = torch.arange(start, start + n)
            times = {"tile": [], "torch": [], "openvino": []}
            with torch.no_grad():
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    tc.gathered(outs)
                    t1 = time.perf_counter()
                    conv(x)
                    t2 = time.perf_counter()
                    if ov is not None:
                        ov()
                    t3 = time.perf_counter()
                    times["tile"].append(t1 - t0)
                    times["torch"].append(t2 - t1)
                    times["openvino"].append(t3 - t2)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items() if ov is not None or k != "openvino"}
            ref = med.get("openvino", med["torch"])
            row = {"conv": name, "share": share, "ms": med,
                   "tile_vs_ref": [min(times["tile"]) * 1e3 / ref, med["tile"] / ref, max(times["tile"]) * 1e3 / ref],
                   "ref": "openvino" if ov is not None else "torch"}
            rows.append(row)
            print(f"{name:18s} {share:5.2f}  tile {med['tile']:7.2f} ms  torch {med['torch']:7.2f}  "
                  f"ov {med.get('openvino', float('nan')):7.2f}  tile/{row['ref']} {row['tile_vs_ref'][1]:.2f} "
                  f"({row['tile_vs_ref'][0]:.2f}-{row['tile_vs_ref'][2]:.2f})", flush=True)
    return {"rows": rows}


def _miou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean IoU of foreground and background of two probability maps binarised at 0.5."""
    a, b = a > 0.5, b > 0.5
    out = []
    for x, y in ((a, b), (~a, ~b)):
        union = float((x | y).sum())
        out.append(float((x & y).sum()) / union if union else 1.0)
    return sum(out) / 2


def _variant(spec: str) -> tuple[str, dict]:
    """``name=key:value,key:value`` -> (name, TileStream keyword arguments)."""
    name, _, rest = spec.partition("=")
    kw: dict = {}
    for item in filter(None, rest.split(",")):
        k, v = item.split(":")
        if k == "deep_scale":  # deep_scale:8/0.25
            stride, scale = v.split("/")
            kw[k] = (int(stride), float(scale))
            continue
        kw[k] = v if k in ("reference", "keyframe_engine") else (None if v == "none" else float(v) if "." in v else int(v))
    return name, kw


def _stride(h, full: int) -> int:
    hw = getattr(h, "out_hw", None) or getattr(h, "hw", None)
    return full // hw[0] if hw else 0


def stream(args: argparse.Namespace) -> dict:
    """Every variant and OpenVINO's dense teacher on each frame in turn (interleaved), so that the host's
    load hits them alike; per frame wall and CPU time, the MACs computed, mIoU against OpenVINO."""
    import os
    import subprocess

    from deltadistill.apps.bench import sparse_model
    from deltadistill.apps.lower_res import rival_lower_res
    from deltadistill.measure import margin_needed
    from deltadistill.measure.rival import rival_equal_time
    from deltadistill.runtime.fastest import dense_runner
    from deltadistill.runtime.tiles import TileConv, TileStream
    from deltadistill.video import VideoClips, default_videos, iter_frames

    size = (384, 512)
    teacher = dd.teachers.load("isnet", input_size=size)
    vids = default_videos()
    clips = VideoClips([vids["carphone_pristine"], vids["bigbuckbunny"]], clip_len=3, max_interval=args.k, size=size,
                       value_range=teacher.input_range, fit="letterbox")
    model = sparse_model(teacher, clips, args.level, clips=args.clips) if args.level > 0 else teacher
    ov = dense_runner(teacher, "openvino", size, threads=args.threads)
    raw = list(iter_frames(vids["static-hands"], size=size, start=args.start, stop=args.start + args.frames))
    frames = [teacher.preprocess(f) for f in raw]
    refs: list[torch.Tensor] = []  # OpenVINO's mask per frame, (H, W): the reference and the rivals' source
    base = {"dense_level": args.dense_level, "tile": args.tile, "threshold_scale": args.threshold_scale,
            "reference": args.reference, "keyframe_engine": args.keyframe_engine, "delta_threads": args.delta_threads}
    variants = dict(_variant(v) for v in args.variant) if args.variant else {"tiles": {}}
    streams = {}
    for name, kw in variants.items():
        ts = TileStream(model, keyframe=args.k, warn=False, **{**base, **kw})
        for _ in range(2):  # builds the handlers (probes, checks, the OpenVINO export), then warms the
            ts(frames[0])   # OpenVINO keyframe's first run (kernel set-up): not a frame's cost
            ts.reset()
        streams[name] = ts
    ov(frames[0])  # the dense teacher's first run, likewise
    load = [os.getloadavg()[0]]
    per: list[dict] = []
    key_out = None
    by_stride: dict[str, dict[str, list[float]]] = {n: {} for n in streams}
    for i, x in enumerate(frames):
        t0 = time.perf_counter()
        ref = ov(x)
        ov_ms = (time.perf_counter() - t0) * 1e3
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        row: dict = {"frame": i, "ov_ms": ov_ms, "v": {}}
        for name, ts in streams.items():
            t1, c1 = time.perf_counter(), time.process_time()
            got = ts(x)
            t2, c2 = time.perf_counter(), time.process_time()
            if ts.last_key:
                key_out = got
            row["key"] = ts.last_key
            row["v"][name] = {"ms": (t2 - t1) * 1e3, "cpu_ms": (c2 - c1) * 1e3, "cost": ts.last_cost,
                              "miou": _miou(got, ref), "max_err": float((got - ref).abs().max())}
            if not ts.last_key:
                acc: dict[str, float] = {}
                for h, ms in zip(ts.handlers, ts.last_step_ms, strict=True):
                    kind = "conv" if isinstance(h, TileConv) else "other"
                    k = f"{_stride(h, size[0])}/{kind}"
                    acc[k] = acc.get(k, 0.0) + ms
                for k, v in acc.items():
                    by_stride[name].setdefault(k, []).append(v)
        row["rival_miou"] = _miou(key_out, ref)
        refs.append(ref.reshape(ref.shape[-2:]).clone())
        per.append(row)
        load.append(os.getloadavg()[0])
        print(f"{i:3d} {'K' if row['key'] else ' '} ov {ov_ms:7.1f} ms  " + "  ".join(
            f"{n} {v['ms']:7.1f} ms cost {v['cost']:.3f} mIoU {v['miou']:.4f}" for n, v in row["v"].items())
            + f"  (rival {row['rival_miou']:.4f})", flush=True)
    ov_ms = statistics.median(p["ov_ms"] for p in per)
    rival = statistics.mean(p["rival_miou"] for p in per)

    def score(preds: list[torch.Tensor]) -> float:
        return statistics.mean(_miou(a, b) for a, b in zip(preds, refs, strict=True))
    out: dict = {}
    for name in streams:
        v = [p["v"][name] for p in per]
        delta = [(p["ov_ms"], q) for p, q in zip(per, v, strict=True) if not p["key"]]
        keys = [(p["ov_ms"], q) for p, q in zip(per, v, strict=True) if p["key"]]
        amortised = statistics.mean(q["ms"] for q in v)
        miou = statistics.mean(q["miou"] for q in v)
        ratio = sorted(q["ms"] / o for o, q in delta)
        key_ratio = sorted(q["ms"] / o for o, q in keys)
        out[name] = {
            "settings": {**base, **variants[name]},
            "speedup_vs_fastest_dense": ov_ms / amortised, "tile_ms_amortised": amortised,
            # per frame ratios to OpenVINO's run just before it: robust to the load drifting over the run
            "speedup_per_frame_ratio": 1 / ((sum(key_ratio) + sum(ratio)) / (len(ratio) + len(key_ratio))),
            "delta_vs_ov": {"min": ratio[0], "median": statistics.median(ratio), "max": ratio[-1]},
            "key_vs_ov": {"min": key_ratio[0], "median": statistics.median(key_ratio), "max": key_ratio[-1]},
            "delta_cpu_ms_median": statistics.median(q["cpu_ms"] for _, q in delta),
            "latency_ms": {"p95": float(np.percentile([q["ms"] for q in v], 95)), "worst": max(q["ms"] for q in v)},
            "delta_cost_mean": statistics.mean(q["cost"] for _, q in delta),
            "mac_ratio_amortised": 1 / statistics.mean(q["cost"] for q in v),
            "miou": miou, "beats_rival": miou >= rival + margin_needed(rival) - 1e-12,
            "delta_ms_by_stride": {k: statistics.mean(x) for k, x in sorted(by_stride[name].items())},
        }
        if args.rivals:  # the two free rivals at the variant's own amortised time
            out[name]["rival_equal_time"] = rival_equal_time(refs, score, ov_ms, amortised, miou)
            out[name]["rival_lower_res"] = rival_lower_res(teacher, raw, refs, score, lambda p: p[0], miou, amortised,
                                                           "openvino", scale=1.0, threads=args.threads)
            print(name, {k: out[name][k] for k in ("speedup_vs_fastest_dense", "miou")},
                  {r: {k: out[name][r].get(k) for k in ("interval", "input_size", "value", "margin_needed", "beats")}
                   for r in ("rival_equal_time", "rival_lower_res")}, flush=True)
    res = {
        "command": "python benchmarks/bench_tiles.py stream " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(v) if isinstance(v, list) else v}")
            for k, v in vars(args).items() if k not in ("cmd", "json") and v is not None and v is not False),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True,
                                  text=True).stdout.strip() + f", {os.cpu_count()} cores shared with other jobs",
        "load_avg_1min": {"min": min(load), "median": statistics.median(load), "max": max(load)},
        "teacher": "isnet 384x512", "level": args.level, "k": args.k, "frames": len(per),
        "fastest_dense_ms": ov_ms, "fastest_dense": "openvino f32, 2 threads, 384x512 (content size)",
        "ov_ms_spread": [min(p["ov_ms"] for p in per), max(p["ov_ms"] for p in per)],
        "rival_same_k_miou": rival, "margin_needed": margin_needed(rival),
        "variants": out, "frames_detail": per,
    }
    print(json.dumps({k: v for k, v in res.items() if k != "frames_detail"}, indent=1))
    return res


def figure(args: argparse.Namespace) -> dict:
    """Where a delta frame's time goes: per stride of the output map, ms in convs and in other ops, one
    panel per stream JSON, each variant's bars side by side; OpenVINO's dense teacher for scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(f).read_text()) for f in args.files]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        names = list(run["variants"])
        strides = sorted({int(k.split("/")[0]) for v in run["variants"].values() for k in v["delta_ms_by_stride"]})
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            ms = run["variants"][name]["delta_ms_by_stride"]
            xs = [i + j * width for i in range(len(strides))]
            conv = [ms.get(f"{s}/conv", 0.0) for s in strides]
            other = [ms.get(f"{s}/other", 0.0) for s in strides]
            ax.bar(xs, conv, width, label=f"{name}: convs")
            ax.bar(xs, other, width, bottom=conv, label=f"{name}: other ops", alpha=0.5)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(strides))], [str(s) if s else "no map" for s in strides])
        ax.set_xlabel("stride of the output map")
        ax.set_ylabel("ms per delta frame (mean)")
        load = run["load_avg_1min"]
        ax.set_title(f"level {run['level']}, K={run['k']}: OpenVINO dense {run['fastest_dense_ms']:.0f} ms\n"
                     f"{run['date']}, load avg {load['min']:.1f}-{load['max']:.1f} on 2 cores", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return {}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("micro")
    m.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    m.add_argument("--runs", type=int, default=9)
    m.add_argument("--openvino", action="store_true")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--json", type=Path)
    s = sub.add_parser("stream")
    s.add_argument("--level", type=float, default=0.1)
    s.add_argument("--k", type=int, default=8)
    s.add_argument("--frames", type=int, default=41)
    s.add_argument("--start", type=int, default=0, help="the first frame of static-hands scored (64..: the hands move)")
    s.add_argument("--clips", type=int, default=4)
    s.add_argument("--dense-level", type=float, default=0.5)
    s.add_argument("--tile", type=int, default=1)
    s.add_argument("--threshold-scale", type=float, default=1.0)
    s.add_argument("--reference", choices=["last", "keyframe"], default="last")
    s.add_argument("--keyframe-engine", choices=["torch", "openvino"], default="openvino")
    s.add_argument("--delta-threads", type=int, default=1)
    s.add_argument("--variant", nargs="*", help="name=key:value,... (TileStream arguments over the flags'), "
                   "each run on every frame, interleaved")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--rivals", action="store_true", help="also score the rivals at each variant's own time: the "
                   "keyframe repeated every K_t frames, and the teacher at the largest smaller size that fits")
    s.add_argument("--json", type=Path)
    f = sub.add_parser("figure")
    f.add_argument("files", nargs="+")
    f.add_argument("--out", type=Path, default=Path(__file__).parent / "tiles_layers.png")
    args = ap.parse_args()
    if args.cmd == "figure":
        figure(args)
        return
    torch.set_num_threads(args.threads)
    res = micro(args) if args.cmd == "micro" else stream(args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
