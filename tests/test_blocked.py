"""The blocked GEMM form (``cpu-gemm-blocked``): ``col`` made and gathered one block of output
positions at a time, each block computing the kernel's reach again. Exact against the float64
reference and torch on every path of the rule, with blocks made small so that layers of a few
dozen samples take several; chosen by default for long layers only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tvm_convt
from tvm_convt import compute as C
from tvm_convt.params import ConvTranspose1dParams, Workload
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.schedule import cpu, cpu_blocked, default_schedule, schedule_form
from tvm_convt.suite import default_suite
from tvm_convt.target import missing_cpu_support, resolve_target

from conftest import assert_close, random_inputs, torch, torch_conv_transpose1d
from test_operator import _check

P = ConvTranspose1dParams
AVX2 = {"kind": "llvm", "mcpu": "haswell"}
AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512"}
ZEN3 = {"kind": "llvm", "mcpu": "znver3"}
RULE = "cpu-gemm-blocked"


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 12 or 24 rows, so the layers below have several, the last one ragged."""
    monkeypatch.setattr(C, "BLOCK_COL_BYTES", 4096)


# (id, params, batch, length, dtype): each path of the rule and of the form's gather.
CASES = [
    ("vocoder", P(16, 8, 16, stride=8, padding=4), 1, 50, "float32"),  # output order, writes y
    ("batch-ragged-block", P(16, 16, 4, stride=2, padding=1), 3, 41, "float32"),
    ("output-padding", P(16, 8, 6, stride=3, padding=2, output_padding=2), 2, 37, "float32"),
    ("reach-2", P(16, 8, 12, stride=4, padding=0), 1, 45, "float32"),  # two halo rows a block
    ("groups", P(32, 32, 8, stride=4, padding=2, groups=2), 2, 30, "float32"),
    ("dilated", P(16, 8, 4, stride=3, padding=4, dilation=2), 1, 40, "float32"),  # phase order
    ("gcd-dead-phases", P(16, 8, 4, stride=4, dilation=2, padding=1), 1, 33, "float32"),
    ("reflect", P(16, 8, 4, stride=2, padding=3, padding_mode="reflect"), 1, 40, "float32"),
    ("replicate", P(16, 8, 8, stride=4, padding=5, padding_mode="replicate"), 2, 30, "float32"),
    ("circular", P(16, 4, 8, stride=4, padding=2, padding_mode="circular", bias=False), 1, 35, "float32"),
    ("shorter-than-a-block", P(16, 8, 4, stride=2, padding=1), 1, 3, "float32"),
    ("stride-1", P(16, 16, 3, padding=1), 1, 40, "float32"),
    ("float64", P(16, 8, 16, stride=8, padding=4), 2, 30, "float64"),
]


@pytest.mark.parametrize("target", ["llvm", AVX2], ids=["host", "avx2"])
@pytest.mark.parametrize("p, batch, length, dtype", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_blocked_rule_is_exact(target, p, batch, length, dtype):
    if missing_cpu_support(resolve_target(target)) is not None:
        pytest.skip("this CPU does not run AVX2 code")
    w = Workload(p, batch, length, dtype)
    assert C.blocked_applies(w) and cpu_blocked.blocked_plan(w, resolve_target(target)) is not None
    compiled = _check(p, batch, length, dtype, target=target, rule=RULE, use_cache=False)
    assert compiled.metadata.schedule == f"default:{RULE}"


def test_a_symbolic_blocked_function_writes_the_output_in_its_gather():
    """As a static one does: ``full`` kept whole and copied to the output after was a trip to memory
    and back at the lengths this form serves (hifigan_v1_up3 at 33,024 samples: 0.80-0.87x of the
    static function)."""
    from tvm_convt.build import schedule_symbolic
    from tvm_convt.params import SymbolicWorkload

    mod, source, _ = schedule_symbolic(SymbolicWorkload(CASES[0][1]), resolve_target(AVX2), rule=RULE,
                                       tuned=False)  # AVX2's 6-row tile divides the blocks on every host
    assert source == f"default:{RULE}"
    for gv in mod.get_global_vars():
        if gv.name_hint != "pack_weight":
            allocated = [b.name for b in mod[gv].body.block.alloc_buffers]
            assert C.FULL not in allocated, (gv.name_hint, allocated)


@pytest.mark.parametrize("length", [1, 23, 50, 97])
def test_a_symbolic_blocked_module_is_exact(length):
    # AVX2's tile of 6 rows divides the blocks on every host (Zen 4's 12 rows do not).
    if missing_cpu_support(resolve_target(AVX2)) is not None:
        pytest.skip("this CPU does not run AVX2 code")
    p = CASES[0][1]
    compiled = tvm_convt.compile(p, target=AVX2, rule=RULE, use_cache=False)
    for batch in (1, 3):
        x, w, b = random_inputs(p, batch, length, "float32", seed=length)
        assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, p), "float32")


