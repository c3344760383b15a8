"""The weight packed once per weight (``prepack_weight``): the packing function against an
independent NumPy packing, ``main`` on the packed weight bit-identical to the module that packs
in every call and exact against the float64 reference and PyTorch, which schedules pack, the
sidecar's ``weight_block``, and the layer, which re-packs on assignment and hands out
read-only arrays."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tvm

import tvm_convt
from tvm_convt import CompiledConvTranspose1d, ConvTranspose1d
from tvm_convt.errors import ModuleFileError
from tvm_convt.build import _checksum, read_sidecar, sidecar_path, write_sidecar
from tvm_convt.params import ConvTranspose1dParams, Workload
from tvm_convt.schedule import cpu
from tvm_convt.target import missing_cpu_support, resolve_target, target_key

from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, random_inputs, torch, torch_conv_transpose1d

P = ConvTranspose1dParams
AVX2 = {"kind": "llvm", "mcpu": "haswell"}

# (id, params, batch, length, dtype): every one served by cpu-gemm on the host and on AVX2.
PACKED = [
    ("weight-outer", P(32, 64, 8, stride=4, padding=2), 2, 24, "float32"),
    ("weight-outer-ragged", P(32, 64, 8, stride=4, padding=2, output_padding=1), 1, 23, "float32"),
    ("samples-outer", P(16, 4, 4, stride=2, padding=1), 2, 50, "float32"),
    ("kernel-longer-than-block", P(16, 2, 12, stride=4, padding=3), 1, 7, "float32"),
    ("block-not-whole-rows", P(16, 8, 6, stride=3, padding=1), 1, 9, "float32"),
    ("groups-dilated-no-bias", P(32, 16, 4, stride=2, padding=3, groups=2, dilation=2, bias=False), 2, 15,
     "float32"),
    ("reflect", P(16, 8, 4, stride=2, padding=2, padding_mode="reflect"), 1, 12, "float32"),
    ("float64", P(16, 8, 4, stride=2, padding=1), 1, 10, "float64"),
]


def _numpy_packed(weight: np.ndarray, p: ConvTranspose1dParams, block: int) -> np.ndarray:
    """The packed layout made by reshapes: (groups, m / block, in_channels/groups, block)."""
    m_total = p.out_per_group * p.kernel_size
    by_group = weight.reshape(p.groups, p.in_per_group, m_total // block, block)
    return np.ascontiguousarray(by_group.transpose(0, 2, 1, 3))


# Every case on the host; the float32 ones with AVX2 code too.
TARGETED = ([("host-" + c[0], "llvm", *c[1:]) for c in PACKED]
            + [("avx2-" + c[0], AVX2, *c[1:]) for c in PACKED if c[4] == "float32"])


@pytest.mark.parametrize("target, p, batch, length, dtype", [c[1:] for c in TARGETED], ids=[c[0] for c in TARGETED])
def test_prepacked_module_is_exact_and_identical_to_the_packing_one(target, p, batch, length, dtype):
    if missing_cpu_support(resolve_target(target)) is not None:
        pytest.skip("this CPU does not run AVX2 code")
    x, w, b = random_inputs(p, batch, length, dtype)
    packed = tvm_convt.compile(p, batch=batch, length=length, dtype=dtype, target=target,
                               prepack_weight=True, tuned=False)
    plain = tvm_convt.compile(p, batch=batch, length=length, dtype=dtype, target=target, tuned=False)
    plan = cpu.gemm_plan(Workload(p, batch, length, dtype), resolve_target(target))
    assert packed.metadata.schedule == plain.metadata.schedule == "default:cpu-gemm"
    assert packed.weight_packed and not plain.weight_packed
    assert packed.metadata.weight_block == plan.lanes * plan.vectors
    weights = packed.prepare_weights(w, b)
    np.testing.assert_array_equal(weights[0].numpy(), _numpy_packed(w, p, packed.metadata.weight_block))
    y = packed.run(packed.to_device(x), weights)
    np.testing.assert_array_equal(y, plain(x, w, b))
    assert_close(y, conv_transpose1d_reference(x, w, b, p), dtype)
    if torch is not None:
        assert_close(y, torch_conv_transpose1d(x, w, b, p), dtype)
    # A call with the weight as it is packs it on the way.
    np.testing.assert_array_equal(packed(x, w, b), y)


# (id, params, length, rule): layers the default schedule serves without packing the weight.
UNPACKED = [
    ("fallback-narrow", P(8, 4, 4, stride=2), 20, "cpu-fallback"),
    ("fallback-odd-m", P(16, 3, 3, stride=2), 10, "cpu-fallback"),
]


@pytest.mark.parametrize("p, length, rule", [c[1:] for c in UNPACKED], ids=[c[0] for c in UNPACKED])
def test_other_rules_ignore_prepack_weight(p, length, rule):
    x, w, b = random_inputs(p, 1, length, "float32")
    compiled = tvm_convt.compile(p, batch=1, length=length, prepack_weight=True, tuned=False)
    assert compiled.metadata.schedule == f"default:{rule}"
    assert not compiled.weight_packed and compiled.metadata.weight_block is None
    assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, p), "float32")


# (id, params, lengths): layers of the direct form, whose rule packs its weight in the call by default.
DIRECT = [
    ("stride-1", P(16, 16, 3, padding=1), (1, 20)),
    ("dilated-reflect", P(12, 20, 5, padding=4, dilation=2, padding_mode="reflect"), (5, 31)),
    ("grouped-strided", P(32, 32, 8, stride=4, padding=2, groups=2), (2, 17)),
    ("depthwise-no-bias", P(8, 8, 3, groups=8, bias=False), (1, 9)),
]


@pytest.mark.parametrize("p, lengths", [c[1:] for c in DIRECT], ids=[c[0] for c in DIRECT])
@pytest.mark.parametrize("any_length", [False, True], ids=["static", "any-length"])
def test_the_direct_rule_reads_a_weight_packed_once_and_stays_exact(p, lengths, any_length):
    """The direct rule copied the weight into its layout in every call (27 us of a dilated_s1 call):
    it now reads the GEMM rules' packed layout, by blocks of its rows of output channels times the taps."""
    for length in lengths:
        kwargs = {} if any_length else {"batch": 2, "length": length, "rule": "cpu-direct"}
        packed = tvm_convt.compile(p, prepack_weight=True, tuned=False, **kwargs)
        plain = tvm_convt.compile(p, prepack_weight=False, tuned=False, **kwargs)
        assert packed.metadata.schedule == plain.metadata.schedule == "default:cpu-direct"
        assert packed.weight_packed and packed.metadata.weight_block % p.kernel_size == 0
        assert not plain.weight_packed
        x, w, b = random_inputs(p, 2, length, "float32")
        y = packed.run(packed.to_device(x), packed.prepare_weights(w, b))
        assert_close(y, conv_transpose1d_reference(x, w, b, p), "float32")
        np.testing.assert_array_equal(plain(x, w, b), y)


