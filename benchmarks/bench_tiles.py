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


def stream(args: argparse.Namespace) -> dict:
    from deltadistill.apps.bench import sparse_model
    from deltadistill.runtime.fastest import dense_runner
    from deltadistill.runtime.tiles import TileStream
    from deltadistill.video import VideoClips, default_videos, iter_frames

    size = (384, 512)
    teacher = dd.teachers.load("isnet", input_size=size)
    vids = default_videos()
    clips = VideoClips([vids["carphone_pristine"], vids["bigbuckbunny"]], clip_len=3, max_interval=args.k, size=size,
                       value_range=teacher.input_range, fit="letterbox")
    model = sparse_model(teacher, clips, args.level, clips=args.clips) if args.level > 0 else teacher
    ov = dense_runner(teacher, "openvino", size, threads=args.threads)
    frames = [teacher.preprocess(f) for f in iter_frames(vids["static-hands"], size=size, stop=args.frames)]
    ts = TileStream(model, keyframe=args.k, dense_level=args.dense_level, tile=args.tile,
                    threshold_scale=args.threshold_scale)
    ts(frames[0])  # builds the handlers (probes, checks): not a frame's cost
    ts.reset()
    per = []
    key_out = None
    for i, x in enumerate(frames):
        t0 = time.perf_counter()
        ref = ov(x)
        t1 = time.perf_counter()
        got = ts(x)
        t2 = time.perf_counter()
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        if ts.last_key:
            key_out = got
        per.append({"frame": i, "key": ts.last_key, "ov_ms": (t1 - t0) * 1e3, "tile_ms": (t2 - t1) * 1e3,
                    "cost": ts.last_cost, "split_ms": dict(ts.last_ms), "miou": _miou(got, ref),
                    "rival_miou": _miou(key_out, ref), "max_err": float((got - ref).abs().max())})
        p = per[-1]
        print(f"{i:3d} {'K' if p['key'] else ' '} ov {p['ov_ms']:7.1f} ms  tile {p['tile_ms']:7.1f} ms  "
              f"cost {p['cost']:.3f}  mIoU {p['miou']:.4f} (rival {p['rival_miou']:.4f})", flush=True)
    ov_ms = statistics.median(p["ov_ms"] for p in per)
    tile = [p["tile_ms"] for p in per]
    amortised = sum(tile) / len(tile)
    delta = [p for p in per if not p["key"]]
    share = sum(p["cost"] for p in per) / len(per)
    # conv time per layer on delta frames would need per-handler timing; the split gives conv vs the rest
    res = {
        "command": "python benchmarks/bench_tiles.py stream " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                        for k, v in vars(args).items()
                                                                        if k not in ("cmd", "json")),
        "date": time.strftime("%Y-%m-%d"), "machine": "2 shared CPU cores (load avg ~5-8 from other jobs)",
        "teacher": "isnet 384x512", "level": args.level, "k": args.k, "frames": len(per),
        "fastest_dense_ms": ov_ms, "fastest_dense": "openvino f32, 2 threads, 384x512 (content size)",
        "tile_ms_amortised": amortised, "speedup_vs_fastest_dense": ov_ms / amortised,
        "tile_delta_ms_median": statistics.median(p["tile_ms"] for p in delta),
        "tile_key_ms_median": statistics.median(p["tile_ms"] for p in per if p["key"]),
        "latency_ms": {"p95": float(np.percentile(tile, 95)), "worst": max(tile)},
        "ov_ms_spread": [min(p["ov_ms"] for p in per), max(p["ov_ms"] for p in per)],
        "mac_ratio_amortised": 1 / share, "delta_cost_mean": sum(p["cost"] for p in delta) / len(delta),
        "miou": statistics.mean(p["miou"] for p in per), "rival_same_k_miou": statistics.mean(p["rival_miou"] for p in per),
        "split_ms_delta_median": {k: statistics.median(p["split_ms"].get(k, 0.0) for p in delta) for k in ("conv", "other")},
        "layers_last_delta": {k: list(v) for k, v in ts.last_layers.items()},
        "frames_detail": per,
    }
    print(json.dumps({k: v for k, v in res.items() if k not in ("frames_detail", "layers_last_delta")}, indent=1))
    return res


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
    s.add_argument("--clips", type=int, default=4)
    s.add_argument("--dense-level", type=float, default=0.5)
    s.add_argument("--tile", type=int, default=1)
    s.add_argument("--threshold-scale", type=float, default=1.0)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = micro(args) if args.cmd == "micro" else stream(args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
