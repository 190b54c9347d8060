"""Without an optional extra (onnx, onnxscript, onnxruntime), a command that needs it says so in one line.

Each case hides modules (``sys.modules[name] = None`` makes ``import name`` raise ImportError; the
test puts them back), runs the command in this process (typer's CliRunner, as tests/test_bad_input.py
does) and checks: exit code 2, one line on stderr naming the missing module and ``pip install
'deltadistill[onnx]'``, no traceback, no output left behind and the model directory untouched.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deltadistill as dd
from deltadistill import teachers
from deltadistill.apps.cli import app
from deltadistill.video import default_videos

from .test_onnx_import import _small_dynamic_net

EXTRA = "pip install 'deltadistill[onnx]'"


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """``M``: a selfie checkpoint (its teacher needs no onnx); ``E``: an export of a small imported
    graph's model (exports in seconds); ``N``: that graph's .onnx file; ``V``: a real video."""
    from deltadistill.runtime.resolve import export_dir
    from deltadistill.teachers.resolve import teacher_record

    root = tmp_path_factory.mktemp("extras")
    selfie = dd.convert(copy.deepcopy(teachers.load("selfie")), dd.DeltaConfig(student="sparse"))
    for _, layer in dd.core.modes.delta_layers(selfie):
        layer.students["sparse"].threshold.fill_(0.1)
    dd.save(dd.deploy(selfie), root / "selfie_model", extra={"teacher": "selfie"})
    _small_dynamic_net(root / "net.onnx")
    net = teachers.from_onnx(root / "net.onnx", input_size=(48, 64))
    model = dd.deploy(dd.convert(copy.deepcopy(net), dd.DeltaConfig(student="compressed", reduction=2)))
    export_dir(model, root / "net_export", input_size=(48, 64), keyframe_interval=4, meta=teacher_record(net))
    return {"V": str(default_videos()["bikes"]), "M": str(root / "selfie_model"), "E": str(root / "net_export"),
            "N": str(root / "net.onnx")}


def hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``import name`` (and ``import name.sub``) raise ImportError until the test ends."""
    for key in [k for k in sys.modules if k.split(".")[0] in names]:
        monkeypatch.setitem(sys.modules, key, None)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def check_one_line(places: dict[str, str], line: str, module: str, tmp_path: Path, monkeypatch) -> str:
    out = tmp_path / "never" / "out"
    kept = {p: sorted(Path(places[p]).rglob("*")) for p in ("M", "E")}
    hide(monkeypatch, module)
    r = CliRunner().invoke(app, line.format(**places, O=out).split())
    monkeypatch.undo()  # the modules back before any assertion
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 2, (r.exit_code, r.stderr[-2000:], repr(r.exception))
    assert "Traceback" not in r.output and len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(rf"\b{module}\b", err[0]) and EXTRA in err[0], err[0]
    assert not (tmp_path / "never").exists()  # no output, not even its directory
    assert {p: sorted(Path(places[p]).rglob("*")) for p in ("M", "E")} == kept  # no export or lock beside the model
    return err[0]


@pytest.mark.parametrize("module", ["onnxscript", "onnx"])
def test_export_without_its_modules_is_one_line(places, module: str, tmp_path: Path, monkeypatch) -> None:
    """Catches `deltadistill export` reaching torch.onnx.export without onnxscript (or onnx): it ended in
    a ModuleNotFoundError traceback (exit 1) and left the --out parent directory behind. (Without onnx,
    in this process, where torch has onnx loaded already, the old code even exported: the check has to
    come before the export, not be left to the import inside it.)"""
    line = check_one_line(places, "export --model {M} --out {O}", module, tmp_path, monkeypatch)
    assert line == f"error: deltadistill export needs {module}: {EXTRA}"


RUN = "run --model {} --video {{V}} --backend onnxruntime --jsonl {{O}}"
BENCH = "bench --teacher selfie --model {M} --video {V} --backend onnxruntime --frames 4 --json {O}"


@pytest.mark.parametrize("line,module", [
    (RUN.format("{M}"), "onnxscript"),
    (RUN.format("{M}"), "onnxruntime"),
    (RUN.format("{E}"), "onnxruntime"),
    (BENCH, "onnxscript"),
    (BENCH, "onnxruntime"),
], ids=["run-checkpoint-onnxscript", "run-checkpoint-onnxruntime", "run-export-onnxruntime", "bench-onnxscript",
        "bench-onnxruntime"])
def test_onnxruntime_backend_without_its_modules_is_one_line(places, line: str, module: str, tmp_path: Path,
                                                             monkeypatch) -> None:
    """Catches `run`/`bench --backend onnxruntime` finding out late that onnxscript or onnxruntime is
    missing: a ModuleNotFoundError traceback (exit 1), after `run` had already written MODEL/.onnx.lock
    (and, without onnxruntime, a whole MODEL/onnx export) beside the checkpoint."""
    check_one_line(places, line, module, tmp_path, monkeypatch)


@pytest.mark.parametrize("line", [
    "run --teacher {N} --video {V} --jsonl {O}",
    "bench --teacher {N} --video {V} --sparse 0.1 --start 20 --json {O}",
    "distill --teacher {N} --videos {V} --steps 1 --out {O}",
    "demo --teacher {N} --quick --out {O}",
], ids=lambda s: s.split()[0])
def test_onnx_teacher_without_onnx_is_one_line(places, line: str, tmp_path: Path, monkeypatch) -> None:
    """Catches a command given ``--teacher x.onnx`` without onnx failing in any way but one line:
    `demo` created its --out directory before loading the teacher, so it left an empty one behind;
    the others already said it in one line, and this keeps them to it."""
    check_one_line(places, line, "onnx", tmp_path, monkeypatch)


def test_require_names_the_module_the_feature_and_the_extra(monkeypatch) -> None:
    """Catches the helper losing its contract: one error that the command line prints as one line
    (a ValueError) and that library callers can catch as an ImportError, naming every missing module once
    and each extra once."""
    from deltadistill.extras import MissingExtraError, require, require_all

    assert require("json", "anything").__name__ == "json"
    hide(monkeypatch, "onnx", "onnxscript")
    with pytest.raises(MissingExtraError) as e:
        require_all(("onnx", "json", "onnxscript"), "deltadistill export")
    assert isinstance(e.value, ImportError) and isinstance(e.value, ValueError) and e.value.name == "onnx"
    assert str(e.value) == f"deltadistill export needs onnx, onnxscript: {EXTRA}"
    with pytest.raises(MissingExtraError, match=r"^x needs no_such_module_here: pip install no_such_module_here$"):
        require("no_such_module_here", "x")
