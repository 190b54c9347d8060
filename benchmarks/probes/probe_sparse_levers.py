"""Probes behind BENCHMARKS.md note 30: where a sparse centernet loses its accuracy, and two levers
that did not help.

* ``groups``: every layer at a low threshold, then one group of layers (by the input size it sees,
  or the FPN and heads) at a higher one; what each group's threshold costs in accuracy and saves.
  ``--split G``: each layer of group ``G`` alone.
* ``freeze-pools``: on delta frames, reuse each global pool's keyframe value (the squeeze of every
  squeeze-excite block), so that a change in one place does not rescale whole maps.
* ``channel-norm``: score each pixel by its channels' ``|delta|``, each over that channel's mean
  ``|input|``, so that a quiet channel's change counts as much as a loud one's.
* ``pooled-remainder``: beside each sparse student, the teacher conv on the 2x average-pooled part
  of the delta that the threshold dropped (where that pooled part scores above ``share`` x the
  threshold), upsampled back.

Each line printed is one model on all of `bikes` (or ``--video``): MAC ratio, accuracy, the rival at
equal MACs. Thresholds come from the two other videos, as in `bench_rival.py`.
"""

from __future__ import annotations

import argparse
import copy
import json
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import deltadistill as dd
from deltadistill.apps.bench import evaluate_on_video
from deltadistill.core.layer import DeltaConv2d
from deltadistill.core.modes import delta_layers
from deltadistill.core.students import SparseStudent, computed_share, pixel_scores
from deltadistill.teachers.graph import GraphModule
from deltadistill.teachers.resolve import parse_size, resolve_teacher
from deltadistill.video import VideoClips, default_videos, video_info

VIDEOS = ("bigbuckbunny", "carphone_pristine", "bikes")


def calibration_clips(teacher: nn.Module, k: int, video: str) -> VideoClips:
    """Letterboxed clips of the two videos other than ``video``, at keyframe distances 1..K-1."""
    videos = default_videos()
    return VideoClips([videos[v] for v in VIDEOS if v != video][:2], clip_len=3, max_interval=k - 1,
                      size=tuple(teacher.input_size), value_range=teacher.input_range, seed=1, fit="letterbox")


def sparse_model(teacher: nn.Module, k: int, level: float, video: str, deploy: bool = True) -> nn.Module:
    """Sparse students in every conv at ``level``, set on two videos other than ``video``."""
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    dd.sparsify(model, calibration_clips(teacher, k, video), level=level, clips=8)
    if deploy:
        dd.deploy(model)
        dd.count_macs(model, (3, *teacher.input_size), k)  # every layer learns its input size
    return model


def score(teacher: nn.Module, model: nn.Module, k: int, video: str, **row: Any) -> None:
    rep, _ = evaluate_on_video(teacher, model, default_videos()[video], keyframe_interval=k, progress=False)
    acc, riv = rep["accuracy"], rep["accuracy"]["rival_equal_macs"]
    print(json.dumps({**row, "k": k, "video": video, "mac_ratio": round(rep["mac_ratio"], 3), "accuracy": round(acc["value"], 4),
                      "rival_equal_macs": round(riv["value"], 4), "margin": round(riv["margin"], 4),
                      "needed": riv["margin_needed"], "recovered": round(rep["detail"]["output_change_recovered"], 3)}),
          flush=True)


def group_of(name: str, layer: nn.Module) -> str:
    """The FPN and heads, else the power of two at or below the layer's shorter input side (TF SAME
    padding makes a strided conv's input a few rows larger: 513, 257, 131, 65, 35)."""
    if "centernet" in name.lower() or "upsample" in name.lower():
        return "fpn+heads"
    return str(1 << (min(layer.in_hw).bit_length() - 1))


def scale_thresholds(model: nn.Module, share: dict[str, float]) -> None:
    for n, layer in delta_layers(model):
        for s in layer.modules():
            if isinstance(s, SparseStudent):
                s.threshold.mul_(share.get(n, 1.0))


def freeze_pools(model: nn.Module) -> int:
    """Wrap every step of the graph that pools a map to 1x1: a delta frame reuses the keyframe's result."""
    wrapped = 0
    for g in model.modules():
        if not isinstance(g, GraphModule):
            continue
        for i, (fn, ins, outs, mod) in enumerate(g._steps):
            if mod is not None:
                continue
            memo: dict[str, Any] = {}

            def step(*xs: Any, _fn: Any = fn, _g: GraphModule = g, _m: dict = memo) -> Any:
                state = getattr(_g, "stream_state", None)
                if state is None or not (xs and isinstance(xs[0], Tensor) and xs[0].ndim == 4):
                    return _fn(*xs)
                if state["key"] is not True and _m.get("pool"):
                    return _m["value"]
                r = _fn(*xs)
                if state["key"] is True and isinstance(r, Tensor) and r.ndim == 4:
                    spatial_in, spatial_out = xs[0].shape[-2] * xs[0].shape[-1], r.shape[-2] * r.shape[-1]
                    _m.update(pool=spatial_out == 1 and spatial_in > 1, value=r)
                return r

            g._steps[i] = (step, ins, outs, mod)
            wrapped += 1
    return wrapped


