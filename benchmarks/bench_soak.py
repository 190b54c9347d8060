"""Soak: 10,000 frames through the selfie demo model (run the demo first), for memory, drift and speed.

`bikes` is played forwards and backwards at the model's input size; see `deltadistill.measure.soak`.
"""

from __future__ import annotations

import argparse

import torch

from deltadistill import teachers
from deltadistill.apps.bench import load_delta_model
from deltadistill.measure.soak import soak
from deltadistill.video import default_videos, iter_frames

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = teachers.load("selfie")
    model = load_delta_model(teacher, args.model).to(memory_format=torch.channels_last)
    frames = [teacher.preprocess(f[None]).contiguous(memory_format=torch.channels_last)
              for f in iter_frames(default_videos()["bikes"], size=tuple(teacher.input_size))]
    result = soak(model, frames, args.frames, args.k)
    s = result.summary(warmup=500)
    print(s)
    body = [f"selfie demo model (sparse 0.15), K={args.k}, `bikes` played back and forth, {args.threads} threads. "
            "Error: mean |mask - teacher's mask| at the last delta frame of each keyframe interval, averaged "
            "over the first and the last tenth of the intervals. RSS: resident memory after 500 frames of "
            "warm-up and at the end. ms: median per frame over the first (after warm-up) and last tenth.", "",
            "| frames | RSS after warm-up | RSS at end | growth | error, first tenth | error, last tenth | "
            "ms, first tenth | ms, last tenth |", "|---|---|---|---|---|---|---|---|",
            f"| {s['frames']} | {s['rss_start_mb']:.0f} MB | {s['rss_end_mb']:.0f} MB | {s['rss_growth']:+.1%} | "
            f"{s['error_start']:.5f} | {s['error_end']:.5f} | {s['ms_start']:.1f} | {s['ms_end']:.1f} |"]
    print(write_section("soak", "Soak: 10,000 frames of one stream", "\n".join(body)))


if __name__ == "__main__":
    main()
