"""Does distilling sparse students help? centernet, sparse students at one threshold, scored on
held-out `bikes` before and after `dd.distill` on letterboxed clips of two other videos."""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import deltadistill as dd
from deltadistill import teachers
from deltadistill.apps.bench import evaluate_on_video
from deltadistill.video import VideoClips, default_videos, video_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--level", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    teacher, videos = teachers.load("centernet"), default_videos()
    calib = [videos["bigbuckbunny"], videos["carphone_pristine"]]

    def clips(seed: int) -> VideoClips:
        return VideoClips(calib, clip_len=3, max_interval=args.k - 1, size=(512, 512),
                          value_range=teacher.input_range, seed=seed, fit="letterbox")

    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    dd.sparsify(model, clips(1), level=args.level)
    ev = videos["bikes"]
    start = int(0.7 * video_info(ev).frames)

    def score(m: torch.nn.Module) -> dict:
        rep, _ = evaluate_on_video(teacher, dd.deploy(copy.deepcopy(m)), ev, keyframe_interval=args.k, start=start,
                                   progress=False)
        acc, rival = rep["accuracy"], rep["accuracy"]["rival_equal_macs"]
        return {"mac_ratio": round(rep["mac_ratio"], 3), "accuracy": round(acc["value"], 4),
                "rival_equal_macs": round(rival["value"], 4), "beats": rival["beats"],
                "recovered": round(rep["detail"]["output_change_recovered"], 3)}

    print("before", json.dumps(score(model)), flush=True)
    t0 = time.process_time()
    dd.distill(model, clips(2), steps=args.steps, lr=args.lr, progress=True)
    print("cpu_s", round(time.process_time() - t0))
    print("after", json.dumps(score(model)), flush=True)


if __name__ == "__main__":
    main()
