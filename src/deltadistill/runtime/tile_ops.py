"""The tile runtime's handlers for the graph's other steps: one small class per kind of op.

Each recomputes its output only at the pixels its inputs' changes reach, from the inputs' persistent
maps, and writes them into its own map:

* `Pixelwise`: element-wise ops (activations, add, mul, unfused BN) and channel concats: the
  output pixel depends on the same input pixel only. The step's own function runs on the gathered
  pixels, viewed as a ``(1, C, n, 1)`` map.
* `Gathered`: max-pool (ceil mode included) and resizes (bilinear, nearest, any coordinate mode):
  each output pixel reads a fixed set of input pixels (a window, or the 1-4 interpolation taps),
  tabulated once; a max or a weighted sum over the gathered taps.
* `Dense`: anything else runs whole on the full maps, and its output counts as changed where it
  differs from before. The runtime warns once per such op, naming it.
* `Alias`: a step that returns its input unchanged (a Cast to the dtype it already has: IS-Net's file
  is fp16 and runs in f32, leaving 70 such casts): its output is the input's map, at no cost.
* `Fused`: a step another handler does as part of its own (a ReLU in its conv's write).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .tile_maps import Changed, Reach, Slot, as_pixels, from_pixels, to_rows, union

#: element-wise op types (ONNX names): an output pixel reads only the same pixel of each input
PIXELWISE = {
    "Identity", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Neg", "Abs", "Floor", "Ceil", "Reciprocal",
    "Erf", "HardSwish", "Softplus", "LeakyRelu", "Elu", "HardSigmoid", "Selu", "Celu", "Clip", "Add", "Sub",
    "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean", "BatchNormalization", "Cast",
}


class Pixelwise:
    """An element-wise step, or a concat over channels, at the changed pixels only."""

    kind = "pixelwise"

    def __init__(self, fn: Callable[..., Any], ins: Sequence[int], outs: Sequence[int], hw: tuple[int, int]) -> None:
        self.fn, self.ins, self.dst, self.hw = fn, tuple(ins), outs[0], hw

    def key(self, env: list[Slot]) -> None:
        pass

    def delta(self, env: list[Slot]) -> int:
        dst = env[self.dst]
        srcs = [env[i] for i in self.ins]
        if any(s.dirty for s in srcs):  # a 1x1 gate or constant-like input moved: every pixel did
            changed: Changed | None = Changed.all(self.hw)
        else:
            changed = union(self.hw, [s.changed for s in srcs if s.spatial])
        dst.changed = changed
        if changed is None:
            return 0
        if changed.everything:
            dst.value = to_rows(self.fn(*[s.nchw for s in srcs])).clone()  # a clone: the step may return its input
            return 0
        idx = changed.idx
        args = [as_pixels(s.value.index_select(0, idx)) if s.spatial else s.value for s in srcs]
        dst.value.index_copy_(0, idx, from_pixels(self.fn(*args)))
        return 0


class Gathered:
    """A step whose output pixel reads a fixed table of input pixels: ``taps`` ``(Ho * Wo, K)`` flat
    input indices, with ``weights`` (a weighted sum: resizes) or without (a max: max-pool)."""

    kind = "gathered"

    def __init__(self, src: int, dst: int, in_hw: tuple[int, int], out_hw: tuple[int, int], taps: Tensor,
                 weights: Tensor | None, reach: Reach) -> None:
        self.src, self.dst, self.in_hw, self.out_hw = src, dst, in_hw, out_hw
        self.taps, self.weights, self._reach = taps, weights, reach

    def key(self, env: list[Slot]) -> None:
        pass

    def delta(self, env: list[Slot]) -> int:
        src, dst = env[self.src], env[self.dst]
        if src.changed is None:
            dst.changed = None
            return 0
        changed = Changed.all(self.out_hw) if src.changed.everything else \
            Changed.of_idx(self.out_hw, self._reach(src.changed.idx))
        dst.changed = changed
        if changed is None:
            return 0
        idx = changed.idx
        k = self.taps.shape[1]
        vals = src.value.index_select(0, self.taps[idx].reshape(-1)).view(idx.numel(), k, -1)
        if self.weights is None:
            out = vals.amax(1)
        else:
            out = torch.einsum("nkc,nk->nc", vals, self.weights[idx])
        dst.value.index_copy_(0, idx, out)
        return 0


def max_pool(src: int, dst: int, attrs: dict, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> Gathered | None:
    """A max-pool step as a `Gathered` (taps clamped into the image: every window holds an image
    pixel, so a clamped tap repeats one of its own pixels and the max is unchanged)."""
    kernel = tuple(attrs["kernel_shape"])
    stride = tuple(attrs.get("strides", (1, 1)))
    if len(kernel) != 2 or any(d != 1 for d in attrs.get("dilations", (1, 1))):
        return None
    top, left = attrs.get("pads", [0, 0, 0, 0])[:2]  # ceil mode and the far pads: out_hw says them
    axes = []
    for n_in, n_out, k, s, p in zip(in_hw, out_hw, kernel, stride, (top, left), strict=True):
        starts = torch.arange(n_out) * s - p
        axes.append((starts[:, None] + torch.arange(k)[None, :]).clamp(0, n_in - 1))
    ty, tx = axes
    taps = (ty[:, None, :, None] * in_hw[1] + tx[None, :, None, :]).reshape(out_hw[0] * out_hw[1], -1)
    reads = []
    for t, n_in in ((ty, in_hw[0]), (tx, in_hw[1])):
        r = torch.zeros(t.shape[0], n_in, dtype=torch.bool)
        r.scatter_(1, t, True)
        reads.append(r)
    return Gathered(src, dst, in_hw, out_hw, taps, None, Reach(reads[0], reads[1], in_hw, out_hw))


@torch.no_grad()
def resize(fn: Callable[[Tensor], Tensor], src: int, dst: int, in_hw: tuple[int, int],
           out_hw: tuple[int, int]) -> Gathered | None:
    """A resize step as a `Gathered`, its taps and weights read off the step itself: one-hot rows
    (columns) in, the interpolation weights out, per axis. None when the step is not such a
    separable linear map (checked on a random input)."""
    tables = []
    for axis, (n_in, n_out) in enumerate(zip(in_hw, out_hw, strict=True)):
        w = torch.zeros(n_out, n_in)
        for c0 in range(0, n_in, 16):
            c = torch.arange(c0, min(n_in, c0 + 16))
            probe = torch.zeros(1, c.numel(), *in_hw)
            if axis == 0:
                probe[0, torch.arange(c.numel()), c, :] = 1.0
                w[:, c] = fn(probe)[0, :, :, 0].t()
            else:
                probe[0, torch.arange(c.numel()), :, c] = 1.0
                w[:, c] = fn(probe)[0, :, 0, :].t()
        tables.append(w)
    wy, wx = tables
    x = torch.rand(1, 2, *in_hw)
    if fn(x).shape[-2:] != out_hw or not torch.allclose(torch.einsum("yi,ncij,xj->ncyx", wy, x, wx), fn(x), atol=1e-5):
        return None
    ky, kx = int((wy != 0).sum(1).max()), int((wx != 0).sum(1).max())
    iy = torch.topk(wy.abs(), ky, dim=1).indices  # (Ho, ky): the nonzero taps (zeros pad short rows)
    ix = torch.topk(wx.abs(), kx, dim=1).indices
    vy, vx = wy.gather(1, iy), wx.gather(1, ix)
    taps = (iy[:, None, :, None] * in_hw[1] + ix[None, :, None, :]).reshape(out_hw[0] * out_hw[1], ky * kx)
    weights = (vy[:, None, :, None] * vx[None, :, None, :]).reshape(out_hw[0] * out_hw[1], ky * kx)
    return Gathered(src, dst, in_hw, out_hw, taps, weights, Reach(wy != 0, wx != 0, in_hw, out_hw))


class Dense:
    """A step the runtime cannot tile: run whole on full maps when any input changed; its output
    counts as changed where its value moved. ``conv``: a conv module the step calls (transposed,
    grouped convs the tile path does not take), whose MACs it pays in full."""

    kind = "dense"

    def __init__(self, fn: Callable[..., Any], ins: Sequence[int], outs: Sequence[int], conv: Any = None,
                 macs: int = 0) -> None:
        self.fn, self.ins, self.outs, self.conv, self.macs = fn, tuple(ins), tuple(outs), conv, macs

    def key(self, env: list[Slot]) -> None:
        pass

    def delta(self, env: list[Slot]) -> int:
        srcs = [env[i] for i in self.ins]
        if not any(s.changed is not None or s.dirty for s in srcs):
            for o in self.outs:
                env[o].changed, env[o].dirty = None, False
            return 0
        args = [s.nchw for s in srcs]
        r = self.fn(self.conv, args[0]) if self.conv is not None else self.fn(*args)
        values = (r,) if len(self.outs) == 1 else tuple(r)
        for o, v in zip(self.outs, values, strict=True):
            dst = env[o]
            if dst.spatial and isinstance(v, Tensor) and v.dim() == 4 and tuple(v.shape[-2:]) == dst.hw:
                rows = to_rows(v).clone()  # a clone: the step may return (a view of) its input
                moved = (rows != dst.value).any(1)
                dst.value = rows
                dst.changed = Changed(dst.hw, moved) if bool(moved.any()) else None
            else:
                same = isinstance(v, Tensor) and isinstance(dst.value, Tensor) and v.shape == dst.value.shape \
                    and bool(torch.equal(v, dst.value))
                dst.value, dst.dirty, dst.changed = v, not same, None
        return self.macs


class Alias:
    """A step that returns its input as it is: its output slot holds the input's map (the same
    tensor) and the input's changes."""

    kind = "alias"

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst

    def key(self, env: list[Slot]) -> None:
        env[self.dst].value = env[self.src].value

    def delta(self, env: list[Slot]) -> int:
        src, dst = env[self.src], env[self.dst]
        dst.value, dst.changed, dst.dirty = src.value, src.changed, src.dirty
        return 0


class Fused:
    """A step done by another handler as part of its own work (a ReLU in its conv's write)."""

    kind = "fused"

    def __init__(self, into: str) -> None:
        self.into = into

    def key(self, env: list[Slot]) -> None:
        pass

    def delta(self, env: list[Slot]) -> int:
        return 0
