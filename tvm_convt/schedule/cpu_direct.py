"""The CPU rule of the direct formulation: an implicit GEMM per output phase, register-tiled.

Each output tile is ``rows`` output channels by ``vectors`` SIMD vectors of output
positions of one phase, accumulated in registers over (input channel, tap): per step
it loads ``vectors`` windows of ``x_pad`` (shifted by the tap) and broadcasts ``rows``
weights from a copy packed as (channel block, input channel, tap, row). Nothing but
``full`` is written, where the GEMM form writes ``col`` and reads it back in the gather;
when the channel blocks are the parallel loop, in zeros mode, with the padding or the output
length a multiple of the stride, ``full`` is a block's own buffer, and the block writes its
output from it while it is in cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from .. import compute as C
from ..params import ConvTranspose1dParams, Workload, itemsize
from .common import CPU_ACCUMULATOR_SCOPE, blocks_writing, has_block, is_symbolic, read_index
from .cpu import (col_row_bytes, cpu_arch, cpu_vector_lanes, full_in_output_order, output_order_applies, parallel_outer,
                  schedule_fold_cpu)


@dataclass(frozen=True)
class DirectPlan:
    """One workload's tile: ``rows`` output channels (a divisor of a group's), ``vectors`` x
    ``lanes`` of the ``positions`` of a phase; and whether the parallel loop walks the positions
    (``samples_outer``: the input is too large to stay in cache while every channel block
    passes over it) or the channel blocks."""

    rows: int
    vectors: int
    lanes: int
    positions: int  # per phase, C.direct_positions
    samples_outer: bool

    @property
    def width(self) -> int:
        return self.vectors * self.lanes


def reduction_order(p: ConvTranspose1dParams, c: s_tir.schedule.LoopRV, t: s_tir.schedule.LoopRV) -> tuple:
    """The tile's reduction loops, outer first. A strided layer's phase meets few taps (kernel_size /
    stride, 2 for the usual K = 2S); with the taps inside the channels LLVM unrolled the pair and the
    tile's x vectors for both spilled the accumulators (static modules: encodec_up3 1.29x and
    mimi_depthwise 1.28x slower), so they go outside; stride 1 keeps the taps inside, where one input
    row serves them all (dilated_s1 1.20x faster so). docs/performance.md has the A/B."""
    return (t, c) if p.stride > 1 else (c, t)


def direct_plan(workload: Workload, target: Target) -> DirectPlan:
    """The target's direct blocking, fitted to the layer: rows divide the channels of a
    group, and a short output takes fewer vectors. The positions go outside when a
    group's input is larger than ``CpuArch.direct_resident_input_bytes`` and they make
    two tiles or more. A short reduction (``CpuArch.direct_short_reduction``) takes one vector:
    a symbolic function's rows then end less than a vector past the output, where three vectors
    wasted up to two (mimi_depthwise at 125 samples: 144 positions a phase computed for 126)."""
    arch = cpu_arch(target)
    rows, vectors = arch.direct_blocking
    lanes = cpu_vector_lanes(target, workload.dtype)
    p = workload.params
    rows = max(r for r in range(1, rows + 1) if p.out_per_group % r == 0)
    positions = C.direct_positions(workload)
    vectors = max(1, min(vectors, positions // lanes))
    if p.in_per_group * C.TapPlan.of(p).taps <= arch.direct_short_reduction:
        vectors = 1
    input_bytes = p.in_per_group * (positions + C.direct_reach(p)) * itemsize(workload.dtype)
    # With fewer than two tiles of positions, a parallel loop over them would leave cores idle.
    samples_outer = input_bytes > arch.direct_resident_input_bytes and positions >= 2 * vectors * lanes
    return DirectPlan(rows, vectors, lanes, positions, samples_outer)


def strided_direct(workload: Workload, target: Target) -> bool:
    """Whether ``target``'s core computes the strided ``workload`` in the direct form: groups
    of at most ``CpuArch.strided_direct_channels`` input channels, where the direct rule would
    walk the samples outside, and whose GEMM form's ``col`` would take at most
    ``CpuArch.strided_direct_col_bytes``."""
    arch = cpu_arch(target)
    if workload.params.in_per_group > arch.strided_direct_channels or not C.direct_applies(workload):
        return False
    if arch.strided_direct_col_bytes is not None and \
            workload.batch * workload.length * col_row_bytes(workload) > arch.strided_direct_col_bytes:
        return False
    return direct_plan(workload, target).samples_outer


def _pack_weight(sch: s_tir.Schedule, full: s_tir.schedule.SBlockRV, rows: int) -> None:
    """Copy the weight as (channel block, input channel, tap, row): the rows one step
    broadcasts are adjacent, and a tile's whole reduction reads one contiguous block."""
    packed = sch.cache_read(full, read_index(sch, full, "weight"), "global")
    sch.transform_layout(packed, ("write", 0), lambda ci, o, k: (o // rows, ci, k, o % rows))
    parallel_outer(sch, packed, 1)


def packed_weight_block(workload: Workload, target: Target) -> int | None:
    """The column block by which ``cpu-direct`` reads a weight packed once per weight
    (:func:`tvm_convt.compute.weight_pack_func`): a block of ``rows`` output channels, all their taps,
    so that a channel block's weights for one input channel are one contiguous run, as its own
    per-call pack lays them out; None where the rule does not apply."""
    if target.kind.name != "llvm" or not C.direct_applies(workload):
        return None
    return direct_plan(workload, target).rows * workload.params.kernel_size


def _register_tiles(sch: s_tir.Schedule, outer: s_tir.schedule.LoopRV) -> None:
    """Accumulate each tile under ``outer`` in registers over the whole reduction; its loops
    end in (tile or channel block, the two reduction loops, row, vector, lane)."""
    for name in blocks_writing(sch, outer, C.FULL):
        block = sch.get_sblock(name)
        *_, tile, first, _, row, vector, lane = sch.get_loops(block)
        acc = sch.cache_write(block, 0, CPU_ACCUMULATOR_SCOPE)
        sch.reverse_compute_at(acc, tile)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.unroll(row)
        sch.unroll(vector)
        sch.vectorize(lane)
        sch.decompose_reduction(block, first)


def _channel_blocks_outer(sch: s_tir.Schedule, loops, plan: DirectPlan,
                          output_inside: bool) -> s_tir.schedule.LoopRV:
    """Parallel over (batch, channel block, phase); each walks the positions in tiles, the
    last one (fewer vectors) in a loop of its own. Returns the parallel loop.

    With ``output_inside`` the phases go inside the parallel loop too, and each block then
    computes its channels' output: ``full`` becomes the block's own buffer (tens of KiB),
    read back from cache, where the whole of it went to memory and back.
    """
    n, cob, r, tile, red_outer, red_inner, row, vector, lane = loops
    sch.reorder(n, cob, r, tile, red_outer, red_inner, row, vector, lane)
    outer = sch.fuse(n, cob) if output_inside else sch.fuse(n, cob, r)
    sch.parallel(outer)
    if output_inside:
        # Before the partition below: its wrapper blocks declare no writes, and the output's
        # region under the loop would then be all of it.
        # (A stream's partial sums stay after the loop: TVM 0.27 cannot invert their read of full,
        # position l + v // stride, at some strides; full is then kept whole.)
        sch.reverse_compute_at(sch.get_sblock(C.OUT), outer)
    # A symbolic function's positions run to whole tiles.
    if not is_symbolic(sch) and plan.positions % plan.width and plan.positions > plan.width:
        sch.loop_partition(tile, [plan.positions // plan.width, None])
    return outer


def _samples_outer(sch: s_tir.Schedule, loops, plan: DirectPlan) -> s_tir.schedule.LoopRV:
    """Parallel over the tiles of positions of each batch; every phase and channel block
    passes over a tile while its window of the input is in cache (the phases read the same
    window: with the phases outside, the input streamed from memory once per phase). The last
    tile is a loop of its own, parallel over its channel blocks. Returns the batch loop."""
    n, cob, r, tile, red_outer, red_inner, row, vector, lane = loops
    sch.reorder(n, tile, r, cob, red_outer, red_inner, row, vector, lane)
    outer = n
    whole = plan.positions // plan.width
    # A symbolic function's positions run to whole tiles.
    if not is_symbolic(sch) and plan.positions % plan.width and whole:
        main, tail = sch.loop_partition(tile, [whole, None])
        sch.parallel(main)
        *_, tail_cob, _, _, _, _, _ = sch.get_loops(sch.get_sblock(blocks_writing(sch, tail, C.FULL)[0]))
        sch.parallel(tail_cob)
    else:
        sch.parallel(tile)
    return outer


@dataclass(frozen=True)
class CpuDirectRule:
    """Register-tiled implicit GEMM for the direct form; always applies to it."""

    name: str = "cpu-direct"
    form: str = C.DIRECT

    def symbolic_layout(self, workload: Workload, target: Target) -> C.SymbolicLayout | None:
        if target.kind.name != "llvm":
            return None
        # full's positions to whole tiles: no tail loop, no predicate in a tile.
        return C.SymbolicLayout(positions=direct_plan(workload, target).width)

    def plan_key(self, workload: Workload, target: Target) -> tuple:
        """The plan without its positions, which a symbolic function takes from its arguments."""
        plan = direct_plan(workload, target)
        return (plan.rows, plan.vectors, plan.lanes, plan.samples_outer)

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        plan = direct_plan(workload, target)
        sch = s_tir.Schedule(func)
        full = sch.get_sblock(C.FULL)
        if len(sch.get(full).reads[read_index(sch, full, "weight")].source.shape) == 3:
            _pack_weight(sch, full, plan.rows)  # else main reads it packed once per weight (packed_weight_block)
        n, co, r, q, c, t = sch.get_loops(full)
        cob, row = sch.split(co, [None, plan.rows])
        tile, vector, lane = sch.split(q, [None, plan.vectors, plan.lanes])
        loops = (n, cob, r, tile, *reduction_order(workload.params, c, t), row, vector, lane)
        output_inside = not plan.samples_outer and _output_follows_blocks(workload)
        if plan.samples_outer:
            outer = _samples_outer(sch, loops, plan)
        else:
            outer = _channel_blocks_outer(sch, loops, plan, output_inside)
        _register_tiles(sch, outer)
        # After the tiles' register caches are made, so that those stay compact.
        output_order = cpu_arch(target).direct_output_order and full_in_output_order(sch, workload)
        parallel_outer(sch, sch.get_sblock(C.X_PAD), 2)
        if is_symbolic(sch):
            # Split where the input starts and ends: the copy between is then plain vector moves,
            # where a bounds check on every sample made LLVM mask each load.
            sch.annotate(sch.get_loops(sch.get_sblock(C.X_PAD))[-1], "pragma_loop_partition_hint", 1)
        if not output_inside:
            schedule_fold_cpu(sch)
        # Phases stored apart (not a stream's kernel, whose output stage also reads the partial sums carried over).
        if output_order_applies(workload) and not output_order and not has_block(sch, C.STATE_OUT):
            _interleave_output(sch, workload, plan.lanes)
        elif output_inside and not is_symbolic(sch):  # a symbolic output's length is no known multiple of the lanes
            _vectorize_output(sch, workload, plan.lanes)
        return sch


def _output_follows_blocks(workload: Workload) -> bool:
    """Whether a channel block's output can be computed from its own part of ``full``.

    Zeros mode only: the other modes fold margins from the far ends of the output into each
    position. And TVM 0.27's ``reverse_compute_at`` inverts the output's read of ``full``
    (phase ``(l + padding) % stride``, position ``(l + padding) // stride``) only when the
    padding or the output length is a multiple of the stride (found over 2,036 layers;
    real layers, with kernel_size - 2 * padding a multiple of the stride, are). The output
    length's residue modulo the stride is the same at every input length, so a symbolic
    function decides alike.
    """
    p = workload.params
    whole = p.stride == 1 or p.padding % p.stride == 0 or p.output_length_of(1) % p.stride == 0
    return p.padding_mode == "zeros" and whole


def _interleave_output(sch: s_tir.Schedule, workload: Workload, lanes: int) -> None:
    """The output stage of a ``full`` stored by phase: output position ``stride * a + b`` reads
    phase position ``a`` (shifted by the padding), so with ``b`` outside a vector of ``a`` each phase
    is a vector load, and LLVM interleaves the phases' vectors with shuffles into whole vector
    stores, where a vector along the output gathered each lane with a load of its own. The loop of
    ``a`` splits where a ragged end needs a predicate (``pragma_loop_partition_hint``)."""
    l = sch.get_loops(sch.get_sblock(C.OUT))[-1]
    a, b = sch.split(l, [None, workload.params.stride])
    tile, lane = sch.split(a, [None, lanes])
    sch.reorder(tile, b, lane)
    sch.vectorize(lane)
    sch.annotate(tile, "pragma_loop_partition_hint", 1)


def _vectorize_output(sch: s_tir.Schedule, workload: Workload, lanes: int) -> None:
    """Vectorise the output stage along its samples, where whole vectors cover them."""
    if workload.out_length % lanes == 0:
        _, lane = sch.split(sch.get_loops(sch.get_sblock(C.OUT))[-1], [None, lanes])
        sch.vectorize(lane)
