"""Default schedule rules for LLVM CPUs (x86 AVX2/AVX-512, AArch64)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from .. import compute as C
from ..params import Workload, itemsize, within_index_range
from ..target import cpu_isa
from .common import CPU_ACCUMULATOR_SCOPE, blocks_writing, has_block, is_symbolic, read_index


def parallel_outer(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, n_outer: int) -> None:
    """Fuse the first ``n_outer`` (spatial) loops of ``block`` and run them in parallel."""
    loops = sch.get_loops(block)[:n_outer]
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _gather_tiles(sch: s_tir.Schedule, rows: int, by_phase: bool) -> s_tir.schedule.LoopRV:
    """Split the gather into tiles of ``rows`` phase positions over all channels; return the
    (batch, tile) loop. The phases go inside the positions unless ``by_phase``."""
    n, co, r, q = sch.get_loops(sch.get_sblock(C.FULL))[:4]
    qo, qi = sch.split(q, [None, rows])
    if by_phase:
        sch.reorder(n, qo, co, r, qi)
    else:
        sch.reorder(n, qo, co, qi, r)
    if is_symbolic(sch):
        # A symbolic batch stays a loop of its own (a fused (batch, tile) loop divides by the symbolic
        # tile count per tile). Unlike the copies (copy_tiles_partitioned), the tiles are not
        # partitioned where the input ends: TVM 0.27's partition of a gather loop miscompiled it.
        return qo
    return sch.fuse(n, qo)


def output_order_applies(workload: Workload) -> bool:
    """Whether ``full`` may be read in output order: a strided layer in zeros mode (see
    :func:`full_in_output_order`)."""
    return workload.params.stride > 1 and workload.params.padding_mode == "zeros"


def full_in_output_order(sch: s_tir.Schedule, workload: Workload) -> bool:
    """Store ``full`` in output order, (batch, channel, position * stride + phase), when the
    layer is strided and in zeros mode; return whether it was.

    The phases of one position then sit side by side in ``full``; with dilation 1 they
    also do (for each tap) in ``col``'s row, so the GEMM rule's loop over the phases is a
    vector load and add, where the phase order read ``col`` one scalar per output. The
    output stage then reads along the samples. (The direct rule writes each tile's
    positions of one phase at once, after its reduction, in output order where the core's
    ``CpuArch.direct_output_order`` says so.)

    Zeros mode only: with the folds of the other modes, TVM 0.27 rewrites one of their
    clamped margin indices wrongly (reflect, stride 2: ``15 - l`` for ``16 - l``).
    """
    if not output_order_applies(workload):
        return False
    stride = workload.params.stride
    out = sch.get_sblock(C.OUT)
    sch.transform_layout(out, ("read", read_index(sch, out, C.FULL)),
                         lambda n, co, r, q: (n, co, q * stride + r))
    return True


def _schedule_epilogue_cpu(sch: s_tir.Schedule, workload: Workload, gather_rows: int | None = None,
                           output_order: bool = True) -> None:
    """Gather, fold and bias stages: cheap next to the GEMM; parallel over (batch, channel).

    With ``gather_rows``, the gather walks the output ``gather_rows`` phase positions at a
    time for every channel, so that the rows of a sample-major ``col`` it reads stay in
    L1 across channels instead of being fetched once per channel. With ``output_order``
    (for a sample-major ``col``, whose rows hold the phases side by side when the
    dilation is 1: with another dilation phase r reads a permuted tap from another row)
    ``full`` is stored in output order where it can be (:func:`full_in_output_order`) and,
    when the taps are an unrolled sum (16 or fewer), the loop over the phases goes
    innermost and is vectorised; without gather tiles the gather then writes the output
    itself (:func:`_gather_writes_output`).
    """
    output_order = output_order and workload.params.dilation == 1
    by_phase = not (output_order and full_in_output_order(sch, workload))
    full = sch.get_sblock(C.FULL)
    # Four loops: an unrolled sum over the taps, no reduction loop inside the phases.
    vector_phases = not by_phase and len(sch.get_loops(full)) == 4
    if gather_rows is not None:
        outer = _gather_tiles(sch, gather_rows, by_phase)
    else:
        n, co, r, q = sch.get_loops(full)[:4]
        if not by_phase:
            sch.reorder(q, r)
        outer = sch.fuse(n, co)
    sch.parallel(outer)
    if vector_phases and gather_rows is None and not is_symbolic(sch):
        _gather_writes_output(sch, outer)
        return
    if vector_phases and gather_rows is None:
        # Symbolic: inlined, the output's unknown bound would be a predicate that makes every vector of
        # phases scalar; it is a copy of its own, but of each (batch, channel) row right after the
        # gather wrote it, while the row is in L1, not in a second pass over all of full.
        sch.vectorize(sch.get_loops(full)[-1])
        sch.reverse_compute_at(sch.get_sblock(C.OUT), outer)
        return
    if vector_phases:
        # With tiles the output stays a stage of its own: the predicate of
        # _gather_writes_output, in every tile, made up2 and up3 6-13 % slower.
        sch.vectorize(sch.get_loops(full)[-1])
    schedule_fold_cpu(sch)


def _gather_writes_output(sch: s_tir.Schedule, outer: s_tir.schedule.LoopRV) -> None:
    """Zeros mode in output order: the output is ``full`` shifted by the padding, plus the
    bias, so the gather writes it directly (its first and last positions under a
    predicate) and ``full`` is never stored and read back. The phases stay vectorised."""
    sch.reverse_compute_inline(sch.get_sblock(C.OUT))
    for name in blocks_writing(sch, outer, C.OUT):
        sch.vectorize(sch.get_loops(sch.get_sblock(name))[-1])


def schedule_fold_cpu(sch: s_tir.Schedule) -> None:
    """The margins (replicate mode) and the output stage: parallel over (batch, channel)."""
    # (A stream's partial sums, overlap samples a channel, stay serial: a parallel region costs more.)
    for name in (C.MARGIN_LEFT, C.MARGIN_RIGHT, C.OUT):
        if has_block(sch, name):
            parallel_outer(sch, sch.get_sblock(name), 2)


@dataclass(frozen=True)
class CpuArch:
    """What the CPU rules need to know of a vector instruction set and core.

    ``gemm_blockings`` are the GEMM's accumulator tiles in registers, as
    (vectors, rows): vectors along the weight's (o, k) axis, rows along the input
    samples, in order of preference; a workload takes the first whose width
    divides its (o, k) axis. With the weight vectors and one broadcast of x each
    must fit in ``registers``. Below ``gemm_min_channels`` input channels per
    group the tile's loads and stores are not amortised over the reduction, and
    the fallback (vectorised along the samples) is faster. With
    ``gemm_channel_block``, that many input channels of a packed weight block
    stay in L1 while every sample passes (None: the whole reduction at once).
    With ``gather_tile_bytes``, the gather takes that many bytes of ``col`` rows
    for all channels at a time (None: one channel at a time). When the input is
    the outer operand and the weight is larger than ``gemm_resident_weight_bytes``
    (it would not stay in L2 from one sample tile to the next), the samples go in
    blocks of ``gemm_input_block_bytes`` of input, each meeting the weight once.
    ``direct_blocking`` is the direct rule's accumulator tile, (rows, vectors): rows
    along the output channels (fewer where they do not divide a group's), vectors
    along the output samples; a tile whose reduction (a group's input channels times the taps a
    phase meets) has at most ``direct_short_reduction`` steps takes one vector, there being no
    FMA latency to hide over so few. A group's padded input larger than
    ``direct_resident_input_bytes`` does not stay in L2 while every channel block
    passes over it, so the direct rule then walks the samples in the parallel loop.
    Strided layers that the direct form covers, whose input is that large and that have at
    most ``strided_direct_channels`` input channels a group, go to the direct form too
    (:func:`tvm_convt.compute.form_for`; 0: none): on such a core, with a short reduction
    per ``col`` element, streaming the input once per tile beats writing ``col`` and
    reading it back, while that ``col`` would take at most ``strided_direct_col_bytes`` (None:
    any; past it the blocked form, which keeps ``col`` in cache, can be faster). Layers of the
    GEMM form whose ``col`` would exceed ``blocked_col_bytes`` (None: never) take the blocked form, ``col`` made and gathered a block of samples at a
    time, where it reads the weight at most ``blocked_weight_reads`` times the bytes of ``col``
    (:func:`tvm_convt.schedule.cpu_blocked.blocked_gemm`). With ``direct_output_order`` the direct
    rule stores ``full`` in output order (zeros mode, strided: :func:`full_in_output_order`), each tile
    scattering its phase one float at a time; without it a tile stores whole vectors of its phase and
    the output stage interleaves the phases.
    """

    vector_bits: int
    registers: int
    gemm_blockings: tuple[tuple[int, int], ...]
    direct_blocking: tuple[int, int] = (4, 3)
    direct_short_reduction: int = 4
    direct_resident_input_bytes: int = 1 << 20
    gemm_min_channels: int = 16
    gemm_channel_block: int | None = None
    gather_tile_bytes: int | None = 16384
    gemm_resident_weight_bytes: int = 512 * 1024
    gemm_input_block_bytes: int = 64 * 1024
    strided_direct_channels: int = 0
    strided_direct_col_bytes: int | None = None
    blocked_col_bytes: int | None = 8 << 20
    blocked_weight_reads: float = 6.0
    direct_output_order: bool = True

    def __post_init__(self) -> None:
        for vectors, rows in self.gemm_blockings:
            # Accumulators, the weight vectors and one broadcast of x, all live at once.
            assert vectors * rows + vectors + 1 <= self.registers, self
        rows, vectors = self.direct_blocking
        # Accumulators, the x vectors and one broadcast of the weight.
        assert rows * vectors + vectors + 1 <= self.registers, self


# Blockings measured with tools/probe_blocking.py; see docs/performance.md. Intel's AVX-512
# cores issue two 512-bit FMAs a cycle but load two vectors: a 1-vector tile, one broadcast
# load per FMA, is load-bound there, while Zen 4 issues one 512-bit FMA a cycle.
# SSE is not measured. NEON and SVE (LLVM vectorises SVE at a fixed 128 bits here) were chosen from
# llvm-mca's models of Cortex-A76, Neoverse N1 and V1 (tools/mca_table.py): the direct rule's 4 x 6 tile
# spilled accumulators on dilated_s1, 4 x 4 does not.
# Zen 3's strided layers of up to 64 input channels run faster in the direct form while col would fit
# the blocked form's threshold (hifigan_v1_up3, encodec_up3: 1.15-1.3x; 128 channels: not faster).
# Its direct tiles store whole vectors of one phase, which the output stage interleaves: faster than
# scattering each tile into output order (docs/performance.md); so on Zen 4, while Intel's AVX-512
# cores, not measured so, keep output order.
_AVX2 = CpuArch(vector_bits=256, registers=16, gemm_blockings=((2, 6), (1, 12)),
                strided_direct_channels=64, strided_direct_col_bytes=8 << 20, direct_output_order=False)
CPU_ARCHS: dict[str, CpuArch] = {
    "avx512": CpuArch(vector_bits=512, registers=32, gemm_blockings=((4, 6), (2, 12), (1, 12)),
                      direct_blocking=(4, 6), gather_tile_bytes=32768, blocked_weight_reads=12.0),
    "avx2": _AVX2,
    "avx": _AVX2,
    "sse4": CpuArch(vector_bits=128, registers=16, gemm_blockings=((2, 6), (1, 12))),
    "neon": CpuArch(vector_bits=128, registers=32, gemm_blockings=((2, 12), (1, 12)), direct_blocking=(4, 4)),
    "sve": CpuArch(vector_bits=128, registers=32, gemm_blockings=((2, 12), (1, 12)), direct_blocking=(4, 4)),
}
# Cores whose best blocking differs from their instruction set's, by LLVM's mcpu name. Zen 4
# splits a 512-bit FMA in two halves; Zen 5 issues two whole ones a cycle, like Intel's cores,
# and takes their blocking, but its long strided layers of up to 128 input channels run faster
# in the direct form (with 256 or 512 the GEMM form stays ahead). So do Zen 4's, with the phases
# stored apart, and its GEMM form's col is blocked from 1 MiB, its L2 (docs/performance.md).
_ZEN4 = CpuArch(vector_bits=512, registers=32, gemm_blockings=((1, 12),), direct_blocking=(4, 6),
                direct_output_order=False, strided_direct_channels=128, blocked_col_bytes=1 << 20)
CPU_ARCHS_BY_MCPU: dict[tuple[str, str], CpuArch] = {
    ("avx512", "znver4"): _ZEN4,
    ("avx512", "znver5"): dataclasses.replace(CPU_ARCHS["avx512"], strided_direct_channels=128),
}
GENERIC = CpuArch(vector_bits=128, registers=16, gemm_blockings=((2, 6), (1, 12)))


def base_cpu_arch(target: Target) -> CpuArch:
    """The :class:`CpuArch` of an LLVM target's instruction set (and core, where measured)."""
    isa = cpu_isa(target)[1]
    mcpu = str(target.attrs.get("mcpu", ""))
    return CPU_ARCHS_BY_MCPU.get((isa, mcpu)) or CPU_ARCHS.get(isa, GENERIC)


# The fields of a layer's tuned record (tvm_convt.layer_records) while its symbolic module is scheduled:
# a context variable, so the rules keep one signature and concurrent compiles do not see each other's.
_TUNED_FIELDS: ContextVar[Mapping[str, Any] | None] = ContextVar("tvm_convt_tuned_fields", default=None)


@contextmanager
def tuned_fields(fields: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, :func:`cpu_arch` returns the target's arch with ``fields`` replaced (values
    from :func:`tvm_convt.schedule.cpu_space.checked_fields`); None or empty: the arch as it is."""
    token = _TUNED_FIELDS.set(dict(fields) if fields else None)
    try:
        yield
    finally:
        _TUNED_FIELDS.reset(token)


def cpu_arch(target: Target) -> CpuArch:
    """The :class:`CpuArch` the rules plan with: :func:`base_cpu_arch`, with a tuned layer's fields
    inside :func:`tuned_fields`."""
    arch = base_cpu_arch(target)
    fields = _TUNED_FIELDS.get()
    return dataclasses.replace(arch, **fields) if fields else arch


def cpu_vector_lanes(target: Target, dtype: str) -> int:
    """SIMD lanes of ``dtype`` in the target's widest vector register."""
    return max(1, cpu_arch(target).vector_bits // tvm.DataType(dtype).bits)


@dataclass(frozen=True)
class GemmPlan:
    """The register tile of one workload: ``vectors`` x ``lanes`` along m, ``rows`` samples;
    and which operand the parallel loop walks: the samples (``samples_outer``) when the
    input is larger than the weight, else the weight's columns."""

    lanes: int
    vectors: int
    rows: int
    samples_outer: bool

    @property
    def width(self) -> int:
        """The tile's width along m, and the packed weight's column block."""
        return self.lanes * self.vectors


def gemm_plan(workload: Workload, target: Target) -> GemmPlan | None:
    """The accumulator tile for ``workload``, or None when m has no vector-lane divisor
    or the groups are too narrow for a register tile to pay."""
    p = workload.params
    arch = cpu_arch(target)
    if p.in_per_group < arch.gemm_min_channels:
        return None
    m_total = p.out_per_group * p.kernel_size
    lanes = cpu_vector_lanes(target, workload.dtype)
    # Halve the vector while it does not divide m: a ragged split would leave a
    # predicate inside the vectorised loop.
    while lanes > 1 and m_total % lanes:
        lanes //= 2
    if lanes < 4:
        return None
    vectors, rows = next(((v, r) for v, r in arch.gemm_blockings if m_total % (v * lanes) == 0),
                         (1, arch.gemm_blockings[-1][1]))
    # The operand walked by the inner loop is read once per block of the outer one:
    # keep the larger operand outside, so that the smaller is the one read again.
    samples_outer = workload.length > m_total
    return GemmPlan(lanes, vectors, balanced_rows(workload.length, rows), samples_outer)


def balanced_rows(length: int, rows: int) -> int:
    """Rows of the register tile for ``length`` samples and a blocking of ``rows``: an input of at most
    two tiles is split into two equal ones (8 samples: two tiles of 4, where tiles of 6 left one of 2, a
    third of its FMAs on loads, or a symbolic function's padding computed 12 rows)."""
    if length <= rows:
        return length
    return -(-length // 2) if length <= 2 * rows else rows


GATHER_MIN_ROWS = 16
# Above this much col, the gather takes tiles of GATHER_WIDE_TILE_BYTES whatever the row width
# (hifigan_v1_up1 at 16x its length, 90 MB: 0.74-0.77x the time; 33 MB of grouped_g8: within noise).
GATHER_WIDE_COL_BYTES = 64 << 20
GATHER_WIDE_TILE_BYTES = 512 << 10


def col_row_bytes(workload: Workload) -> int:
    """Bytes of one row of the GEMM form's ``col`` (one input sample, all groups), unpadded;
    ``col`` holds batch x length of them."""
    p = workload.params
    return p.groups * p.out_per_group * p.kernel_size * itemsize(workload.accumulator)


def _gather_rows(workload: Workload, arch: CpuArch) -> int | None:
    """Phase positions the gather takes at a time: ``col`` rows (all groups) of one L1 tile,
    or of one L2 tile when ``col`` is far larger than the caches."""
    if arch.gather_tile_bytes is None:
        return None
    row_bytes = col_row_bytes(workload)
    if workload.batch * workload.length * row_bytes >= GATHER_WIDE_COL_BYTES:
        # Each channel's walk down a column would fetch every row again from memory.
        return max(GATHER_MIN_ROWS, GATHER_WIDE_TILE_BYTES // row_bytes)
    rows = arch.gather_tile_bytes // row_bytes
    # Shorter tiles cost more in loop overhead than the cache misses they save.
    return rows if rows >= GATHER_MIN_ROWS else None


def _register_tile(sch: s_tir.Schedule, block_name: str, lanes: int) -> None:
    """Accumulate one (rows x vectors) tile of ``col`` in registers over the whole reduction.

    The block's loops end in (tile, c, ji, mi), ``tile`` being the last loop over
    tiles: the tile is written back after the last input channel, ``ji`` unrolled
    and ``mi`` vectorised.
    """
    block = sch.get_sblock(block_name)
    *_, tile, c, ji, mi = sch.get_loops(block)
    acc = sch.cache_write(block, 0, CPU_ACCUMULATOR_SCOPE)
    sch.reverse_compute_at(acc, tile)
    _pad_col_rows(sch, acc, lanes)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.unroll(ji)
    sch.vectorize(mi)
    sch.decompose_reduction(block, c)


def _pad_col_rows(sch: s_tir.Schedule, writer: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """Pad ``col``'s rows (its last axis but one) by one vector: the gather walks col down a
    column (stride m), and a power-of-two row stride would map every row to one cache set."""
    factor, most_lanes = C.COL_ROW_ALIGN
    assert lanes <= most_lanes, lanes
    rank = len(sch.get(writer).writes[0].source.shape)
    sch.storage_align(writer, 0, axis=rank - 2, factor=factor, offset=lanes)


def _pack_weight(sch: s_tir.Schedule, col: s_tir.schedule.SBlockRV, at: s_tir.schedule.LoopRV | None,
                 kernel_size: int, width: int) -> None:
    """Copy the weight, as (m block, input channel, ``width``), into a buffer made at loop ``at``
    (at the start of the function when None).

    The GEMM reads one ``width``-wide column block of the weight for every input
    channel, rows ``m`` floats apart: a power-of-two ``m`` puts every row in one
    L1 set. The packed block is contiguous and read from L1 for each tile of samples.
    """
    packed = sch.cache_read(col, read_index(sch, col, "weight"), "global")
    sch.transform_layout(packed, ("write", 0),
                         lambda c, o, k: ((o * kernel_size + k) // width, c, (o * kernel_size + k) % width))
    if at is not None:
        sch.compute_at(packed, at)
    else:
        # Before the loops, every thread idle but this one's: parallel over the input channels.
        parallel_outer(sch, packed, 1)
    if kernel_size % width == 0:
        # The copy loops follow the weight's (c, o, k) axes: only when a block is
        # part of one kernel row is the innermost loop ``width`` long at most.
        sch.vectorize(sch.get_loops(packed)[-1])


@dataclass(frozen=True)
class CpuGemmRule:
    """Register-blocked GEMM for the ``col`` stage, vectorised along (out channel, tap).

    The weight's contiguous (o, k) axis ``m`` is split into ``lanes * vectors``-wide
    vector blocks; ``rows`` input samples are unrolled beside them, so
    ``rows * vectors`` accumulators stay in registers across the reduction over
    input channels. The larger operand is walked by the parallel loop (see
    :class:`GemmPlan`); the weight is read from a copy packed by column blocks and the
    input from one packed by tiles of samples, so both operands stream. When ``rows``
    does not divide the length, the last tile is a loop of its own: a bounds check
    inside the unrolled loop makes LLVM spill the accumulators. Not applicable
    when ``m`` has no vector-lane multiple as a divisor, or the groups are narrow.
    """

    name: str = "cpu-gemm"
    form: str = C.GEMM

    def symbolic_layout(self, workload: Workload, target: Target) -> C.SymbolicLayout | None:
        plan = gemm_plan(workload, target) if target.kind.name == "llvm" else None
        if plan is None:
            return None
        positions = _gather_rows(workload, cpu_arch(target)) or 1
        halo = C.halo_pays(workload.params, workload.length, plan.rows, positions)
        return C.SymbolicLayout(col_rows=plan.rows, positions=positions, halo=halo, flat_batch=not halo)

    def plan_key(self, workload: Workload, target: Target) -> tuple:
        """What a symbolic function's schedule takes from the length: the register tile and the
        operand outside (the input's pack and sample blocks are a static function's only)."""
        return (gemm_plan(workload, target), _gather_rows(workload, cpu_arch(target)))

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        plan = gemm_plan(workload, target) if target.kind.name == "llvm" else None
        if plan is None:
            return None
        sch = s_tir.Schedule(func)
        arch = cpu_arch(target)
        # A function given the weight packed already (compute.weight_pack_func) has no pack stage.
        weight = _read_buffer(sch, C.COL, "weight")
        prepacked = len(weight.shape) == 4
        assert not prepacked or int(weight.shape[-1]) == plan.width, (weight.shape, plan)
        # A symbolic function's col holds whole tiles, read from its own copy of x by tiles.
        if is_symbolic(sch):
            copy_tiles_partitioned(sch, C.X_TILES)
            if _batch_flattened(sch):
                # The row and sample of each copied one are a division by the length: the channels go
                # innermost, so that it is made once per sample, not once per element.
                *_, channel, row = sch.get_loops(sch.get_sblock(C.X_TILES))
                sch.reorder(row, channel)
        elif input_pack_fits(workload, plan.rows):
            _pack_input(sch, plan.rows, workload.length)
        if plan.samples_outer:
            _gemm_samples_outer(sch, workload, plan, arch, pack=not prepacked)
        else:
            _gemm_weight_outer(sch, workload, plan, arch.gemm_channel_block, pack=not prepacked)
        _schedule_epilogue_cpu(sch, workload, _gather_rows(workload, arch))
        return sch


def _batch_flattened(sch: s_tir.Schedule) -> bool:
    """Whether a symbolic function's ``x_tiles`` holds the batch's samples one after the other
    (:attr:`tvm_convt.compute.SymbolicLayout.flat_batch`): its batch extent is the constant 1."""
    batch = sch.get(sch.get_sblock(C.X_TILES)).writes[0].source.shape[0]
    return isinstance(batch, tirx.IntImm) and int(batch) == 1


def copy_tiles_partitioned(sch: s_tir.Schedule, name: str) -> None:
    """A symbolic copy by tiles (batch, tile, channel, row): parallel over the tiles, whose loop
    is partitioned where the input ends (``pragma_loop_partition_hint``), so that every tile but
    the last copies with no bounds check. The batch stays a loop of its own: a fused
    (batch, tile) loop divides by the symbolic tile count at every element."""
    n, tile = sch.get_loops(sch.get_sblock(name))[:2]
    sch.parallel(tile)
    sch.annotate(tile, "pragma_loop_partition_hint", 1)


def _read_buffer(sch: s_tir.Schedule, block_name: str, buffer: str) -> Any:
    block = sch.get_sblock(block_name)
    return sch.get(block).reads[read_index(sch, block, buffer)].source


def packed_weight_block(workload: Workload, target: Target) -> int | None:
    """The width of the column blocks ``cpu-gemm`` reads the weight in, where it applies to
    ``workload`` on ``target`` (None: it does not)."""
    plan = gemm_plan(workload, target) if target.kind.name == "llvm" else None
    return None if plan is None else plan.width


def schedule_weight_pack(func: tirx.PrimFunc) -> s_tir.Schedule:
    """``pack_weight``, run once per weight: parallel over the packed column blocks, each
    a contiguous run of the output."""
    sch = s_tir.Schedule(func)
    packed = sch.get_sblock("packed")
    g, b, _, _ = sch.get_loops(packed)
    sch.parallel(sch.fuse(g, b))
    return sch


def _pack_input(sch: s_tir.Schedule, rows: int, length: int) -> None:
    """Copy ``x`` as (batch, tile of ``rows`` samples, input channel, row), zero-padded to whole
    tiles, before the GEMM.

    A tile broadcasts ``rows`` samples of every input channel; in ``x`` those are one
    short piece of each channel's row, rows ``length`` floats apart (at lengths such as
    11008 all of them fall into four L1 sets). Packed, a tile's operand is one
    contiguous block that the prefetcher streams.
    """
    col = sch.get_sblock(C.COL)
    packed = sch.cache_read(col, read_index(sch, col, "x"), "global")
    sch.transform_layout(packed, ("write", 0), lambda n, ci, j: (n, j // rows, ci, j % rows),
                         pad_value=0.0 if length % rows else None)
    loops = sch.get_loops(packed)
    if len(loops) == 3:
        # Whole tiles: the copy still walks x's (batch, channel, sample) order.
        n, ci, j = loops
        tile, row = sch.split(j, [None, rows])
        sch.reorder(n, tile, ci, row)
    else:
        # Padded: the copy walks the packed layout, (batch, tile, channel, row).
        n, tile = loops[:2]
    sch.parallel(sch.fuse(n, tile))


def input_pack_fits(workload: Workload, rows: int) -> bool:
    """Whether the input, padded to whole tiles of ``rows`` samples, stays within 32-bit
    indices (the workload's checks cover the unpadded input only)."""
    p = workload.params
    padded = -(-workload.length // rows) * rows
    return within_index_range(workload.batch * p.in_channels * padded)


def _gemm_loops(sch: s_tir.Schedule, plan: GemmPlan) -> tuple[s_tir.schedule.LoopRV, ...]:
    """Split col's loops into tiles: (n, g, jo, ji, mo, mi, c)."""
    n, g, j, m, c = sch.get_loops(sch.get_sblock(C.COL))
    mo, mi = sch.split(m, [None, plan.width])
    jo, ji = sch.split(j, [None, plan.rows])
    return n, g, jo, ji, mo, mi, c


def _gemm_samples_outer(sch: s_tir.Schedule, workload: Workload, plan: GemmPlan, arch: CpuArch,
                        pack: bool = True) -> None:
    """Parallel over tiles of samples; each walks all of the (packed) weight, or, when the
    weight is larger than ``arch.gemm_resident_weight_bytes``, blocks of tiles walk it
    one column block at a time (see :func:`_sample_block_tiles`). With ``pack``, the
    function packs the weight itself, before the loops. A symbolic function has whole
    tiles, any number of them: no tail, and no blocks of tiles (their count would not divide)."""
    symbolic = is_symbolic(sch)
    col = sch.get_sblock(C.COL)
    n, g, jo, ji, mo, mi, c = _gemm_loops(sch, plan)
    if symbolic:
        sch.reorder(n, jo, g, mo, c, ji, mi)  # see the parallel loop below
    else:
        sch.reorder(n, g, jo, mo, c, ji, mi)
    if pack:
        # The weight is the smaller operand: pack all of it once, before the loops.
        _pack_weight(sch, col, None, workload.params.kernel_size, plan.width)
    ragged = not symbolic and workload.length % plan.rows != 0
    if ragged:
        # The ragged last tile in a loop of its own, so the main loop is the bare micro-kernel.
        jo, _ = sch.loop_partition(jo, [workload.length // plan.rows, None])
    block_tiles = None if symbolic else _sample_block_tiles(workload, plan, arch)
    if block_tiles is not None:
        [main] = blocks_writing(sch, jo, C.COL)
        *_, tiles, mo, _, _, _ = sch.get_loops(sch.get_sblock(main))
        jo, jt = sch.split(tiles, [None, block_tiles])
        sch.reorder(jo, mo, jt)
    if symbolic:
        # Tiles outside the groups, fused with them: no division by a symbolic extent per tile
        # (fusing the batch too made TVM 0.27 overflow a bound while lowering). The batch is a loop.
        outer = sch.fuse(jo, g)
        sch.parallel(outer)
    elif ragged and workload.batch * workload.params.groups == 1:
        # The tail tile runs after the parallel loop, on one thread: it is one tile.
        # With more than one (batch, group) this would start the thread pool once
        # per pair (512 times for a depthwise layer): they go parallel instead.
        sch.parallel(jo)
        outer = n
    else:
        outer = sch.fuse(n, g) if ragged else sch.fuse(n, g, jo)
        sch.parallel(outer)
    for name in blocks_writing(sch, outer, C.COL):
        _register_tile(sch, name, plan.lanes)


def _sample_block_tiles(workload: Workload, plan: GemmPlan, arch: CpuArch) -> int | None:
    """Sample tiles per block when the weight does not stay in cache across tiles: a block's
    input (``arch.gemm_input_block_bytes``) is read again for each weight column block,
    and the weight once per block instead of once per tile. None when not needed."""
    p = workload.params
    size = itemsize(workload.dtype)
    if p.in_per_group * p.out_per_group * p.kernel_size * size <= arch.gemm_resident_weight_bytes:
        return None
    wanted = max(1, arch.gemm_input_block_bytes // (p.in_per_group * plan.rows * size))
    whole = workload.length // plan.rows
    # A divisor of the tile count: a split with a remainder puts its bounds check inside
    # the unrolled micro-kernel.
    tiles = max(d for d in range(1, min(wanted, whole) + 1) if whole % d == 0)
    return tiles if 1 < tiles < whole else None


def _gemm_weight_outer(sch: s_tir.Schedule, workload: Workload, plan: GemmPlan,
                       channel_block: int | None, pack: bool = True) -> None:
    """Parallel over the weight's column blocks; each is packed (with ``pack``; else it
    comes packed), then met by every sample.

    With ``channel_block``, the input channels go in blocks of that many outside
    the sample tiles, so that one block of the packed weight stays in L1 while all
    samples pass over it; the accumulators are then loaded and stored once per
    channel block.
    """
    width = plan.width
    kernel = workload.params.kernel_size
    col = sch.get_sblock(C.COL)
    n, g, jo, ji, mo, mi, c = _gemm_loops(sch, plan)
    blocks = 1 if channel_block is None else -(-workload.params.in_per_group // channel_block)
    if blocks > 1:
        co, ci = sch.split(c, [blocks, None])
        # Every batch element reuses the weight's column block while it is packed.
        sch.reorder(g, mo, co, n, jo, ci, ji, mi)
    else:
        sch.reorder(g, mo, n, jo, c, ji, mi)
    outer = sch.fuse(g, mo)
    sch.parallel(outer)
    # Each thread packs the weight's column block it works on, when a block is whole
    # kernel rows or part of one; otherwise the copy of a block's region would write
    # beyond it, and all the weight is packed first.
    aligned = kernel % width == 0 or width % kernel == 0
    if pack:
        _pack_weight(sch, col, outer if aligned else None, kernel, width)
    if blocks > 1:
        # Before the partition, which would split col's block in two.
        _channel_blocked_tile(sch, col, plan.lanes, co)
    # A symbolic function's samples run to whole tiles: no tail to partition off.
    if not is_symbolic(sch) and workload.length % plan.rows:
        sch.loop_partition(jo, [workload.length // plan.rows, None])
    if blocks == 1:
        for name in blocks_writing(sch, outer, C.COL):
            _register_tile(sch, name, plan.lanes)


def _channel_blocked_tile(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int,
                          channel_blocks: s_tir.schedule.LoopRV) -> None:
    """Accumulate a tile of ``col`` in place over one block of input channels: LLVM keeps
    it in registers across the block's channels, and it is loaded and stored once per block."""
    *_, ji, mi = sch.get_loops(block)
    sch.unroll(ji)
    sch.vectorize(mi)
    sch.decompose_reduction(block, channel_blocks)
    _pad_col_rows(sch, block, lanes)


@dataclass(frozen=True)
class CpuFallbackRule:
    """Always applies on CPU: every stage parallel over its outer loops.

    The ``col`` stage is laid out (batch, group, channel, tap, sample) so that
    the GEMM vectorises along the input samples: right for depthwise and other
    layers where out_channels/groups * kernel_size is too small or odd to
    vectorise along.
    """

    name: str = "cpu-fallback"
    form: str = C.GEMM

    def symbolic_layout(self, workload: Workload, target: Target) -> C.SymbolicLayout | None:
        if target.kind.name != "llvm":
            return None
        lanes = cpu_vector_lanes(target, workload.dtype)
        return C.SymbolicLayout(col_rows=lanes, halo=C.halo_pays(workload.params, workload.length, lanes, 1))

    def plan_key(self, workload: Workload, target: Target) -> tuple:
        return ()  # a symbolic function's schedule is the same at every length

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        symbolic = is_symbolic(sch)
        if symbolic:
            # col reads whole vectors of samples, with no bounds check, from a copy of x padded
            # to whole tiles and kept channel-major, as col walks it.
            x_tiles = sch.get_sblock(C.X_TILES)
            sch.transform_layout(x_tiles, ("write", 0), lambda n, t, ci, jj: (n, ci, t, jj))
        col = sch.get_sblock(C.COL)
        sch.transform_layout(col, ("write", 0), lambda n, g, j, m: (n, g, m, j))
        n, g, j, m, c = sch.get_loops(col)
        sch.reorder(n, g, m, c, j)
        if symbolic:
            # Each (batch, group) copies its own channels just before it reads them, in cache.
            outer = sch.fuse(n, g)
            sch.parallel(outer)
            sch.compute_at(x_tiles, outer)
        else:
            sch.parallel(sch.fuse(n, g, m))
        lanes = cpu_vector_lanes(target, workload.dtype)
        if symbolic or workload.length >= lanes:
            _, ji = sch.split(j, [None, lanes])
            sch.vectorize(ji)
        # col is channel-major here: the gather reads along the positions, phase by phase.
        _schedule_epilogue_cpu(sch, workload, output_order=False)
        return sch


RULES = (CpuGemmRule(), CpuFallbackRule())
