"""CenterNet decoding in plain torch: heatmap peak picking, top-k, box assembly and class-wise NMS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: (K, 4) x (M, 4) -> (K, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression; returns kept indices sorted by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    iou = box_iou(boxes[order], boxes[order])
    n = order.numel()
    suppressed = torch.zeros(n, dtype=torch.bool)
    over = (iou > iou_threshold).cpu()
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise NMS: boxes of different labels never suppress each other (offset trick)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    offset = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset, scores, iou_threshold)


def decode_centernet(heatmap: Tensor, ltrb: Tensor, stride: float, score_threshold: float = 0.2, top_k: int = 100,
                     iou_threshold: float = 0.5, max_detections: int = 100,
                     image_size: tuple[int, int] | None = None) -> list[dict[str, Tensor]]:
    """Decode CenterNet maps into per-image detections.

    Args:
        heatmap: (N, C, h, w) class probabilities (sigmoid already applied).
        ltrb: (N, 4, h, w) distances (left, top, right, bottom) from the cell centre to the box edges,
            in input pixels.
        stride: input pixels per output cell (input width / w); the centre of cell (y, x) is
            ``(x * stride, y * stride)`` exactly as in the exported graph's own decoder.
        image_size: (H, W) to clip boxes to; None keeps them unclipped.
    """
    n, c, h, w = heatmap.shape
    peaks = heatmap * (F.max_pool2d(heatmap, 3, stride=1, padding=1) == heatmap)
    k = min(top_k, c * h * w)
    scores, idx = peaks.reshape(n, -1).topk(k, dim=1)
    labels = idx // (h * w)
    pix = idx % (h * w)
    ys, xs = pix // w, pix % w
    dist = ltrb.reshape(n, 4, h * w).gather(2, pix[:, None, :].expand(n, 4, k))  # (N, 4, k)
    cx, cy = xs.to(ltrb.dtype) * stride, ys.to(ltrb.dtype) * stride
    boxes = torch.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], dim=-1)
    if image_size is not None:
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, image_size[1])
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, image_size[0])
    results = []
    for b in range(n):
        m = scores[b] >= score_threshold
        bx, sc, lb = boxes[b][m], scores[b][m], labels[b][m]
        keep = batched_nms(bx, sc, lb, iou_threshold)[:max_detections]
        results.append({"boxes": bx[keep].float(), "scores": sc[keep].float(), "labels": lb[keep].long()})
    return results
