"""Benchmark videos made from the packaged ones (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deltadistill.video import VideoWriter, default_videos, iter_frames, video_info

ROOT = Path(__file__).resolve().parent.parent

SUBTITLES = (
    "Two riders take the bend at the bottom of the hill",
    "The camera follows them into the trees",
    "Mud, roots and a narrow line between them",
    "One of them stops to look back",
    "Then both are gone down the trail",
)


def subtitled_bikes(out: Path | None = None) -> Path:
    """``bikes`` with burnt-in subtitles: a new line every 2 s, white on a dark outline, bottom centre,
    as a player or a broadcaster draws them. Text that stays still while the picture moves."""
    out = out or ROOT / "runs" / "videos" / "bikes_subtitled.mp4"
    if out.is_file():
        return out
    src = default_videos()["bikes"]
    info = video_info(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    every = int(round(2 * info.fps))
    with VideoWriter(out, fps=info.fps) as w:
        for i, frame in enumerate(iter_frames(src)):
            frame = np.ascontiguousarray(frame)
            text = SUBTITLES[(i // every) % len(SUBTITLES)]
            font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.7, 2
            (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
            org = ((frame.shape[1] - tw) // 2, frame.shape[0] - 16)
            cv2.putText(frame, text, org, font, scale, (0, 0, 0), thick + 3, cv2.LINE_AA)
            cv2.putText(frame, text, org, font, scale, (255, 255, 255), thick, cv2.LINE_AA)
            w.write(frame)
    return out
