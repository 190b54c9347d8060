"""Where a sparse delta frame's MACs go: per layer, the measured MACs on held-out `bikes` frames.

centernet, sparse students at one threshold (set on letterboxed clips of two other videos), K=4.
"""

from __future__ import annotations

import argparse
import collections
import copy

import torch

import deltadistill as dd
from deltadistill import teachers
from deltadistill.core.modes import delta_layers
from deltadistill.video import VideoClips, default_videos, iter_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--level", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(2)
    teacher, videos = teachers.load("centernet"), default_videos()
    calib = VideoClips([videos["bigbuckbunny"], videos["carphone_pristine"]], clip_len=3, max_interval=args.k - 1,
                       size=(512, 512), value_range=teacher.input_range, seed=1, fit="letterbox")
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    dd.sparsify(model, calib, level=args.level)
    model = dd.deploy(model).to(memory_format=torch.channels_last)
    stream = dd.DeltaStream(model, args.k)
    spent: dict[str, float] = collections.defaultdict(float)
    frames = 0
    for f in iter_frames(videos["bikes"], (512, 512), "letterbox", 175, 250):
        stream(teacher.preprocess(f).contiguous(memory_format=torch.channels_last))
        if not stream.last_key:
            frames += 1
            for name, layer in delta_layers(model):
                spent[name] += layer.student.measured_macs()
    report = dd.count_macs(model, (3, 512, 512))
    total = sum(spent.values()) / frames
    print(f"threshold {args.level}, K={args.k}: a delta frame's converted convs {total / 1e9:.3f} GMAC "
          f"of the teacher's {report.teacher / 1e9:.3f}")
    print("| layer | weight | input | measured MMAC / dense | density | share of the delta frame |")
    print("|---|---|---|---|---|---|")
    rows = sorted(((spent[n] / frames, r.teacher, n, layer) for (n, layer), r in zip(delta_layers(model), report.layers,
                                                                                    strict=True)), reverse=True)
    for m, dense, name, layer in rows[:args.top]:
        print(f"| `{name.split('_', 1)[-1][-48:]}` | {tuple(layer.base.weight.shape)} | {layer.in_hw} | "
              f"{m / 1e6:.1f} / {dense / 1e6:.1f} | {m / dense:.2f} | {m / total:.1%} |")


if __name__ == "__main__":
    main()
