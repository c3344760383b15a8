"""Symbolic modules: one library for every batch and length, against the float64 reference and torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tvm_convt
from tvm_convt import lengths as L
from tvm_convt.build import read_sidecar, sidecar_path, write_sidecar, LibraryDigest
from tvm_convt.errors import ModuleFileError
from tvm_convt.params import ConvTranspose1dParams, SymbolicWorkload
from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, needs_torch, random_inputs, torch, torch_conv_transpose1d

P = ConvTranspose1dParams

# (id, params, prepack_weight): every CPU rule (cpu-gemm, its blocked form, cpu-direct, cpu-fallback)
# and every padding mode.
LAYERS = [
    ("gemm", P(32, 16, 16, stride=8, padding=4), True),
    ("gemm-unpacked", P(16, 32, 4, stride=2, padding=1), False),
    ("gemm-groups-dilated", P(32, 16, 4, stride=2, padding=3, groups=2, dilation=3), True),
    ("gemm-output_padding", P(16, 16, 8, stride=4, padding=2, output_padding=3), True),
    ("gemm-gcd", P(16, 8, 5, stride=4, dilation=2, padding=1), False),
    ("direct-stride1", P(16, 16, 3, padding=3, dilation=3), False),
    ("direct-grouped", P(32, 32, 8, stride=4, padding=2, groups=2), False),
    ("fallback-depthwise", P(8, 8, 4, stride=2, groups=8), False),
    ("fallback-odd", P(6, 3, 3, stride=2, bias=False), False),
    ("many-taps", P(4, 4, 40, stride=2, padding=3), False),
]
for mode in ("reflect", "replicate", "circular"):
    LAYERS += [
        (f"{mode}", P(4, 6, 5, stride=3, padding=3, output_padding=1, groups=2, dilation=2, padding_mode=mode), False),
        (f"{mode}-gemm", P(16, 16, 4, stride=2, padding=2, padding_mode=mode), True),
        (f"{mode}-direct", P(16, 16, 3, padding=2, padding_mode=mode), False),
    ]
LAYER_IDS = [case[0] for case in LAYERS]


@pytest.fixture(scope="module")
def compiled_layers():
    """Each layer's symbolic module, compiled once for the module's tests."""
    return {name: tvm_convt.compile(p, prepack_weight=packed) for name, p, packed in LAYERS}


def _lengths(compiled) -> list[int]:
    """The shortest input, small primes, and both sides of every range boundary."""
    first = compiled.params.min_length
    found = {first, first + 1, 7, 13, 31, 97}
    for r in compiled.metadata.ranges[:-1]:
        found.update({r.last, r.last + 1})
    return sorted(n for n in found if n >= first)


def _check(compiled, p, batch, length, seed=0):
    x, w, b = random_inputs(p, batch, length, "float32", seed)
    y = compiled(x, w, b)
    assert_close(y, conv_transpose1d_reference(x, w, b, p), "float32")
    return x, w, b, y


@pytest.mark.parametrize("name", LAYER_IDS)
def test_symbolic_module_matches_reference_at_every_length(compiled_layers, name):
    compiled = compiled_layers[name]
    p = compiled.params
    assert compiled.symbolic and compiled.metadata.workload == SymbolicWorkload(p, "float32")
    for i, length in enumerate(_lengths(compiled)):
        _check(compiled, p, 1 + i % 3, length, seed=i)
    _check(compiled, p, None, 11)  # unbatched


@needs_torch
@pytest.mark.parametrize("name", LAYER_IDS)
def test_symbolic_module_matches_torch(compiled_layers, name):
    compiled = compiled_layers[name]
    p = compiled.params
    for batch, length in ((1, p.min_length), (2, 23), (3, 64)):
        x, w, b, y = _check(compiled, p, batch, length)
        assert_close(y, torch_conv_transpose1d(x, w, b, p), "float32")


def test_every_length_range_runs_its_own_function(compiled_layers):
    """The ranges cover every length from the shortest one, and each runs at both its ends."""
    compiled = compiled_layers["gemm"]
    ranges = compiled.metadata.ranges
    assert len(ranges) > 1, ranges  # rows per tile and the parallel loop change with the length
    assert ranges[0].first == 1 and ranges[-1].last is None
    for r in ranges:
        for length in (r.first, r.last or r.first + 1000):
            name, shape = compiled.shape_for(2, length)
            assert name == r.function
            assert shape == (2, 16, compiled.params.output_length(length))
            _check(compiled, compiled.params, 2, length)


def test_lengths_beyond_the_probes():
    p = P(4, 3, 4, stride=2, padding=1)
    compiled = tvm_convt.compile(p)
    _check(compiled, p, 1, 2**16 + 3)


@pytest.mark.parametrize("p,too_short", [
    (P(4, 4, 3, padding=5, padding_mode="reflect"), 13),
    (P(4, 4, 2, stride=2, padding=7, padding_mode="circular"), 10),
    (P(4, 4, 2, padding=9), 17),
])
def test_shortest_length_is_the_layers(p, too_short):
    compiled = tvm_convt.compile(p)
    assert compiled.metadata.ranges[0].first == p.min_length == too_short + 1
    _check(compiled, p, 1, p.min_length)
    x = np.zeros((1, 4, too_short), "float32")
    with pytest.raises(ValueError, match="output length|padding"):
        compiled(x, np.zeros(p.weight_shape, "float32"), np.zeros(4, "float32"))


def test_refuses_bad_input_before_running(compiled_layers):
    compiled = compiled_layers["gemm"]
    w = np.zeros(compiled.params.weight_shape, "float32")
    b = np.zeros(16, "float32")
    with pytest.raises(ValueError, match="to have 32 channels, but got 31"):
        compiled(np.zeros((1, 31, 5), "float32"), w, b)
    with pytest.raises(TypeError, match="dtype float32"):
        compiled(np.zeros((1, 32, 5), "float64"), w, b)
    with pytest.raises(ValueError, match="batch of at least 1"):
        compiled(np.zeros((0, 32, 5), "float32"), w, b)


def test_index_limit_is_a_value_error_naming_the_limit(compiled_layers):
    """A call whose tensors 32-bit indices cannot reach is refused before it runs."""
    compiled = compiled_layers["gemm"]
    # col is batch x L_in x 16 x 16 elements: 2**31 of them at batch 4096, L_in 32768.
    with pytest.raises(ValueError, match="2\\*\\*31"):
        compiled.shape_for(4096, 32768)
    # The padded intermediates of a range's own function, checked with the largest length that fits.
    r = L.LengthRange(1, None, "main_0", ("n * ((l + 5) // 6 * 6) * 4096",))
    L.check_sizes(r, 1, 524_000)
    with pytest.raises(ValueError, match="takes L_in at most 524286"):
        L.check_sizes(r, 1, 524_300)


@pytest.mark.parametrize("text", ["__import__('os')", "n.__class__", "l ** 99", "open('x')", "1.5 * n", "[n]"])
def test_size_expressions_are_arithmetic_only(text):
    with pytest.raises(ValueError, match="integer arithmetic in n and l"):
        L.LengthRange(1, None, "main_0", (text,))


def test_ranges_must_cover_every_length():
    a, b = L.LengthRange(1, 4, "main_0"), L.LengthRange(6, None, "main_1")
    with pytest.raises(ValueError, match="follow each other"):
        L.check_ranges((a, b))
    with pytest.raises(ValueError, match="no end"):
        L.check_ranges((L.LengthRange(1, 4, "main_0"),))


def test_export_load_and_sidecar_checks(compiled_layers, tmp_path):
    compiled = compiled_layers["direct-stride1"]
    path = compiled.export(tmp_path / "any.so")
    loaded = tvm_convt.CompiledConvTranspose1d.load(path)
    assert loaded.symbolic and loaded.metadata == compiled.metadata
    _check(loaded, compiled.params, 2, 45)
    side = json.loads(sidecar_path(path).read_text())
    assert side["format"] == 4 and side["workload"]["length"] is None and side["input_shape"][2] is None
    # An edited range (checksum made again) is refused by the field checks, not the checksum.
    metadata, digest = read_sidecar(path)
    side["ranges"][0]["first"] = 5
    fields = {k: v for k, v in side.items() if k != "checksum"}
    from tvm_convt.build import _checksum

    sidecar_path(path).write_text(json.dumps({**fields, "checksum": _checksum(fields)}))
    with pytest.raises(ModuleFileError, match="length range|first"):
        tvm_convt.CompiledConvTranspose1d.load(path)
    write_sidecar(metadata, digest, path)  # restored, it loads again
    assert tvm_convt.CompiledConvTranspose1d.load(path).symbolic


def _counting_compiles(monkeypatch) -> list:
    """The workloads the process's module cache compiles from now on (another test file in this worker
    may have compiled the same layer already, so the cache's size says nothing)."""
    import tvm_convt.runtime as runtime

    compiled, real = [], runtime.module.compile

    def counting(params, **kwargs):
        compiled.append((params, kwargs.get("batch"), kwargs.get("length")))
        return real(params, **kwargs)

    monkeypatch.setattr(runtime.module, "compile", counting)
    return compiled


