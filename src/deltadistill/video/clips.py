"""Training clips: a keyframe plus T-1 later frames, cropped alike, decoded lazily in DataLoader workers.

A map-style dataset whose item ``i`` is a pure function of ``(seed, i)``: the clip's video, start,
frame distances and crop all come from one seeded generator. That makes resumed training exact
(the data position is just the step) and lets any number of workers or ranks split the indices.
Each item decodes only its own short window of frames (PyAV seeks near the keyframe), so memory
does not grow with the video's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import VideoError
from .reader import _open, fit_frame, video_info


class VideoClips(Dataset):
    """Clips of ``clip_len`` frames (keyframe first) as float tensors (T, 3, H, W) in 0..1.

    videos: paths; frame_range: (start, stop) fractions of each video to draw from, e.g. (0, 0.7)
    for training and (0.7, 1) for evaluation. size: output (H, W); frames are resized so the short
    side covers ``size`` (times ``scale_jitter``) and randomly cropped, identically across a clip;
    with ``fit="letterbox"`` they are letterboxed whole instead, as `iter_frames` gives them to a
    deployed model (what calibration should see: a sparse student's cost depends on it).
    """

    def __init__(self, videos: Sequence[str | Path], clip_len: int = 3, max_interval: int = 8,
                 size: tuple[int, int] = (256, 256), frame_range: tuple[float, float] = (0.0, 1.0),
                 length: int = 10_000, seed: int = 0, scale_jitter: float = 1.25, value_range: float = 1.0,
                 fit: str = "crop") -> None:
        if clip_len < 1 or max_interval < 1:
            raise ValueError("clip_len and max_interval must be >= 1")
        if not videos:
            raise VideoError("no videos given")
        if not 0.0 <= frame_range[0] < frame_range[1] <= 1.0:
            raise ValueError(f"frame_range must be fractions 0 <= start < stop <= 1, got {frame_range}")
        if fit not in ("crop", "letterbox"):
            raise ValueError(f"fit must be 'crop' (random crops, for training) or 'letterbox' (frames as "
                             f"deployment sees them, for calibration), got {fit!r}")
        self.fit = fit
        self.paths = [Path(v) for v in videos]
        self.infos = [video_info(p) for p in self.paths]  # validates every file up front
        self.clip_len, self.max_interval, self.size = clip_len, max_interval, tuple(size)
        self.length, self.seed, self.scale_jitter, self.value_range = length, seed, scale_jitter, value_range
        self.ranges = []
        self._orders: dict[int, dict[int, int] | None] = {}  # per video: timestamp -> frame position
        self._pts: dict[int, list[int]] = {}  # per video: frame position -> timestamp
        for p, info in zip(self.paths, self.infos, strict=True):
            lo, hi = int(frame_range[0] * info.frames), int(frame_range[1] * info.frames)
            if hi - lo < clip_len:
                raise VideoError(f"{p}: only {hi - lo} frames in range {frame_range}, need {clip_len}")
            self.ranges.append((lo, hi))

    def __len__(self) -> int:
        return self.length

    def plan(self, index: int) -> tuple[int, list[int], tuple[float, float, float]]:
        """(video, frame indices, (scale, crop_y, crop_x) fractions) of clip ``index``: seeded, no I/O."""
        rng = np.random.default_rng([self.seed, index])
        v = int(rng.integers(len(self.paths)))
        lo, hi = self.ranges[v]
        span = min(self.max_interval, hi - lo - 1)
        need = self.clip_len - 1
        if need:
            gaps = np.sort(rng.choice(np.arange(1, span + 1), size=need, replace=span < need))
        else:
            gaps = np.zeros(0, int)
        start = int(rng.integers(lo, hi - int(gaps.max(initial=0))))
        frames = [start, *(start + int(g) for g in gaps)]
        return v, frames, (float(rng.uniform(1.0, self.scale_jitter)), float(rng.random()), float(rng.random()))

    def decode(self, video: int, frames: list[int]) -> list[np.ndarray]:
        """Decode just the frames asked for. A frame's index is its position in presentation order,
        never a guess from its timestamp (variable frame rates and B-frames skip or reorder those):
        timestamps are used only to seek, and a seek that lands wrong decodes from the start."""
        wanted = sorted(set(frames))
        order = self._presentation_order(video)
        out = self._decode_from(video, wanted, order) if order is not None else None
        if out is None or any(f not in out for f in wanted):  # a packet that decodes to no frame shifts the
            out = self._decode_from(video, wanted, None)  # order (static-hands: 456 packets, 455 frames)
        missing = [f for f in wanted if f not in out]
        if missing:
            raise VideoError(f"{self.paths[video]}: could not decode frames {missing[:5]} "
                             f"(the video has {self.infos[video].frames})")
        return [out[f] for f in frames]

    def _presentation_order(self, video: int) -> dict[int, int] | None:
        """Timestamp -> position of every frame, read from packets once per video (no decoding);
        None when the packets cannot say (missing or repeated timestamps, or not one per frame)."""
        if video not in self._orders:
            container = _open(self.paths[video])
            try:
                stream = container.streams.video[0]
                pts = [p.pts for p in container.demux(stream) if p.size]
            except av.error.FFmpegError as e:
                raise VideoError(f"video {self.paths[video]} is corrupt: reading failed ({e})") from e
            finally:
                container.close()
            ok = None not in pts and len(set(pts)) == len(pts) == self.infos[video].frames
            self._pts[video] = sorted(pts) if ok else []
            self._orders[video] = {p: i for i, p in enumerate(self._pts[video])} if ok else None
        return self._orders[video]

    def _decode_from(self, video: int, wanted: list[int], order: dict[int, int] | None) -> dict[int, np.ndarray] | None:
        """With ``order``: seek to the keyframe before the first wanted frame and decode on, indexing
        by ``order`` (None if the seek landed past it). Without: decode from the start, counting."""
        path, out = self.paths[video], {}
        container = _open(path)
        try:
            stream = container.streams.video[0]
            if order is not None:
                container.seek(self._pts[video][wanted[0]], stream=stream, backward=True)
            for n, frame in enumerate(container.decode(stream)):
                idx = n if order is None else order.get(frame.pts)
                if idx is None or (order is not None and not out and idx > wanted[0]):
                    return None  # a frame the packets did not list, or a seek past the first frame wanted
                if idx > wanted[-1]:
                    break
                if idx in wanted:
                    out[idx] = frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise VideoError(f"video {path} is corrupt: decoding failed ({e})") from e
        finally:
            container.close()
        return out

    def crop(self, frames: list[np.ndarray], jitter: tuple[float, float, float]) -> np.ndarray:
        if self.fit == "letterbox":
            return np.stack([fit_frame(f, self.size, "letterbox")[0] for f in frames])
        scale, fy, fx = jitter
        th, tw = self.size
        h, w = frames[0].shape[:2]
        s = max(th / h, tw / w) * scale
        rh, rw = max(th, round(h * s)), max(tw, round(w * s))
        y0, x0 = int(fy * (rh - th)), int(fx * (rw - tw))
        return np.stack([fit_frame(f, (rh, rw), "resize")[0][y0:y0 + th, x0:x0 + tw] for f in frames])

    def __getitem__(self, index: int) -> torch.Tensor:
        v, frames, jitter = self.plan(index)
        clip = self.crop(self.decode(v, frames), jitter)
        return torch.from_numpy(clip).permute(0, 3, 1, 2).float().mul_(self.value_range / 255.0)
