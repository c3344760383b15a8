"""aarch64 (issue #25), checked on this x86 machine: targets and cross-linking here; modules run under
emulation (qemu-user and Debian's arm64 Python, made by tools/aarch64_env.py) through real aarch64
bundles; tuning through a real RPC tracker with the RPC server running under emulation.

Emulated tests skip, with the reason, where the emulator cannot be made (no apt, not root)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_convt
from tvm_convt import cli
from tvm_convt.linker import find_cross_linker
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.params import Workload
from tvm_convt.suite import default_suite, write_suite
from tvm_convt.target import resolve_target, target_key
from tvm_convt.tuning import tune

from conftest import rpc_device

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


# -- under emulation -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emulated_python() -> Path:
    """tools/aarch64_env.py's interpreter (made or reused), or a skip saying why there is none."""
    done = subprocess.run([sys.executable, str(REPO / "tools" / "aarch64_env.py"), "--check"],
                          capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "aarch64_env.py failed")
    return Path(done.stdout.strip().splitlines()[-1])


def _bundle(tmp: Path, suite: dict[str, Workload], *extra: str, target: dict | None = None) -> Path:
    tmp.mkdir(exist_ok=True)
    suite_file = write_suite(tmp / "suite.json", suite)
    folder = tmp / "bundle"
    assert cli.main(["bundle", "--suite", str(suite_file), "--target", json.dumps(target or aarch64()),
                     "--python", "3.11", "-o", str(folder), *extra]) == 0
    return folder


def _emulated(python: Path, args: list[str], bundle: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The emulated Python with the bundle alone on its path (no site-packages of this machine)."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(bundle), "HOME": str(bundle)}
    return subprocess.run([str(python), "-s", *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=bundle)


def _check_lines(done: subprocess.CompletedProcess, names) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == list(names), lines
    assert all(line.endswith(": OK") for line in lines), lines


@needs_cross_linker
@pytest.mark.slow
def test_the_default_suite_and_a_sweep_run_on_aarch64(emulated_python, tmp_path):
    """Every default-suite layer and every kind of layer, for Pi 5's core, against the float64 reference
    computed by the emulated NumPy; the bundle holds aarch64 libraries only."""
    suite = {**default_suite(), **SWEEP}
    bundle = _bundle(tmp_path, suite)
    for lib in bundle.rglob("*.so"):
        header = lib.read_bytes()[:20]
        assert struct.unpack_from("<H", header, 18)[0] == ELF_MACHINE_AARCH64, lib
    assert not list(bundle.rglob("libtvm_compiler*"))
    _check_lines(_emulated(emulated_python, [str(bundle / "run.py"), "--check"], bundle), suite)


# Run by the emulated Python in an any-length bundle: each module at many batches and lengths, batched
# and unbatched, against the reference; prints the largest error per module.
EVERY_LENGTH = r"""
import json, sys
import numpy as np
from tvm_convt import CompiledConvTranspose1d
from tvm_convt.reference import conv_transpose1d_reference
manifest = json.load(open("manifest.json"))
rng = np.random.default_rng(0)
errors = {}
for entry in manifest["workloads"]:
    m = CompiledConvTranspose1d.load(entry["library"])
    p, worst = m.params, 0.0
    for batch, length in ((None, 1), (1, 2), (2, 7), (1, 31), (3, 64), (None, 97), (1, 250)):
        if length < p.min_length:
            continue
        shape = (p.in_channels, length) if batch is None else (batch, p.in_channels, length)
        x = rng.standard_normal(shape).astype(m.workload.dtype)
        w = rng.standard_normal(p.weight_shape).astype(m.workload.dtype)
        b = rng.standard_normal(p.out_channels).astype(m.workload.dtype) if p.bias else None
        y = m(x, w, b)
        ref = conv_transpose1d_reference(x[None] if batch is None else x, w, b, p)
        ref = ref[0] if batch is None else ref
        assert y.shape == ref.shape, (entry["name"], y.shape, ref.shape)
        worst = max(worst, float(np.max(np.abs(y - ref))) / max(1.0, float(np.max(np.abs(ref)))))
    errors[entry["name"]] = worst
    try:  # a module refuses a batch of 0 in one sentence (the layer answers it without one)
        m(np.zeros((0, p.in_channels, 9), m.workload.dtype), w, b)
        errors[entry["name"]] = "batch 0 ran"
    except ValueError as err:
        assert "needs a batch of at least 1" in str(err), err
print(json.dumps(errors))
"""


@needs_cross_linker
@pytest.mark.slow
def test_modules_of_every_length_run_on_aarch64(emulated_python, tmp_path):
    """The symbolic modules (one function per length range), on Graviton2's core: lengths 1 to 250 across
    the ranges, batches 1-3 and unbatched (batch 0 refused in a sentence), every kind of layer of the sweep and two default-suite ones."""
    default = default_suite()
    suite = {**SWEEP, "hifigan_v1_up0": default["hifigan_v1_up0"], "encodec_up3": default["encodec_up3"]}
    bundle = _bundle(tmp_path, suite, "--any-length", target=aarch64("neoverse-n1"))
    (bundle / "every_length.py").write_text(EVERY_LENGTH)
    done = _emulated(emulated_python, ["every_length.py"], bundle)
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout.splitlines()[-1])
    tolerance = json.loads((bundle / "manifest.json").read_text())["tolerance"]
    assert set(errors) == set(suite)
    for name, error in errors.items():
        assert error <= tolerance[suite[name].dtype], (name, error)


@needs_cross_linker
@pytest.mark.slow
def test_tuning_on_an_emulated_board_over_rpc(emulated_python, tmp_path):
    """The board workflow: a tracker here, the RPC server of an aarch64 bundle under emulation, `tvm-convt
    tune --rpc-tracker`, the records applied by compile, and a bundle of the tuned module checked there."""
    target = json.dumps(aarch64("neoverse-n1"))
    workload = Workload(P(32, 16, 4, stride=2, padding=1), 1, 24)
    server_bundle = _bundle(tmp_path / "server", {"layer": workload})
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(server_bundle), "HOME": str(server_bundle)}
    logs = tmp_path / "logs"
    with rpc_device([str(emulated_python), "-s"], "pi", env=env, cwd=str(server_bundle), timeout=300) as tracker:
        code = cli.main(["tune", "--in-channels", "32", "--out-channels", "16", "--kernel-size", "4", "--stride", "2",
                         "--padding", "1", "--length", "24", "--target", target, "--rpc-tracker", tracker,
                         "--rpc-key", "pi", "--trials", "4", "--logs", str(logs)])
    assert code == 0
    compiled = tvm_convt.compile(workload.params, batch=1, length=24, target=target, logs=logs)
    assert compiled.metadata.schedule == f"tuned:{logs / 'llvm-aarch64-neon'}"
    bundle = _bundle(tmp_path / "tuned", {"layer": workload}, "--logs", str(logs), target=aarch64("neoverse-n1"))
    assert json.loads((bundle / "manifest.json").read_text())["workloads"][0]["schedule"].startswith("tuned:")
    _check_lines(_emulated(emulated_python, [str(bundle / "run.py"), "--check"], bundle), ["layer"])


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
