"""aarch64 (issue #25), checked on this x86 machine: targets and cross-linking here; the default suite and a
sweep of every kind of layer run under emulation (qemu-user and Debian's arm64 Python, made by
tools/aarch64_env.py) through a real aarch64 bundle; the inner loops by llvm-mca's models of ARM cores.
tests/test_aarch64_board.py has the modules of every length and the board workflow over RPC.

Emulated tests skip, with the reason, where the emulator cannot be made (no apt, not root)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import tvm_convt
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.suite import default_suite
from tvm_convt.target import resolve_target, target_key
from tvm_convt.tuning import tune

from conftest import assert_close, random_inputs
from emulation import (ELF_MACHINE_AARCH64, REPO, SWEEP, aarch64, bundle_for, check_lines,  # noqa: F401
                       emulated, emulated_python, needs_cross_linker)


# -- targets and linking (no emulator needed) ------------------------------------------------------
@pytest.mark.parametrize("mcpu, key", [
    ("cortex-a72", "llvm-aarch64-neon"), ("cortex-a76", "llvm-aarch64-neon"), ("neoverse-n1", "llvm-aarch64-neon"),
    ("neoverse-v1", "llvm-aarch64-sve"), (None, "llvm-aarch64-neon"),
])
def test_aarch64_targets_name_their_hardware_class(mcpu, key):
    assert target_key(resolve_target(aarch64(mcpu))) == key
    assert target_key(resolve_target(aarch64(None, mattr=["+neon"]))) == "llvm-aarch64-neon"


def test_an_unknown_aarch64_cpu_is_refused_with_close_names():
    with pytest.raises(ValueError, match=r"^conv_transpose1d: mcpu must be a CPU name LLVM knows for this "
                                         r"triple, got mcpu='neoverse-n9'; close names: .*neoverse-n1"):
        resolve_target(aarch64("neoverse-n9"))


@pytest.mark.parametrize("mattr, said", [
    (["+avx2"], "mattr entries must be \\+feature or -feature for an instruction-set feature of aarch64 such as "
                "\\+sve or \\+fullfp16, got '\\+avx2'"),
    (["+bogus"], "mattr entries must be .* got '\\+bogus'"),
    (["-neon"], "mattr cannot switch off neon, which every aarch64 CPU has, got '-neon'"),
])
def test_aarch64_features_are_checked_like_this_machines(mattr, said):
    """LLVM ignored an unknown feature with a warning and built for what was left."""
    with pytest.raises(ValueError, match="^conv_transpose1d: " + said):
        resolve_target(aarch64("neoverse-n1", mattr=mattr))
    resolve_target(aarch64("cortex-a76", mattr=["+sve", "-fullfp16"]))


@needs_cross_linker
def test_a_module_for_aarch64_is_an_aarch64_shared_library_that_this_machine_refuses_to_run(tmp_path):
    compiled = tvm_convt.compile(P(8, 6, 4, stride=2), target=aarch64("neoverse-n1"))
    header = compiled.library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and struct.unpack_from("<H", header, 18)[0] == ELF_MACHINE_AARCH64
    assert not compiled.runnable and compiled.metadata.target_key == "llvm-aarch64-neon"
    with pytest.raises(RuntimeError, match="needs an aarch64 CPU"):
        compiled(np.zeros((1, 8, 5), "float32"), np.zeros((8, 6, 4), "float32"), np.zeros(6, "float32"))
    compiled.export(tmp_path / "m.so")


def test_tuning_for_aarch64_without_a_board_says_how(tmp_path):
    with pytest.raises(ValueError, match="needs an aarch64 CPU to measure on: measure on one over RPC"):
        tune({"up": SWEEP["zeros s2"]}, target=aarch64(), trials=2, logs=tmp_path)


# Run by the emulated Python in a bundle: every module on the inputs the test saved, the outputs saved back.
RUN_SAVED = r"""
import json, sys
import numpy as np
from tvm_convt import CompiledConvTranspose1d
manifest = json.load(open("manifest.json"))
for i, entry in enumerate(manifest["workloads"]):
    args = np.load(f"io/in{i}.npz")
    y = CompiledConvTranspose1d.load(entry["library"])(args["x"], args["w"], args["b"] if "b" in args else None)
    np.save(f"io/out{i}.npy", y)
