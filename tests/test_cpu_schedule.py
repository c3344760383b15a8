"""The CPU rules' choices (register blocking, loop order, gather tiles) per target, and each
code path they lead to checked against the float64 reference and PyTorch on hosts that run it."""

from __future__ import annotations

import dataclasses

import pytest

import tvm_convt
from tvm_convt import compute as C
from tvm_convt.params import ConvTranspose1dParams, Workload
from tvm_convt.schedule import cpu, cpu_direct, schedule_form
from tvm_convt.schedule.common import blocks_writing, read_index
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.target import _host_cpu_features, missing_cpu_support, resolve_target

from conftest import assert_close, random_inputs
from test_operator import _check

P = ConvTranspose1dParams
INTEL_AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512"}  # base AVX-512, which Zen 4 runs too
ZEN4 = {"kind": "llvm", "mcpu": "znver4"}
AVX2 = {"kind": "llvm", "mcpu": "haswell"}
ZEN5 = {"kind": "llvm", "mcpu": "znver5"}


def _host_has(feature: str) -> bool:
    return bool(dict(_host_cpu_features()).get(feature, False))


def _runs_here(target) -> bool:
    """Whether this CPU runs code built for ``target`` (a VM may hide features, such as
    ``pku``, that LLVM's name for a core implies)."""
    return missing_cpu_support(resolve_target(target)) is None


# Intel's AVX-512 blocking on this host: base AVX-512 when the host runs its code, else the
# host's own target (an AVX-512 core that is not Zen 4 gets the same blocking).
INTEL_HERE = INTEL_AVX512 if _runs_here(INTEL_AVX512) else "llvm"


# (target, params, length, (lanes, vectors, rows, samples_outer))
PLANS = [
    # m = 32 * 16 = 512 is a multiple of 4 vectors: Intel's 4 x 6; Zen 4's 1 x 12.
    (INTEL_AVX512, P(64, 32, 16, stride=8), 86, (16, 4, 6, False)),
    (ZEN4, P(64, 32, 16, stride=8), 86, (16, 1, 12, False)),
    (AVX2, P(64, 32, 16, stride=8), 86, (8, 2, 6, False)),
    # m = 32: two vectors divide it, four do not.
    (INTEL_AVX512, P(16, 8, 4, stride=2), 8, (16, 2, 8, False)),
    # m = 16: one vector; m = 8: half a vector's lanes. 20 samples, at most two tiles of 12: two of 10.
    (INTEL_AVX512, P(16, 4, 4, stride=2), 20, (16, 1, 10, True)),
    (INTEL_AVX512, P(16, 2, 4, stride=2), 30, (8, 1, 12, True)),
    # 8 samples on AVX2: two tiles of 4, not one of 6 and one of 2.
    (AVX2, P(64, 32, 16, stride=8), 8, (8, 2, 4, False)),
    # The longer operand goes outside: here the input.
    (INTEL_AVX512, P(64, 32, 4, stride=2), 5000, (16, 4, 6, True)),
]


@pytest.mark.parametrize("target, p, length, expected", PLANS)
def test_gemm_plan_per_target(target, p, length, expected):
    plan = cpu.gemm_plan(Workload(p, 1, length), resolve_target(target))
    assert (plan.lanes, plan.vectors, plan.rows, plan.samples_outer) == expected


@pytest.mark.parametrize("length, rows, expected", [(1, 6, 1), (6, 6, 6), (7, 6, 4), (8, 6, 4), (9, 6, 5),
                                                    (12, 6, 6), (13, 6, 6), (5000, 6, 6), (20, 12, 10)])
def test_balanced_rows(length, rows, expected):
    assert cpu.balanced_rows(length, rows) == expected


def test_gemm_plan_refuses_narrow_groups_and_odd_m():
    target = resolve_target(INTEL_AVX512)
    assert cpu.gemm_plan(Workload(P(8, 32, 4), 1, 10), target) is None  # 8 input channels
    assert cpu.gemm_plan(Workload(P(16, 3, 3), 1, 10), target) is None  # m = 9


def test_blockings_fit_the_register_file():
    for arch in [*cpu.CPU_ARCHS.values(), *cpu.CPU_ARCHS_BY_MCPU.values(), cpu.GENERIC]:
        for vectors, rows in arch.gemm_blockings:
            assert vectors * rows + vectors + 1 <= arch.registers, arch


