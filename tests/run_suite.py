"""Run the test suite as a few pytest processes, two at a time (what `make test` calls).

One process for the whole suite died with SIGSEGV (exit 139, no Python traceback) about halfway,
starting a subprocess in tests/test_runtime.py after ~150 tests had left onnxruntime, PyAV and
torch state in it. One process per file passed, but paid 4-9 s of interpreter start, imports and
collection 31 times over. So test_runtime.py runs alone, the other files share processes of
``--per`` files each, and ``--jobs`` processes run at once: much of the suite is exports, process
start-up and Python that uses one core, so two at a time on two cores overlap what one leaves idle.
Every ``tests/test_*.py`` runs: a new file joins a group by itself.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: each in a process of its own (where the one-process suite died, and the heaviest file)
ALONE = ("test_runtime.py",)
#: timed against itself: run last, with nothing beside it (its time check failed at 1.5x while
#: another group's exports came and went beside it)
QUIET = ("test_soak_pinned.py",)


def groups(files: list[Path], per: int) -> list[list[Path]]:
    alone = [[f] for f in files if f.name in ALONE]
    rest = [f for f in files if f.name not in ALONE + QUIET]
    return alone + [rest[i:i + per] for i in range(0, len(rest), per)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per", type=int, default=6, help="test files per process")
    ap.add_argument("--jobs", type=int, default=2, help="processes at once")
    ap.add_argument("files", nargs="*", help="test files (default: tests/test_*.py)")
    args = ap.parse_args()
    files = [Path(f) for f in args.files] or sorted(Path(__file__).parent.glob("test_*.py"))
    todo, running, failed = groups(files, args.per), [], []
    quiet = [[f] for f in files if f.name in QUIET]
    t0 = time.time()
    while todo or running or quiet:
        if not todo and not running:  # everything else has finished: the timed files, one at a time
            todo.append(quiet.pop(0))
        while todo and len(running) < args.jobs:
            group = todo.pop(0)
            log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed when the process is reaped)
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, group)]
            running.append((group, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, time.time()))
        time.sleep(0.2)
        for item in [r for r in running if r[1].poll() is not None]:
            group, proc, log, start = item
            running.remove(item)
            log.seek(0)
            out = log.read()
            log.close()
            names = " ".join(f.name for f in group)
            tail = out.strip().splitlines()[-1] if out.strip() else ""
            print(f"== {names}: {tail} ({time.time() - start:.0f} s)", flush=True)
            if proc.returncode != 0:
                print(out, flush=True)
                failed.append((names, proc.returncode))
    if failed:
        for names, code in failed:
            print(f"FAILED (exit {code}) in {names}", flush=True)
        return 1
    print(f"all {len(files)} test files passed in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
