"""Where a frame changed: active tiles against a reference, and the box a region runtime recomputes.

A tile is active when some pixel in it moved by more than ``threshold`` (in the frame's own units,
largest over channels) from the reference, the input last used where that tile's output was
computed. The box around the active tiles grows by a margin (the context a network needs to get
the box's inside right), snaps to the network's total stride (so the crop's conv grid is the full
frame's), and rounds its sides up to a bucket (so only a few crop shapes ever run, each compiled
once). Only the box's inside, the part at least a margin away from any cut edge, is pasted back.
With ``reach`` the inside grows too, to the outputs that a change in the box moves: with reach and
margin both at least the network's receptive-field radius, the pasted outputs are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Box:
    """A rectangle in input pixels: rows ``y0:y1``, columns ``x0:x1``."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def size(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def area(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def scaled(self, sy: float, sx: float) -> Box:
        """The same box on a map ``sy`` by ``sx`` times the input's size (an output at stride 1/s)."""
        return Box(round(self.y0 * sy), round(self.x0 * sx), round(self.y1 * sy), round(self.x1 * sx))

    def shifted(self, dy: int, dx: int) -> Box:
        return Box(self.y0 + dy, self.x0 + dx, self.y1 + dy, self.x1 + dx)


@dataclass(frozen=True)
class Crop:
    """What a delta frame recomputes: the crop the network runs on and the inside it pastes."""

    crop: Box
    inside: Box


def active_tiles(x: Tensor, ref: Tensor, tile: int, threshold: float) -> Tensor:
    """Bool ``(rows, cols)``: tiles of ``tile`` pixels where ``|x - ref|`` passes ``threshold`` somewhere.

    ``x`` and ``ref`` are ``(1, C, H, W)``; edge tiles may be partial. In numpy, on one thread: torch's
    thread pool, woken for a few small ops between two OpenVINO calls, fights OpenVINO's for the cores.
    """
    if x.is_contiguous(memory_format=torch.channels_last) and ref.is_contiguous(memory_format=torch.channels_last):
        a, b, axis = x.detach().permute(0, 2, 3, 1).numpy()[0], ref.detach().permute(0, 2, 3, 1).numpy()[0], 2
    else:  # reduce over the axis that memory holds outermost: a strided walk costs 10x here
        a, b, axis = x.detach().contiguous().numpy()[0], ref.detach().contiguous().numpy()[0], 0
    diff = np.abs(a - b)
    planes = [diff[..., c] for c in range(diff.shape[2])] if axis == 2 else list(diff)
    d = planes[0].copy()
    for p in planes[1:]:  # one vectorised maximum per channel: numpy's max over a 3-long axis is 15x slower
        np.maximum(d, p, out=d)
    h, w = d.shape
    rows, cols = -(-h // tile), -(-w // tile)
    if (rows * tile, cols * tile) != (h, w):
        d = np.pad(d, ((0, rows * tile - h), (0, cols * tile - w)))
    return torch.from_numpy(d.reshape(rows, tile, cols, tile).max(axis=(1, 3)) > threshold)


def _span(lo: int, hi: int, margin: int, align: int, bucket: int, limit: int) -> tuple[int, int, int, int]:
    """One axis of `crop_around`: (crop start, crop end, inside start, inside end)."""
    a = max(0, (lo - margin) // align * align)
    b = min(limit, -(-(hi + margin) // align) * align)
    length = min(limit, -(-(b - a) // bucket) * bucket)
    a = min(a, limit - length)  # grown to its bucket: shift it back inside the frame
    b = a + length
    return a, b, (a + margin if a > 0 else 0), (b - margin if b < limit else limit)


def check_geometry(size: tuple[int, int], margin: int, align: int, bucket: tuple[int, int]) -> None:
    """``margin``, ``bucket`` (per axis) and the frame's ``size`` must be multiples of ``align``, so that
    every edge a crop and its inside have lies on the network's stride grid."""
    for name, v in (("margin", margin), ("bucket rows", bucket[0]), ("bucket cols", bucket[1]),
                    ("height", size[0]), ("width", size[1])):
        if v <= 0 and name != "margin" or v < 0 or v % align:
            raise ValueError(f"{name} {v} is not a non-negative multiple of the stride {align}")


def crop_around(box: Box, size: tuple[int, int], margin: int, align: int, bucket: tuple[int, int],
                reach: int = 0) -> Crop:
    """The crop that recomputes ``box`` (in input pixels) and ``reach`` pixels around it (the outputs a
    change there moves), grown by the margin (the context those outputs need), snapped, bucketed."""
    box = Box(max(0, box.y0 - reach), max(0, box.x0 - reach), min(size[0], box.y1 + reach),
              min(size[1], box.x1 + reach))
    cy0, cy1, iy0, iy1 = _span(box.y0, box.y1, margin, align, bucket[0], size[0])
    cx0, cx1, ix0, ix1 = _span(box.x0, box.x1, margin, align, bucket[1], size[1])
    return Crop(Box(cy0, cx0, cy1, cx1), Box(iy0, ix0, iy1, ix1))


def _union(a: Box, b: Box) -> Box:
    return Box(min(a.y0, b.y0), min(a.x0, b.x0), max(a.y1, b.y1), max(a.x1, b.x1))


def _overlap(a: Box, b: Box) -> bool:
    return a.y0 < b.y1 and b.y0 < a.y1 and a.x0 < b.x1 and b.x0 < a.x1


def plan_crops(active: Tensor, tile: int, size: tuple[int, int], *, margin: int, align: int,
               bucket: tuple[int, int], reach: int = 0, min_tiles: int = 1, max_crops: int = 4) -> list[Crop]:
    """A few crops around the groups of active tiles (8-connected), none overlapping another.

    Why several: on a fixed camera, one moving object plus a few flickering tiles elsewhere would
    otherwise make one box of nearly the whole frame. A group of fewer than ``min_tiles`` tiles is
    left out (its output stays as last computed; the reference stays too, so it is caught once it
    grows or at the next keyframe). Two crops that overlap, or that cost no more as one, are merged,
    and then the cheapest merges until at most ``max_crops`` remain.
    """
    check_geometry(size, margin, align, bucket)
    grid = np.ascontiguousarray(active.numpy().astype(np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(grid, connectivity=8)
    boxes = [Box(int(y) * tile, int(x) * tile, min(size[0], int(y + h) * tile), min(size[1], int(x + w) * tile))
             for x, y, w, h, count in stats[1:n] if count >= min_tiles]
    crops = [(b, crop_around(b, size, margin, align, bucket, reach)) for b in boxes]
    while len(crops) > 1:
        best: tuple[int, int, int, Crop] | None = None
        for i in range(len(crops)):
            for j in range(i + 1, len(crops)):
                (bi, ci), (bj, cj) = crops[i], crops[j]
                merged = crop_around(_union(bi, bj), size, margin, align, bucket, reach)
                extra = merged.crop.area - ci.crop.area - cj.crop.area
                must = _overlap(ci.crop, cj.crop) or extra <= 0 or len(crops) > max_crops
                if must and (best is None or extra < best[0]):
                    best = (extra, i, j, merged)
        if best is None:
            break
        _, i, j, merged = best
        union = _union(crops[i][0], crops[j][0])
        crops = [c for k, c in enumerate(crops) if k not in (i, j)] + [(union, merged)]
    return sorted((c for _, c in crops), key=lambda c: (c.crop.y0, c.crop.x0))
