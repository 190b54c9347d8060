"""`distill` killed with SIGKILL at 20 random moments, resumed each time: it never loads a broken
checkpoint, loses at most one checkpoint interval, and ends where an uninterrupted run ends.
`benchmarks/bench_kills.py` runs the same procedure and writes its figures to BENCHMARKS.md."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
EVERY = 5  # checkpoint interval, in steps
STEPS = 300

DRIVER = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
import deltadistill as dd
from deltadistill.train.checkpointing import latest
from tests.test_train import clips, fresh
torch.set_num_threads(1)
out, log = sys.argv[1], sys.argv[2]
flags = sys.argv[3:]
last = latest(out + "/checkpoints") if "resume" in flags else None  # a broken one raises: exit 1, not -9
start = int(last.name.split("-")[1]) if last is not None else 0
progress = open(log, "w")
progress.write(f"start {{start}}\\n"); progress.flush()
if "hold" in flags:  # stop inside the next checkpoint write, its optimiser file written, so a kill lands there
    import time
    import deltadistill.train.checkpointing as ckpt
    write = ckpt.save_file
    def held(*args, **kwargs):
        write(*args, **kwargs)
        progress.write("writing\\n"); progress.flush()
        time.sleep(60)
    ckpt.save_file = held
def loss(student, teacher, target):
    progress.write("step\\n"); progress.flush()
    return torch.nn.functional.mse_loss(student, teacher)
dd.distill(fresh(), clips(n=6), steps={STEPS}, out_dir=out, checkpoint_every={EVERY}, seed=7, budget=0.3,
           resume=True, progress=False, task_loss=loss)
"""


def _launch(out: Path, log: Path, resumed: bool, hold: bool = False) -> subprocess.Popen:
    """The driver; ``hold``: it stops inside its next checkpoint write (for a kill to land there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    flags = ["resume"] * resumed + ["hold"] * hold
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(out), str(log), *flags],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _latest_step(out: Path) -> int:
    pointer = out / "checkpoints" / "latest"
    return int(pointer.read_text().split("-")[1]) if pointer.is_file() else 0


def _reached(log: Path) -> int | None:
    """The step the driver has reached (its start plus the steps it logged), or None before it starts."""
    lines = log.read_text().splitlines() if log.is_file() else []
    if not lines or not lines[0].startswith("start"):
        return None
    return int(lines[0].split()[1]) + sum(1 for x in lines[1:] if x == "step")


def _wait_for(log: Path, p: subprocess.Popen, ok, timeout: float = 120) -> None:
    """Until ``ok(step reached)`` holds, or the driver exits."""
    t0 = time.time()
    while time.time() - t0 < timeout and p.poll() is None:
        step = _reached(log)
        if step is not None and ok(step):
            return
        time.sleep(0.005)


def _half_written(out: Path) -> set[str]:
    """Temp directories of checkpoint writes that never finished (each write starts as one)."""
    ckpts = out / "checkpoints"
    return {d.name for d in ckpts.iterdir() if d.name.startswith(".")} if ckpts.is_dir() else set()


def kill_and_resume(root: Path, kills_wanted: int = 20, seed: int = 11) -> dict:
    """Run `distill` once whole, then again killed ``kills_wanted`` times and resumed each time.

    Of every five kills one lands in start-up (imports, loading the checkpoint), one inside a
    checkpoint write (the driver holds there: on a loaded machine a kill timed by the clock alone
    can miss every write), one just as a checkpoint step ends (in or next to its write), and two
    0-0.6 s into training (a checkpoint every 5 steps, about 0.3 s). Returns what the kills left
    behind.
    """
    clean = root / "clean"
    p = _launch(clean, root / "clean.log", resumed=False)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    rng = random.Random(seed)
    out, kills, launches = root / "killed", 0, 0
    lost: list[int] = []
    in_startup = in_write = 0
    while True:
        log = root / f"run{launches}.log"
        before = _half_written(out)
        p = _launch(out, log, resumed=launches > 0, hold=kills < kills_wanted and kills % 5 == 2)
        launches += 1
        if kills < kills_wanted:
            if kills % 5 == 4:
                time.sleep(rng.uniform(0.1, 1.0))
            elif kills % 5 == 2:  # inside a checkpoint write, whatever the machine's load
                _wait_for(log, p, lambda step, log=log: "writing" in log.read_text())
            elif kills % 5 == 3:
                first = None

                def at_checkpoint(step: int) -> bool:
                    nonlocal first
                    first = step if first is None else first
                    return step > first and step % EVERY == 0

                _wait_for(log, p, at_checkpoint)
                time.sleep(rng.uniform(0.0, 0.03))
            else:
                _wait_for(log, p, lambda step: True)
                _wait_for(log, p, lambda step, s0=_reached(log) or 0: step > s0)  # the first step ran
                time.sleep(rng.uniform(0.0, 0.6))
        if p.poll() is None and kills < kills_wanted:
            p.send_signal(signal.SIGKILL)
            assert p.wait(timeout=60) == -signal.SIGKILL
            kills += 1
            reached = _reached(log)
            if reached is None:
                in_startup += 1
                continue
            lost.append(reached - _latest_step(out))  # steps reached, against the checkpoint left behind
            in_write += bool(_half_written(out) - before)  # this kill left a write half-done
            continue
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]  # never a broken checkpoint
        break
    a = load_file(str(clean / "model" / "students.safetensors"))
    b = load_file(str(out / "model" / "students.safetensors"))
    assert a.keys() == b.keys()
    return {"kills": kills, "launches": launches, "lost": lost, "in_startup": in_startup, "in_write": in_write,
            "clean": a, "killed": b}


def test_sigkill_at_random_moments_then_resume_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    r = kill_and_resume(tmp_path)
    assert r["kills"] == 20
    assert max(r["lost"]) <= EVERY  # at most one checkpoint interval lost
    assert max(r["lost"]) > 0  # kills did land between checkpoints, not only right after one
    assert r["in_write"] >= 1 and r["in_startup"] >= 1  # and some during a checkpoint write, some in start-up
    for k in r["clean"]:
        torch.testing.assert_close(r["clean"][k], r["killed"][k], atol=1e-6, rtol=1e-5, msg=k)
