"""What an export leaves on disk: graphs checked against the manifest, no lock file, and --force that
replaces only an export deltadistill wrote (issue 29, defects 3, 8, 17 and 20).

A small imported ONNX teacher at 48x64 exports in a few seconds; the commands run in this process
(typer's CliRunner), as tests/test_bad_input.py runs them.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deltadistill as dd
from deltadistill import teachers
from deltadistill.apps.cli import app
from deltadistill.core.modes import delta_layers
from deltadistill.teachers.resolve import teacher_record
from deltadistill.video import VideoWriter, default_videos, iter_frames

from .test_onnx_import import _small_dynamic_net


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A saved sparse model of a small ONNX teacher, a 6-frame clip, and an export of the model."""
    root = tmp_path_factory.mktemp("exp")
    _small_dynamic_net(root / "net.onnx")
    teacher = teachers.from_onnx(root / "net.onnx", input_size=(48, 64))
    model = dd.convert(copy.deepcopy(teacher), dd.DeltaConfig(student="sparse"))
    for _, layer in delta_layers(model):
        layer.students["sparse"].threshold.fill_(0.05)
    dd.save(dd.deploy(model), root / "model", extra=teacher_record(teacher))
    with VideoWriter(root / "clip.mp4", fps=25) as w:
        for f in iter_frames(default_videos()["bikes"], start=100, stop=106):
            w.write(f)
    r = _cli("export", "--model", root / "model", "--out", root / "export")
    assert r.exit_code == 0, r.stderr
    return {"root": root, "model": root / "model", "clip": root / "clip.mp4", "export": root / "export"}


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line(r, words: str) -> None:
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(err) == 1 and words in err[0] and err[0].startswith("error: "), r.stderr[-2000:]


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_the_manifest_records_each_graph_and_a_truncated_one_is_one_line(made, tmp_path: Path) -> None:
    """A copy of an export whose delta.onnx was cut short: run refuses it in one line naming the file,
    and writes nothing. Breakage caught: no size and hash in the manifest (onnxruntime's
    InvalidProtobuf traceback), or a check that reads only the manifest."""
    manifest = json.loads((made["export"] / "manifest.json").read_text())
    for g in ("keyframe.onnx", "delta.onnx"):
        assert manifest["files"][g]["bytes"] == (made["export"] / g).stat().st_size
    broken = _copy(made["export"], tmp_path / "broken")
    data = (broken / "delta.onnx").read_bytes()
    (broken / "delta.onnx").write_bytes(data[: len(data) // 2])
    lines = tmp_path / "never" / "seen.jsonl"
    _one_line(_cli("run", "--model", broken, "--backend", "onnxruntime", "--video", made["clip"], "--jsonl", lines),
              f"{broken / 'delta.onnx'} is damaged ({len(data) // 2} bytes, the manifest says {len(data)})")
    assert not (tmp_path / "never").exists()
    same_size = _copy(made["export"], tmp_path / "edited")  # as long as the manifest says, but not its bytes
    (same_size / "keyframe.onnx").write_bytes(bytes(len((same_size / "keyframe.onnx").read_bytes())))
    _one_line(_cli("run", "--model", same_size, "--backend", "onnxruntime", "--video", made["clip"], "--jsonl", lines),
              "its sha256 is not the manifest's")


def test_the_cached_export_is_remade_when_damaged_and_leaves_no_lock_file(made, tmp_path: Path) -> None:
    """`run --backend onnxruntime` exports into MODEL/onnx once. A truncated graph there is exported again,
    not reused forever; and no ``.onnx.lock`` (nor anything else) stays in the model directory.
    Breakage caught: the cache trusting the manifest's date alone; a lock file beside the checkpoint."""
    model = _copy(made["model"], tmp_path / "model")
    before = sorted(os.listdir(model))
    lines = tmp_path / "seen.jsonl"
    args = ("run", "--model", model, "--backend", "onnxruntime", "--video", made["clip"], "--jsonl", lines)
    assert _cli(*args).exit_code == 0
    assert sorted(os.listdir(model)) == sorted([*before, "onnx"])  # the export, and no lock file
    graph = model / "onnx" / "delta.onnx"
    graph.write_bytes(graph.read_bytes()[:100])
    r = _cli(*args)
    assert r.exit_code == 0, r.stderr[-2000:]
    manifest = json.loads((model / "onnx" / "manifest.json").read_text())
    assert graph.stat().st_size == manifest["files"]["delta.onnx"]["bytes"] > 100
    assert sorted(os.listdir(model)) == sorted([*before, "onnx"])
    assert len(lines.read_text().splitlines()) == 6


def test_a_read_only_model_directory_with_a_fresh_export_runs(made, tmp_path: Path, monkeypatch) -> None:
    """A model directory that already holds a fresh export is only read: `run --backend onnxruntime`
    works when it is read-only, and creates nothing in it. As root chmod stops no write, so opening a
    file in it for writing is refused here too. Breakage caught: a lock file opened for writing first."""
    import builtins

    model = _copy(made["model"], tmp_path / "model")
    lines = tmp_path / "seen.jsonl"
    args = ("run", "--model", model, "--backend", "onnxruntime", "--video", made["clip"], "--jsonl", lines)
    assert _cli(*args).exit_code == 0
    listing = sorted(os.listdir(model))
    real_open = builtins.open

    def read_only(file, mode="r", *a, **kw):
        if any(c in mode for c in "awx+") and Path(str(file)).resolve().is_relative_to(model.resolve()):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", read_only)
    model.chmod(0o555)
    try:
        r = _cli(*args)
    finally:
        model.chmod(0o755)
        monkeypatch.undo()
    assert r.exit_code == 0, r.stderr[-2000:]
    assert sorted(os.listdir(model)) == listing


def test_export_force_replaces_only_an_export_it_wrote(made, tmp_path: Path) -> None:
    """--force replaces an earlier export, and refuses in one line a user's folder or a file, leaving
    them as they were. Breakage caught: --force deleting whatever --out names."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    _one_line(_cli("export", "--model", made["model"], "--out", folder, "--force"), "is not an export deltadistill wrote")
    assert (folder / "notes.txt").read_text() == "keep me"
    file = tmp_path / "file.bin"
    file.write_text("keep me too")
    _one_line(_cli("export", "--model", made["model"], "--out", file, "--force"), "is not an export deltadistill wrote")
    assert file.read_text() == "keep me too"
    mixed = _copy(made["export"], tmp_path / "mixed")  # an export, plus a file of the user's
    (mixed / "notes.txt").write_text("mine")
    _one_line(_cli("export", "--model", made["model"], "--out", mixed, "--force"), "is not an export deltadistill wrote")
    assert (mixed / "notes.txt").exists()
    again = _copy(made["export"], tmp_path / "again")
    (again / "delta.onnx").write_bytes(b"")  # even a damaged export of ours is replaced
    r = _cli("export", "--model", made["model"], "--out", again, "--force")
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(again)) == ["delta.onnx", "keyframe.onnx", "manifest.json"]
    assert (again / "delta.onnx").stat().st_size > 0


def test_target_on_an_export_says_what_to_give(made, tmp_path: Path) -> None:
    """--target steers a checkpoint's sparse layers; on an export the line must say so, not ask for the
    --model that was given. Breakage caught: "give --model" when --model named an export (issue 29, 16)."""
    lines = tmp_path / "never" / "seen.jsonl"
    _one_line(_cli("run", "--model", made["export"], "--video", made["clip"], "--target", "2x", "--jsonl", lines),
              "is an ONNX export: give the model directory it was exported from")
    assert not (tmp_path / "never").exists()
