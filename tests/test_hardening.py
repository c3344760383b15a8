"""Damaged files, unusable caches, extreme sizes and bad targets (issue #9): a clear error or a
correct result, never a crash, a hang or a silently wrong answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import tvm_convt
from tvm_convt import CompiledConvTranspose1d, ConvTranspose1d, ConvTranspose1dParams, Workload
from tvm_convt.build import cache_dir, sidecar_path
from tvm_convt.errors import CacheWarning, ModuleFileError
from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, needs_torch, random_inputs, torch

P = ConvTranspose1dParams
LAYER = P(4, 6, 5, stride=2, padding=1)


def _check_layer(compiled: CompiledConvTranspose1d, params: ConvTranspose1dParams = LAYER) -> None:
    w = compiled.workload
    x, wt, b = random_inputs(params, w.batch, w.length, w.dtype, seed=3)
    assert_close(compiled(x, wt, b), conv_transpose1d_reference(x, wt, b, params), w.dtype)


# -- damaged cache entries -------------------------------------------------------------------
def _truncate(lib):
    os.truncate(lib, 1000)


def _random_bytes(lib):
    lib.write_bytes(np.random.default_rng(0).bytes(5000))


def _empty(lib):
    lib.write_bytes(b"")


def _same_size_other_bytes(lib):
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))


def _edit_sidecar(field, value):
    def edit(lib):
        side = sidecar_path(lib)
        meta = json.loads(side.read_text())
        meta["workload"]["params"][field] = value
        side.write_text(json.dumps(meta))
    return edit


def _sidecar_not_json(lib):
    sidecar_path(lib).write_text("{not json")


def _sidecar_old_format(lib):
    side = sidecar_path(lib)
    meta = json.loads(side.read_text())
    meta["format"] = 1
    side.write_text(json.dumps(meta))


DAMAGE = {
    "truncated": _truncate, "random bytes": _random_bytes, "empty": _empty,
    "one byte flipped": _same_size_other_bytes,
    "sidecar padding_mode edited": _edit_sidecar("padding_mode", "circular"),
    "sidecar stride edited": _edit_sidecar("stride", 3),
    "sidecar not JSON": _sidecar_not_json, "sidecar of format 1": _sidecar_old_format,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_cache_entry_is_reported_removed_and_rebuilt(damage, tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_CONVT_CACHE", str(tmp_path / "cache"))
    first = tvm_convt.compile(LAYER, batch=1, length=7)
    damage(first.library)
    with pytest.warns(CacheWarning, match="removed a damaged module from the cache, rebuilding it"):
        again = tvm_convt.compile(LAYER, batch=1, length=7)
    assert again.library == first.library
    _check_layer(again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry verifies
        _check_layer(tvm_convt.compile(LAYER, batch=1, length=7))


def test_a_truncated_cache_entry_does_not_kill_the_next_process(tmp_path):
    """The reported failure: SIGBUS (exit 135) in every later process, until the cache was deleted."""
    code = textwrap.dedent("""
        import numpy as np, tvm_convt
        p = tvm_convt.ConvTranspose1dParams(4, 6, 5, stride=2, padding=1)
        c = tvm_convt.compile(p, batch=1, length=7)
        x = np.ones((1, 4, 7), "float32"); w = np.ones(p.weight_shape, "float32")
        print(c.library, float(c(x, w, np.zeros(6, "float32")).sum()))
    """)
    env = {**os.environ, "TVM_CONVT_CACHE": str(tmp_path)}

    def run():
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=300)

    first = run()
    assert first.returncode == 0, first.stderr
    library, total = first.stdout.split()
    os.truncate(library, 1000)
    second = run()
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == [library, total]
    assert "removed a damaged module from the cache" in second.stderr


# -- load and export ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled():
    return tvm_convt.compile(LAYER, batch=1, length=7)


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_load_refuses_a_file_that_does_not_match_its_sidecar(damage, compiled, tmp_path):
    path = compiled.export(tmp_path / "layer.so")
    damage(path)
    with pytest.raises(ValueError, match="^conv_transpose1d: (library|metadata sidecar) .*"):
        CompiledConvTranspose1d.load(path)


def test_load_refuses_another_library_under_a_sidecar(compiled, tmp_path):
    other = tvm_convt.compile(P(4, 6, 3), batch=1, length=7).export(tmp_path / "other.so")
    path = compiled.export(tmp_path / "layer.so")
    path.write_bytes(other.read_bytes())
    with pytest.raises(ModuleFileError, match="does not match its sidecar"):
        CompiledConvTranspose1d.load(path)


def test_load_of_folders_and_missing_files(compiled, tmp_path):
    (tmp_path / "dir.so").mkdir()
    with pytest.raises(FileNotFoundError, match="no compiled module at"):
        CompiledConvTranspose1d.load(tmp_path / "dir.so")
    path = compiled.export(tmp_path / "layer.so")
    sidecar_path(path).unlink()
    sidecar_path(path).mkdir()
    with pytest.raises(ValueError, match="metadata sidecar .* must be a file, got a folder"):
        CompiledConvTranspose1d.load(path)


def test_a_sidecar_nested_too_deeply_is_refused(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    (tmp_path / "deep.so").write_bytes(b"x")
    with pytest.raises(ModuleFileError, match="nests its JSON too deeply to read"):
        CompiledConvTranspose1d.load(tmp_path / "deep.so")


def test_a_library_changed_after_load_is_refused_at_first_use(compiled, tmp_path):
    loaded = CompiledConvTranspose1d.load(compiled.export(tmp_path / "layer.so"))
    _truncate(loaded.library)
    with pytest.raises(ModuleFileError, match="does not match its sidecar"):
        _check_layer(loaded)


def test_a_loaded_module_survives_its_file_being_truncated(compiled, tmp_path):
    """The module runs from a private snapshot of the verified bytes, not from the file."""
    loaded = CompiledConvTranspose1d.load(compiled.export(tmp_path / "layer.so"))
    _check_layer(loaded)
    _truncate(loaded.library)
    _check_layer(loaded)


def test_export_into_a_missing_folder_is_an_error(compiled, tmp_path):
    with pytest.raises(FileNotFoundError, match="export folder .*missing does not exist"):
        compiled.export(tmp_path / "missing" / "layer.so")


# -- an unusable cache ---------------------------------------------------------------------------
def _a_file(tmp):
    (tmp / "a-file").write_text("x")
    return tmp / "a-file"


@pytest.mark.parametrize("make_cache", [
    _a_file,  # FileExistsError
    lambda tmp: _a_file(tmp) / "cache",  # NotADirectoryError
    lambda tmp: "/proc/tvm_convt_cache",  # not creatable, even by root
], ids=["cache is a file", "cache under a file", "cache in /proc"])
def test_an_unusable_cache_compiles_into_a_temporary_folder(make_cache, tmp_path, monkeypatch):
    cache = make_cache(tmp_path)
    monkeypatch.setenv("TVM_CONVT_CACHE", str(cache))
    with pytest.warns(CacheWarning, match="cannot use the module cache .*set TVM_CONVT_CACHE"):
        compiled = tvm_convt.compile(LAYER, batch=1, length=9)
    assert not str(compiled.library).startswith(str(cache))
    _check_layer(compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not per call
        assert tvm_convt.compile(LAYER, batch=1, length=9).library == compiled.library
    assert cache_dir() == type(cache_dir())(cache)


# -- compile time bounded in the kernel size ---------------------------------------------------
@pytest.mark.parametrize("params, length", [
    (P(4, 3, 512), 10), (P(4, 3, 1024), 10), (P(4, 3, 2048), 10), (P(4, 3, 4096), 10),
    (P(4, 3, 300), 400),  # more input samples than taps: the reduction runs over the taps
    (P(32, 32, 64, stride=2, padding=5, dilation=3), 40),  # the GEMM rule
    (P(8, 8, 257, groups=8, padding_mode="reflect", padding=20), 50),
    (P(6, 6, 200, stride=3, groups=3, dilation=2, output_padding=1), 30),
])
def test_long_kernels_compile_quickly_and_correctly(params, length):
    start = time.perf_counter()
    compiled = tvm_convt.compile(params, batch=2, length=length, use_cache=False)
    assert time.perf_counter() - start < 10
    _check_layer(compiled, params)


# -- sizes that 32-bit indices cannot reach -------------------------------------------------------
@pytest.mark.parametrize("make, pattern", [
    (lambda: P(4, 3, 2**31), r"the weight must have fewer than 2\*\*31 elements"),
    (lambda: P(4, 3, 3, stride=2**70), "stride must fit in a 64-bit integer"),
    (lambda: P(4, 3, 3, padding=-2**64), "padding must fit in a 64-bit integer"),
    (lambda: P(4, 3, 3, dilation=2**31), r"the kernel's span .* must have fewer than 2\*\*31"),
    (lambda: Workload(P(4, 3, 4, stride=2**40), 1, 10), r"the gathered output .* fewer than 2\*\*31"),
    (lambda: Workload(P(4, 3, 4, stride=2**31 - 1), 1, 10), r"the gathered output .* fewer than 2\*\*31"),
    (lambda: Workload(P(4, 3, 4), 2**31, 10), r"the input must have fewer than 2\*\*31 elements"),
    (lambda: Workload(P(4, 3, 4), 1, 2**31), r"the input must have fewer than 2\*\*31 elements"),
    (lambda: Workload(P(4, 3, 4), 1, 2**70), "length must fit in a 64-bit integer"),
    (lambda: Workload(P(64, 64, 1024), 64, 1024), r"col .* fewer than 2\*\*31 .* split the batch"),
    (lambda: Workload(P(4, 3, 4, stride=4096, padding=2**31 - 4096), 1, 2**20),
     r"the output before cropping.* fewer than 2\*\*31"),
])
def test_sizes_beyond_32_bit_indices_are_refused_up_front(make, pattern):
    with pytest.raises(ValueError, match="^conv_transpose1d: " + pattern):
        make()


@pytest.fixture
def no_compiling(monkeypatch):
    def must_not_compile(*args, **kwargs):
        raise AssertionError("compiled a workload that needs no module or must be refused")

    monkeypatch.setattr("tvm_convt.runtime.module.build_library", must_not_compile)


def test_the_api_refuses_huge_sizes_before_compiling(no_compiling):
    x, w, b = random_inputs(P(4, 3, 4), 1, 10, "float32")
    for stride in (2**31 - 1, 2**40):
        with pytest.raises(ValueError, match=r"fewer than 2\*\*31"):
            tvm_convt.conv_transpose1d(x, w, b, stride=stride)
    with pytest.raises(ValueError, match="must fit in a 64-bit integer"):
        tvm_convt.conv_transpose1d(x, w, b, stride=2**70)
    with pytest.raises(ValueError, match="must fit in a 64-bit integer"):
        tvm_convt.compile(P(4, 3, 4), batch=2**64, length=10)


def test_a_layer_larger_than_memory_is_refused_naming_its_size():
    import psutil

    w = Workload(P(1024, 1024, 2000), 1, 1000, "float64")  # about 31 GiB in one call
    if w.working_set_bytes <= psutil.virtual_memory().total:
        pytest.skip("this machine has the memory for it")
    with pytest.raises(ValueError, match=r"one call of this layer needs 30.9 GiB .* this machine has"):
        tvm_convt.compile(w.params, batch=1, length=1000, dtype="float64")


# -- targets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, pattern", [
    ({"kind": "llvm", "mcpu": "notacpu"}, "mcpu must be a CPU name LLVM knows .*llvm_get_cpu_archlist"),
    ({"kind": "llvm", "mcpu": "znver"}, "mcpu must be a CPU name .*close names: .*znver3"),
    ({"kind": "llvm", "mcpu": 5}, "mcpu must be a CPU name"),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "znver3"}, "mcpu must be a CPU name"),
    ({"kind": "llvm", "mtriple": "garbage"}, "mtriple must start with an architecture"),
    ({"kind": "llvm", "mtriple": "x86_64garbage-linux"}, "mtriple must start with an architecture"),
    ({"kind": "cuda", "arch": "sm_xx"}, "CUDA arch must be sm_ and a compute capability"),
    ({"kind": "cuda", "arch": "sm_3"}, "CUDA arch must be"),
    ({"kind": "cuda", "arch": 90}, "CUDA arch must be"),
    ('{"kind": "llvm", "num-cores": "many"}', "TVM rejected target"),
])
def test_bad_targets_are_value_errors_before_anything_compiles(target, pattern):
    with pytest.raises(ValueError, match="^conv_transpose1d: " + pattern):
        ConvTranspose1d(4, 6, 3, target=target)


@pytest.mark.parametrize("target", [
    {"kind": "llvm", "mcpu": "znver3"}, {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
    {"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mcpu": "cortex-a9"},
    {"kind": "llvm", "mtriple": "i686-linux-gnu"}, {"kind": "cuda", "arch": "sm_90a"},
])
def test_valid_targets_still_resolve(target):
    ConvTranspose1d(4, 6, 3, target=target)


# -- batch 0 and weights ----------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("params, length, output_size", [
    (P(4, 6, 5, stride=2, padding=1), 7, None), (P(4, 6, 5, stride=3, groups=2), 7, [24]),
    (P(3, 3, 4, padding=2, padding_mode="reflect"), 5, None),
])
def test_batch_zero_gives_torchs_empty_output_without_compiling(params, length, output_size, no_compiling):
    x = np.zeros((0, params.in_channels, length), "float32")
    layer = ConvTranspose1d(params.in_channels, params.out_channels, params.kernel_size, params.stride,
                            params.padding, groups=params.groups, padding_mode=params.padding_mode)
    y = layer(x, output_size=output_size)
    theirs = torch.nn.ConvTranspose1d(params.in_channels, params.out_channels, params.kernel_size,
                                      params.stride, params.padding, groups=params.groups)
    expected = theirs(torch.from_numpy(x), output_size=output_size).shape
    if params.padding_mode != "zeros":  # torch rejects these modes; the shape is the zeros one's
        expected = (0, params.out_channels, params.output_length(length))
    assert y.shape == tuple(expected) and y.dtype == np.float32
    functional = tvm_convt.conv_transpose1d(x, layer.weight, layer.bias, params.stride, params.padding,
                                            groups=params.groups, padding_mode=params.padding_mode)
    assert functional.shape == (0, params.out_channels, params.output_length(length))


def test_batch_zero_is_still_checked_like_any_call():
    x, w, b = random_inputs(P(4, 6, 5), 0, 1, "float32")
    with pytest.raises(ValueError, match="output length must be at least 1"):
        tvm_convt.conv_transpose1d(x, w, b, padding=9)
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        tvm_convt.conv_transpose1d(x, w.astype("float64"), b)


@pytest.mark.parametrize("target", [{"kind": "cuda", "arch": "sm_90"}, "llvm"], ids=["gpu", "cpu"])
def test_layer_weights_are_read_only_on_every_target(target):
    layer = ConvTranspose1d(4, 6, 3, target=target, seed=0)
    with pytest.raises(ValueError, match="read-only"):
        layer.weight[:] = 0
    with pytest.raises(ValueError, match="read-only"):
        layer.bias[:] = 0
    layer.weight = np.zeros((4, 6, 3), "float32")  # assignment is how to change them
    assert not layer.weight.any()


def test_run_checks_the_callers_tensors_and_never_blames_the_file():
    """Issue #27, 10: a wrong shape, dtype or count given to run() was a ModuleFileError about the
    sidecar; the file is fine, and the message now names the tensor."""
    import tvm

    compiled = tvm_convt.compile(ConvTranspose1dParams(16, 8, 4, stride=2), prepack_weight=True)
    x, w, b = random_inputs(compiled.params, 2, 20, "float32")
    weights = compiled.prepare_weights(w, b)
    xd = compiled.to_device(x, "input")
    assert_close(compiled.run(xd, weights), conv_transpose1d_reference(x, w, b, compiled.params), "float32")
    cases = [
        ((xd, weights[:1]), ValueError, r"run takes the weights as prepare_weights returns them, \[weight, bias\]"),
        ((xd, weights[0]), ValueError, "got Tensor"),
        ((tvm.runtime.tensor(x.astype("float64")), weights), TypeError, "input must have dtype float32"),
        ((tvm.runtime.tensor(x[:, :8]), weights), ValueError, r"input must have shape \(batch, 16, L_in\)"),
        ((x, weights), TypeError, "run takes TVM tensors .* got input of type ndarray"),
        ((xd, [weights[1], weights[0]]), ValueError, "weight must have shape"),
        ((xd, [tvm.runtime.tensor(w), weights[1]]) if compiled.weight_packed else (xd, [weights[0], weights[0]]),
         ValueError, "must have shape"),
    ]
    for args, kind, message in cases:
        with pytest.raises(kind, match=message):
            compiled.run(*args)


def _rewrite_sidecar(lib, edit) -> None:
    """Edit the sidecar's fields and recompute its checksum, as a deliberate rewrite would: only the
    checks of the fields themselves (and the library's own argument checks) can then refuse it."""
    from tvm_convt.build import _checksum

    side = sidecar_path(lib)
    meta = json.loads(side.read_text())
    meta.pop("checksum")
    edit(meta)
    meta["checksum"] = _checksum(meta)
    side.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format=99), "format"),
    (lambda m: m["workload"]["params"].update(stride=0), "stride must be positive"),
    (lambda m: m["workload"].update(dtype="int8"), "dtype"),
    (lambda m: m["library"].update(sha256="0" * 64), "does not match its sidecar"),
], ids=["format", "stride", "dtype", "library hash"])
def test_a_rewritten_sidecar_is_refused_by_its_field_checks(compiled, tmp_path, edit, message):
    """Issue #26, 6: the edited-sidecar cases left the checksum stale, so only it was exercised."""
    path = compiled.export(tmp_path / "layer.so")
    _rewrite_sidecar(path, edit)
    with pytest.raises(ValueError, match=message):
        loaded = CompiledConvTranspose1d.load(path)
        x, w, b = random_inputs(loaded.params, loaded.workload.batch, loaded.workload.length, "float32")
        loaded(x, w, b)


def test_a_rewritten_sidecar_with_other_shapes_is_refused_by_the_library(compiled, tmp_path):
    path = compiled.export(tmp_path / "layer.so")
    _rewrite_sidecar(path, lambda m: m["workload"].update(length=9))
    loaded = CompiledConvTranspose1d.load(path)  # a valid description, of another module
    x, w, b = random_inputs(loaded.params, 1, 9, "float32")
    with pytest.raises(ModuleFileError, match="does not take the tensors its sidecar describes"):
        loaded(x, w, b)
