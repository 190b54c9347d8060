"""Wall clock of teacher and delta model in each backend (torch eager, onnxruntime), both teachers.

For each teacher, the demo's model (``runs/demo/model`` for selfie, the default, and
``runs/demo-centernet/model``; run the demo first) and its teacher are timed side by side on the same frames, in one process, first in torch
and then as exported ONNX graphs on onnxruntime. Beside each: the MAC ratio, the bytes every op
moves per frame, and the speedup those bytes allow if the run is bound by memory traffic.
"""

from __future__ import annotations

import argparse

import torch

from deltadistill import teachers
from deltadistill.apps.bench import evaluate_on_video, load_delta_model
from deltadistill.apps.demo import PLANS
from deltadistill.apps.report import speed_words
from deltadistill.video import default_videos

try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section

MODELS = {"centernet": "runs/demo-centernet/model", "selfie": "runs/demo/model"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teachers", default="selfie,centernet")
    ap.add_argument("--start", type=int, default=150)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", default="torch,onnxruntime")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.teachers.split(","):
        teacher, plan = teachers.load(name), PLANS[name]
        model = load_delta_model(teacher, MODELS[name])
        for backend in args.backends.split(","):
            rep, _ = evaluate_on_video(teacher, model, default_videos()[plan.eval_video],
                                       keyframe_interval=plan.keyframe_interval, start=args.start,
                                       stop=args.start + args.frames, name=name, backend=backend, progress=False)
            tr = rep["bytes_per_frame"]
            rows.append((name, plan.keyframe_interval, backend, rep["ms_per_frame"]["teacher"],
                         rep["ms_per_frame"]["delta"], rep["speedup"], rep["mac_ratio"], tr["teacher_mb"],
                         tr["amortised_mb"], tr["speedup_bound"], rep["accuracy"]["value"]))
            print(rows[-1], flush=True)
    body = [f"The demo's models (sparse students), frames {args.start}..{args.start + args.frames - 1} of `bikes`, "
            f"{args.threads} threads, teacher and delta model interleaved in one process. Bytes moved: every op's "
            "reads and writes per frame, unfused (`deltadistill.measure.traffic`); the last column is the speedup they "
            "allow a run bound by memory traffic.", "",
            "| teacher | K | backend | teacher ms | delta ms (amortised) | wall clock | MAC ratio | teacher MB | "
            "delta MB (amortised) | traffic allows | accuracy vs teacher |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, k, backend, tms, dms, sp, mr, tmb, dmb, bound, acc in rows:
        body.append(f"| {name} | {k} | {backend} | {tms:.1f} | {dms:.1f} | {speed_words(sp)} | {mr:.2f}x | "
                    f"{tmb:.0f} | {dmb:.0f} | {speed_words(bound)} | {acc:.3f} |")
    print(write_section("backends", "Teacher vs delta model in each backend, with bytes moved", "\n".join(body)))


if __name__ == "__main__":
    main()
