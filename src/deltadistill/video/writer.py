"""Write an mp4 (atomically) and draw predictions: boxes with class names, masks, side-by-side panels."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

from ..files import publish, temp_beside

_PALETTE = np.array([(255, 56, 56), (50, 205, 50), (30, 144, 255), (255, 178, 29), (186, 85, 211),
                     (0, 206, 209), (255, 105, 180), (128, 128, 0)], np.uint8)


class VideoWriter:
    """H.264 (or MPEG-4 if x264 is missing) mp4 writer; the file appears only once complete."""

    def __init__(self, path: str | Path, fps: float = 25.0) -> None:
        self.path, self.fps = Path(path), fps
        self.container = None

    def __enter__(self) -> VideoWriter:
        self.tmp = temp_beside(self.path, ".mp4")
        self.container = av.open(str(self.tmp), mode="w")
        self.stream = None
        return self

    def write(self, frame: np.ndarray) -> None:
        if self.stream is None:
            h, w = frame.shape[:2]
            for codec in ("libx264", "h264", "mpeg4"):
                try:
                    self.stream = self.container.add_stream(codec, rate=round(self.fps))
                    break
                except (av.error.FFmpegError, ValueError):
                    continue
            self.stream.width, self.stream.height = w - w % 2, h - h % 2
            self.stream.pix_fmt = "yuv420p"
        frame = np.ascontiguousarray(frame[: self.stream.height, : self.stream.width])
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self.container.mux(packet)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.stream is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            self.container.close()
            if exc_type is None and self.stream is not None:
                publish(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def draw_boxes(frame: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
               class_names: list[str]) -> np.ndarray:
    """Boxes (xyxy, pixels) with 'name score' captions, one colour per class."""
    out = frame.copy()
    for (x0, y0, x1, y1), lab, sc in zip(np.asarray(boxes).round().astype(int), np.asarray(labels),
                                         np.asarray(scores), strict=True):
        color = tuple(int(c) for c in _PALETTE[int(lab) % len(_PALETTE)])
        cv2.rectangle(out, (x0, y0), (x1, y1), color, 2)
        text = f"{class_names[int(lab)] if int(lab) < len(class_names) else lab} {sc:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        cv2.rectangle(out, (x0, max(0, y0 - th - 4)), (x0 + tw + 2, y0), color, -1)
        cv2.putText(out, text, (x0 + 1, max(th, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def overlay_mask(frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (50, 205, 50),
                 alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` into the frame where the probability mask (H, W) is above 0.5, with an outline."""
    m = np.asarray(mask) > 0.5
    if m.shape != frame.shape[:2]:
        m = cv2.resize(m.astype(np.uint8), (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    out = frame.copy()
    out[m] = (out[m] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, 1)
    return out


#: what a cut-out puts behind the foreground (`cutout`); ``overlay`` draws the mask instead (`overlay_mask`)
BACKGROUNDS = ("plain", "blur", "overlay")
PLAIN_BACKGROUND = (0, 177, 64)  # chroma green: plainly not part of the picture


def cutout(frame: np.ndarray, mask: np.ndarray, background: str = "plain",
           color: tuple[int, int, int] = PLAIN_BACKGROUND) -> np.ndarray:
    """The foreground over a plain ``color`` or over the frame itself blurred, blended by the
    probability mask (H, W) in 0..1, so soft edges (hair) stay soft, as background removal shows them."""
    if background not in ("plain", "blur"):
        raise ValueError(f"background must be plain or blur, not {background!r}")
    a = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if a.shape != frame.shape[:2]:
        a = cv2.resize(a, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
    if background == "blur":
        bg = cv2.GaussianBlur(frame, (0, 0), sigmaX=max(frame.shape[:2]) / 40).astype(np.float32)
    else:
        bg = np.empty(frame.shape, np.float32)
        bg[:] = color
    a = a[..., None]
    return (a * frame.astype(np.float32) + (1.0 - a) * bg + 0.5).astype(np.uint8)


def _bar(width: int, text: str, color: tuple[int, int, int]) -> np.ndarray:
    bar = np.zeros((24, width, 3), np.uint8)
    bar[:] = color
    cv2.putText(bar, text, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return bar


def side_by_side(left: np.ndarray, right: np.ndarray, left_title: str, right_title: str,
                 footer_left: str = "", footer_right: str = "", right_is_key: bool = False) -> np.ndarray:
    """Two panels with title bars (the right one orange on keyframes) and footers, plus a divider."""
    w = left.shape[1]
    lcol, rcol = (40, 40, 40), ((200, 110, 0) if right_is_key else (0, 90, 160))
    lp = np.concatenate([_bar(w, left_title, lcol), left, _bar(w, footer_left, (40, 40, 40))])
    rp = np.concatenate([_bar(right.shape[1], right_title, rcol), right, _bar(right.shape[1], footer_right, (40, 40, 40))])
    gap = np.full((lp.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([lp, gap, rp], axis=1)
