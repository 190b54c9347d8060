"""The teacher at a lower resolution, the second free rival at equal time (issue 28): its sizes, its
predictions brought back to full size, and the size it picks for a time budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deltadistill.apps.lower_res import lower_res_preds, rival_lower_res, smaller_sizes


class BlobSeg(nn.Module):
    """Foreground where the frame is bright, from a smoothing conv: nearly the same mask at any size."""

    task = "segmentation"

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.input_size = size
        self.conv = nn.Conv2d(3, 1, 5, padding=2, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / 75)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(20 * (self.conv(x) - 0.5))

    def postprocess(self, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(y, size=self.input_size, mode="bilinear", align_corners=False)[:, 0] > 0.5


class BlobBox(BlobSeg):
    """A detector: one box around the bright pixels, in its own input's pixels."""

    task = "detection"

    def postprocess(self, y: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        ys, xs = torch.nonzero(y[0, 0] > 0.5, as_tuple=True)
        box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]).float()
        return [{"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)}]


def _frames(size: tuple[int, int], n: int = 3) -> list[np.ndarray]:
    out = []
    for i in range(n):
        f = np.zeros((*size, 3), np.uint8)
        f[20 + 4 * i: 60 + 4 * i, 40: 100] = 255  # a bright block that moves
        out.append(f)
    return out


def test_smaller_sizes_keep_the_aspect_in_steps_of_64() -> None:
    """Largest area first, multiples of 64, the width rounded both ways at each height (256x384 has more
    pixels than 256x320, and the rival deserves them)."""
    assert smaller_sizes((384, 512)) == [(320, 448), (320, 384), (256, 384), (256, 320), (192, 256), (128, 192),
                                         (128, 128), (64, 128), (64, 64)]
    assert smaller_sizes((256, 256)) == [(192, 192), (128, 128), (64, 64)]
    assert smaller_sizes((64, 64)) == []


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


def test_lower_res_masks_come_back_at_full_size_and_agree() -> None:
    """The mask at 64x96 is read at the full 128x192 and covers nearly the same pixels; at the full size
    it is the teacher's own. Breakage caught: masks left at the small size (shape), or not upsampled
    from the small output (IoU)."""
    teacher = BlobSeg((128, 192)).eval()
    frames = _frames((128, 192))
    full = [teacher.postprocess(teacher(teacher.preprocess(f[None])))[0] for f in frames]
    same = lower_res_preds(teacher, (128, 192), frames, lambda p: p[0])
    assert all(torch.equal(a, b) for a, b in zip(same, full, strict=True))
    low = lower_res_preds(teacher, (64, 96), frames, lambda p: p[0])
    assert all(p.shape == (128, 192) for p in low)
    assert min(_iou(a, b) for a, b in zip(low, full, strict=True)) > 0.9


def test_lower_res_boxes_are_scaled_to_full_size_pixels() -> None:
    """Boxes decoded at half size land where the full-size teacher puts them (within 2 px); without the
    scaling they would sit at half the coordinates."""
    teacher = BlobBox((128, 192)).eval()
    frames = _frames((128, 192))
    for f in frames:
        full = teacher.postprocess(teacher(teacher.preprocess(f[None])))[0]["boxes"]
        low = lower_res_preds(teacher, (64, 96), [f], lambda p: p[0])[0]["boxes"]
        assert torch.allclose(low, full, atol=2.0), (low, full)


def test_the_rival_takes_the_largest_size_the_budget_allows() -> None:
    """An unlimited budget is the full size, scored 1 against the teacher; a budget nothing meets still
    scores the smallest size, and says so."""
    teacher = BlobSeg((128, 192)).eval()
    frames = _frames((128, 192))
    full = [teacher.postprocess(teacher(teacher.preprocess(f[None])))[0] for f in frames]

    def score(preds: list[torch.Tensor]) -> float:
        return float(np.mean([_iou(a, b) for a, b in zip(preds, full, strict=True)]))

    rich = rival_lower_res(teacher, frames, full, score, lambda p: p[0], 0.95, float("inf"), "torch")
    assert rich["input_size"] == [128, 192] and rich["value"] == pytest.approx(1.0) and not rich["beats"]
    poor = rival_lower_res(teacher, frames, full, score, lambda p: p[0], 0.95, 0.0, "torch")
    assert poor["input_size"] == [64, 64] and "takes longer" in poor["words"]
    assert [t["input_size"] for t in poor["timed"]] == [[128, 192], [64, 128], [64, 64]]
    assert poor["beats"] == (0.95 >= poor["value"] + poor["margin_needed"])
