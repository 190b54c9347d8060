"""The layout (issue 27): the package's rooms import each other without cycles, its top level stays
small, and every public name and CLI command still loads."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import deltadistill as dd

SRC = Path(dd.__file__).parent


def _room(module: str) -> str:
    """The top-level package (or top-level module) a dotted ``deltadistill.x.y`` module lives in."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def room_imports(src: Path = SRC) -> dict[str, set[str]]:
    """For each room, the other rooms any of its modules import, at module level or inside a function."""
    edges: dict[str, set[str]] = {}
    for path in src.rglob("*.py"):
        rel = path.relative_to(src.parent).with_suffix("")
        parts = list(rel.parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        module = ".".join(parts)
        package = parts if is_init else parts[:-1]
        room = _room(module)
        if room in ("__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                    targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
                elif node.module and node.module.startswith("deltadistill"):
                    targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("deltadistill")]
            for t in targets:
                other = _room(t)
                if other not in (room, "__init__"):
                    edges.setdefault(room, set()).add(other)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle among the rooms, as a path, or None."""
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m] if m in path else [n, m]
            if not state.get(m):
                found = visit(m, path + [m])
                if found:
                    return found
        state[n] = 2
        return None

    for n in sorted(edges):
        if not state.get(n):
            found = visit(n, [n])
            if found:
                return found
    return None


def test_no_cycle_between_the_packages() -> None:
    """Fails when any room imports, directly or around a loop, a room that imports it back (the config
    <-> students circle was one, inside the core)."""
    edges = room_imports()
    assert find_cycle(edges) is None, (find_cycle(edges), edges)
    assert edges.get("core", set()) <= {"files"}, f"the core imports other rooms: {edges['core']}"


def test_the_cycle_finder_sees_a_cycle(tmp_path: Path) -> None:
    """The check above can fail: two rooms that import each other are found."""
    pkg = tmp_path / "deltadistill"
    for room, other in (("a", "b"), ("b", "a")):
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text(f"from ..{other} import x\n")
    assert find_cycle(room_imports(pkg)) in (["a", "b", "a"], ["b", "a", "b"])


def test_core_modules_import_no_cycle_among_themselves() -> None:
    """config no longer imports the student registry (which imports config)."""
    tree = ast.parse((SRC / "core" / "config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert "students" not in imported


def test_the_top_level_is_a_few_rooms() -> None:
    """Fewer than 8 loose modules beside __init__ and __main__."""
    loose = sorted(p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(loose) < 8, loose


def test_every_public_name_loads() -> None:
    """Each name in ``dd.__all__`` resolves (lazy ones included) on a fresh import."""
    code = "import deltadistill as dd\nmissing=[n for n in dd.__all__ if getattr(dd, n, None) is None]\nprint(missing)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
    for name in ("core", "measure", "stream", "teachers", "runtime", "train", "video", "metrics"):
        assert importlib.import_module(f"deltadistill.{name}") is getattr(dd, name)


def _commands() -> list[str]:
    from typer.main import get_command

    from deltadistill.apps.cli import app

    return sorted(get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", [None, *_commands()])
def test_every_cli_command_has_help(command: str | None) -> None:
    """``deltadistill [COMMAND] --help`` exits 0 and prints a usage line."""
    args = [sys.executable, "-m", "deltadistill", *([command] if command else []), "--help"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr[-500:]
