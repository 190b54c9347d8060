"""Delta frame vs teacher on a ResNet-18-shaped net: MAC ratio against wall-clock ratio, per student kind.

Random weights are fine here: speed and MACs do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import deltadistill as dd
from deltadistill.core.fold import fold_batchnorm
from deltadistill.models import ResNetLike

try:
    from _report import write_section
except ImportError:  # run as a module
    from benchmarks._report import write_section


def interleaved_ms(fns, n: int) -> list[float]:
    """Median ms of each function, run in turn n times so that drift in the machine's speed hits all alike."""
    for _ in range(3):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for ts, fn in zip(times, fns, strict=True):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) * 1e3 for ts in times]


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cl = torch.channels_last
    base = ResNetLike().eval()
    x = torch.randn(1, 3, args.size, args.size).contiguous(memory_format=cl)
    x2 = (x + 0.05 * torch.randn_like(x)).contiguous(memory_format=cl)
    teacher = copy.deepcopy(base)
    fold_batchnorm(teacher)  # the teacher gets the same BN folding as the deployed model: a fair race
    teacher = teacher.to(memory_format=cl)
    rows = []
    for student, gamma in [("compressed", 4), ("compressed", 16), ("pooled", 4), ("full", 4)]:
        model = dd.deploy(dd.convert(copy.deepcopy(base), dd.DeltaConfig(student=student, reduction=gamma)))
        model = model.to(memory_format=cl)
        macs = dd.count_macs(model, (3, args.size, args.size), keyframe_interval=8)
        stream = dd.DeltaStream(model, dd.EveryK(10**9))
        stream(x)
        t_teacher, t_delta = interleaved_ms([lambda: teacher(x), lambda s=stream: s(x2)], args.repeats)
        mac_ratio = macs.teacher / macs.delta
        rows.append(f"| {student} | {gamma} | {macs.teacher / 1e9:.2f} | {macs.delta / 1e9:.2f} | {mac_ratio:.2f}x "
                    f"| {t_teacher:.1f} | {t_delta:.1f} | {t_teacher / t_delta:.2f}x | {t_teacher / t_delta / mac_ratio:.0%} |")
        print(rows[-1], flush=True)
    body = ("One delta frame of the deployed model against one teacher frame (batch 1, channels_last, BN folded in both),\n"
            f"run in turn {args.repeats} times, median of each.\n\n"
            "| student | gamma | teacher GMAC | delta GMAC | MAC ratio | teacher ms | delta ms | speedup | speedup / MAC ratio |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    print(write_section(f"core-resnet{args.size}", f"Core: ResNet-18-like at {args.size}x{args.size}, delta frame", body))


if __name__ == "__main__":
    main()
