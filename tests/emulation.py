"""What the aarch64 tests share: targets, the emulated Python (tools/aarch64_env.py), bundles for aarch64
and running them there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tvm_convt import cli
from tvm_convt.linker import find_cross_linker
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.params import Workload
from tvm_convt.suite import write_suite

REPO = Path(__file__).resolve().parent.parent
ELF_MACHINE_AARCH64 = 183


def aarch64(mcpu: str | None = "cortex-a76", **extra) -> dict:
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", **({"mcpu": mcpu} if mcpu else {}), **extra}


needs_cross_linker = pytest.mark.skipif(find_cross_linker("aarch64") is None,
                                        reason="no aarch64 cross linker (aarch64-linux-gnu-gcc or ld.lld)")

# Every padding mode, groups (depthwise too), dilation, output padding, no bias, float64 (batch 0: below).
SWEEP = {
    "zeros s2": Workload(P(8, 6, 4, stride=2, padding=1), 2, 13),
    "reflect": Workload(P(4, 4, 4, stride=2, padding=2, groups=2, bias=False, padding_mode="reflect"), 1, 9),
    "replicate dilated": Workload(P(6, 4, 3, stride=3, padding=3, dilation=2, output_padding=1,
                                    padding_mode="replicate"), 2, 11),
    "circular": Workload(P(5, 7, 5, stride=2, groups=1, padding_mode="circular"), 1, 8),
    "depthwise": Workload(P(16, 16, 7, padding=3, groups=16), 1, 40),
    "grouped op": Workload(P(32, 16, 8, stride=4, padding=2, output_padding=3, groups=4), 3, 17),
    "float64": Workload(P(3, 2, 3, dilation=2, output_padding=1, stride=2), 1, 7, "float64"),
}


@pytest.fixture(scope="module")
def emulated_python() -> Path:
    """tools/aarch64_env.py's interpreter (made or reused), or a skip saying why there is none."""
    done = subprocess.run([sys.executable, str(REPO / "tools" / "aarch64_env.py"), "--check"],
                          capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "aarch64_env.py failed")
    return Path(done.stdout.strip().splitlines()[-1])


def bundle_for(tmp: Path, suite: dict[str, Workload], *extra: str, target: dict | None = None) -> Path:
    tmp.mkdir(exist_ok=True)
    suite_file = write_suite(tmp / "suite.json", suite)
    folder = tmp / "bundle"
    assert cli.main(["bundle", "--suite", str(suite_file), "--target", json.dumps(target or aarch64()),
                     "--python", "3.11", "-o", str(folder), *extra]) == 0
    return folder


def emulated(python: Path, args: list[str], bundle: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The emulated Python with the bundle alone on its path (no site-packages of this machine)."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(bundle), "HOME": str(bundle)}
    return subprocess.run([str(python), "-s", *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=bundle)


def check_lines(done: subprocess.CompletedProcess, names) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == list(names), lines
    assert all(line.endswith(": OK") for line in lines), lines
