"""`distill` killed with SIGKILL at 20 random moments and resumed each time (the procedure of
tests/test_kills.py), with its figures: steps lost per kill, launches, and how far the final weights
are from those of an uninterrupted run with the same seed."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_kills import EVERY, STEPS, kill_and_resume  # noqa: E402

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section


def main(kills_wanted: int = 20, seed: int = 11) -> None:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        r = kill_and_resume(Path(d), kills_wanted, seed)
        seconds = time.time() - t0
    lost = r["lost"]
    diff = max(float((r["clean"][k] - r["killed"][k]).abs().max()) for k in r["clean"])
    body = (f"`distill` (tiny model, {STEPS} steps, a checkpoint every {EVERY}) killed with SIGKILL "
            f"{r['kills']} times (seed {seed}): one kill in five during start-up, one inside a checkpoint "
            "write (the driver holds there), the rest 0-1.5 s into training, and resumed each time.\n\n"
            "| kills | launches | in start-up | with a checkpoint write half-done | steps lost per kill (max / mean) "
            "| broken checkpoint loaded | final weights vs uninterrupted run (max abs) | wall clock, all runs |\n"
            "|---|---|---|---|---|---|---|---|\n"
            f"| {r['kills']} | {r['launches']} | {r['in_startup']} | {r['in_write']} | {max(lost, default=0)} / "
            f"{sum(lost) / max(len(lost), 1):.1f} | never (a resume that hit one would exit 1) | {diff:.1e} "
            f"| {seconds:.0f} s |")
    print(body)
    write_section("kills", f"Kills: {r['kills']} SIGKILLs during distill, resumed each time", body)


if __name__ == "__main__":
    main()