@pytest.mark.parametrize("name", ["vocoder", "batch-ragged-block", "groups", "reflect", "float64"])
def test_blocked_rule_with_the_weight_packed_once(name):
    """``prepack_weight`` gives the blocked rule the weight packed by ``pack_weight``: the same
    output, bit for bit, as the module that packs it inside the call."""
    _, p, batch, length, dtype = next(c for c in CASES if c[0] == name)
    x, w, b = random_inputs(p, batch, length, dtype)
    packed = tvm_convt.compile(p, batch=batch, length=length, dtype=dtype, rule=RULE, prepack_weight=True,
                               use_cache=False)
    plain = tvm_convt.compile(p, batch=batch, length=length, dtype=dtype, rule=RULE, use_cache=False)
    assert packed.weight_packed and not plain.weight_packed
    y = packed(x, w, b)
    np.testing.assert_array_equal(y, plain(x, w, b))
    assert_close(y, conv_transpose1d_reference(x, w, b, p), dtype)
    if torch is not None:
        assert_close(y, torch_conv_transpose1d(x, w, b, p), dtype)


def test_blocks_cover_the_output_with_the_kernels_reach_again():
    p = P(16, 8, 12, stride=4)
    w = Workload(p, 1, 45)
    assert C.direct_reach(p) == 2
    assert C.block_rows(w) == 12 and C.block_positions(w) == 10  # 4096 bytes of 32 floats a row
    # A reach longer than a block's rows takes more rows, not fewer positions.
    long_reach = Workload(P(4, 1, 64, stride=2), 1, 40)
    assert C.direct_reach(long_reach.params) == 31
    assert C.block_rows(long_reach) == 36 and C.block_positions(long_reach) == 5


@pytest.mark.parametrize("p, length", [
    (P(8, 8, 4, stride=2, groups=8), 40),  # depthwise: no register tile along m
    (P(16, 3, 3, stride=2), 40),  # m = 9: no vector-lane divisor
    (P(16, 2, 40, stride=2), 40),  # 20 live taps: the gather is a reduction loop
])
def test_blocked_rule_refuses_what_it_does_not_cover(p, length):
    with pytest.raises(ValueError, match="does not apply"):
        default_schedule(Workload(p, 1, length), resolve_target("llvm"), rule=RULE)


def test_long_layers_take_the_blocked_form_by_default(monkeypatch):
    """From ``CpuArch.blocked_col_bytes`` of ``col`` on, and while the weight read once a block
    stays within ``blocked_weight_reads`` times ``col``."""
    p = P(16, 8, 16, stride=8, padding=4)
    target = resolve_target("llvm")
    arch = cpu.cpu_arch(target)
    monkeypatch.setattr(cpu_blocked, "cpu_arch", lambda _t: dataclasses.replace(arch, blocked_col_bytes=0))
    compiled = _check(p, 2, 50, "float32", use_cache=False, tuned=False)
    assert compiled.metadata.schedule == f"default:{RULE}"
    wide = Workload(P(512, 8, 16, stride=8, padding=4), 1, 50)  # 512 channels over 11 positions a block
    assert schedule_form(wide, target) == C.GEMM
    monkeypatch.setattr(cpu_blocked, "cpu_arch", lambda _t: dataclasses.replace(arch, blocked_col_bytes=None))
    assert schedule_form(Workload(p, 2, 50), target) == C.GEMM


@pytest.fixture
def real_blocks(monkeypatch):
    monkeypatch.undo()


@pytest.mark.parametrize("target", [AVX512, ZEN3], ids=["avx512", "avx2"])
def test_which_real_layers_are_blocked(real_blocks, target):
    """With the shipped sizes: hifigan_v1_up1 at 16x its length or batch is blocked on both
    classes, the default suite is not (its ``col`` is 8 MiB at most), nor up0 at 16x its
    length (512 channels: the weight would be read 22 times the bytes of ``col``)."""
    target = resolve_target(target)
    suite = default_suite()
    up1, up0 = suite["hifigan_v1_up1"], suite["hifigan_v1_up0"]
    for long in (dataclasses.replace(up1, length=16 * up1.length), dataclasses.replace(up1, batch=16)):
        assert schedule_form(long, target) == C.BLOCKED
    assert schedule_form(dataclasses.replace(up0, length=16 * up0.length), target) == C.GEMM
    assert all(schedule_form(w, target) != C.BLOCKED for w in suite.values())


def test_no_blocked_form_beyond_32_bit_indices(real_blocks):
    """``full`` runs to whole blocks, a little past the gather: a layer whose gather just fits
    32-bit indices but whose whole blocks do not keeps the GEMM form."""
    p = P(16, 8, 2, stride=4)  # m = 16: full (8 channels x 4 phases) is twice col and the input
    fits = Workload(p, 1, 67108863)  # 8201 blocks of 8184 positions: 2**31 + 259841 in full
    assert C.block_positions(fits) == 8184
    assert not C.blocked_applies(fits)
    assert schedule_form(fits, resolve_target(AVX512)) == C.GEMM
    assert C.blocked_applies(Workload(p, 1, 60000000))


def test_short_inputs_are_one_block(real_blocks):
    """A block has no more rows than the layer's positions need: a large batch of short inputs
    does not compute a whole block of rows per sample (and then reads the weight too often
    per row to be blocked at all)."""
    up1 = default_suite()["hifigan_v1_up1"]
    short = dataclasses.replace(up1, batch=256, length=8)
    n_q = short.phase_range[1]
    assert C.block_rows(short) == 12 and C.block_positions(short) >= n_q
    assert C.block_rows(up1) == 60  # 512 KiB of 2048-float rows, padded by 16 floats
    assert schedule_form(short, resolve_target(AVX512)) == C.GEMM
