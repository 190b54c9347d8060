"""Is our OpenVINO figure OpenVINO's own? The teacher's exported file timed by `runtime.fastest` (f32,
latency hint, one stream, 2 threads) beside a standalone `benchmark_app` run of the same file with
the same settings. Issue 19 asks them to agree within 10%.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import torch

import deltadistill as dd
from deltadistill.runtime.cache import cache_dir, fingerprint
from deltadistill.runtime.fastest import dense_runner, median_ms

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section


def benchmark_app(file: Path, seconds: int) -> float:
    """OpenVINO's own tool: median latency in ms."""
    exe = Path(sys.executable).with_name("benchmark_app")
    out = subprocess.run([str(exe), "-m", str(file), "-d", "CPU", "-hint", "none", "-api", "sync", "-nstreams", "1",
                          "-nthreads", "2", "-infer_precision", "f32", "-t", str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Median:\s+([\d.]+) ms", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teachers", default="centernet,selfie")
    ap.add_argument("--seconds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = ["| teacher | input | ours (ms, median of 100) | benchmark_app (ms, median) | ours / theirs |", "|---|---|---|---|---|"]
    for name in args.teachers.split(","):
        teacher = dd.teachers.load(name)
        size = tuple(teacher.input_size)
        run = dense_runner(teacher, "openvino", size)
        ours = median_ms(run, torch.rand(1, 3, *size) * teacher.input_range, 100, warmup=10)[0]
        theirs = benchmark_app(cache_dir() / f"teacher-{fingerprint(teacher)}_{size[0]}x{size[1]}.onnx", args.seconds)
        rows.append(f"| {name} | {size[0]}x{size[1]} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |")
        print(rows[-1], flush=True)
    write_section("openvino-check", "OpenVINO: our timing against benchmark_app on the same file (issue 19)",
                  "The plain teacher exported by `export_plain_onnx`, compiled at f32 with the latency hint, one "
                  "stream and 2 threads, timed by `runtime.fastest` (from Python, with the copy of the outputs) and by "
                  "OpenVINO's `benchmark_app` with the same settings.\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
