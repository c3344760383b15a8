"""The runtime wrapper, the layer, the disk cache, and input validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import textwrap

import numpy as np
import pytest

import tvm_convt
from tvm_convt import CompiledConvTranspose1d, ConvTranspose1d, ConvTranspose1dParams
from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, needs_torch, random_inputs, torch, torch_conv_transpose1d

P = ConvTranspose1dParams
LAYER = P(4, 6, 5, stride=3, padding=2, output_padding=1, groups=2, dilation=2)


@pytest.fixture(scope="module")
def compiled():
    return tvm_convt.compile(LAYER, batch=2, length=7)


def test_export_load_round_trip(compiled, tmp_path):
    path = compiled.export(tmp_path / "layer.so")
    meta = json.loads((tmp_path / "layer.json").read_text())
    assert meta["workload"]["params"]["kernel_size"] == 5
    assert meta["workload"]["batch"] == 2 and meta["workload"]["length"] == 7
    assert meta["workload"]["dtype"] == "float32"
    assert meta["input_shape"] == [2, 4, 7] and meta["weight_shape"] == [4, 3, 5]
    assert meta["output_shape"] == [2, 6, (7 - 1) * 3 - 4 + 2 * 4 + 1 + 1]
    assert meta["target"]["kind"] == "llvm"
    assert meta["tvm_version"] == "0.27.0.post1"
    assert meta["schedule"].startswith("default:")
    loaded = CompiledConvTranspose1d.load(path)
    assert loaded.workload == compiled.workload
    x, w, b = random_inputs(LAYER, 2, 7, "float32")
    np.testing.assert_array_equal(loaded(x, w, b), compiled(x, w, b))
    assert_close(loaded(x, w, b), conv_transpose1d_reference(x, w, b, LAYER), "float32")


def test_load_errors(tmp_path, compiled):
    with pytest.raises(FileNotFoundError, match="no compiled module"):
        CompiledConvTranspose1d.load(tmp_path / "missing.so")
    path = compiled.export(tmp_path / "a.so")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CompiledConvTranspose1d.load(path)
    (tmp_path / "a.json").unlink()
    with pytest.raises(FileNotFoundError, match="metadata sidecar .*a.json does not exist"):
        CompiledConvTranspose1d.load(path)
    with pytest.raises(ValueError, match="export path must end in .so"):
        compiled.export(tmp_path / "a.dll")


@pytest.mark.parametrize(
    "make_args, error, pattern",
    [
        (lambda x, w, b: (x[:1], w, b), ValueError, r"input must have shape \(2, 4, 7\), got input.shape=\(1, 4, 7\)"),
        (lambda x, w, b: (x[:, :, :6], w, b), ValueError, r"input must have shape \(2, 4, 7\)"),
        (lambda x, w, b: (x[0], w, b), ValueError, r"this module was compiled for batch 2; an unbatched input needs batch 1"),
        (lambda x, w, b: (x[None], w, b), ValueError, r"expected a 2-D \(unbatched\) or 3-D \(batched\) input"),
        (lambda x, w, b: (x.astype(np.float64), w, b), TypeError, r"input must have dtype float32, got input.dtype=float64"),
        (lambda x, w, b: (x, w[:, :, :4], b), ValueError, r"weight must have shape \(4, 3, 5\)"),
        (lambda x, w, b: (x, w.astype(np.float16), b), TypeError, r"weight must have dtype float32"),
        (lambda x, w, b: (x, w, None), ValueError, r"this module was compiled with bias=True, got bias=None"),
        (lambda x, w, b: (x, w, b[:5]), ValueError, r"bias must have shape \(6,\)"),
        (lambda x, w, b: ("x", w, b), TypeError, r"input must be a NumPy array or a DLPack-capable tensor, got str"),
    ],
)
def test_compiled_rejects_mismatched_input(compiled, make_args, error, pattern):
    x, w, b = random_inputs(LAYER, 2, 7, "float32")
    with pytest.raises(error, match="^conv_transpose1d: " + pattern):
        compiled(*make_args(x, w, b))


def test_cache_reused_by_second_process(tmp_path):
    """A second process finds the first one's module on disk and compiles nothing."""
    script = textwrap.dedent("""
        import sys, time
        import tvm_convt.build as build
        calls = []
        original = build.tvm.compile
        build.tvm.compile = lambda *a, **k: calls.append(1) or original(*a, **k)
        import tvm_convt, numpy as np
        c = tvm_convt.compile(tvm_convt.ConvTranspose1dParams(3, 4, 3, stride=2), batch=1, length=5)
        x = np.ones((1, 3, 5), "float32"); w = np.ones((3, 4, 3), "float32"); b = np.zeros(4, "float32")
        print(len(calls), c.library, float(c(x, w, b).sum()))
    """)
    env = dict(os.environ, TVM_CONVT_CACHE=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           timeout=300, check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == "1" and runs[1][0] == "0", runs
    assert runs[0][1] == runs[1][1] and runs[0][1].startswith(str(tmp_path / "cache"))
    assert runs[0][2] == runs[1][2] == str(float(3 * 4 * 3 * 5))
    leftovers = [p.name for p in (tmp_path / "cache").rglob(".*")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


def test_layer_initialisation_matches_pytorch_bounds():
    layer = ConvTranspose1d(8, 6, 4, groups=2, seed=0)
    bound = np.sqrt(2 / (6 * 4))
    assert layer.weight.shape == (8, 3, 4) and layer.bias.shape == (6,)
    assert layer.weight.dtype == np.float32
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.bias).max() <= bound
    assert np.abs(layer.weight).max() > 0.8 * bound  # drawn over the whole range, not a corner
    np.testing.assert_array_equal(layer.weight, ConvTranspose1d(8, 6, 4, groups=2, seed=0).weight)
    assert not np.array_equal(layer.weight, ConvTranspose1d(8, 6, 4, groups=2, seed=1).weight)
    assert ConvTranspose1d(8, 6, 4, bias=False).bias is None


def test_layer_call_batched_unbatched_and_weight_assignment():
    layer = ConvTranspose1d(4, 6, 3, stride=2, padding=1, seed=3)
    x, w, b = random_inputs(layer.params, 2, 9, "float32", seed=5)
    assert_close(layer(x), conv_transpose1d_reference(x, layer.weight, layer.bias, layer.params), "float32")
    y1 = layer(x[1])
    assert y1.shape == (6, 17)
    assert_close(y1, conv_transpose1d_reference(x[1], layer.weight, layer.bias, layer.params), "float32")
    layer.weight, layer.bias = w, b  # new weights reach the device
    assert_close(layer(x), conv_transpose1d_reference(x, w, b, layer.params), "float32")
    with pytest.raises(ValueError, match=r"weight must have shape \(4, 6, 3\)"):
        layer.weight = w[:, :, :2]
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        layer.weight = w.astype(np.float64)
    with pytest.raises(ValueError, match="built with bias=True; assign an array"):
        layer.bias = None
    with pytest.raises(ValueError, match="expected input\\[2, 5, 9\\] to have 4 channels, but got 5"):
        layer(np.zeros((2, 5, 9), np.float32))
    with pytest.raises(ValueError, match="expected a 2-D \\(unbatched\\) or 3-D"):
        layer(np.zeros((9,), np.float32))
    with pytest.raises(TypeError, match="input must have dtype float32"):
        layer(x.astype(np.float64))


def _misaligned(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``arr`` whose data is 4 bytes past a 64-byte boundary."""
    raw = np.empty(arr.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data % 64) + 4
    out = raw[start:start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


def _read_only(arr: np.ndarray) -> np.ndarray:
    out = arr.copy()
    out.flags.writeable = False
    return out


@pytest.mark.parametrize("layout", [np.ascontiguousarray, _misaligned, _read_only,
                                    lambda a: np.asfortranarray(a), lambda a: a[..., ::-1].copy()[..., ::-1]])
def test_inputs_in_any_memory_layout(layout):
    """Host arrays are shared with the module when TVM can use them, copied when not."""
    layer = ConvTranspose1d(4, 6, 3, stride=2, padding=1, seed=3)
    x, w, b = random_inputs(layer.params, 2, 9, "float32", seed=5)
    expected = conv_transpose1d_reference(x, w, b, layer.params)
    layer.weight, layer.bias = layout(w), layout(b)
    assert_close(layer(layout(x)), expected, "float32")
    assert_close(tvm_convt.conv_transpose1d(layout(x), layout(w), layout(b), stride=2, padding=1),
                 expected, "float32")
    y = layer(x)
    assert y.flags.c_contiguous and y.flags.writeable


def test_assigned_weights_take_effect_and_in_place_edits_are_refused():
    layer = ConvTranspose1d(4, 6, 3, stride=2, padding=1, seed=3)
    x = random_inputs(layer.params, 2, 9, "float32", seed=5)[0]
    layer(x)  # the weights are prepared for the module now
    with pytest.raises(ValueError, match="read-only"):
        layer.weight[:] = 0
    layer.weight = np.zeros_like(layer.weight)
    layer.bias = layer.bias * 2
    assert_close(layer(x), np.broadcast_to(layer.bias[None, :, None], (2, 6, 17)), "float32")


def test_layer_float64_and_no_bias():
    layer = ConvTranspose1d(3, 4, 4, stride=2, bias=False, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((1, 3, 6))
    assert_close(layer(x), conv_transpose1d_reference(x, layer.weight, None, layer.params), "float64")
    with pytest.raises(ValueError, match="built with bias=False"):
        layer.bias = np.zeros(4)


@needs_torch
def test_output_size_matches_torch():
    ours = ConvTranspose1d(4, 4, 3, stride=3, padding=1, seed=0)
    theirs = torch.nn.ConvTranspose1d(4, 4, 3, stride=3, padding=1)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.copy()))  # the layer's arrays are read-only
        theirs.bias.copy_(torch.from_numpy(ours.bias.copy()))
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype(np.float32)
    for size in (13, 14, 15, [15], [2, 4, 14]):  # an int is our shorthand for [int]
        torch_size = size if isinstance(size, list) else [size]
        expected = theirs(torch.from_numpy(x), output_size=torch_size).detach().numpy()
        got = ours(x, output_size=size)
        assert got.shape == expected.shape
        assert_close(got, expected.astype(np.float64), "float32")
    with pytest.raises(ValueError, match="requested an output size of 16, but valid sizes range from 13 to 15"):
        ours(x, output_size=16)
    with pytest.raises(ValueError, match="output_size must have 1 or 3 elements"):
        ours(x, output_size=[4, 14])


@needs_torch
def test_torch_tensors_via_dlpack():
    layer = ConvTranspose1d(4, 2, 3, stride=2, seed=0)
    xt = torch.randn(1, 4, 5, requires_grad=True)
    # No autograd here (that is tvm_convt.torch): issue #27, 6, the output was detached silently.
    with pytest.warns(UserWarning, match="records no gradient for input, which requires grad: its output is detached"):
        y = layer(xt)
    assert isinstance(y, torch.Tensor) and not y.requires_grad  # torch in, torch out
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(xt)  # nothing is recorded anyway: no warning
    assert_close(y.numpy(), torch_conv_transpose1d(xt.detach().numpy(), layer.weight, layer.bias, layer.params),
                 "float32")
    layer.weight = torch.from_numpy(layer.weight * 2)  # assignable from torch too
    assert isinstance(layer.weight, np.ndarray)


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w[0], b), ValueError, "weight must be 3-D"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, groups=0), ValueError,
         "groups must be positive, got groups=0"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, groups=1.5), TypeError, "groups must be an int"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w.astype(np.float64), b), TypeError,
         "weight must have dtype float32, got weight.dtype=float64"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, groups=3), ValueError,
         "in_channels must be divisible by groups"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x[:, :3], w, b), ValueError,
         r"weight of size \[4, 3, 3\], expected input\[2, 3, 6\] to have 4 channels, but got 3 channels instead"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x.astype(np.int32), w, b), TypeError,
         "dtype must be one of float32, float64, float16, bfloat16, got dtype='int32'"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, stride=0), ValueError, "stride must be positive"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, padding=-1), ValueError, "padding must be non-negative"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, stride=2, output_padding=2), ValueError,
         "output_padding must be smaller than stride or dilation"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, padding_mode="same"), ValueError,
         "padding_mode must be one of"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x[:, :, :1], w, b, padding=5), ValueError,
         "output length must be at least 1"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b[:2]), ValueError, r"bias must have shape \(3,\)"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, target="vulkan"), ValueError,
         "target must be 'llvm', 'cuda' or a JSON dict"),
        (lambda x, w, b: tvm_convt.conv_transpose1d(x, w, b, target='{"kind": "llvm", "mcpu": 3'), ValueError,
         "target is not valid JSON"),
    ],
)
def test_functional_errors(call, error, pattern, monkeypatch):
    def must_not_compile(*args, **kwargs):
        raise AssertionError("a call that must fail was compiled first")

    monkeypatch.setattr("tvm_convt.runtime.module.build_library", must_not_compile)
    p = P(4, 3, 3)
    x, w, b = random_inputs(p, 2, 6, "float32")
    with pytest.raises(error, match="^conv_transpose1d: .*" + pattern):
        call(x, w, b)


@pytest.mark.parametrize("preset", [None, "1"])
def test_tvm_uses_every_physical_core_unless_told(preset):
    """TVM alone would start half the logical CPUs on x86 (1 of 2 cores on the CI VM)."""
    # Counted here from the kernel's topology, not by the code under test: the distinct
    # (package, core) pairs of the CPUs this process may run on (its child inherits them).
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            pytest.skip(f"no CPU topology in {topology}")
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    if preset is not None:
        env["TVM_NUM_THREADS"] = preset
    code = "import tvm_convt, tvm, os; print(os.environ['TVM_NUM_THREADS'], tvm.runtime.num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    expected = preset or str(len(cores))
    assert out == [expected, expected]


def test_a_tuned_record_that_computes_wrong_is_not_used(monkeypatch, tmp_path):
    """MetaSchedule measures speed only: a record in a test run computed a wrong last sample and was
    compiled and used as it was. A tuned record is now checked against the float64 reference before
    its library is kept; a wrong one gives way to the default schedule, with a warning."""
    from tvm_convt import build
    from tvm_convt.errors import TunedRecordWarning
    from tvm_convt.params import Workload

    monkeypatch.setenv("TVM_CONVT_CACHE", str(tmp_path))
    p = ConvTranspose1dParams(8, 4, 4, stride=2, padding=1)
    # Same shapes, another padding mode: a program that runs and is wrong for p.
    wrong = Workload(ConvTranspose1dParams(8, 4, 4, stride=2, padding=1, padding_mode="circular"), 1, 12, "float32")
    real = build.schedule

    def with_a_wrong_record(workload, target, *, tuned=True, **kwargs):
        if tuned and workload.params == p:
            return real(wrong, target, tuned=False)[0], "tuned:/records"
        return real(workload, target, tuned=tuned, **kwargs)

    monkeypatch.setattr(build, "schedule", with_a_wrong_record)
    with pytest.warns(TunedRecordWarning, match=r"the tuned record for .* in /records computes a wrong result "
                                                r"here \(relative error \d\.\d\de[-+]\d\d"):
        compiled = tvm_convt.compile(p, batch=1, length=12)
    assert compiled.metadata.schedule.startswith("default:")
    x, w, b = random_inputs(p, 1, 12, "float32")
    assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, p), "float32")


def test_run_checks_a_weight_swapped_into_the_list_it_checked_before():
    """run() skips the checks of the very weights it checked last (6 us of a short call); a tensor
    swapped into the same list is a new object and is checked."""
    p = ConvTranspose1dParams(8, 4, 4, stride=2)
    compiled = tvm_convt.compile(p, batch=1, length=6, prepack_weight=True)
    x, w, b = random_inputs(p, 1, 6, "float32")
    weights = compiled.prepare_weights(w, b)
    xd = compiled.to_device(x)
    expected = conv_transpose1d_reference(x, w, b, p)
    for _ in range(2):
        assert_close(compiled.run(xd, weights), expected, "float32")
    import tvm

    weights[1] = tvm.runtime.empty((5,), "float32", compiled.device)
    with pytest.raises(ValueError, match=r"^conv_transpose1d: bias must have shape \(4,\)"):
        compiled.run(xd, weights)
    weights[1] = compiled.to_device(b.astype("float64"))
    with pytest.raises(TypeError, match=r"^conv_transpose1d: bias must have dtype float32"):
        compiled.run(xd, weights)