@torch.no_grad()
def normalise_channels(model: nn.Module, teacher: nn.Module, k: int, video: str) -> None:
    """Score each pixel by the mean over channels of ``|delta_c| / mean |x_c|`` (per-channel means on
    the calibration keyframes), at the level's share of that score's mean on those keyframes."""
    clips = calibration_clips(teacher, k, video)
    layers = {n: m for n, m in delta_layers(model) if isinstance(m, DeltaConv2d)}
    sums: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: sums.__setitem__(n, sums.get(n, 0) + a[0].abs().mean((0, 2, 3))))
             for n, m in layers.items()]
    with dd.mode(model, "teacher"):
        for i in range(8):
            model(clips[i][:1])
    for h in hooks:
        h.remove()
    for n, m in layers.items():
        mean = sums[n] / 8
        mean = mean.clamp_min(1e-3 * float(mean.mean()) + 1e-12)
        w = (1 / mean) / (1 / mean).sum()
        student = next(iter(m.students.values()))
        student.weighted, student.weights = True, w
        student.threshold.mul_(float((w * mean).sum()) / float(mean.mean()))  # same level, new scale


def pooled_remainder_forward(self: SparseStudent, delta: Tensor) -> Tensor:
    mask = pixel_scores(delta) > self.threshold
    sent = delta * mask.to(delta.dtype)
    y = self.conv(sent)
    rest = F.avg_pool2d(delta - sent, 2, ceil_mode=True)
    mask2 = pixel_scores(rest) > self.share * self.threshold
    y = y + F.interpolate(self.conv(rest * mask2.to(rest.dtype)), size=y.shape[-2:], mode="nearest")
    hw, half = (delta.shape[-2], delta.shape[-1]), (rest.shape[-2], rest.shape[-1])
    self.__dict__["last_macs"] = round(float(computed_share(mask, self.geo).mean()) * self.geo.macs(hw)
                                       + float(computed_share(mask2, self.geo).mean()) * self.geo.macs(half))
    self.__dict__["last_sent"] = sent
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("probe", choices=("groups", "freeze-pools", "pooled-remainder", "channel-norm"))
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--video", default="bikes", choices=VIDEOS, help="score on this video (thresholds are set on "
                    "the other two)")
    ap.add_argument("--level", type=float, default=0.005, help="the threshold everywhere (x mean |input|)")
    ap.add_argument("--high", type=float, default=0.05, help="groups: one group's threshold")
    ap.add_argument("--input-size", default="", help="HxW to run the teacher at (default: its own, 512x512)")
    ap.add_argument("--split", default="", help="groups: raise each layer of this group alone, e.g. 256")
    ap.add_argument("--share", default="-1,0,0.5", help="pooled-remainder: where the pooled part is computed, as a "
                    "share of the threshold (-1: nowhere, the plain sparse model)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    info = video_info(default_videos()[args.video])
    teacher = resolve_teacher("centernet", input_size=parse_size(args.input_size) if args.input_size else None,
                              frame_size=(info.height, info.width))
    base = sparse_model(teacher, args.k, args.level, args.video)
    on = {"k": args.k, "video": args.video}
    if args.probe == "groups":
        groups: dict[str, list[str]] = {}
        for n, layer in delta_layers(base):
            groups.setdefault(group_of(n, layer), []).append(n)
        if args.split:  # each layer of one group alone
            groups = {f"{args.split}: {n}": [n] for n in groups[args.split]}
        else:
            score(teacher, base, **on, group="none", level=args.level)
        for g, names in sorted(groups.items(), key=lambda kv: (kv[0] == "fpn+heads", -int(kv[0]) if kv[0].isdigit() else 0, kv[0])):
            model = copy.deepcopy(base)
            scale_thresholds(model, dict.fromkeys(names, args.high / args.level))
            score(teacher, model, **on, group=g, layers=len(names), level=args.level, high=args.high)
    elif args.probe == "channel-norm":
        model = sparse_model(teacher, args.k, args.level, args.video, deploy=False)
        normalise_channels(model, teacher, args.k, args.video)
        dd.deploy(model)
        score(teacher, model, **on, channel_norm=True, level=args.level)
    elif args.probe == "freeze-pools":
        model = copy.deepcopy(base)
        freeze_pools(model)
        score(teacher, model, **on, freeze_pools=True, level=args.level)
    else:
        for share in (float(s) for s in args.share.split(",")):
            model = copy.deepcopy(base)
            if share >= 0:
                for s in model.modules():
                    if isinstance(s, SparseStudent) and (s.geo.stride[0] == 1 or s.geo.kernel[0] == 1):
                        s.share = share
                        s.forward = types.MethodType(pooled_remainder_forward, s)
            score(teacher, model, **on, pooled_remainder_share=share, level=args.level)


if __name__ == "__main__":
    main()
