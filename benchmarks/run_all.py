"""`make bench`: rerun every benchmark that needs nothing but this checkout, each writing its section of
BENCHMARKS.md. The teacher-vs-model tables need trained models first (see BENCHMARKS.md for the commands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_core.py", "bench_compile.py", "probes/profile_delta_frame.py", "bench_calibrate.py", "bench_distill.py"]

if __name__ == "__main__":
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)
