"""Sparse delta models of IS-Net against the rival at equal MACs (issue 26).

Each row is one `deltadistill bench` run: IS-Net at the video's content size, sparse students in every
conv at one threshold (`--sparse`), thresholds calibrated on two *other* videos, the first FRAMES
frames scored against the teacher (mIoU of the mask at 0.5), beside the rival (the teacher's keyframe
repeated) at the same MACs. The first run also times the fastest dense teacher (torch, onnxruntime,
OpenVINO at the content size); the rest skip it (`--no-fastest`): the teacher costs 0.5-1 s a frame here.

    PYTHONPATH=src python benchmarks/bench_isnet.py [--frames 64] [--only static-hands]

Reports go to benchmarks/isnet/<video>_k<K>_s<threshold>[_stem<share>].json (a run whose report exists is skipped);
the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from deltadistill.video import default_videos

OUT = Path(__file__).resolve().parent / "isnet"
#: video scored -> the videos its thresholds are calibrated on (never itself)
CALIBRATION = {"static-hands": ("carphone_pristine", "bigbuckbunny"), "bikes": ("carphone_pristine", "bigbuckbunny"),
               "carphone_pristine": ("bigbuckbunny", "bikes")}
#: (video, K, threshold, stem share), in the order they run: static-hands first (the issue's bar), then the others
RUNS = [("static-hands", 8, 0.1, 1.0), ("static-hands", 8, 0.25, 1.0), ("static-hands", 8, 0.05, 1.0),
        ("static-hands", 4, 0.05, 1.0), ("static-hands", 8, 0.1, 0.25), ("static-hands", 4, 0.1, 1.0),
        ("bikes", 8, 0.1, 1.0), ("bikes", 4, 0.1, 1.0), ("carphone_pristine", 8, 0.1, 1.0),
        ("carphone_pristine", 4, 0.1, 1.0), ("bikes", 8, 0.05, 1.0), ("carphone_pristine", 8, 0.05, 1.0)]


def run(video: str, k: int, level: float, stem: float, frames: int, fastest: bool, threads: int) -> Path:
    out = OUT / (f"{video}_k{k}_s{level:g}" + (f"_stem{stem:g}" if stem != 1.0 else "") + ".json")
    if out.is_file():
        return out
    vids = default_videos()
    cmd = [sys.executable, "-m", "deltadistill", "bench", "--teacher", "isnet", "--video", str(vids[video]),
           "--sparse", str(level), "--keyframe-interval", str(k), "--frames", str(frames), "--threads", str(threads),
           "--sparse-stem", str(stem), "--json", str(out), "--fastest" if fastest else "--no-fastest"]
    for c in CALIBRATION[video]:
        cmd += ["--calib-videos", str(vids[c])]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return out


def row(path: Path) -> str:
    r = json.loads(path.read_text())
    acc, g = r["accuracy"], r["gmacs_per_frame"]
    rival = acc["rival_equal_macs"]
    fastest = r.get("fastest_dense") or {}
    return (f"| {path.stem} | {r['frames']} | {g['teacher']:.1f} | {g['delta']:.1f} | {r['mac_ratio']:.2f}x | "
            f"{acc['value']:.3f} | {rival['value']:.3f} (K_eq {rival['interval']:.1f}) | {rival['margin']:+.3f} "
            f"(needs {rival['margin_needed']:+.3f}) | {'**yes**' if rival['beats'] else 'no'} | "
            f"{acc['hold_keyframe_baseline']:.3f} | "
            + (f"{fastest['backend']} {fastest['ms']:.0f} ms at {'x'.join(map(str, fastest['input_size']))}"
               if fastest else "") + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="run only this video")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    done = []
    for i, (video, k, level, stem) in enumerate(RUNS):
        if args.only and video != args.only:
            continue
        done.append(run(video, k, level, stem, args.frames, fastest=i == 0, threads=args.threads))
    print("| run | frames | teacher GMAC | model GMAC/frame | fewer MACs | mIoU vs teacher | rival at equal MACs | "
          "margin | beats the rival | keyframe repeated at K | fastest dense teacher |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in done:
        print(row(p))


if __name__ == "__main__":
    main()