def test_layer_compiles_one_module_for_every_length(monkeypatch):
    layer = tvm_convt.ConvTranspose1d(16, 8, 8, stride=4, padding=2, seed=0)
    compiled = _counting_compiles(monkeypatch)
    modules = set()
    for i, length in enumerate((97, 131, 173, 211, 250, 1, 2)):
        x = np.random.default_rng(i).standard_normal((1 + i % 2, 16, length)).astype("float32")
        assert_close(layer(x), conv_transpose1d_reference(x, layer.weight, layer.bias, layer.params), "float32")
        modules.add(id(layer.compiled_for(x.shape)))
    assert len(modules) == 1 and len(compiled) <= 1 and all(b is None and n is None for _, b, n in compiled)
    assert layer.compiled_for((1, 16, 5)).symbolic
    exact = tvm_convt.ConvTranspose1d(16, 8, 8, stride=4, padding=2, seed=0, lengths="exact")
    assert not exact.compiled_for((1, 16, 5)).symbolic
    with pytest.raises(ValueError, match="lengths must be one of 'any', 'exact'"):
        tvm_convt.ConvTranspose1d(16, 8, 8, lengths="some")


def test_functional_at_new_lengths_uses_one_module(monkeypatch):
    p = P(8, 4, 4, stride=2, padding=1)
    compiled = _counting_compiles(monkeypatch)
    for length in (5, 6, 50):
        x, w, b = random_inputs(p, 2, length, "float32", length)
        y = tvm_convt.conv_transpose1d(x, w, b, stride=2, padding=1)
        assert_close(y, conv_transpose1d_reference(x, w, b, p), "float32")
    assert len(compiled) <= 1 and all(b is None and n is None for _, b, n in compiled)


