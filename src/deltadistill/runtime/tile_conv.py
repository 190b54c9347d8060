"""One conv of the tile runtime: its committed input, the threshold test, and the two kernels.

The conv keeps ``X``, the input it last computed from, zero-padded and as rows. On a delta frame:

1. the candidates are the input pixels rewritten this frame; a candidate is *active* when its mean
   ``|x_t - X|`` over channels passes the layer's threshold (the model's `SparseStudent` rule, against
   the last committed value rather than the keyframe's, so a pixel that moved once is paid once);
2. ``X`` takes the active pixels' new values;
3. the outputs whose window holds an active pixel (stride, dilation and padding respected) are
   recomputed from ``X``: gathered 3x3 patches (im2col) and one matmul, in chunks that fit the cache;
   or, when they fill at least ``1 / box`` of their bounding box, the stock conv over that box (no
   gather: the box's extra outputs are rewritten with the values they already hold, as ``X`` did not
   move there); or the stock dense conv on ``X`` when their share passes ``dense_level``.

Recomputing from ``X`` rather than adding deltas means nothing accumulates: an output is always the
conv of a stored input, and a keyframe refills both.

``reference="keyframe"`` is the sparse student's rule instead: a pixel is active when it moved past the
threshold against the *keyframe's* input, and ``X`` is the keyframe's input with the active pixels'
current values, so an output is what `SparseStudent` gives (``conv(x_k + mask * (x_t - x_k))``).
Only the pixels of ``X`` that differ from the last frame's are written, and only the outputs they
reach recomputed: the same outputs as the student, at the cost of what moved since the last frame.

A ReLU that is the conv's only reader is fused (``relu``): applied to the computed rows before the
write, so the pre-activation map is never kept. A channel concat whose only reader is the conv is
fused too (``parts``): the conv reads its input pixels from the concat's inputs, so the concat's map
is never built, neither on a keyframe nor on a delta frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tile_maps import Changed, Reach, Slot, rows_view, threads, to_rows, union, window_reads

#: bytes of gathered patches per matmul: larger chunks fall out of L2 (the prototype's 20-40% jump)
CHUNK_BYTES = 1 << 20
#: MACs of one conv's gathered matmuls from which they run at ``mm_threads`` (a parallel region's
#: start and barrier cost ~0.1 ms here, more on a loaded host: worth it only for large ones)
PARALLEL_MACS = 20_000_000


def conv_pads(conv: nn.Conv2d, attrs: dict, in_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` zero padding of a graph conv step, or None when unknown."""
    mode = attrs.get("pad_mode", "module")
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    if mode == "module":
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            return None
        ph, pw = conv.padding
        return ph, ph, pw, pw
    if mode == "explicit":
        left, right, top, bottom = attrs["pads"]
        return top, bottom, left, right
    if mode in ("same_upper", "same_lower"):
        out = []
        for size, k, s, d in zip(in_hw, (kh, kw), (sh, sw), (dh, dw), strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if mode == "same_upper" else (big, small))
        return out[0][0], out[0][1], out[1][0], out[1][1]
    return None


