"""Numerical building blocks that reproduce TensorFlow semantics in PyTorch (NCHW).

These are the places where TF and PyTorch differ and a naive port silently loses parity:
``SAME`` padding (TF puts the odd extra pixel bottom/right), the legacy bilinear resize
(``align_corners=False, half_pixel_centers=False`` samples at ``dst * in/out``, not at pixel
centres), average pooling that excludes padding, and Python-style floor division.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF ``SAME`` padding (before, after) along one axis; the extra pixel of an odd total goes after."""
    out = math.ceil(size / stride)
    eff_k = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + eff_k - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1),
             value: float = 0.0) -> Tensor:
    """Pad an NCHW tensor the way TF ``SAME`` would (no-op when nothing is needed)."""
    top, bottom = same_pads(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_pads(x.shape[-1], kernel[1], stride[1], dilation[1])
    if top == bottom == left == right == 0:
        return x
    if x.dim() != 4 or torch.compiler.is_compiling():
        # compiled or exported: one pad op, which inductor fuses and ONNX runs as Pad; the copy below
        # would export as a ScatterND between two Transposes per conv, 3-7x slower in onnxruntime
        return F.pad(x, (left, right, top, bottom), value=value)
    # F.pad fills the whole output before copying x in: on large maps that fill costs as much as the
    # copy. Copy x into an empty tensor of x's layout and fill only the border strips.
    n, c, h, w = x.shape
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if cl else torch.contiguous_format)
    out[:, :, top:top + h, left:left + w] = x
    if top:
        out[:, :, :top].fill_(value)
    if bottom:
        out[:, :, top + h:].fill_(value)
    if left:
        out[:, :, top:top + h, :left].fill_(value)
    if right:
        out[:, :, top:top + h, left + w:].fill_(value)
    return out


