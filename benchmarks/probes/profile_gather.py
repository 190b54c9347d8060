"""Would gathering the moving pixels make sparse delta frames fast? A prototype, measured twice.

A sparse student writes its masked delta in full and runs a dense conv over it (BENCHMARKS.md note
21). The prototype here computes a 1x1 layer's delta frame only where pixels moved: on a
channels_last map the pixels are rows of a (pixels, channels) matrix, so it gathers the rows that
moved, runs one GEMM and adds the result into a copy of ``z_k``. Same mask, same MACs.

1. Per layer: the teacher conv, the plain sparse path and the gathered one on synthetic maps of
   centernet's shapes, with a share of pixels moving.
2. Whole model: the demo models on `bikes`, each layer's time summed by conv kind, with the gathered
   path patched in and out (keyframes and delta frames apart).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import deltadistill as dd
from deltadistill import teachers
from deltadistill.apps.bench import load_delta_model
from deltadistill.core.layer import DeployedDeltaConv2d
from deltadistill.core.modes import delta_layers
from deltadistill.core.students import SparseStudent
from deltadistill.video import default_videos, iter_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: shared helpers
try:
    from _report import write_section
except ImportError:
    from benchmarks._report import write_section

MODELS = {"centernet": ("runs/demo-centernet/model", 512, 8), "selfie": ("runs/demo/model", 256, 4)}


def gathered(student: SparseStudent, x: Tensor, xk: Tensor, zk: Tensor) -> Tensor | None:
    """``z_k + W(mask * (x - x_k))`` for a 1x1 conv, computed only on the rows that moved."""
    geo = student.geo
    if geo.kernel != (1, 1) or geo.stride != (1, 1) or geo.groups != 1 or any(geo.pad) \
            or not x.is_contiguous(memory_format=torch.channels_last):
        return None
    delta = x - xk
    mask = student.score(delta) > student.threshold
    student.__dict__["last_macs"] = round(float(mask.float().mean()) * geo.macs((x.shape[-2], x.shape[-1])))
    out = zk.clone(memory_format=torch.channels_last)
    idx = mask.reshape(-1).nonzero().squeeze(1)
    if idx.numel():
        rows = delta.permute(0, 2, 3, 1).view(-1, geo.cin).index_select(0, idx)
        w = student.conv.weight.reshape(geo.cout, geo.cin)
        out.permute(0, 2, 3, 1).view(-1, geo.cout).index_add_(0, idx, rows @ w.t())
    return out


def patch(on: bool) -> None:
    """Route deployed sparse layers' all-delta batches through `gathered` (or back)."""
    plain = DeployedDeltaConv2d.__dict__.get("_plain_forward") or DeployedDeltaConv2d.forward
    DeployedDeltaConv2d._plain_forward = plain

    def forward(self: DeployedDeltaConv2d, x: Tensor) -> Tensor:
        cache = self.cache
        if (self.mode == "stream" and type(self.student) is SparseStudent and self.key is False
                and cache is not None and "x" in cache):
            self._see(x)
            z = gathered(self.student, x, cache["x"], cache["z"])
            if z is not None:
                return z
        return plain(self, x)

    DeployedDeltaConv2d.forward = forward if on else plain