"""


@needs_cross_linker
@pytest.mark.slow
@pytest.mark.arm
def test_the_default_suite_and_a_sweep_run_on_aarch64(emulated_python, tmp_path):
    """Every default-suite layer and every kind of layer, for Pi 5's core, against the float64 reference
    (computed here: NumPy under emulation took twice as long as the modules); the bundle holds aarch64
    libraries only."""
    suite = {**default_suite(), **SWEEP}
    bundle = bundle_for(tmp_path, suite)
    for lib in bundle.rglob("*.so"):
        header = lib.read_bytes()[:20]
        assert struct.unpack_from("<H", header, 18)[0] == ELF_MACHINE_AARCH64, lib
    assert not list(bundle.rglob("libtvm_compiler*"))
    (bundle / "io").mkdir()
    inputs = []
    for i, w in enumerate(suite.values()):
        x, weight, b = random_inputs(w.params, w.batch, w.length, w.dtype, seed=i)
        np.savez(bundle / "io" / f"in{i}.npz", x=x, w=weight, **({} if b is None else {"b": b}))
        inputs.append((x, weight, b))
    (bundle / "run_saved.py").write_text(RUN_SAVED)
    done = emulated(emulated_python, ["run_saved.py"], bundle)
    assert done.returncode == 0, done.stderr
    for i, (w, (x, weight, b)) in enumerate(zip(suite.values(), inputs)):
        assert_close(np.load(bundle / "io" / f"out{i}.npy"), conv_transpose1d_reference(x, weight, b, w.params),
                     w.dtype)


# -- the inner loops, by llvm-mca's models of the cores ----------------------------------------------
DENSE = ("hifigan_v1_up0", "hifigan_v1_up1", "hifigan_train_up0", "encodec_up0", "dilated_s1", "grouped_g8")


@pytest.fixture(scope="module")
def llvm_mca() -> str:
    """llvm-mca-19 (Neoverse N1 and V1 models; LLVM 14's model every core as a Cortex-A57), installed by
    tools/aarch64_env.py where apt can, or a skip."""
    subprocess.run([sys.executable, str(REPO / "tools" / "aarch64_env.py"), "--mca"], capture_output=True,
                   timeout=900, check=False)
    if shutil.which("llvm-mca-19") is None:
        pytest.skip("llvm-mca-19 is not installed (apt-get install llvm-19)")
    return "llvm-mca-19"


@pytest.mark.slow
@pytest.mark.arm
def test_the_default_rules_inner_loops_keep_the_fma_pipes_busy_without_spills(llvm_mca, tmp_path):
    """Issue #25's proxy for speed on ARM: on the dense default-suite layers, every module form's inner loop
    is predicted at 80 % or more of the FMA pipes of Cortex-A76, Neoverse N1 and V1, with no load or store
    off the stack in it."""
    out = tmp_path / "mca.json"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "mca_table.py"), "--mca", llvm_mca, "--layers",
                           *DENSE, "--json", str(out)], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["layer"], r["mcpu"]) for r in rows} == {(n, c) for n in DENSE
                                                      for c in ("cortex-a76", "neoverse-n1", "neoverse-v1")}
    slow = [(r["layer"], r["module"], r["mcpu"], round(r["peak_fraction"], 2)) for r in rows
            if r["peak_fraction"] < 0.8]
    spills = [(r["layer"], r["module"], r["mcpu"], r["spill_loads"], r["spill_stores"]) for r in rows
              if r["spill_loads"] or r["spill_stores"]]
    assert not slow and not spills, (slow, spills)
