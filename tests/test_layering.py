"""Imports point one way: schemas ← streams ← agents. Parsed with ast, so nothing is imported."""

from __future__ import annotations

import json
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
