"""Frame helpers for feeding teachers: decode video frames and letterbox them to a square input."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def read_frames(path: str | Path, indices: Iterable[int] | None = None) -> np.ndarray:
    """Decode RGB frames (N, H, W, 3) uint8 from a video with PyAV; all frames if ``indices`` is None."""
    import av  # local import: only needed when reading video

    wanted = None if indices is None else set(indices)
    last = max(wanted) if wanted else -1
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if wanted is None or i in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
            if wanted is not None and i >= last:
                break
    if not frames:
        raise ValueError(f"no frames decoded from {path} for indices {sorted(wanted or [])}")
    return np.stack(frames)


def letterbox(frame: np.ndarray, size: tuple[int, int], fill: int = 0) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``frame`` (H, W, 3 uint8) to fit ``size`` keeping aspect ratio, padding centred with ``fill``.

    Returns (image, scale, (pad_x, pad_y)): a point (x, y) of the output maps back to the original as
    ``((x - pad_x) / scale, (y - pad_y) / scale)``.
    """
    h, w = frame.shape[:2]
    out_h, out_w = size
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    t = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    resized = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    out = np.full((out_h, out_w, 3), fill, dtype=np.uint8)
    pad_y, pad_x = (out_h - new_h) // 2, (out_w - new_w) // 2
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, scale, (pad_x, pad_y)
