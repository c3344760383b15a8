"""The fuzzer (tools/fuzz.py, issue #9) over a few hundred cases of every category, and its
harness: a crash, a hang and a wrong result are each reported as bad outcomes."""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FUZZ = Path(__file__).resolve().parent.parent / "tools" / "fuzz.py"


def fuzz(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FUZZ), "--quiet", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("tvm_convt_fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_fuzz_cases_have_no_bad_outcome():
    result = fuzz("--cases", "250", "--seed", "2026", "--jobs", "2")
    assert result.returncode == 0 and "bad outcomes: 0" in result.stdout, result.stdout + result.stderr
    for category in ("params", "function", "layer", "compile", "target", "files", "cli"):
        assert f"\n{category} " in result.stdout, category


def test_crash_hang_and_wrong_result_are_reported():
    result = fuzz("--cases", "4", "--only", "selftest", "--timeout", "5", "--jobs", "2", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "BAD #1 selftest crash: the worker died (signal 11)" in out
    assert "BAD #2 selftest hang: the case ran past the 5 s limit" in out
    assert "BAD #3 selftest wrong-result" in out
    assert "replay: python tools/fuzz.py --seed 0 --replay 1 --only selftest" in out


def test_errors_are_classified(tool):
    assert tool.check_error(ValueError("conv_transpose1d: stride must be positive, got stride=0")) == "rejected"
    assert tool.check_error(RuntimeError("conv_transpose1d: this module targets cuda-sm_80 and needs a "
                                         "cuda:0 device to run, which this machine does not have")) == "rejected"
    for err, kind in [(ValueError("setting an array element"), "unprefixed-error"),
                      (AssertionError("conv_transpose1d: x"), "unexpected-error"),
                      (KeyError("conv_transpose1d: x"), "unexpected-error"),
                      (RuntimeError("conv_transpose1d: something else"), "unexpected-error")]:
        with pytest.raises(tool.Bad) as info:
            tool.check_error(err)
        assert info.value.kind == kind


def test_tvm_errors_are_bad(tool):
    import tvm

    with pytest.raises(Exception) as raised:
        tvm.runtime.load_module("/nonexistent/library.so")
    with pytest.raises(tool.Bad) as info:
        tool.check_error(raised.value)
    assert info.value.kind == "tvm-error"


def test_cli_checks(tool):
    assert tool.check_cli(0, "", ["info"]) == "ok"
    assert tool.check_cli(2, "tvm-convt compile: error: conv_transpose1d: bad\n", ["compile"]) == "rejected"
    for rc, stderr, kind in [
        (3, "", "cli-status"),
        (1, "tvm-convt compile: internal error: KeyError: x; full traceback in /tmp/t\n", "cli-internal-error"),
        (2, "Traceback (most recent call last):\n  ...\nValueError: x\n", "cli-stderr"),
        (2, "a warning\ntvm-convt compile: error: two lines\n", "cli-stderr"),
        (1, "tvm-convt bench: error: conv_transpose1d: l: tvm_convt's output differs from x\n", "wrong-result"),
    ]:
        with pytest.raises(tool.Bad) as info:
            tool.check_cli(rc, stderr, ["compile"])
        assert info.value.kind == kind


def test_values_checks(tool):
    ref = np.array([1.0, np.nan, np.inf, -2.0])
    tool.check_values(ref.astype(np.float32), ref, "float32")
    for wrong in ([1.0, 0.0, np.inf, -2.0], [1.0, np.nan, -np.inf, -2.0], [1.0, np.nan, np.inf, -2.1]):
        with pytest.raises(tool.Bad):
            tool.check_values(np.array(wrong), ref, "float64")


def test_rules_agree_with_the_library(tool):
    """The fuzzer's own statement of the parameter rules (used to catch wrong rejections)."""
    from tvm_convt import ConvTranspose1dParams

    rng = np.random.default_rng(0)
    for _ in range(300):
        kw = {name: int(rng.integers(-1, 6)) for name in tool.SIZE_FIELDS}
        kw["padding_mode"] = str(rng.choice(tool.MODES))
        try:
            ConvTranspose1dParams(**kw)
            accepted = True
        except ValueError:
            accepted = False
        assert tool.rules_allow(kw) == accepted, kw


# -- what the fuzzer found: each bug once, as a regression test ---------------------------------

import tvm_convt  # noqa: E402
from tvm_convt import CompiledConvTranspose1d, ConvTranspose1d, ConvTranspose1dParams  # noqa: E402
from tvm_convt.errors import ModuleFileError  # noqa: E402
from tvm_convt.params import check_dtype  # noqa: E402
from tvm_convt.target import missing_cpu_support, resolve_target, set_cpu_threads  # noqa: E402

P = ConvTranspose1dParams
OPERATOR = r"^conv_transpose1d: "


def test_dtype_none_and_params_that_are_not_params_are_type_errors():
    with pytest.raises(TypeError, match=OPERATOR + "dtype must be one of float32, float64, float16, bfloat16, "
                                                   "got dtype=None"):
        check_dtype(None)  # NumPy would read it as float64, PyTorch as float32
    with pytest.raises(TypeError, match=OPERATOR + "params must be a ConvTranspose1dParams, got params=None"):
        tvm_convt.compile(None, batch=1, length=4)


def test_ragged_lists_and_byte_swapped_inputs_are_refused():
    w = np.ones((2, 3, 3), "float32")
    with pytest.raises(ValueError, match=OPERATOR + "input given as a list must be rectangular"):
        tvm_convt.conv_transpose1d([[1.0, 2.0], [3.0]], w)
    for batch in (0, 1):  # batch 0 returned a native float32 array for a big-endian input
        with pytest.raises(TypeError, match=OPERATOR + "input must have dtype float32, got input.dtype=>f4"):
            tvm_convt.conv_transpose1d(np.ones((batch, 2, 4), ">f4"), w)


def test_seed_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match=OPERATOR + "seed must be non-negative, got seed=-1"):
        ConvTranspose1d(2, 2, 3, seed=-1)
    with pytest.raises(TypeError, match=OPERATOR + r"seed must be None or an int, got seed=1.5 \(float\)"):
        ConvTranspose1d(2, 2, 3, seed=1.5)
    assert ConvTranspose1d(2, 2, 3, seed=np.int64(3)).weight.shape == (2, 2, 3)


@pytest.fixture(scope="module")
def compiled():
    return tvm_convt.compile(P(2, 3, 3, stride=2), batch=1, length=5)


def test_path_arguments(compiled, tmp_path):
    with pytest.raises(TypeError, match=OPERATOR + "export path must be a str or a path, got export path=None"):
        compiled.export(None)
    with pytest.raises(ValueError, match=OPERATOR + "export path must not contain a NUL byte"):
        compiled.export(str(tmp_path / "a\0.so"))
    (tmp_path / "dir.so").mkdir()
    with pytest.raises(ValueError, match=OPERATOR + "export path .*dir.so must be a file, got a folder"):
        compiled.export(tmp_path / "dir.so")
    with pytest.raises(OSError) as info:  # the file system's reason, in the operator's words
        compiled.export(tmp_path / ("n" * 300 + ".so"))
    assert info.value.strerror.startswith("conv_transpose1d: cannot write the module to")
    with pytest.raises(TypeError, match=OPERATOR + "module path must be a str or a path, got module path=b'x.so'"):
        CompiledConvTranspose1d.load(b"x.so")
    with pytest.raises(FileNotFoundError, match=OPERATOR + "no compiled module at"):
        CompiledConvTranspose1d.load(tmp_path / ("n" * 5000 + ".so"))  # OSError from is_file before
    with pytest.raises(TypeError, match=OPERATOR + "logs must be a str or a path, got logs=b'logs'"):
        ConvTranspose1d(2, 2, 3, logs=b"logs")


def test_a_consistently_forged_sidecar_is_a_module_file_error(compiled, tmp_path):
    """A sidecar rewritten with a new checksum for other shapes: TVM's argument check refused
    the call with its own unprefixed ValueError."""
    import json

    from tvm_convt.build import _checksum

    path = compiled.export(tmp_path / "layer.so")
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    del meta["checksum"]
    meta["workload"]["length"] = 6
    side.write_text(json.dumps({**meta, "checksum": _checksum(meta)}))
    forged = CompiledConvTranspose1d.load(path)
    x, w, b = np.ones((1, 2, 6), "float32"), np.ones((2, 3, 3), "float32"), np.ones(3, "float32")
    with pytest.raises(ModuleFileError, match=OPERATOR + "library .* does not take the tensors its sidecar"):
        forged(x, w, b)


def test_thread_counts_beyond_the_cpus_are_refused():
    """50000 threads aborted the process (tvm-convt bench --threads 50000); 5000 took two minutes."""
    for threads in (0, 10**6, True, 2.0):
        with pytest.raises(ValueError, match=OPERATOR + "threads must be an int from 1 to"):
            set_cpu_threads(threads)


@pytest.mark.parametrize("target, pattern", [
    ({"kind": "llvm", "mattr": ["+16bit-mode"]}, "mattr entries must be"),  # segfault
    ({"kind": "llvm", "mattr": ["+soft-float"]}, "mattr entries must be"),  # undefined __mulsf3: exit 127
    ({"kind": "llvm", "mattr": ["+retpoline-external-thunk"]}, "mattr entries must be"),  # exit 127
    ({"kind": "llvm", "mattr": ["-64bit-mode"]}, "mattr entries must be"),  # LLVM ERROR: abort
    ({"kind": "llvm", "mattr": ["-sse"]}, "mattr cannot switch off sse"),  # LLVM error: exit 1
    ({"kind": "llvm", "mattr": ["-64bit"]}, "mattr cannot switch off 64bit"),  # LLVM ERROR: abort
    ({"kind": "llvm", "mcpu": "i386"}, "mcpu must name an x86_64 CPU, but 'i386' lacks 64bit"),  # abort
    ({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm", "mattr": ["+16bit-mode"]}}, "mattr entries"),
    ({"kind": "cuda", "arch": "sm_80", "host": {"kind": "cuda", "arch": "sm_80"}}, "a target's host must be an llvm"),
])
def test_targets_that_crashed_llvm_are_value_errors(target, pattern):
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 features")
    with pytest.raises(ValueError, match=OPERATOR + pattern):
        resolve_target(target)


def test_user_mattr_is_kept_beside_the_host_cpu():
    """{"kind": "llvm", "mattr": [...]} had its mattr replaced by the host's: AVX-512 code for -avx512f."""
    assert "-avx512f" in [str(f) for f in resolve_target({"kind": "llvm", "mattr": ["-avx512f"]}).attrs["mattr"]]


@pytest.mark.parametrize("target, said", [
    ({"kind": "llvm", "mtriple": "x86_64-pc-windows-msvc"}, "a CPU module is linked into a Linux shared library"),
    ({"kind": "llvm", "mtriple": "aarch64-apple-darwin"}, "a CPU module is linked into a Linux shared library"),
    ({"kind": "llvm", "mtriple": "riscv64-linux-gnu"}, "a CPU module is linked into a Linux shared library"),
    ({"kind": "llvm", "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}},
     "a target and its host must be for one architecture"),
])
def test_cpu_targets_this_machine_cannot_link_are_refused_before_compiling(target, said):
    """TVM compiled them and the linker failed, with a RuntimeError holding ld's output."""
    with pytest.raises(ValueError, match=OPERATOR + said):
        tvm_convt.compile(P(2, 3, 3), batch=1, length=3, target=target)


def test_a_cross_target_without_a_cross_linker_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ValueError, match=OPERATOR + "a module for aarch64 is linked by a cross linker, and none "
                                                    "of aarch64-linux-gnu-gcc, ld.lld.* is on PATH; install one "
                                                    r"\(Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu"):
        tvm_convt.compile(P(2, 3, 3), batch=1, length=3, target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"})


def test_a_module_for_a_cpu_this_machine_lacks_raises_instead_of_sigill(tmp_path):
    """mcpu=diamondrapids on an Emerald Rapids host died of SIGILL at the first call."""
    target = {"kind": "llvm", "mcpu": "emeraldrapids", "mattr": ["+egpr", "+ndd"]}
    if missing_cpu_support(resolve_target(target)) is None:
        pytest.skip("this CPU has APX")
    compiled = tvm_convt.compile(P(2, 3, 3), batch=1, length=3, target=target)
    assert not compiled.runnable
    compiled.export(tmp_path / "apx.so")  # still exportable, as a CUDA module is without a GPU
    # Other hosts lack more of emeraldrapids' features (a Zen 5 lacks AMX too): egpr and ndd among them.
    with pytest.raises(RuntimeError, match=OPERATOR + r"this module targets .* and needs a CPU with [^;]*\begpr, "
                                                      r"(\S+, )*ndd\b[^;]* to run"):
        compiled(np.ones((1, 2, 3), "float32"), np.ones((2, 3, 3), "float32"), np.ones(3, "float32"))


def test_zen_code_still_runs_on_intel():
    """The README's AVX2 measurement path (mcpu=znver3 on an Intel host): features only
    intrinsics use (sse4a, clzero, mwaitx, rdpru), or the system instructions VMs hide (pku,
    wbnoinvd, shstk: a 2-vCPU Xeon VM lacked pku and wbnoinvd), do not count as missing."""
    missing = missing_cpu_support(resolve_target({"kind": "llvm", "mcpu": "znver3"})) or ""
    exempt = ("sse4a", "clzero", "mwaitx", "rdpru", "pku", "wbnoinvd", "shstk")
    assert not any(feature in missing for feature in exempt), missing


@pytest.mark.parametrize("mutant, says", [
    ("refuse", "too few cases ran: function: 0 of"),
    ("off", "wrong-result: relative error"),
])
def test_a_broken_operator_fails_the_fuzz_run(mutant, says):
    """Issue #26, 1: with the function and the layer refusing every call the run reported "bad
    outcomes: 0" (a refused valid call counted as rejected). Each mutant now fails it."""
    result = fuzz("--cases", "60", "--seed", "2026", "--jobs", "2", "--only", "function", "--only", "layer",
                  "--mutant", mutant)
    assert result.returncode == 1, result.stdout + result.stderr
    assert says in result.stdout, result.stdout
