"""`distill` killed with SIGKILL at 20 random moments, resumed each time: it never loads a broken
checkpoint, loses at most one checkpoint interval, and ends where an uninterrupted run ends."""

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
last = latest(out + "/checkpoints") if len(sys.argv) > 3 else None  # a broken one raises: exit 1, not -9
start = int(last.name.split("-")[1]) if last is not None else 0
progress = open(log, "w")
progress.write(f"start {{start}}\\n"); progress.flush()
def loss(student, teacher, target):
    progress.write("step\\n"); progress.flush()
    return torch.nn.functional.mse_loss(student, teacher)
dd.distill(fresh(), clips(n=6), steps={STEPS}, out_dir=out, checkpoint_every={EVERY}, seed=7, budget=0.3,
           resume=True, progress=False, task_loss=loss)
"""


def _launch(out: Path, log: Path, resumed: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(out), str(log), *(["resume"] if resumed else [])],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _latest_step(out: Path) -> int:
    pointer = out / "checkpoints" / "latest"
    return int(pointer.read_text().split("-")[1]) if pointer.is_file() else 0


def test_sigkill_at_random_moments_then_resume_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    p = _launch(clean, tmp_path / "clean.log", resumed=False)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]

    rng = random.Random(11)
    out, kills, launches = tmp_path / "killed", 0, 0
    while True:
        log = tmp_path / f"run{launches}.log"
        p = _launch(out, log, resumed=launches > 0)
        launches += 1
        if kills < 20:
            time.sleep(rng.uniform(0.5, 3.5))  # some land in start-up, most in training or a checkpoint write
        if p.poll() is None and kills < 20:
            p.send_signal(signal.SIGKILL)
            assert p.wait(timeout=60) == -signal.SIGKILL
            kills += 1
            lines = log.read_text().splitlines() if log.is_file() else []
            if lines:  # steps it reached before the kill against the checkpoint left behind
                reached = int(lines[0].split()[1]) + sum(1 for x in lines[1:] if x == "step")
                assert reached - _latest_step(out) <= EVERY, (reached, _latest_step(out))
            continue
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]  # never a broken checkpoint
        break
    assert kills == 20
    a = load_file(str(clean / "model" / "students.safetensors"))
    b = load_file(str(out / "model" / "students.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
