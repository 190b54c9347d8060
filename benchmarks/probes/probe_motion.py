"""Would motion compensation shrink bikes' deltas? A probe at the input, before building anything.

For frames of `bikes` (256x256, letterboxed, every 5th), the global shift against the frame
``d`` steps back by phase correlation, and the share of pixels whose mean |change| exceeds 0.2x
the mean |frame|, without and with the keyframe shifted by that motion (the uncovered border
counts as moving). BENCHMARKS.md note 26.
"""

from __future__ import annotations

import numpy as np

from deltadistill.video import default_videos, iter_frames


def global_shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(dy, dx) such that ``a`` is about ``np.roll(b, (dy, dx))``: phase correlation of the grey images."""
    ga, gb = a.mean(-1) - a.mean(), b.mean(-1) - b.mean()
    win = np.outer(np.hanning(ga.shape[0]), np.hanning(ga.shape[1]))
    cross = np.fft.fft2(ga * win) * np.conj(np.fft.fft2(gb * win))
    r = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = np.unravel_index(int(r.argmax()), r.shape)
    h, w = r.shape
    return int(dy - h if dy > h // 2 else dy), int(dx - w if dx > w // 2 else dx)


def main() -> None:
    frames = np.stack([f.astype(np.float32) / 255 for f in iter_frames(default_videos()["bikes"], (256, 256),
                                                                       "letterbox")])
    threshold = 0.2 * float(np.abs(frames).mean())
    print("| frames back | median global shift (px) | pixels moving | moving after the shift |")
    print("|---|---|---|---|")
    for d in (1, 2, 3, 7):
        plain, shifted, shifts = [], [], []
        for t in range(d, len(frames), 5):
            a, b = frames[t], frames[t - d]
            dy, dx = global_shift(a, b)
            shifts.append(abs(dy) + abs(dx))
            plain.append(float((np.abs(a - b).mean(-1) > threshold).mean()))
            moved = np.abs(a - np.roll(b, (dy, dx), (0, 1))).mean(-1) > threshold
            border = np.zeros_like(moved)  # what wrapped round: nothing to compare it with
            if dy:
                border[slice(None, dy) if dy > 0 else slice(dy, None)] = True
            if dx:
                border[:, slice(None, dx) if dx > 0 else slice(dx, None)] = True
            shifted.append(float((moved | border).mean()))
        print(f"| {d} | {np.median(shifts):.0f} | {np.mean(plain):.3f} | {np.mean(shifted):.3f} |")


if __name__ == "__main__":
    main()
