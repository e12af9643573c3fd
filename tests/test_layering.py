"""The layering: import-linter's contracts (pyproject.toml) and what they cannot express.

import-linter checks the three folders (schemas ← streams ← agents) and the rooms inside
agents (core ← store ← flows ← web | report ← tools ← worker ← cli, core pure, nothing but the
CLI importing the worker). The hand-written checks here cover the rest: no relative imports, no
bare top-level ``agents``/``streams``/``schemas`` import, every Redis key named in the store's
keys module only, Lua only in ``.lua`` files, and the size limits of the rooms.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"schemas": 0, "streams": 1, "agents": 2}
#: Never import these generic names: the folders install only as kaifong.<name>.
FORBIDDEN_TOP = {"schemas", "streams", "agents"}


#: Run in a fresh interpreter: CPython 3.11.7's parser keeps its AST recursion counter per
#: interpreter, not per thread, and fails with "AST constructor recursion depth mismatch" when
#: another thread of the test process (a client library's, a fuzz test's leftover) recurses
#: meanwhile. A subprocess has no such neighbours.
_IMPORTS_SCRIPT = """
import ast, json, sys
found = []
for node in ast.walk(ast.parse(open(sys.argv[1], encoding="utf-8").read(), sys.argv[1])):
    if isinstance(node, ast.Import):
        found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            found.append((node.lineno, "." * node.level + (node.module or "")))
        elif node.module:
            found.append((node.lineno, node.module))
print(json.dumps(found))
"""


def imports(path: Path) -> list[tuple[int, str]]:
    out = subprocess.run([sys.executable, "-c", _IMPORTS_SCRIPT, str(path)], capture_output=True, text=True,
                         check=True).stdout
    return [(int(line), str(name)) for line, name in json.loads(out)]


def violations(folder: str, path: Path) -> list[str]:
    out = []
    mine = LAYERS[folder]
    for line, name in imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {name}"
        if name.startswith("."):
            out.append(f"{where}: relative imports are not allowed")
            continue
        parts = name.split(".")
        if parts[0] in FORBIDDEN_TOP:
            out.append(f"{where}: import kaifong.{name}, not a top-level {parts[0]}")
        if parts[0] == "kaifong" and len(parts) > 1 and parts[1] in LAYERS and LAYERS[parts[1]] > mine:
            out.append(f"{where}: {folder} must not import {parts[1]} (imports point one way)")
    return out


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_imports_point_one_way(folder: str) -> None:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    problems = [v for f in files for v in violations(folder, f)]
    assert not problems, "\n".join(problems)


def test_checker_catches_a_backward_import(tmp_path: Path) -> None:
    bad = ROOT / "schemas" / "_probe_backward.py"
    try:
        bad.write_text("from kaifong.agents import worker\nfrom .records import Location\n")
        problems = violations("schemas", bad)
    finally:
        bad.unlink()
    assert len(problems) == 2
    assert "must not import agents" in problems[0]
    assert "relative" in problems[1]


# -- import-linter ----------------------------------------------------------------------------------
def _tree(tmp_path: Path, *, copy: bool) -> Path:
    """A ``kaifong/`` tree import-linter can walk (setuptools' package-dir mapping hides the
    folders from it): links to the three folders, or copies of their Python files to plant in."""
    root = tmp_path / "tree"
    (root / "kaifong").mkdir(parents=True)
    for folder in LAYERS:
        target = root / "kaifong" / folder
        if copy:
            shutil.copytree(ROOT / folder, target, ignore=shutil.ignore_patterns("__pycache__", "static", "lua"))
        else:
            target.symlink_to(ROOT / folder)
    return root


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(exe), "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tree)}, timeout=300)


def test_import_linter_contracts_are_kept(tmp_path: Path) -> None:
    out = lint_imports(_tree(tmp_path, copy=False))
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", out.stdout), out.stdout


def test_import_linter_fails_on_a_planted_backward_import(tmp_path: Path) -> None:
    tree = _tree(tmp_path, copy=True)
    # The pure core reaching into a flow (and so into Redis and the metrics).
    (tree / "kaifong" / "agents" / "core" / "planted.py").write_text(
        '"""A backward import, planted."""\n\nfrom kaifong.agents.flows import intake  # noqa: F401\n')
    out = lint_imports(tree)
    assert out.returncode != 0
    assert "kaifong.agents.core.planted -> kaifong.agents.flows.intake" in out.stdout
    assert "core is pure" in out.stdout and "BROKEN" in out.stdout


# -- what import-linter cannot express ----------------------------------------------------------------
def _py_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_redis_keys_are_named_only_in_the_store_keys_module() -> None:
    keys_module = ROOT / "agents" / "store" / "keys.py"
    spelled = [f"{p.relative_to(ROOT)}:{n}" for p in _py_files("agents") if p != keys_module
               for n, line in enumerate(p.read_text("utf-8").splitlines(), 1) if "kf:" in line]
    assert not spelled, "Redis key names outside agents/store/keys.py:\n" + "\n".join(spelled)


def test_lua_lives_in_lua_files_of_the_store() -> None:
    in_python = [f"{p.relative_to(ROOT)}:{n}" for folder in LAYERS for p in _py_files(folder)
                 for n, line in enumerate(p.read_text("utf-8").splitlines(), 1) if "redis.call" in line]
    assert not in_python, "Lua inside Python:\n" + "\n".join(in_python)
    lua = sorted((ROOT / "agents").rglob("*.lua"))
    assert lua and all(p.is_relative_to(ROOT / "agents" / "store" / "lua") for p in lua)


#: Rooms stay readable: a module over 600 lines or a class over 300 is split by job.
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300

_CLASSES_SCRIPT = """
import ast, json, sys
tree = ast.parse(open(sys.argv[1], encoding="utf-8").read(), sys.argv[1])
print(json.dumps([[n.name, n.end_lineno - n.lineno + 1] for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]))
"""


def test_no_module_over_600_lines_and_no_class_over_300_under_agents() -> None:
    too_long = []
    for path in _py_files("agents"):
        n = len(path.read_text("utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {n} lines")
        out = subprocess.run([sys.executable, "-c", _CLASSES_SCRIPT, str(path)], capture_output=True, text=True,
                             check=True).stdout
        too_long += [f"{path.relative_to(ROOT)}: class {name} {size} lines" for name, size in json.loads(out)
                     if size > MAX_CLASS_LINES]
    assert not too_long, "\n".join(too_long)


def test_every_module_says_its_room() -> None:
    rooms = {"core", "store", "flows", "web", "report", "tools"}
    unsaid = []
    for path in _py_files("agents"):
        room = path.relative_to(ROOT / "agents").parts[0]
        if room in rooms and not re.search(rf"Layer: agents/{room}\b", path.read_text("utf-8")[:3000]):
            unsaid.append(str(path.relative_to(ROOT)))
    assert not unsaid, "modules whose docstring does not name their room (Layer: agents/<room>):\n" + "\n".join(
        unsaid)