@lru_cache(maxsize=64)
def _resize_taps(in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices (lo, hi) and lerp weight for one axis, computed in float32 like TF."""
    if align_corners and out_size > 1:
        scale = (in_size - 1) / (out_size - 1)
    else:
        scale = in_size / out_size
    dst = torch.arange(out_size, dtype=torch.float32)
    scale_t = torch.tensor(scale, dtype=torch.float32)
    src = (dst + 0.5) * scale_t - 0.5 if half_pixel_centers else dst * scale_t
    floor = torch.floor(src)
    lo = floor.clamp(min=0).long()
    hi = torch.ceil(src).clamp(max=in_size - 1).long()
    lo = lo.clamp(max=in_size - 1)
    frac = src - floor
    return lo, hi, frac


def resize_bilinear(x: Tensor, size: tuple[int, int], align_corners: bool = False,
                    half_pixel_centers: bool = False) -> Tensor:
    """TF ``ResizeBilinear`` on NCHW input, all three coordinate conventions.

    ``half_pixel_centers=True`` equals torch's ``align_corners=False`` and takes the fast path; the
    legacy TF1 mode (both flags False) is computed by explicit gathers: top-left + (top-right -
    top-left) * fx, then the same between rows, in TF's order of operations.
    """
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = x.shape[-2], x.shape[-1]
    if half_pixel_centers and not align_corners:
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    if align_corners and out_h > 1 and out_w > 1:
        return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=True)
    if not align_corners and not half_pixel_centers and out_h % in_h == 0 and out_w % in_w == 0:
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            nhwc = x.permute(0, 2, 3, 1)  # work in the memory order we have: the result stays channels_last
            up = _legacy_upsample(_legacy_upsample(nhwc, out_w // in_w, 2), out_h // in_h, 1)
            return up.permute(0, 3, 1, 2)
        return _legacy_upsample(_legacy_upsample(x, out_w // in_w, 3), out_h // in_h, 2)
    y0, y1, fy = _resize_taps(in_h, out_h, align_corners, half_pixel_centers)
    x0, x1, fx = _resize_taps(in_w, out_w, align_corners, half_pixel_centers)
    dev = x.device
    y0, y1, x0, x1 = y0.to(dev), y1.to(dev), x0.to(dev), x1.to(dev)
    fy = fy.to(device=dev, dtype=x.dtype).view(-1, 1)
    fx = fx.to(device=dev, dtype=x.dtype)
    r0 = x.index_select(-2, y0)
    r1 = x.index_select(-2, y1)
    top = r0.index_select(-1, x0)
    top = top + (r0.index_select(-1, x1) - top) * fx
    bottom = r1.index_select(-1, x0)
    bottom = bottom + (r1.index_select(-1, x1) - bottom) * fx
    return top + (bottom - top) * fy


def _legacy_upsample(x: Tensor, s: int, dim: int) -> Tensor:
    """Legacy TF bilinear upsampling by an integer factor along one axis, without gathers.

    Output ``s*i + j`` is ``x[i] + (x[i+1] - x[i]) * j/s`` (the last row repeats), as TF computes it.
    Width first, then height: TF's own order of operations.
    """
    if s == 1:
        return x
    n = x.shape[dim]
    nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim) if n > 1 else x
    diff = nxt - x
    parts = [x] + [x + diff * (j / s) for j in range(1, s)]
    return torch.stack(parts, dim + 1).flatten(dim, dim + 1)


def max_pool(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: str) -> Tensor:
    """TF ``MaxPool``: padded positions never win (``-inf``)."""
    if padding == "SAME":
        top, bottom = same_pads(x.shape[-2], kernel[0], stride[0])
        left, right = same_pads(x.shape[-1], kernel[1], stride[1])
        if top == bottom and left == right and top <= kernel[0] // 2 and left <= kernel[1] // 2:
            return F.max_pool2d(x, kernel, stride, padding=(top, left))
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


def avg_pool(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: str) -> Tensor:
    """TF ``AvgPool``: with ``SAME`` the divisor counts only real (unpadded) pixels.

    Large windows (the selfie model pools 16x16 .. 128x128) lose ~1e-5 relative precision with a plain
    float32 running sum, visibly more than TF.js (which sums in JS doubles). A window covering the whole
    map becomes ``mean`` (pairwise summation); other large windows accumulate in float64.
    """
    if padding == "VALID" and tuple(x.shape[-2:]) == tuple(kernel):
        return x.mean(dim=(-2, -1), keepdim=True)
    if kernel[0] * kernel[1] >= 64 and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return avg_pool(x.double(), kernel, stride, padding).to(x.dtype)
    if padding == "SAME":
        top, bottom = same_pads(x.shape[-2], kernel[0], stride[0])
        left, right = same_pads(x.shape[-1], kernel[1], stride[1])
        if top or bottom or left or right:
            pads = (left, right, top, bottom)
            summed = F.avg_pool2d(F.pad(x, pads), kernel, stride, divisor_override=1)
            ones = F.pad(torch.ones_like(x[:1, :1]), pads)
            count = F.avg_pool2d(ones, kernel, stride, divisor_override=1)
            return summed / count
    return F.avg_pool2d(x, kernel, stride)


def floor_div(a: Tensor, b: Tensor) -> Tensor:
    """TF ``FloorDiv`` (rounds toward -inf for ints and floats)."""
    return torch.div(a, b, rounding_mode="floor")


def floor_mod(a: Tensor, b: Tensor) -> Tensor:
    """TF ``FloorMod`` (result has the sign of the divisor, like Python's %)."""
    return torch.remainder(a, b)


# TF op name -> torch function, for the element-wise ops the graph executor maps one-to-one.
UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Identity": lambda x: x,
    "Relu": torch.relu,
    "Relu6": lambda x: F.hardtanh(x, 0.0, 6.0),
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Elu": F.elu,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Sqrt": torch.sqrt,
    "Rsqrt": torch.rsqrt,
    "Square": torch.square,
    "Abs": torch.abs,
    "Floor": torch.floor,
}

BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "AddV2": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "RealDiv": torch.div,
    "Div": torch.div,
    "Maximum": torch.maximum,
    "Minimum": torch.minimum,
    "Equal": torch.eq,
    "FloorDiv": floor_div,
    "FloorMod": floor_mod,
    "Pow": torch.pow,
    "SquaredDifference": lambda a, b: torch.square(a - b),
}

# Fused conv activations run in place: they only ever see a conv's freshly made output, so this saves
# one allocation and one pass over memory per conv.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu_,
    "Relu6": lambda x: F.hardtanh_(x, 0.0, 6.0),
    "Sigmoid": torch.sigmoid_,
    "Tanh": torch.tanh_,
    "Elu": F.elu_,
}