@pytest.mark.parametrize("p, length, rows", [
    (P(64, 32, 4, stride=2, padding=1), 5000, 32768 // (32 * 4 * 4)),  # rows of 512 bytes
    (P(64, 64, 16, stride=8), 5000, None),  # rows of 4 KiB: 8 of them a tile, too few
    # 8 KiB rows, 90 MB of col: tiles of 512 KiB, whatever the row width.
    (P(256, 128, 16, stride=8, padding=4), 11008, (512 << 10) // (128 * 16 * 4)),
])
def test_gather_tile_only_for_narrow_rows(p, length, rows):
    arch = cpu.cpu_arch(resolve_target(INTEL_AVX512))
    assert cpu._gather_rows(Workload(p, 1, length), arch) == rows


# Each AVX-512 blocking, the gather tiles, ragged tiles and groups, run where the host has AVX-512.
AVX512_CASES = [
    ("4x6", P(16, 32, 4, stride=2, padding=1), 2, 13),
    ("2x12", P(16, 8, 4, stride=2, padding=1), 1, 29),
    ("1x12", P(16, 4, 4, stride=2, padding=1), 2, 11),
    ("half-vector", P(16, 2, 4, stride=3), 1, 17),
    ("gather-tiles", P(16, 8, 4, stride=2, padding=1), 1, 301),
    # dilation 2 with stride 2: odd phases meet no tap, so this grouped layer stays in the GEMM form.
    ("gather-tiles-groups", P(32, 16, 4, stride=2, padding=3, groups=2, dilation=2), 2, 150),
    ("gather-tiles-reflect", P(16, 8, 4, stride=2, padding=2, padding_mode="reflect"), 1, 120),
    ("weight-outer-ragged", P(32, 64, 8, stride=4, padding=2, output_padding=1), 2, 23),
    # Whole tiles: the input is packed without padding.
    ("weight-outer-whole", P(32, 64, 8, stride=4, padding=2), 2, 24),
    # 20 live taps a phase: the gather is a reduction loop, in output order but not vectorised.
    ("many-taps", P(16, 8, 40, stride=2, padding=3), 1, 30),
    # Odd stride: vectors of 3 phases.
    ("stride-3-whole", P(16, 16, 6, stride=3, padding=1), 2, 36),
    # The gather writing the output: no bias, two groups, output padding, a batch.
    ("gather-writes-output", P(32, 128, 8, stride=4, padding=3, output_padding=1, groups=2, dilation=2,
                                bias=False), 2, 20),
]


@pytest.mark.skipif(not _host_has("avx512f"), reason="needs a CPU with AVX-512 to run AVX-512 code")
@pytest.mark.parametrize("target", [INTEL_HERE, ZEN4], ids=["intel", "zen4"])
@pytest.mark.parametrize("p, batch, length", [c[1:] for c in AVX512_CASES], ids=[c[0] for c in AVX512_CASES])
def test_avx512_code_paths(target, p, batch, length):
    if target is ZEN4 and not _runs_here(ZEN4):
        pytest.skip("znver4 code may use AVX-512 extensions this CPU lacks")
    compiled = _check(p, batch, length, "float32", target=target)
    assert compiled.metadata.schedule == "default:cpu-gemm"


@pytest.mark.skipif(not _host_has("avx2"), reason="needs an x86-64 CPU with AVX2 to run AVX2 code")
@pytest.mark.parametrize("p, batch, length", [c[1:] for c in AVX512_CASES[4:]], ids=[c[0] for c in AVX512_CASES[4:]])
def test_avx2_gather_tiles(p, batch, length):
    compiled = _check(p, batch, length, "float32", target=AVX2)
    assert compiled.metadata.schedule == "default:cpu-gemm"


def test_default_rule_on_the_host_is_exact_on_a_model_layer_shape():
    # A HiFi-GAN-like layer long enough for the sample-outer order and gather tiles.
    compiled = _check(P(32, 16, 4, stride=2, padding=1), 1, 700, "float32")
    assert compiled.metadata.schedule == "default:cpu-gemm"
    assert isinstance(compiled, tvm_convt.CompiledConvTranspose1d)


@pytest.mark.parametrize("p, batch, length", [
    (P(32, 8, 4, stride=2, padding=1), 1, 200),  # ragged: 16 whole tiles of 12 and a tail
    (P(32, 8, 4, stride=2, padding=1), 1, 192),
    (P(64, 16, 4, stride=2, groups=2, dilation=2, padding_mode="circular", padding=1), 2, 240),
])
def test_sample_blocks_when_the_weight_is_not_resident(monkeypatch, p, batch, length):
    """Long inputs with a large weight walk the weight once per block of sample tiles; forced
    here on small layers by shrinking the cache budgets."""
    target = resolve_target(AVX2 if not _host_has("avx512f") else INTEL_HERE)
    arch = cpu.cpu_arch(target)
    small = dataclasses.replace(arch, gemm_resident_weight_bytes=0, gemm_input_block_bytes=4 * 16 * 12 * 4)
    monkeypatch.setattr(cpu, "cpu_arch", lambda _target: small)
    w = Workload(p, batch, length)
    plan = cpu.gemm_plan(w, target)
    assert plan.samples_outer
    tiles = cpu._sample_block_tiles(w, plan, small)
    assert tiles is not None and (length // plan.rows) % tiles == 0
    compiled = _check(p, batch, length, "float32", target=target, use_cache=False)
    assert compiled.metadata.schedule == "default:cpu-gemm"


def test_wide_gather_tiles_are_exact(monkeypatch):
    """The gather's L2 tiles for a col far larger than the caches, forced on a small layer."""
    monkeypatch.setattr(cpu, "GATHER_WIDE_COL_BYTES", 1)
    monkeypatch.setattr(cpu, "GATHER_WIDE_TILE_BYTES", 3 * 64 * 4 * 4)  # 3 rows: the 16-row floor
    p = P(32, 64, 4, stride=2, padding=1)
    w = Workload(p, 2, 90)
    assert cpu._gather_rows(w, cpu.cpu_arch(resolve_target("llvm"))) == cpu.GATHER_MIN_ROWS
    compiled = _check(p, 2, 90, "float32", use_cache=False)
    assert compiled.metadata.schedule == "default:cpu-gemm"


# (target, params, L_in, (rows, vectors, lanes, samples_outer)) of the direct rule's tile.
DIRECT_PLANS = [
    (INTEL_AVX512, P(128, 128, 11, padding=15, dilation=3), 1384, (4, 6, 16, False)),
    (AVX2, P(128, 128, 11, padding=15, dilation=3), 1384, (4, 3, 8, False)),
    # Rows divide a group's output channels: 6 -> 3, depthwise -> 1.
    (AVX2, P(12, 12, 3, groups=2), 100, (3, 3, 8, False)),
    (INTEL_AVX512, P(8, 8, 7, groups=8, dilation=3), 100, (1, 6, 16, False)),
    # A reduction of at most 4 steps (a group's input channels times a phase's taps): one vector;
    # of 6 steps, the blocking's 3.
    (AVX2, P(512, 512, 4, stride=2, groups=512), 125, (1, 1, 8, False)),  # mimi_depthwise: 1 x 2
    (INTEL_AVX512, P(16, 16, 4, stride=2, groups=8), 300, (2, 1, 16, False)),  # 2 x 2
    (AVX2, P(16, 16, 5, stride=2, padding=2, groups=8), 300, (2, 3, 8, False)),  # 2 x 3
    # An output shorter than the tile takes fewer vectors; shorter than one, a single one.
    (INTEL_AVX512, P(8, 8, 3), 40, (4, 3, 16, False)),  # 42 positions, padded to 48
    (INTEL_AVX512, P(8, 8, 3, padding=1), 5, (4, 1, 16, False)),
    # 128 channels of 11072 samples (5.7 MB): the samples go outside.
    (INTEL_AVX512, P(128, 128, 7, padding=9, dilation=3), 11072, (4, 6, 16, True)),
    # As large an input (1.1 MB) in one tile of positions: the channel blocks stay outside.
    (INTEL_AVX512, P(4096, 16, 3), 62, (4, 4, 16, False)),
]


@pytest.mark.parametrize("target, p, length, expected", DIRECT_PLANS)
def test_direct_plan_per_target(target, p, length, expected):
    plan = cpu_direct.direct_plan(Workload(p, 1, length), resolve_target(target))
    assert (plan.rows, plan.vectors, plan.lanes, plan.samples_outer) == expected


@pytest.mark.parametrize("p, form", [
    (P(16, 16, 3), "direct"),
    (P(256, 256, 8, stride=4, padding=2, groups=8), "direct"),  # 32 input channels a group
    (P(512, 256, 16, stride=8, padding=4), "gemm"),  # dense and strided
    (P(64, 64, 4, stride=2, groups=8), "gemm"),  # 8 input channels a group
    (P(64, 64, 6, stride=4, groups=2), "gemm"),  # phases meet 1 or 2 taps: not direct
    (P(64, 64, 4, stride=2, groups=2, dilation=2), "gemm"),  # odd phases meet no tap
])
def test_form_per_layer(p, form):
    w = Workload(p, 1, 50)
    assert tvm_convt.compute.form_for(w, "llvm") == form
    assert tvm_convt.compute.form_for(w, "cuda") == "gemm"


# Layers through each path of the direct rule: whole tiles only, a ragged last tile in its own
# loop, an output shorter than one tile, rows that divide a group, padding modes, strides.
DIRECT_CASES = [
    ("whole-tiles", P(8, 8, 3, padding=1), 2, 192),
    ("ragged-tail", P(16, 12, 5, padding=2, dilation=2), 1, 211),
    ("shorter-than-a-tile", P(4, 8, 3), 2, 7),
    ("groups-rows-3", P(12, 6, 3, groups=2, padding=1), 2, 100),
    ("depthwise-dilated", P(8, 8, 7, groups=8, dilation=3, padding=9), 1, 150),
    ("output_padding<dilation", P(4, 4, 3, dilation=3, output_padding=2, padding=1), 1, 60),
    ("no-bias-k1", P(16, 16, 1, bias=False), 2, 70),
    ("reflect", P(8, 4, 5, padding=3, padding_mode="reflect"), 1, 120),
    ("replicate", P(8, 4, 5, padding=6, padding_mode="replicate", dilation=2), 2, 50),
    ("circular", P(8, 4, 4, padding=2, padding_mode="circular"), 1, 130),
    ("grouped-strided", P(32, 32, 8, stride=4, padding=2, groups=2), 2, 70),
    ("grouped-strided-dilated", P(32, 16, 6, stride=3, padding=4, groups=2, dilation=2, output_padding=1), 1, 45),
    ("grouped-strided-reflect", P(32, 32, 4, stride=2, padding=3, groups=2, padding_mode="reflect"), 1, 40),
    ("grouped-strided-padding-a-stride", P(32, 32, 8, stride=4, padding=4, output_padding=3, groups=2), 1, 33),
    ("grouped-strided-ragged-output", P(32, 32, 8, stride=4, padding=1, groups=2), 2, 41),
]


def _direct_check(p, batch, length, target, **kwargs):
    compiled = _check(p, batch, length, "float32", target=target, use_cache=False, **kwargs)
    assert compiled.metadata.schedule == "default:cpu-direct"


@pytest.mark.parametrize("target", ["llvm", AVX2], ids=["host", "avx2"])
@pytest.mark.parametrize("p, batch, length", [c[1:] for c in DIRECT_CASES], ids=[c[0] for c in DIRECT_CASES])
def test_direct_rule_code_paths(target, p, batch, length):
    if target is AVX2 and not _host_has("avx2"):
        pytest.skip("needs an x86-64 CPU with AVX2 to run AVX2 code")
    _direct_check(p, batch, length, target)


STRIDED_DIRECT = [c[0] for c in DIRECT_CASES if c[1].stride > 1 and c[1].padding_mode == "zeros"]


def _full_rank(target, p, length) -> int:
    """The rank of the direct rule's ``full``: 3 in output order (batch, channel, sample), 4 by phase."""
    w = Workload(p, 1, length)
    sch = cpu_direct.CpuDirectRule().apply(C.prim_func(w, C.DIRECT), w, resolve_target(target))
    out = sch.get_sblock(C.OUT)
    return len(sch.get(out).reads[read_index(sch, out, C.FULL)].source.shape)


def test_direct_rule_output_order_per_core():
    """AVX2 and Zen 4 tiles store whole vectors of one phase, the output stage interleaving them;
    Intel's AVX-512 tiles scatter into output order (``CpuArch.direct_output_order``)."""
    p = P(32, 32, 8, stride=4, padding=2, groups=2)
    assert _full_rank(AVX2, p, 70) == 4
    assert _full_rank(ZEN4, p, 70) == 4
    assert _full_rank(INTEL_AVX512, p, 70) == 3


@pytest.mark.parametrize("order", [True, False])
@pytest.mark.parametrize("name", STRIDED_DIRECT)
def test_direct_rule_both_output_orders_are_exact(name, order):
    """The direct rule's two stores of ``full`` (``CpuArch.direct_output_order``, a tuned field) on the
    host, in each of its strided zeros-mode paths."""
    from tvm_convt.build import schedule

    _, p, batch, length = next(c for c in DIRECT_CASES if c[0] == name)
    with cpu.tuned_fields({"direct_output_order": order}):
        assert _full_rank("llvm", p, length) == (3 if order else 4)
        # What compile schedules (build.schedule) keeps the field too, so both orders are computed below.
        mod, _ = schedule(Workload(p, batch, length), resolve_target("llvm"), tuned=False)
        full = next(b for b in mod["main"].body.block.alloc_buffers if b.name == C.FULL)
        assert len(full.shape) == (3 if order else 4)
        _direct_check(p, batch, length, "llvm")


# Strided layers of the direct form whose output stage interleaves phases stored apart: each block's
# output (depthwise, stride 3, output_padding; grouped, stride 2), and a stage of its own (the output
# length no multiple of the stride: a ragged last phase).
INTERLEAVED = [
    ("depthwise-stride3", P(32, 32, 6, stride=3, padding=1, output_padding=2, groups=32)),
    ("grouped-stride2", P(32, 32, 4, stride=2, padding=1, groups=2)),
    ("grouped-stride4-ragged", P(32, 32, 8, stride=4, padding=1, groups=2)),
]


@pytest.mark.parametrize("samples_outer", [False, True], ids=["blocks-outer", "samples-outer"])
@pytest.mark.parametrize("p", [c[1] for c in INTERLEAVED], ids=[c[0] for c in INTERLEAVED])
def test_direct_rule_interleaved_output_is_exact_at_ragged_lengths(monkeypatch, p, samples_outer):
    """The output stage reads a vector of each phase and stores them interleaved; its loop splits
    where a ragged end needs a predicate. A static module, and one symbolic module at lengths around
    whole vectors."""
    target = resolve_target("llvm")
    # Phases stored apart on any host (AVX-512 keeps output order by default).
    arch = dataclasses.replace(cpu.cpu_arch(target), direct_output_order=False)
    if samples_outer:  # one vector a tile, so that 63 samples make two tiles at 16 lanes too
        arch = dataclasses.replace(arch, direct_resident_input_bytes=0, direct_blocking=(arch.direct_blocking[0], 1))
    monkeypatch.setattr(cpu_direct, "cpu_arch", lambda _target: arch)
    assert _full_rank("llvm", p, 70) == 4
    assert cpu_direct.direct_plan(Workload(p, 1, 63), target).samples_outer == samples_outer
    lengths = (1, 7, 8, 9, 17, 40, 63)
    _direct_check(p, 2, 63, "llvm")
    compiled = tvm_convt.compile(p, target="llvm", use_cache=False)
    for i, length in enumerate(lengths):
        x, w, b = random_inputs(p, 1 + i % 2, length, "float32", seed=i)
        assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, p), "float32")


def test_direct_rule_interleaves_with_shuffles():
    """The generated code: the output stage of a stride-2 layer interleaves whole vectors of the two
    phases (unpack shuffles) and stores vectors, where a vector along the output loaded each lane."""
    import tvm

    p = P(64, 64, 4, stride=2, padding=1, groups=64)
    w = Workload(p, 1, 128)
    target = resolve_target(AVX2)
    sch = cpu_direct.CpuDirectRule().apply(C.prim_func(w, C.DIRECT), w, target)
    asm = tvm.compile(sch.mod, target=target).mod.inspect_source("asm")
    assert "vunpcklps" in asm and "vunpckhps" in asm


@pytest.mark.parametrize("p, batch, length", [
    (P(8, 8, 3, padding=1), 2, 192),  # two whole tiles
    (P(16, 12, 5, padding=2, dilation=2), 1, 211),  # two and a ragged one
    (P(32, 32, 8, stride=4, padding=2, groups=2), 2, 300),  # per phase
    (P(32, 32, 4, stride=2, padding=3, groups=2, padding_mode="reflect"), 1, 250),
])
def test_direct_rule_samples_outer(monkeypatch, p, batch, length):
    """Inputs too large for the cache walk the samples in the parallel loop; forced on small layers."""
    target = resolve_target("llvm")
    small = dataclasses.replace(cpu.cpu_arch(target), direct_resident_input_bytes=0)
    monkeypatch.setattr(cpu_direct, "cpu_arch", lambda _target: small)
    assert cpu_direct.direct_plan(Workload(p, batch, length), target).samples_outer
    # Under two tiles of positions the channel blocks stay outside whatever the input's size.
    assert not cpu_direct.direct_plan(Workload(p, batch, 20), target).samples_outer
    _direct_check(p, batch, length, "llvm")


@pytest.mark.parametrize("p, batch, length", [
    (P(16, 8, 4, stride=2, padding=1), 2, 37),  # dense: the GEMM form's by default
    (P(16, 8, 16, stride=8, padding=4, output_padding=3), 1, 11),
    (P(8, 8, 4, stride=2, padding=1, groups=8), 2, 20),  # depthwise
    (P(8, 4, 4, stride=2, padding=2, padding_mode="reflect"), 1, 37),
    (P(8, 4, 6, stride=3, padding=3, padding_mode="circular", dilation=2), 2, 20),
])
def test_direct_rule_by_name_on_strided_layers(p, batch, length):
    """Where the direct form applies but is not the default, asking for it by name computes it."""
    _direct_check(p, batch, length, "llvm", rule="cpu-direct")


@pytest.mark.parametrize("target, length, form", [
    (ZEN5, 11008, "direct"),  # 64 channels of 11008 samples, 2.8 MB: Zen 5 streams them directly
    (ZEN5, 688, "gemm"),  # 176 KB stays in cache while every channel block passes
    ((ZEN5, 256), 11008, "gemm"),  # 256 input channels: the GEMM form's reduction is long enough
    (INTEL_AVX512, 11008, "gemm"),
    (ZEN4, 688, "gemm"),
    (ZEN4, 11008, "direct"),
    ((ZEN4, 256), 11008, "blocked"),  # its col (5.6 MB) past Zen 4's 1 MiB
    (AVX2, 11008, "direct"),  # Zen 3 too, while the GEMM form's col (5.6 MB) stays under 8 MiB
    (AVX2, 22016, "blocked"),  # past it (11 MB), the blocked form
    ((AVX2, 128), 11008, "gemm"),  # 128 input channels: the GEMM form
])
def test_long_strided_layers_take_the_form_of_their_core(target, length, form):
    target, channels = target if isinstance(target, tuple) else (target, 64)
    target = resolve_target(target)
    assert schedule_form(Workload(P(channels, 32, 4, stride=2, padding=1), 1, length), target) == form
    # Phases that meet different taps (6 is no multiple of 4): never direct; the GEMM form, blocked
    # at 11008 samples (its col, 8.4 MB, would pass CpuArch.blocked_col_bytes; at 688, 0.5 MB, not
    # even Zen 4's 1 MiB).
    long_gemm = "blocked" if length >= 11008 else "gemm"
    assert schedule_form(Workload(P(64, 32, 6, stride=4), 1, length), target) == long_gemm
    cuda = resolve_target({"kind": "cuda", "arch": "sm_90"})
    assert schedule_form(Workload(P(64, 32, 4, stride=2), 1, length), cuda) == "gemm"


@pytest.mark.parametrize("p, batch, length", [
    (P(16, 8, 4, stride=2, padding=1), 2, 300),
    (P(16, 8, 16, stride=8, padding=4, output_padding=3), 1, 311),
    (P(16, 8, 4, stride=2, padding=2, padding_mode="reflect", bias=False), 1, 237),
    (P(32, 16, 6, stride=3, padding=3, padding_mode="circular", dilation=2), 2, 250),
])
def test_strided_layers_in_the_direct_form_by_default(monkeypatch, p, batch, length):
    """A core with ``strided_direct_channels`` (Zen 5) computes long strided layers with few
    input channels in the direct form by default; forced here on small layers with a zero-byte
    threshold."""
    target = resolve_target("llvm")
    arch = dataclasses.replace(cpu.cpu_arch(target), strided_direct_channels=128, direct_resident_input_bytes=0)
    monkeypatch.setattr(cpu_direct, "cpu_arch", lambda _target: arch)
    assert schedule_form(Workload(p, batch, length), target) == "direct"
    _direct_check(p, batch, length, "llvm")


# Which DIRECT_CASES compute each channel block's output inside its parallel loop: zeros mode,
# with the padding or the output's length a multiple of the stride.
OUTPUT_INSIDE = {
    "whole-tiles": True, "ragged-tail": True, "grouped-strided": True,
    "grouped-strided-padding-a-stride": True, "no-bias-k1": True,
    "grouped-strided-dilated": False,  # padding 4, stride 3, output length 136
    "grouped-strided-ragged-output": False,  # padding 1, stride 4, output length 166
    "reflect": False, "circular": False, "replicate": False,
}


@pytest.mark.parametrize("name", sorted(OUTPUT_INSIDE))
def test_direct_rule_writes_the_output_per_channel_block(name):
    """Where it can, each parallel block of the direct rule computes its channels' output from
    its own part of ``full``, which then never goes to memory; elsewhere the output is a
    parallel stage of its own. Both are exact (``test_direct_rule_code_paths``)."""
    _, p, batch, length = next(c for c in DIRECT_CASES if c[0] == name)
    w = Workload(p, batch, length)
    target = resolve_target("llvm")
    assert not cpu_direct.direct_plan(w, target).samples_outer
    sch = cpu_direct.CpuDirectRule().apply(C.prim_func(w, C.DIRECT), w, target)
    out_loop = sch.get_loops(sch.get_sblock(C.OUT))[0]
    assert bool(blocks_writing(sch, out_loop, C.FULL)) == OUTPUT_INSIDE[name]


@pytest.mark.parametrize("name", ["ragged-tail", "groups-rows-3", "circular", "grouped-strided"])
def test_direct_rule_float64(name):
    _, p, batch, length = next(c for c in DIRECT_CASES if c[0] == name)
    _check(p, batch, length, "float64", use_cache=False)


@pytest.mark.parametrize("name", ["ragged-tail", "depthwise-dilated", "replicate"])
def test_gemm_form_rules_still_serve_stride_one(name):
    """The GEMM form is still what a rule of it computes for a stride-1 layer, asked by name."""
    _, p, batch, length = next(c for c in DIRECT_CASES if c[0] == name)
    for rule in ("cpu-gemm", "cpu-fallback"):
        if rule == "cpu-gemm" and cpu.gemm_plan(Workload(p, batch, length), resolve_target("llvm")) is None:
            continue
        assert _check(p, batch, length, "float32", rule=rule).metadata.schedule == f"default:{rule}"


def test_padded_copies_beyond_32_bit_indices_are_not_made():
    """Layers whose input fits 32-bit indices but whose copy padded to whole tiles would not:
    the GEMM rule reads x as it is, and a stride-1 layer takes the GEMM form."""
    long = 2**25 - 1  # 64 channels of it: 2**31 - 64 elements
    gemm = Workload(P(64, 4, 4, stride=2), 1, long)
    assert not cpu.input_pack_fits(gemm, 6) and cpu.input_pack_fits(gemm, 1)
    stride_one = Workload(P(64, 16, 1), 1, long)
    assert not C.direct_applies(stride_one)
    assert C.form_for(stride_one, "llvm") == C.GEMM
    assert C.form_for(Workload(P(64, 16, 1), 1, 1000), "llvm") == C.DIRECT


def test_gemm_rule_without_the_input_pack_is_exact(monkeypatch):
    monkeypatch.setattr(cpu, "input_pack_fits", lambda _w, _rows: False)
    for p, batch, length in [(P(32, 64, 8, stride=4, padding=2), 2, 23), (P(32, 8, 4, stride=2, padding=1), 1, 200)]:
        compiled = _check(p, batch, length, "float32", use_cache=False)
        assert compiled.metadata.schedule == "default:cpu-gemm"
