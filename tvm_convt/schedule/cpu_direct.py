"""The CPU rule of the direct (stride 1) formulation: an implicit GEMM with register tiles.

Each output tile is ``rows`` output channels by ``vectors`` SIMD vectors of output
samples, accumulated in registers over (input channel, tap): per step it loads
``vectors`` windows of ``x_pad`` (shifted by the tap) and broadcasts ``rows``
weights from a copy packed as (channel block, input channel, tap, row). Nothing
but the output is written, where the GEMM form writes ``col``, kernel_size times
the output, and reads it back in the gather.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from .. import compute as C
from ..params import Workload
from .cpu import cpu_arch, cpu_vector_lanes, parallel_outer, schedule_fold_cpu


@dataclass(frozen=True)
class DirectPlan:
    """One workload's tile: ``rows`` output channels (a divisor of a group's), ``vectors``
    x ``lanes`` output samples."""

    rows: int
    vectors: int
    lanes: int

    @property
    def width(self) -> int:
        return self.vectors * self.lanes


def direct_plan(workload: Workload, target: Target) -> DirectPlan:
    """The target's direct blocking, fitted to the layer: rows divide the channels of a
    group, and a short output takes fewer vectors."""
    rows, vectors = cpu_arch(target).direct_blocking
    lanes = cpu_vector_lanes(target, workload.dtype)
    cog = workload.params.out_per_group
    rows = max(r for r in range(1, rows + 1) if cog % r == 0)
    _, n_q = workload.phase_range
    vectors = max(1, min(vectors, n_q // lanes))
    return DirectPlan(rows, vectors, lanes)


def _blocks_writing(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, buffer: str) -> list[str]:
    """Names of the blocks under ``loop`` that write ``buffer``: more than one once a loop is
    partitioned, nested in wrapper blocks that declare no writes."""
    found: list[str] = []
    pending = list(sch.get_child_blocks(loop))
    while pending:
        block = pending.pop(0)
        stmt = sch.get(block)
        if any(region.source.name == buffer for region in stmt.writes):
            found.append(stmt.name_hint)
        else:
            pending.extend(sch.get_child_blocks(block))
    return found


def _pack_weight(sch: s_tir.Schedule, full: s_tir.schedule.SBlockRV, rows: int) -> None:
    """Copy the weight as (channel block, input channel, tap, row): the rows one step
    broadcasts are adjacent, and a tile's whole reduction reads one contiguous block."""
    packed = sch.cache_read(full, 1, "global")
    sch.transform_layout(packed, ("write", 0), lambda ci, o, k: (o // rows, ci, k, o % rows))
    parallel_outer(sch, packed, 1)


def _register_tiles(sch: s_tir.Schedule, outer: s_tir.schedule.LoopRV) -> None:
    """Accumulate each tile under ``outer`` in registers over the whole reduction; its loops
    end in (tile, c, k, row, vector, lane)."""
    for name in _blocks_writing(sch, outer, C.FULL):
        block = sch.get_sblock(name)
        *_, tile, c, _, row, vector, lane = sch.get_loops(block)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, tile)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.unroll(row)
        sch.unroll(vector)
        sch.vectorize(lane)
        sch.decompose_reduction(block, c)


@dataclass(frozen=True)
class CpuDirectRule:
    """Register-tiled implicit GEMM for the direct form; always applies to it.

    Parallel over (batch, channel block); each task walks the output in tiles, the
    ragged last tile in a loop of its own (a bounds check inside the unrolled tile
    makes LLVM spill the accumulators).
    """

    name: str = "cpu-direct"
    form: str = C.DIRECT

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        plan = direct_plan(workload, target)
        sch = s_tir.Schedule(func)
        full = sch.get_sblock(C.FULL)
        _pack_weight(sch, full, plan.rows)
        n, co, r, q, c, k = sch.get_loops(full)
        cob, row = sch.split(co, [None, plan.rows])
        tile, vector, lane = sch.split(q, [None, plan.vectors, plan.lanes])
        sch.reorder(n, cob, r, tile, c, k, row, vector, lane)
        outer = sch.fuse(n, cob, r)
        sch.parallel(outer)
        _, n_q = workload.phase_range
        if n_q % plan.width and n_q > plan.width:
            sch.loop_partition(tile, [n_q // plan.width, None])
        _register_tiles(sch, outer)
        parallel_outer(sch, sch.get_sblock(C.X_PAD), 2)
        schedule_fold_cpu(sch)
        return sch
