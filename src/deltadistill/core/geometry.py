"""Exact shape and MAC arithmetic of a Conv2d, shared by students, the MAC counter and conversion."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a Conv2d except its weights, with padding resolved to explicit pixels."""

    cin: int
    cout: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    padding_mode: str

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        kh, kw = conv.kernel_size
        dh, dw = conv.dilation
        if isinstance(conv.padding, str):
            if conv.padding == "valid":
                pad = (0, 0, 0, 0)
            else:  # 'same': PyTorch puts the odd pixel at the end (bottom/right)
                th, tw = dh * (kh - 1), dw * (kw - 1)
                pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            ph, pw = conv.padding
            pad = (ph, ph, pw, pw)
        return cls(conv.in_channels, conv.out_channels, conv.groups, (kh, kw), tuple(conv.stride),
                   (dh, dw), pad, conv.padding_mode)

    @property
    def symmetric(self) -> bool:
        t, b, left, r = self.pad
        return t == b and left == r

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin

    def out_hw(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        return (
            _out(in_hw[0], self.kernel[0], self.stride[0], self.dilation[0], self.pad[0] + self.pad[1]),
            _out(in_hw[1], self.kernel[1], self.stride[1], self.dilation[1], self.pad[2] + self.pad[3]),
        )

    def macs(self, in_hw: tuple[int, int]) -> int:
        """Multiply-accumulates of one image through this conv (bias adds not counted)."""
        ho, wo = self.out_hw(in_hw)
        return self.cout * (self.cin // self.groups) * self.kernel[0] * self.kernel[1] * ho * wo


def _out(n: int, k: int, s: int, d: int, p: int) -> int:
    return (n + p - d * (k - 1) - 1) // s + 1


def conv_macs(conv: nn.Conv2d, in_hw: tuple[int, int]) -> int:
    return ConvGeometry.of(conv).macs(in_hw)


def explicit_pad(x: Tensor, pad: tuple[int, int, int, int], mode: str) -> Tensor:
    """Pad ``x`` by (top, bottom, left, right) the way a Conv2d with this padding_mode would."""
    if not any(pad):
        return x
    t, b, left, r = pad
    return F.pad(x, (left, r, t, b), mode="constant" if mode == "zeros" else mode)