class TileConv:
    """A conv step run over the active pixels of its input (see the module docstring)."""

    kind = "conv"

    def __init__(self, name: str, conv: nn.Conv2d, ins: Sequence[int], outs: Sequence[int],
                 pads: tuple[int, int, int, int], in_hw: tuple[int, int], out_hw: tuple[int, int],
                 threshold: float, weights: Tensor | None, dense_level: float, tile: int = 1,
                 reference: str = "last") -> None:
        if reference not in ("last", "keyframe"):
            raise ValueError(f"reference must be 'last' or 'keyframe', got {reference!r}")
        self.name, self.conv, self.reference = name, conv, reference
        #: a ReLU fused into the write (set by the runtime when the ReLU is the conv's only reader)
        self.relu = False
        #: threads for large gathered matmuls (None: the delta frame's)
        self.mm_threads: int | None = None
        #: the stock conv over the reached outputs' bounding box when it is at most ``box`` times their count
        self.box = 0.0
        self.weight_cl = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        #: the slots of a fused concat's inputs (channels in order), read instead of ``src``
        self.parts: tuple[int, ...] | None = None
        self.src, self.dst = ins[0], outs[0]
        self.threshold, self.weights, self.dense_level, self.tile = threshold, weights, dense_level, tile
        self.in_hw, self.out_hw, self.pads = in_hw, out_hw, pads
        t, b, left, r = pads
        h, w = in_hw
        self.padded_hw = (h + t + b, w + left + r)
        hp, wp = self.padded_hw
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        self.grouped = conv.groups != 1
        ys, xs = torch.arange(h), torch.arange(w)
        #: input pixel -> its row in the padded map
        self.pad_of = ((ys[:, None] + t) * wp + (xs[None, :] + left)).reshape(-1)
        oy, ox = torch.arange(out_hw[0]), torch.arange(out_hw[1])
        #: output pixel -> padded row of its window's first tap; tap k -> offset from there
        self.base = ((oy[:, None] * sh) * wp + ox[None, :] * sw).reshape(-1)
        self.offsets = (torch.arange(kh)[:, None] * dh * wp + torch.arange(kw)[None, :] * dw).reshape(-1)
        wt = conv.weight.detach()
        self.weight = wt
        self.bias = conv.bias.detach() if conv.bias is not None else None
        self.matrix = wt.permute(2, 3, 1, 0).reshape(kh * kw * wt.shape[1], wt.shape[0]).contiguous()
        self.macs_per_pixel = wt.shape[0] * wt.shape[1] * kh * kw
        self.chunk = max(16, CHUNK_BYTES // (4 * self.matrix.shape[0]))
        self.x: Tensor | None = None  # the committed input, padded, as rows
        self.x_key: Tensor | None = None  # the keyframe's input, as rows (reference="keyframe")
        self.on = torch.zeros(0, dtype=torch.bool)  # (reference="keyframe", set by key())
        self._reach = Reach(window_reads(h, out_hw[0], kh, sh, dh, t), window_reads(w, out_hw[1], kw, sw, dw, left),
                            in_hw, out_hw)
        #: what the last delta frame did: active input pixels, computed outputs, and whether densely
        self.last: tuple[int, int, bool] = (0, 0, False)
        self.last_box = False  # whether the last delta frame ran the stock conv over a bounding box

    # ------------------------------------------------------------------ keyframe
    def key(self, env: list[Slot]) -> None:
        t, b, left, r = self.pads
        if self.parts is None:
            src = env[self.src]
            nchw, rows = src.nchw, src.value
        else:
            rows = torch.cat([env[p].value for p in self.parts], 1)
            nchw = rows_view(rows, self.in_hw)
        self.x = to_rows(F.pad(nchw, (left, r, t, b))) if any(self.pads) else rows.clone()
        if self.reference == "keyframe":
            self.x_key = rows.clone() if self.parts is None else rows
            #: per input pixel, whether X holds its current value (it passed the threshold) or the keyframe's
            self.on = torch.zeros(self.in_hw[0] * self.in_hw[1], dtype=torch.bool)

    def changed(self, env: list[Slot]) -> Changed | None:
        """The input pixels rewritten this frame."""
        if self.parts is None:
            return env[self.src].changed
        return union(self.in_hw, [env[p].changed for p in self.parts])

    def current(self, env: list[Slot], idx: Tensor | None = None) -> Tensor:
        """The input's current rows (at ``idx``, or all)."""
        parts = (self.src,) if self.parts is None else self.parts
        got = [env[p].value if idx is None else env[p].value.index_select(0, idx) for p in parts]
        return got[0] if len(got) == 1 else torch.cat(got, 1)

    def dense(self) -> Tensor:
        """The whole output from the committed input, as rows (the stock kernel, channels-last)."""
        assert self.x is not None
        c = self.conv
        out = F.conv2d(rows_view(self.x, self.padded_hw), self.weight, self.bias, c.stride, 0, c.dilation, c.groups)
        return to_rows(out)

    def _write(self, dst: Slot, outs: Tensor | None, rows: Tensor) -> None:
        if self.relu:
            rows = rows.relu_()
        if outs is None:
            dst.value = rows
        else:
            dst.value.index_copy_(0, outs, rows)

    # ------------------------------------------------------------------ delta frame
    def active(self, env: list[Slot], changed: Changed) -> Tensor | None:
        """Rewritten input pixels whose change against the committed input passes the threshold."""
        assert self.x is not None
        idx = changed.idx
        new = self.current(env, idx)
        diff = (new - self.x.index_select(0, self.pad_of[idx])).abs_()
        score = diff @ self.weights if self.weights is not None else diff.mean(1)
        sel = score > self.threshold
        act = idx[sel]
        if act.numel() == 0:
            return None
        self.x.index_copy_(0, self.pad_of[act], new[sel])
        return act

    def moved_from_key(self, env: list[Slot], changed: Changed) -> Tensor | None:
        """The student's rule: ``X`` = the keyframe's input, with the current value where that moved past
        the threshold. Returns the rewritten input pixels whose entry of ``X`` changed."""
        assert self.x is not None and self.x_key is not None
        idx = changed.idx
        rows = self.pad_of[idx]
        new, key = self.current(env, idx), self.x_key.index_select(0, idx)
        diff = (new - key).abs_()
        score = diff @ self.weights if self.weights is not None else diff.mean(1)
        on = score > self.threshold
        # X moves where a pixel turns on (X held the keyframe's value, which this one differs from) or
        # off (X held a value past the threshold, now the keyframe's); where it stays on, where the value
        # itself moved: only those pixels need X read and compared
        was = self.on.index_select(0, idx)
        moved = on ^ was
        both = (on & was).nonzero().view(-1)
        if both.numel():
            moved[both] = (new.index_select(0, both) != self.x.index_select(0, rows[both])).any(1)
        self.on[idx] = on
        m = moved.nonzero().view(-1)
        if m.numel() == 0:
            return None
        self.x.index_copy_(0, rows[m], torch.where(on[m, None], new.index_select(0, m), key.index_select(0, m)))
        return idx[m]

    def reach(self, act: Tensor) -> Changed:
        """Output pixels whose window holds an active input pixel (rounded up to whole tiles)."""
        if self.tile == 1:
            return Changed(self.out_hw, _idx=self._reach(act))
        h, w = self.in_hw
        m = torch.zeros(h * w)
        m[act] = 1.0
        m = m.view(1, 1, h, w)
        t, b, left, r = self.pads
        c = self.conv
        out = F.max_pool2d(F.pad(m, (left, r, t, b)), c.kernel_size, c.stride, dilation=c.dilation)
        if self.tile > 1:
            ho, wo = self.out_hw
            out = F.max_pool2d(out, self.tile, self.tile, ceil_mode=True)
            out = out.repeat_interleave(self.tile, 2).repeat_interleave(self.tile, 3)[..., :ho, :wo]
        return Changed(self.out_hw, out.reshape(-1) > 0)

    def gathered(self, outs: Tensor) -> Tensor:
        """The conv at output pixels ``outs`` from the committed input: im2col + matmul, chunked."""
        assert self.x is not None
        cin = self.x.shape[1]
        k = self.offsets.numel()
        res = torch.empty(outs.numel(), self.matrix.shape[1])
        big = outs.numel() * self.matrix.numel() >= PARALLEL_MACS
        with threads(self.mm_threads if big else None):
            self._gather_mm(outs, res, cin, k)
        return res

    def boxed(self, outs: Tensor, dst: Slot) -> int | None:
        """The conv over the bounding box of output pixels ``outs`` (ascending), written into ``dst``
        (its MACs); None when the box is more than ``box`` times their count."""
        assert self.x is not None
        ho, wo = self.out_hw
        y0, y1 = int(outs[0]) // wo, int(outs[-1]) // wo + 1
        if (y1 - y0) * wo > self.box * outs.numel():  # cheap first test: the full-width band
            xs = outs % wo
            x0, x1 = int(xs.min()), int(xs.max()) + 1
        else:
            x0, x1 = 0, wo
        area = (y1 - y0) * (x1 - x0)
        if area > self.box * outs.numel():
            return None
        c = self.conv
        (kh, kw), (sh, sw), (dh, dw) = c.kernel_size, c.stride, c.dilation
        xin = rows_view(self.x, self.padded_hw)[:, :, y0 * sh:(y1 - 1) * sh + (kh - 1) * dh + 1,
                                                x0 * sw:(x1 - 1) * sw + (kw - 1) * dw + 1]
        with threads(self.mm_threads if area * self.matrix.numel() >= PARALLEL_MACS else None):
            out = F.conv2d(xin, self.weight_cl, self.bias, c.stride, 0, c.dilation)
        if self.relu:
            out = out.relu_()
        rows_view(dst.value, self.out_hw)[:, :, y0:y1, x0:x1].copy_(out)
        return area * self.macs_per_pixel

    def _gather_mm(self, outs: Tensor, res: Tensor, cin: int, k: int) -> None:
        assert self.x is not None
        for s in range(0, outs.numel(), self.chunk):
            o = outs[s:s + self.chunk]
            taps = (self.base[o][:, None] + self.offsets[None, :]).reshape(-1)
            cols = self.x.index_select(0, taps).view(o.numel(), k * cin)
            if self.bias is not None:
                torch.addmm(self.bias, cols, self.matrix, out=res[s:s + self.chunk])
            else:
                torch.mm(cols, self.matrix, out=res[s:s + self.chunk])

    def delta(self, env: list[Slot]) -> int:
        """Run on a delta frame; returns the MACs computed."""
        dst = env[self.dst]
        dst.changed = None
        self.last, self.last_box = (0, 0, False), False
        changed_in = self.changed(env)
        if changed_in is None:
            return 0
        act = self.active(env, changed_in) if self.reference == "last" else self.moved_from_key(env, changed_in)
        if act is None:
            return 0
        changed = self.reach(act)
        n = changed.n
        dense = self.grouped or n > self.dense_level * self.out_hw[0] * self.out_hw[1]
        if dense:
            with threads(self.mm_threads):
                self._write(dst, None, self.dense())
            macs = self.macs_per_pixel // self.conv.groups * self.out_hw[0] * self.out_hw[1]
        else:
            outs = changed.idx
            boxed = self.boxed(outs, dst) if self.box > 0 else None
            self.last_box = boxed is not None
            if boxed is not None:
                macs = boxed
            else:
                self._write(dst, outs, self.gathered(outs))
                macs = self.macs_per_pixel * n
        dst.changed = changed
        self.last = (int(act.numel()), n, dense)
        return macs
