"""Does `torch.compile` (inductor, CPU) remove the teachers' non-conv overhead?

Prediction: the TF.js executor runs hundreds of small elementwise steps (pads, hard-swish
multiplies, adds, concats) between convs; inductor could fuse them and drop the Python loop, so a
compiled teacher should be clearly faster than the eager one. Eager and compiled run interleaved,
channels_last, batch 1, with the same threads; the time to compile is reported too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from deltadistill import teachers

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section


def conv_share(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Share of the eager CPU time spent inside convolutions (torch.profiler, self time)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key or "conv2d" in e.key)
    return conv / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teachers", default="centernet,selfie")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.teachers.split(","):
        eager = teachers.load(name).eval().to(memory_format=torch.channels_last)
        x = torch.rand(1, 3, *eager.input_size).mul(eager.input_range).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            t0 = time.perf_counter()
            compiled = torch.compile(eager)
            ref, out = eager(x), compiled(x)
            compile_s = time.perf_counter() - t0
            err = max(float((a - b).abs().max()) for a, b in zip(ref, out, strict=True))
            share = conv_share(eager, x)
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(3):
                eager(x), compiled(x)
            for _ in range(args.repeats):
                for label, m in (("eager", eager), ("compiled", compiled)):
                    t = time.perf_counter()
                    m(x)
                    times[label].append((time.perf_counter() - t) * 1e3)
        e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
        rows.append(f"| {name} | {share:.0%} | {e:.1f} | {c:.1f} | {e / c:.2f}x | {compile_s:.0f} s | {err:.1e} |")
        print(rows[-1], flush=True)
    body = ("Teacher only, batch 1, channels_last, eager and compiled interleaved, median of "
            f"{args.repeats} runs each.\n\n"
            "| teacher | conv share of eager CPU time | eager ms | compiled ms | speedup | compile time | max abs diff |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    print(write_section("compile", "torch.compile on the teachers", body))


if __name__ == "__main__":
    main()
