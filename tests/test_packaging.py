"""Installing kaifong puts only the `kaifong` namespace on the path (issue 2, must-show 2)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_only_the_kaifong_namespace(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # --no-deps: this checks the layout of *our* wheel; the package __init__ modules import
    # nothing heavy, so the namespace imports without the dependencies installed.
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                   check=True, cwd=tmp_path, capture_output=True)
    ok = subprocess.run([py, "-c", "import kaifong.agents, kaifong.streams, kaifong.schemas; "
                         "import importlib.resources as r; "
                         "print(r.files('kaifong.schemas').joinpath('json/incident-reported.schema.json').is_file())"],
                        cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "True"  # the JSON Schemas ship as package data
    for generic in ("agents", "streams", "schemas"):
        bad = subprocess.run([py, "-c", f"import {generic}"], cwd=tmp_path, capture_output=True, text=True)
        assert bad.returncode != 0, f"`import {generic}` must fail after installing kaifong"
        assert "ModuleNotFoundError" in bad.stderr
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    top_level = {p.name for p in Path(site).iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    assert "kaifong" in top_level
    assert not top_level & {"agents", "streams", "schemas", "tests", "deploy"}
    _ = sys
