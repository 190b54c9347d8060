"""Where a delta frame's time goes, next to a teacher frame's (torch.profiler, self CPU time).

centernet with the paper's students everywhere (kernel split, `min` policy, gamma=16, first and
last conv dense), deployed, channels_last, batch 1, eager. Shows which ops cost time beyond the
students' MACs: the floor a delta frame cannot get under by saving MACs alone.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import deltadistill as dd
from deltadistill import teachers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: shared helpers
try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section


def top_ops(run, frames: int, rows: int, shapes: bool) -> tuple[float, list[tuple[str, str, float, int]]]:
    """(ms per frame, [(op, input shapes, ms per frame, calls per frame)]) by self CPU time."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        for _ in range(frames):
            run()
    events = prof.key_averages(group_by_input_shape=shapes)
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / frames
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return total, [(e.key, str(e.input_shapes)[:70] if shapes else "", e.self_cpu_time_total / 1e3 / frames,
                    e.count // frames) for e in ranked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reduction", type=int, default=16)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = teachers.load("centernet").eval()
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="compressed", reduction=args.reduction))
    dd.deploy(model)
    macs = dd.count_macs(model, (3, *teacher.input_size), 8)
    teacher, model = teacher.to(memory_format=torch.channels_last), model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, *teacher.input_size, generator=g) * 255).contiguous(memory_format=torch.channels_last)
    stream = dd.DeltaStream(model, keyframe=10**9)  # one keyframe, then delta frames only
    with torch.no_grad():
        stream(x)
        for _ in range(3):
            teacher(x), stream(x)
        t_ms, t_ops = top_ops(lambda: teacher(x), args.frames, 8, False)
        d_ms, d_ops = top_ops(lambda: stream(x), args.frames, 8, False)
        _, d_shapes = top_ops(lambda: stream(x), args.frames, 10, True)

    def table(ops: list[tuple[str, str, float, int]], with_shapes: bool) -> str:
        head = "| op | input shapes | ms / frame | calls / frame |\n|---|---|---|---|\n" if with_shapes else \
            "| op | ms / frame | calls / frame |\n|---|---|---|\n"
        return head + "\n".join(f"| `{k}` | `{s}` | {ms:.2f} | {n} |" if with_shapes else f"| `{k}` | {ms:.2f} | {n} |"
                                for k, s, ms, n in ops)

    body = f"""centernet at 512x512, `compressed` students (gamma={args.reduction}) in every converted layer, deployed;
a delta frame costs {macs.delta / macs.teacher:.1%} of the teacher's MACs. Profiled over {args.frames} frames each,
eager, channels_last, batch 1. Total self CPU time: teacher **{t_ms:.1f} ms**, delta frame **{d_ms:.1f} ms** per frame.

Teacher frame, top ops:

{table(t_ops, False)}

Delta frame, top ops:

{table(d_ops, False)}

Delta frame, top ops by input shape:

{table(d_shapes, True)}
"""
    print(write_section("profile-delta-frame", "Profile: a centernet delta frame against a teacher frame", body))


if __name__ == "__main__":
    main()
