"""Run the test suite as a few pytest processes, not one and not one per file (what `make test` calls).

One process for the whole suite died with SIGSEGV (exit 139, no Python traceback) about halfway,
starting a subprocess in tests/test_runtime.py after ~150 tests had left onnxruntime, PyAV and
torch state in it. One process per file passed, but paid 4-9 s of interpreter start, imports and
collection 30 times over: 2.5 of the suite's 10 minutes. So the files that start many subprocesses
run alone and first in a process, and the rest share a few processes of ``--per`` files each. Every
``tests/test_*.py`` is run: a new file joins a group by itself.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

#: each in a process of its own (where the one-process suite died, and the heaviest file)
ALONE = ("test_runtime.py",)


def groups(files: list[Path], per: int) -> list[list[Path]]:
    alone = [[f] for f in files if f.name in ALONE]
    rest = [f for f in files if f.name not in ALONE]
    return alone + [rest[i:i + per] for i in range(0, len(rest), per)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per", type=int, default=6, help="test files per process")
    ap.add_argument("files", nargs="*", help="test files (default: tests/test_*.py)")
    args = ap.parse_args()
    files = [Path(f) for f in args.files] or sorted(Path(__file__).parent.glob("test_*.py"))
    t0 = time.time()
    for group in groups(files, args.per):
        print(f"== {' '.join(f.name for f in group)}", flush=True)
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, group)])
        if code != 0:
            print(f"FAILED (exit {code}) in {' '.join(map(str, group))}", flush=True)
            return code
    print(f"all {len(files)} test files passed in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
