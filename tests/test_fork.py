"""Processes made by fork after the parent has run kernels (multiprocessing's fork, DataLoader workers,
servers that preload): issue #27's first problem, a child that hung forever on its first call."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import needs_torch

# Each script runs a kernel on both threads in the parent, forks, runs in the child, and prints
# what the child computed against the parent's answer.
SCRIPTS = {
    "os.fork": """
        import os, numpy as np, tvm_convt
        from tvm_convt.target import set_cpu_threads
        set_cpu_threads(2)
        layer = tvm_convt.ConvTranspose1d(16, 8, 8, stride=4, padding=2, seed=0)
        x = np.random.default_rng(0).standard_normal((2, 16, 300)).astype("float32")
        y = layer(x)
        pid = os.fork()
        if pid == 0:
            child = layer(x)   # the parent's module
            other = tvm_convt.ConvTranspose1d(8, 4, 4, stride=2, seed=1)(x[:, :8, :77])  # compiled here
            print("child", float(abs(child - y).max()), other.shape, flush=True)
            try:
                set_cpu_threads(2)
            except ValueError as err:
                print("threads:", err, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent", float(abs(layer(x) - y).max()), flush=True)
    """,
    "multiprocessing": """
        import multiprocessing as mp, numpy as np, tvm_convt
        layer = tvm_convt.ConvTranspose1d(16, 8, 8, stride=4, padding=2, seed=0)
        x = np.random.default_rng(0).standard_normal((1, 16, 200)).astype("float32")
        y = layer(x)
        def work(i):
            return float(abs(layer(x) - y).max())
        if __name__ == "__main__":
            with mp.get_context("fork").Pool(2) as pool:
                print("child", max(pool.map(work, range(4))), flush=True)
    """,
    "torch": """
        import os, torch, tvm_convt.torch as tt
        torch.manual_seed(0)
        layer = tt.ConvTranspose1d(16, 8, 8, stride=4, padding=2)
        x = torch.randn(2, 16, 150)
        with torch.no_grad():
            y = layer(x)
            pid = os.fork()
            if pid == 0:
                print("child", float((layer(x) - y).abs().max()), flush=True)
                os._exit(0)
            os.waitpid(pid, 0)
    """,
}


@pytest.mark.parametrize("how", [pytest.param(k, marks=needs_torch) if k == "torch" else k for k in SCRIPTS])
def test_a_forked_child_computes_what_its_parent_does(how, tmp_path):
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("no fork on this platform")
    script = tmp_path / "fork_case.py"
    script.write_text(textwrap.dedent(SCRIPTS[how]))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert float(lines["child"].split()[0]) == 0.0, result.stdout
    if how == "os.fork":
        assert "(2, 4, 156)" in lines["child"] and float(lines["parent"]) == 0.0, result.stdout
        assert lines["threads:"].startswith("conv_transpose1d: a process made by fork runs TVM's kernels on one "
                                            "thread"), result.stdout