def test_symbolic_module_vectorises_its_tiles():
    """The generated code, not only the result: the register tile of every range's function is
    vector FMAs, with no scalar fallback for the symbolic length."""
    import tvm

    from tvm_convt.build import schedule_symbolic
    from tvm_convt.target import resolve_target

    tgt = resolve_target("llvm")
    mod, source, ranges = schedule_symbolic(SymbolicWorkload(P(64, 32, 16, stride=8, padding=4)), tgt)
    assert set(source.removeprefix("default:").split(",")) <= {"cpu-gemm", "cpu-gemm-blocked", "cpu-direct"}
    asm = tvm.compile(mod, target=tgt).mod.inspect_source("asm")
    assert "vfmadd231ps" in asm and ("%ymm" in asm or "%zmm" in asm)


@needs_torch
def test_torch_op_compiles_one_module_for_many_lengths(monkeypatch):
    from tvm_convt.torch import ConvTranspose1d as TorchLayer

    layer = TorchLayer(8, 6, 4, stride=2, padding=1)
    compiled = _counting_compiles(monkeypatch)
    for length in (3, 17, 64):
        x = torch.randn(2, 8, length)
        expected = torch.nn.functional.conv_transpose1d(x.double(), layer.weight.double(), layer.bias.double(),
                                                        stride=2, padding=1)
        assert_close(layer(x).detach().numpy(), expected.detach().numpy(), "float32")
    assert len(compiled) <= 1 and all(b is None and n is None for _, b, n in compiled)


