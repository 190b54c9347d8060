"""What distillation buys: per-layer delta error and task agreement, before and after, on real video.

Centernet with one fixed student everywhere (no gates, so only the students' training changes),
distilled on the first 70% of bikes.mp4, measured on held-out clips and frames of its last 30%.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

import deltadistill as dd
from deltadistill import teachers
from deltadistill.apps.bench import evaluate_on_video
from deltadistill.core.layer import DeltaConv2d
from deltadistill.video import VideoClips, default_videos

try:
    from _report import ROOT, write_section
except ImportError:
    from benchmarks._report import ROOT, write_section


@torch.no_grad()
def layer_errors(model: torch.nn.Module, clips: VideoClips, n: int, against_teacher: bool) -> dict[str, float]:
    """Per layer, mean over held-out clips of ||pred - true||^2 / ||true||^2, where true is the
    teacher's own feature delta (``against_teacher``, what training targets) or W(x_t - x_k) on the
    layer's own, reconstructed input (the local error)."""
    dd.core.modes.record_true_delta(model)
    model.eval()
    sums: dict[str, float] = {}
    for i in range(n):
        clip = clips[i]
        if against_teacher:
            with dd.mode(model, "teacher"):
                model(clip)
        with dd.mode(model, "clip", clip_len=clip.shape[0]):
            model(clip)
        for name, layer in model.named_modules():
            if isinstance(layer, DeltaConv2d):
                t, p = layer.last_true_delta, layer.last_pred_delta
                sums[name] = sums.get(name, 0.0) + float((p - t).pow(2).mean() / (t.pow(2).mean() + 1e-12)) / n
    dd.core.modes.record_true_delta(model, False)
    return sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--student", default="compressed")
    ap.add_argument("--reduction", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--clips", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(2)
    teacher = teachers.load("centernet")
    video = default_videos()["bikes"]
    kw = dict(clip_len=3, max_interval=args.k, size=(512, 512), value_range=teacher.input_range, scale_jitter=1.0)
    train = VideoClips([video], frame_range=(0.0, 0.7), seed=0, **kw)
    held_out = VideoClips([video], frame_range=(0.7, 1.0), seed=123, **kw)
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student=args.student, reduction=args.reduction))

    def agreement(m: torch.nn.Module) -> float:
        deployed = dd.deploy(copy.deepcopy(m))
        report, _ = evaluate_on_video(teacher, deployed, video, keyframe_interval=args.k, start=175, progress=False)
        return report["accuracy"]["value"]

    before_local, before_err = (layer_errors(model, held_out, args.clips, g) for g in (False, True))
    before_acc = agreement(model)
    result = dd.distill(model, train, steps=args.steps, seed=0, num_workers=1)
    after_local, after_err = (layer_errors(model, held_out, args.clips, g) for g in (False, True))
    after_acc = agreement(model)
    bl, al = np.array(list(before_local.values())), np.array(list(after_local.values()))
    names = list(before_err)
    b, a = np.array([before_err[n] for n in names]), np.array([after_err[n] for n in names])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.semilogy(b, ".-", label=f"before (SVD init), median {np.median(b):.3f}")
    ax.semilogy(a, ".-", label=f"after {args.steps} steps, median {np.median(a):.3f}")
    ax.set_xlabel("converted layer (network order)")
    ax.set_ylabel("error vs teacher's delta")
    ax.legend()
    fig.tight_layout()
    png = ROOT / "benchmarks" / "distill_layer_error.png"
    fig.savefig(png, dpi=100)
    body = f"""centernet, `{args.student}` students (gamma={args.reduction}) in all {len(names)} converted layers, distilled {args.steps} steps (clips of 3 frames, keyframe distance up to {args.k}) on frames 0..174 of bikes.mp4; measured on held-out clips and frames 175..249.

| | before (SVD init) | after distillation |
|---|---|---|
| error vs the teacher's own feature delta, per layer, median (what training targets) | {np.median(b):.4f} | {np.median(a):.4f} |
| same, mean | {b.mean():.4f} | {a.mean():.4f} |
| layers whose error fell | | {int((a < b).sum())} of {len(names)} |
| local error vs W(x_t - x_k) on the layer's own input, median | {np.median(bl):.4f} | {np.median(al):.4f} |
| mAP50 vs teacher, K={args.k} | {before_acc:.3f} | {after_acc:.3f} |
| final training losses | | task {result.history[-1]['task']:.4f}, distill {result.history[-1]['distill']:.4f} |

![per-layer delta error](benchmarks/distill_layer_error.png)
"""
    print(write_section("distill-evidence", "Distillation on real video: before and after", body))


if __name__ == "__main__":
    main()
