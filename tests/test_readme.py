"""The README's Python examples run as written (on two calibration clips and three frames)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_runs(tmp_path, monkeypatch) -> None:
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 13
    code = code.replace("stem=0.05)", "stem=0.05, clips=2)").replace("size=(512, 512)):", "size=(512, 512), stop=3):")
    assert "clips=2)" in code and "stop=3" in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert (tmp_path / "runs" / "my_model" / "students.safetensors").is_file()
    assert isinstance(scope["detections"], list) and set(scope["detections"][0]) == {"boxes", "scores", "labels"}


def test_readme_calibrate_example_runs(tmp_path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    first, calib = blocks[0], blocks[1]
    setup = "\n".join(line for line in first.splitlines() if line.startswith(("import", "from", "videos =", "teacher =", "clips =")))
    calib = calib.replace("budget=0.25)", "budget=0.25, clips=2)")
    assert "clips=2" in calib
    # the same calls at 256x256, not 512x512: this checks that the example runs, in a quarter of the time
    setup = setup.replace('load("centernet")', 'load("centernet", input_size=(256, 256))').replace("(512, 512)", "(256, 256)")
    calib = calib.replace('load("centernet")', 'load("centernet", input_size=(256, 256))')
    assert setup.count("(256, 256)") == 2 and "input_size=(256, 256)" in calib
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(setup + "\n" + calib, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert abs(scope["result"].cost - 0.25) < 0.01 and sum(scope["result"].counts().values()) == 85