def test_a_forced_fallback_rule_is_not_packed():
    p = P(32, 64, 8, stride=4, padding=2)
    compiled = tvm_convt.compile(p, batch=1, length=24, rule="cpu-fallback", prepack_weight=True)
    assert not compiled.weight_packed


def test_cpu_gemm_forced_on_a_direct_form_layer_is_packed():
    p = P(32, 64, 3, padding=1)  # stride 1: the direct form by default
    compiled = tvm_convt.compile(p, batch=1, length=20, rule="cpu-gemm", prepack_weight=True)
    assert compiled.metadata.schedule == "default:cpu-gemm" and compiled.weight_packed
    x, w, b = random_inputs(p, 1, 20, "float32")
    assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, p), "float32")


def _logs_with_record(tmp_path, workload, rule):
    """A tuning-logs folder whose one record, for ``workload``, is the default rule ``rule``'s
    schedule, as ``tune`` records the default schedule before its search."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import JSONDatabase, TuningRecord

    from tvm_convt.records import RECORD_FILE, WORKLOAD_FILE, workload_module
    from tvm_convt.schedule import default_schedule

    target = resolve_target("llvm")
    folder = tmp_path / "logs" / target_key(target)
    folder.mkdir(parents=True)
    db = JSONDatabase(str(folder / WORKLOAD_FILE), str(folder / RECORD_FILE), allow_missing=True)
    mod = workload_module(workload, "llvm")
    sch, _ = default_schedule(workload, target, func=mod["main"], rule=rule)
    db.commit_tuning_record(TuningRecord(sch.trace, db.commit_workload(mod), [tvm.tirx.FloatImm("float32", 1e-3)],
                                         target, ArgInfo.from_prim_func(mod["main"])))
    return tmp_path / "logs"


def test_a_record_that_is_the_default_schedule_gives_way_to_the_prepacked_one(tmp_path):
    w = Workload(LAYER, 1, 24)
    logs = _logs_with_record(tmp_path, w, "cpu-gemm")
    plain = tvm_convt.compile(LAYER, batch=1, length=24, logs=logs)
    assert plain.metadata.schedule.startswith("tuned:") and not plain.weight_packed
    packed = tvm_convt.compile(LAYER, batch=1, length=24, logs=logs, prepack_weight=True)
    assert packed.metadata.schedule == "default:cpu-gemm" and packed.weight_packed
    x, wt, b = random_inputs(LAYER, 1, 24, "float32")
    np.testing.assert_array_equal(packed(x, wt, b), plain(x, wt, b))


def test_another_record_is_kept_with_prepack_weight(tmp_path):
    w = Workload(LAYER, 1, 24)
    logs = _logs_with_record(tmp_path, w, "cpu-fallback")
    compiled = tvm_convt.compile(LAYER, batch=1, length=24, logs=logs, prepack_weight=True)
    assert compiled.metadata.schedule.startswith("tuned:") and not compiled.weight_packed
    # The layer holds both kinds of module side by side, each with its own prepared copy.
    layer = ConvTranspose1d(32, 64, 8, stride=4, padding=2, seed=0, logs=logs, lengths="exact")
    x = random_inputs(LAYER, 1, 24, "float32")[0]
    x_long = random_inputs(LAYER, 1, 25, "float32")[0]
    for arr in (x, x_long, x):
        assert_close(layer(arr), conv_transpose1d_reference(arr, layer.weight, layer.bias, LAYER), "float32")
    assert not layer.compiled_for(x.shape).weight_packed and layer.compiled_for(x_long.shape).weight_packed


LAYER = P(32, 64, 8, stride=4, padding=2)


@pytest.fixture(scope="module")
def packed_module():
    return tvm_convt.compile(LAYER, batch=1, length=24, prepack_weight=True, tuned=False)


def test_weight_block_survives_export_and_load(packed_module, tmp_path):
    path = packed_module.export(tmp_path / "packed.so")
    sidecar = json.loads(sidecar_path(path).read_text())
    # Format 3, which a version that cannot run a packed module refuses by its format.
    assert sidecar["weight_block"] == packed_module.metadata.weight_block and sidecar["format"] == 3
    loaded = CompiledConvTranspose1d.load(path)
    assert loaded.weight_packed
    x, w, b = random_inputs(LAYER, 1, 24, "float32")
    np.testing.assert_array_equal(loaded(x, w, b), packed_module(x, w, b))


def _resign(path, weight_block):
    """Rewrite ``path``'s sidecar with another ``weight_block`` and a valid checksum, as a tool
    that wrote a wrong description would."""
    metadata, digest = read_sidecar(path)
    write_sidecar(dataclasses.replace(metadata, weight_block=weight_block), digest, path)


def test_a_sidecar_that_misdescribes_the_weight_layout_is_refused(packed_module, tmp_path):
    x, w, b = random_inputs(LAYER, 1, 24, "float32")
    # The packed library described as reading the weight as it is: main refuses the 3-D weight.
    path = packed_module.export(tmp_path / "packed.so")
    _resign(path, None)
    with pytest.raises(ModuleFileError, match="does not take the tensors its sidecar describes"):
        CompiledConvTranspose1d.load(path)(x, w, b)
    # A plain library described as packed: it has no packing function.
    plain = tvm_convt.compile(LAYER, batch=1, length=24, tuned=False).export(tmp_path / "plain.so")
    _resign(plain, packed_module.metadata.weight_block)
    with pytest.raises(ModuleFileError, match="has no function 'pack_weight'"):
        CompiledConvTranspose1d.load(plain)(x, w, b)
    # Another block that divides m: main refuses the packed weight's shape.
    other = packed_module.export(tmp_path / "other.so")
    _resign(other, packed_module.metadata.weight_block // 2)
    with pytest.raises(ModuleFileError, match="does not take the tensors its sidecar describes"):
        CompiledConvTranspose1d.load(other)(x, w, b)


def test_a_sidecar_whose_block_and_format_disagree_is_refused(packed_module, tmp_path):
    path = packed_module.export(tmp_path / "packed.so")
    side = sidecar_path(path)
    fields = {k: v for k, v in json.loads(side.read_text()).items() if k != "checksum"}
    fields["format"] = 2
    side.write_text(json.dumps({**fields, "checksum": _checksum(fields)}))
    with pytest.raises(ModuleFileError, match="weight_block must be given with format 3 only"):
        CompiledConvTranspose1d.load(path)


@pytest.mark.parametrize("block", [0, 3, True, "64"], ids=["zero", "not-a-divisor", "bool", "text"])
def test_a_sidecar_with_a_bad_weight_block_is_refused(packed_module, tmp_path, block):
    path = packed_module.export(tmp_path / "packed.so")
    side = sidecar_path(path)
    fields = {k: v for k, v in json.loads(side.read_text()).items() if k != "checksum"}
    fields["weight_block"] = block
    side.write_text(json.dumps({**fields, "checksum": _checksum(fields)}))
    with pytest.raises(ModuleFileError, match="weight_block must"):
        CompiledConvTranspose1d.load(path)


def test_the_layer_packs_once_per_assignment_and_hands_out_read_only_arrays():
    # Over 128 input channels: every length range of every CPU class here is of the GEMM form, packed alike.
    layer = ConvTranspose1d(256, 64, 8, stride=4, padding=2, seed=3)
    x = random_inputs(layer.params, 2, 24, "float32", seed=5)[0]
    assert layer.compiled_for(x.shape).weight_packed
    y = layer(x)
    assert_close(y, conv_transpose1d_reference(x, layer.weight, layer.bias, layer.params), "float32")
    with pytest.raises(ValueError, match="read-only"):
        layer.weight[:] = 0
    with pytest.raises(ValueError, match="read-only"):
        layer.bias[:] = 0
    with pytest.raises(ValueError, match="WRITEABLE"):  # nor can a view be made writable again
        layer.weight.view().flags.writeable = True
    _, w2, b2 = random_inputs(layer.params, 2, 24, "float32", seed=9)
    layer.weight = w2
    assert_close(layer(x), conv_transpose1d_reference(x, w2, layer.bias, layer.params), "float32")
    layer.bias = b2
    assert_close(layer(x), conv_transpose1d_reference(x, w2, b2, layer.params), "float32")
    # The assigned arrays are copied: editing them afterwards changes nothing.
    w2[:] = 0
    assert_close(layer(x), conv_transpose1d_reference(x, layer.weight, b2, layer.params), "float32")


def test_prepared_weights_are_a_copy(packed_module):
    x, w, b = random_inputs(LAYER, 1, 24, "float32")
    weights = packed_module.prepare_weights(w, b)
    before = packed_module.run(packed_module.to_device(x), weights)
    w[:] = 0
    np.testing.assert_array_equal(packed_module.run(packed_module.to_device(x), weights), before)
    assert isinstance(weights[0], tvm.runtime.Tensor)
    assert tuple(weights[0].shape) == packed_module.metadata.main_weight_shape


def test_prepare_weights_checks_its_arguments(packed_module):
    _, w, b = random_inputs(LAYER, 1, 24, "float32")
    with pytest.raises(ValueError, match="weight must have shape"):
        packed_module.prepare_weights(w[:, :, :4], b)
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        packed_module.prepare_weights(w.astype("float64"), b)
    with pytest.raises(ValueError, match="compiled with bias=True, got bias=None"):
        packed_module.prepare_weights(w)
