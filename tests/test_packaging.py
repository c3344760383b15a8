"""The wheel holds the whole package: every sub-package on disk is listed in pyproject.toml (the
runtime's split into a package once left it out of the wheel, which the editable install of the
tests did not notice), and a real wheel built from the tree has every module."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _listed() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(config["packages"]) - set(config.get("package-dir", {}))


def _on_disk() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tvm_convt").rglob("__init__.py")
            if "__pycache__" not in p.parts}


def test_every_subpackage_is_listed():
    assert _on_disk() == _listed()


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None or shutil.which("git") is None,
                    reason="needs setuptools (an offline build) and git (the tracked files)")
def test_the_wheel_holds_every_module(tmp_path):
    # Built from a copy of what git tracks: a build/ folder left in the checkout would leak into it.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "tvm_convt").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
    assert "tvm_convt/default_suite.json" in names