def bench(fn: Callable[[], object], n: int = 30) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def one_layer(cin: int, cout: int, hw: int, share: float) -> str:
    """One table row: teacher conv, plain sparse path, gathered path and the floor, on one 1x1 shape."""
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 1).to(memory_format=torch.channels_last)
    student = SparseStudent.from_teacher(conv, dd.DeltaConfig(), threshold=0.5)
    student.to(memory_format=torch.channels_last)
    x = torch.randn(1, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    moved = torch.rand(1, 1, hw, hw) < share
    xk = torch.where(moved, x + 1.0, x + 0.01 * torch.randn_like(x)).contiguous(memory_format=torch.channels_last)
    zk = conv(xk)

    def plain() -> Tensor:
        return student(x - xk).add_(zk)

    def fast() -> Tensor | None:
        return gathered(student, x, xk, zk)

    def floor() -> tuple[Tensor, Tensor]:  # what any keyframe-referenced layer pays first: find what moved, copy z_k
        return student.score(x - xk) > student.threshold, zk.clone(memory_format=torch.channels_last)

    with torch.no_grad():
        torch.testing.assert_close(fast(), plain(), atol=1e-4, rtol=1e-4)
        t, p, g, f = bench(lambda: conv(x)), bench(plain), bench(fast), bench(floor)
    return (f"| {cin}->{cout} at {hw}x{hw} | {share:.2f} | {t:.2f} | {p:.2f} | {g:.2f} | {p / g:.2f}x | "
            f"{f:.2f} ({f / t:.0%}) |")


def per_layer() -> list[str]:
    rows = []
    shapes = [(128, 80, 128, 0.32), (88, 528, 32, 0.3), (528, 88, 32, 0.49), (24, 72, 128, 0.3),
              (72, 24, 128, 0.3), (16, 64, 256, 0.2), (16, 64, 256, 0.05)]
    for shape in shapes:
        rows.append(one_layer(*shape))
        print(rows[-1], flush=True)
    return rows


def whole_model(name: str, frames: int) -> list[str]:
    path, size, k = MODELS[name]
    teacher = teachers.load(name)
    model = load_delta_model(teacher, path).eval().to(memory_format=torch.channels_last)
    xs = [teacher.preprocess(f).contiguous(memory_format=torch.channels_last)
          for f in iter_frames(default_videos()["bikes"], (size, size), "letterbox", 150, 150 + frames)]
    spent: dict[tuple[str, bool], float] = collections.defaultdict(float)
    for _, layer in delta_layers(model):
        kind = "1x1" if layer.base.kernel_size == (1, 1) else "k x k"

        def timed(x: Tensor, kind: str = kind, layer: DeployedDeltaConv2d = layer) -> Tensor:
            t0 = time.perf_counter()
            y = type(layer).forward(layer, x)  # looked up per call: `patch` swaps it
            spent[(kind, layer.key is False)] += time.perf_counter() - t0
            return y
        layer.forward = timed
    out = []
    for on in (False, True) * 4:  # alternating; the first pair warms up, the other three are averaged
        patch(on)
        spent.clear()
        stream, total, n_delta = dd.DeltaStream(model, k), 0.0, 0
        with torch.no_grad():
            for x in xs:
                t0 = time.perf_counter()
                stream(x)
                if not stream.last_key:
                    total += time.perf_counter() - t0
                    n_delta += 1
        out.append((on, total * 1e3 / n_delta, {key: v * 1e3 / n_delta for key, v in spent.items()}))
    patch(False)
    rows = []
    for on in (False, True):
        runs = [(ms, parts) for flag, ms, parts in out[2:] if flag == on]
        ms = sum(r[0] for r in runs) / len(runs)
        one, kxk = (sum(r[1].get((kind, True), 0.0) for r in runs) / len(runs) for kind in ("1x1", "k x k"))
        rows.append(f"| {name} | {'gathered' if on else 'plain'} | {ms:.1f} | {one:.1f} | {kxk:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--section", action="store_true", help="write the BENCHMARKS.md section")
    args = ap.parse_args()
    torch.set_num_threads(2)
    layers = per_layer()
    models = [r for name in MODELS for r in whole_model(name, args.frames)]
    body = ["Per layer: synthetic channels_last maps of centernet's 1x1 shapes, a share of pixels moving; ms per "
            "call (the plain path is the sparse student's dense conv on the masked delta plus `z_k`).", "",
            "| 1x1 conv | pixels moving | teacher conv ms | plain sparse ms | gathered ms | gathered vs plain | "
            "floor: find what moved + copy z_k, ms (of the teacher conv) |",
            "|---|---|---|---|---|---|---|", *layers, "",
            f"Whole model: the demo models, frames 150..{149 + args.frames} of `bikes`, per delta frame: its time and "
            "the time inside its delta layers by kind (the rest is the graph's other ops).", "",
            "| teacher | delta layers | delta frame ms | in 1x1 layers | in k x k layers |", "|---|---|---|---|---|",
            *models]
    if args.section:
        write_section("profile-gather", "Sparse delta frames with the moving pixels gathered (a prototype)",
                      "\n".join(body))


if __name__ == "__main__":
    main()
