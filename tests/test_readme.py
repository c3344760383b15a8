"""Issue #27, 15: the README's Python snippets run as written, each in a fresh interpreter (in a
temporary folder, since one exports a module there). No assertion on any time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_torch

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_its_four_python_snippets():
    assert len(SNIPPETS) == 4
    assert "import tvm_convt\n" in SNIPPETS[0] and "tvm_convt.torch" in SNIPPETS[1] and ".stream(" in SNIPPETS[2]
    assert "relax" in SNIPPETS[3]


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_python_api_snippet_runs(tmp_path):
    result = _run(SNIPPETS[0], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "hifigan_up1.so").is_file() and (tmp_path / "hifigan_up1.json").is_file()


def test_the_streams_snippet_runs_and_matches(tmp_path):
    result = _run(SNIPPETS[2], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) <= 1e-6, result.stdout


@needs_torch
@pytest.mark.parametrize("index", [1, 3], ids=["pytorch", "relax"])
def test_the_pytorch_and_relax_snippets_run(index, tmp_path):
    result = _run(SNIPPETS[index], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_readme_states_the_pytorch_integrations_limits():
    """Issue #27, 16: the README was silent on loading an exported program, torch.func, TorchScript
    and fork."""
    text = " ".join(README.read_text().split())
    for phrase in ("(`torch.export.load`) after `import tvm_convt.torch`", "`torch.func.grad` (and `vjp`, `jacrev`) do not",
                   "TorchScript (`torch.jit.trace`, `torch.jit.script`) is not supported",
                   "A process made by `fork`", "runs TVM's kernels on one thread"):
        assert phrase in text, phrase
