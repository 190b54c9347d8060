"""Persistent per-slot maps for the tile runtime, and the per-frame sets of pixels that changed.

A feature map of batch 1 is kept as ``rows``: ``(H * W, C)``, one row per pixel (channels last). A
set of pixels is then an index tensor, a gather is ``index_select(0, idx)`` and a write is
``index_copy_(0, idx, rows)``: the cost of both follows the set's size, not the map's. The same
storage viewed as NCHW (`Slot.nchw`) is a channels-last tensor, so a dense op runs on it with no copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """torch's thread count set to ``n`` within the block (None: left alone)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def to_rows(x: Tensor) -> Tensor:
    """``(1, C, H, W)`` -> ``(H * W, C)`` contiguous (free when ``x`` is channels-last)."""
    return x[0].permute(1, 2, 0).reshape(x.shape[2] * x.shape[3], x.shape[1]).contiguous()


def rows_view(rows: Tensor, hw: tuple[int, int]) -> Tensor:
    """``(H * W, C)`` rows as a ``(1, C, H, W)`` channels-last view (no copy)."""
    return rows.view(1, hw[0], hw[1], rows.shape[1]).permute(0, 3, 1, 2)


def as_pixels(rows: Tensor) -> Tensor:
    """Gathered rows ``(n, C)`` as ``(1, C, n, 1)``, so an NCHW element-wise step runs on them as written
    (its constants broadcast as ``(1, C, 1, 1)``)."""
    return rows.t().unsqueeze(0).unsqueeze(-1)


def from_pixels(x: Tensor) -> Tensor:
    """The inverse of `as_pixels`: ``(1, C, n, 1)`` -> ``(n, C)``."""
    return x[0, :, :, 0].t()


@dataclass
class Changed:
    """Which pixels of a map were rewritten this frame: all, or a set held as ascending flat indices
    (``idx``) or a flat bool mask ``(H * W,)``; each made from the other only when a reader asks, so
    a chain of convs passes index sets and never touches a whole map."""

    hw: tuple[int, int]
    mask: Tensor | None = None
    everything: bool = False
    _idx: Tensor | None = field(default=None, repr=False)

    @classmethod
    def all(cls, hw: tuple[int, int]) -> Changed:
        return cls(hw, everything=True)

    @classmethod
    def of_idx(cls, hw: tuple[int, int], idx: Tensor) -> Changed | None:
        """The set of ascending, distinct flat indices ``idx`` (None when empty)."""
        if idx.numel() == 0:
            return None
        return cls(hw, _idx=idx)

    @property
    def n(self) -> int:
        return self.hw[0] * self.hw[1] if self.everything else int(self.idx.numel())

    @property
    def idx(self) -> Tensor:
        """Flat indices of the changed pixels, ascending."""
        if self._idx is None:
            if self.everything:
                self._idx = torch.arange(self.hw[0] * self.hw[1])
            else:
                assert self.mask is not None
                self._idx = self.mask.nonzero().view(-1)
        return self._idx

    def bool_mask(self) -> Tensor:
        if self.everything:
            return torch.ones(self.hw[0] * self.hw[1], dtype=torch.bool)
        if self.mask is None:
            mask = torch.zeros(self.hw[0] * self.hw[1], dtype=torch.bool)
            mask[self.idx] = True
            self.mask = mask
        return self.mask

    def share(self) -> float:
        return self.n / max(1, self.hw[0] * self.hw[1])


def inverse_taps(reads: Tensor) -> Tensor:
    """Per axis, ``reads`` ``(n_out, n_in)`` bool (output coordinate o reads input coordinate i) turned
    around: ``(n_in, R)`` output coordinates reading each input coordinate, padded with -1."""
    n_out, n_in = reads.shape
    r = max(1, int(reads.sum(0).max()))
    inv = torch.full((n_in, r), -1, dtype=torch.long)
    for i in range(n_in):
        o = reads[:, i].nonzero().view(-1)
        inv[i, :o.numel()] = o
    return inv


class Reach:
    """The output pixels that read a set of input pixels, for an op whose reads are separable (a conv's
    window, a pool's, an interpolation's taps): from the input indices alone, by per-axis tables and
    one scatter into a scratch mask that is cleared after; the cost follows the set, not the map."""

    def __init__(self, reads_y: Tensor, reads_x: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        self.in_hw, self.out_hw = in_hw, out_hw
        self.inv_y, self.inv_x = inverse_taps(reads_y), inverse_taps(reads_x)
        self.scratch = torch.zeros(out_hw[0] * out_hw[1], dtype=torch.bool)

    def __call__(self, idx: Tensor) -> Tensor:
        """Ascending flat output indices read from flat input indices ``idx``."""
        w = self.in_hw[1]
        oy, ox = self.inv_y[idx // w], self.inv_x[idx % w]           # (n, Ry), (n, Rx)
        cand = oy[:, :, None] * self.out_hw[1] + ox[:, None, :]
        ok = (oy >= 0)[:, :, None] & (ox >= 0)[:, None, :]
        self.scratch[cand[ok]] = True
        out = self.scratch.nonzero().view(-1)
        self.scratch[out] = False
        return out


def window_reads(n_in: int, n_out: int, k: int, stride: int, dilation: int, pad: int) -> Tensor:
    """``(n_out, n_in)``: output o of a window op reads inputs ``o * stride - pad + j * dilation``."""
    reads = torch.zeros(n_out, n_in, dtype=torch.bool)
    for o in range(n_out):
        for j in range(k):
            i = o * stride - pad + j * dilation
            if 0 <= i < n_in:
                reads[o, i] = True
    return reads


def union(hw: tuple[int, int], sets: list[Changed | None]) -> Changed | None:
    """The pixels changed in any of ``sets`` (all of the same size)."""
    real = [s for s in sets if s is not None]
    if not real:
        return None
    if any(s.everything for s in real):
        return Changed.all(hw)
    if len(real) == 1:
        return real[0]
    mask = real[0].bool_mask().clone()
    for s in real[1:]:
        mask |= s.bool_mask()
    return Changed(hw, mask)


@dataclass
class Slot:
    """One slot's value as the runtime keeps it: spatial ``rows`` and their size, or any other value
    (constants, 1x1 gates, shapes) as it is; and what changed this frame."""

    value: Any = None
    hw: tuple[int, int] | None = None  # set for spatial maps of batch 1 held as rows
    changed: Changed | None = None
    #: a non-spatial value that changed this frame (a 1x1 gate, a shape): its readers see everything change
    dirty: bool = False

    @property
    def spatial(self) -> bool:
        return self.hw is not None

    @property
    def nchw(self) -> Any:
        """The value as the graph's steps see it."""
        return rows_view(self.value, self.hw) if self.hw is not None else self.value

    @classmethod
    def of(cls, x: Any) -> Slot:
        """Keep a keyframe value: batch-1 4-D maps larger than 1x1 as rows, everything else as it is."""
        if isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] == 1 and x.shape[2] * x.shape[3] > 1 \
                and x.is_floating_point():
            return cls(to_rows(x), (int(x.shape[2]), int(x.shape[3])))
        return cls(x)