def test_cache_keeps_within_its_bound_dropping_the_least_recently_used(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("TVM_CONVT_CACHE", str(tmp_path))
    modules = []
    for length in (5, 6, 7):
        modules.append(tvm_convt.compile(P(4, 4, 3), batch=1, length=length))
        os.utime(modules[-1].library, (1000 + length, 1000 + length))  # distinct ages, oldest first
    entry = sum(m.library.stat().st_size + sidecar_path(m.library).stat().st_size for m in modules) // 3
    tvm_convt.compile(P(4, 4, 3), batch=1, length=5)  # a hit renews the oldest entry
    monkeypatch.setenv("TVM_CONVT_CACHE_MAX_BYTES", str(int(2.5 * entry)))
    newest = tvm_convt.compile(P(4, 4, 3), batch=1, length=8)
    libraries = sorted(p.name for p in tmp_path.glob("*/*.so"))
    assert newest.library.name in libraries and len(libraries) == 2
    assert not modules[1].library.exists() and not sidecar_path(modules[1].library).exists()
    assert modules[0].library.exists()  # used again after the others were made
    monkeypatch.setenv("TVM_CONVT_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="TVM_CONVT_CACHE_MAX_BYTES must be a non-negative integer"):
        tvm_convt.compile(P(4, 4, 3), batch=1, length=9)


def test_cli_compiles_a_module_for_any_length(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "any.so"
    result = subprocess.run([sys.executable, "-m", "tvm_convt", "compile", "--in-channels", "8", "--out-channels", "4",
                             "--kernel-size", "4", "--stride", "2", "--padding", "1", "--any-length",
                             "--prepack-weight", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "compiled any batch x 8 x any length (from 1) float32" in result.stdout
    loaded = tvm_convt.CompiledConvTranspose1d.load(out)
    assert loaded.symbolic
    for length in (1, 33):
        _check(loaded, loaded.params, 2, length)


def test_size_expressions_may_select():
    r = L.LengthRange(1, None, "main_0", ("select((l < 8) and (not (n == 0)), n * 8, n * l)",))
    assert r.largest_size(2, 3) == 16 and r.largest_size(2, 100) == 200


@pytest.mark.parametrize("length", [2, 40])  # without and with the halo rows (halo_pays)
def test_an_inf_weight_reaches_only_the_outputs_that_use_it(length):
    """Rows of col outside the input hold 0 * weight: with an inf weight that is NaN, which the
    gather must leave out, as the reference (and PyTorch) never adds those terms."""
    p = P(2, 3, 3, stride=2)
    compiled = tvm_convt.compile(p, dtype="float64")
    x, w, b = random_inputs(p, 2, length, "float64", 3)
    w[1, 2, 0] = np.inf
    y, expected = compiled(x, w, b), conv_transpose1d_reference(x, w, b, p)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-12)
    np.testing.assert_array_equal(y[~finite], expected[~finite])


# One layer per CPU rule a symbolic module uses (GEMM, blocked at long lengths, direct: strided,
# stride 1 and depthwise; the fallback for narrow layers; reflect's folds), and a stream's kernel.
UNALIGNED_INPUT_LAYERS = [
    (P(64, 32, 4, stride=2, padding=1), False),
    (P(128, 64, 16, stride=8, padding=4), False),
    (P(8, 4, 4, stride=2, padding=1), False),
    (P(32, 32, 4, stride=2, groups=32), False),
    (P(16, 8, 3, padding=2, dilation=2, padding_mode="reflect"), False),
    (P(64, 32, 16, stride=8, padding=4), True),
]


@pytest.mark.parametrize("p, stream", UNALIGNED_INPUT_LAYERS)
def test_symbolic_functions_read_the_input_in_scalars_only(p, stream):
    """Every symbolic CPU module takes an unaligned input as it is (ModuleMetadata.input_alignment):
    no function reads it in vectors, whose loads would assume TVM's 64-byte alignment."""
    from tvm_convt.build import schedule_symbolic
    from tvm_convt.target import resolve_target

    from tvm_convt.schedule.common import reads_input_in_vectors

    workload = SymbolicWorkload(p.stream_params(), stream=True) if stream else SymbolicWorkload(p)
    mod, source, _ = schedule_symbolic(workload, resolve_target("llvm"), prepack_weight=True, tuned=False)
    for gv in mod.get_global_vars():
        assert not reads_input_in_vectors(mod[gv]), (gv.name_hint, source)


def test_a_module_that_reads_its_input_in_vectors_keeps_it_aligned():
    """A static module of the fallback rule reads its input in vectors: the scan finds it, the module
    needs 64-byte data and copies an unaligned input; a static GEMM module does not."""
    fallback = tvm_convt.compile(P(8, 4, 4, stride=2, padding=1), batch=1, length=64, rule="cpu-fallback")
    assert fallback.metadata.input_alignment == 64
    gemm = tvm_convt.compile(P(64, 32, 16, stride=8), batch=1, length=64, rule="cpu-gemm")
    assert gemm.metadata.input_alignment == 4
    for module, shared in ((fallback, False), (gemm, True)):
        x = np.empty(module.params.in_channels * 64 + 1, np.float32)[1:].reshape(1, -1, 64)
        assert (x.ctypes.data % 64 != 0) and np.shares_memory(np.from_dlpack(module.to_device(x, "input")), x) == shared


@pytest.mark.parametrize("p, stream", UNALIGNED_INPUT_LAYERS[:5])
def test_unaligned_inputs_are_shared_and_exact(p, stream):
    layer = tvm_convt.ConvTranspose1d(**p.to_dict(), seed=0)
    x, _, _ = random_inputs(p, 2, 300, "float32", seed=1)
    raw = np.empty(x.size + 16, np.float32)
    start = next(i for i in range(16) if (raw[i:].ctypes.data % 64) == 4)  # 4 bytes past a 64-byte boundary
    unaligned = raw[start:start + x.size].reshape(x.shape)
    unaligned[...] = x
    compiled = layer.compiled_for(x.shape)
    assert np.shares_memory(np.from_dlpack(compiled.to_device(unaligned, "input")), unaligned)
    np.testing.assert_array_equal(layer(unaligned), layer(np.ascontiguousarray(x)))
    assert_close(layer(unaligned), conv_transpose1d_reference(x, layer.weight, layer.bias, p), "float32")


def test_a_forced_rule_that_does_not_apply_is_a_value_error_at_any_length():
    """The direct form needs kernel_size >= stride: forcing its rule on a symbolic module says so in a
    sentence, as for a static one (it was an internal assertion)."""
    p = P(256, 8, 3, stride=8, padding=1, output_padding=1, groups=8)
    with pytest.raises(ValueError, match="schedule rule 'cpu-direct' does not apply"):
        tvm_convt.compile(p, target="llvm", rule="cpu-direct", use_cache=False)
