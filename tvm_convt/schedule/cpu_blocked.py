"""The CPU rule of the blocked GEMM form: ``col`` computed and gathered one block of output
positions at a time, inside one parallel loop.

For long inputs the GEMM form's ``col`` is far larger than the caches (90 MB for
hifigan_v1_up1 at 16x its length): written to memory by the GEMM and read back by the
gather. The blocked form (:func:`tvm_convt.compute.block_rows`) gives each block its own
rows, the kernel's reach included, so a block's ``col`` (a few hundred KiB) is made, gathered
and dropped while it is in L2. The GEMM inside a block is ``cpu-gemm``'s register tile.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from .. import compute as C
from ..params import Workload
from .common import has_block, is_symbolic
from .cpu import (GemmPlan, _gather_writes_output, _pack_weight, _read_buffer, _register_tile, col_row_bytes,
                  cpu_arch, full_in_output_order, gemm_plan, schedule_fold_cpu)


def blocked_plan(workload: Workload, target: Target) -> GemmPlan | None:
    """The register tile of the blocked rule for ``workload`` on ``target``, or None where the
    rule does not cover it: the form applies, the GEMM's register tile does, and a block's
    rows are whole tiles of it."""
    plan = gemm_plan(workload, target) if target.kind.name == "llvm" else None
    if plan is None or not C.blocked_applies(workload) or C.block_rows(workload) % plan.rows:
        return None
    return plan


def _block_loop(sch: s_tir.Schedule, workload: Workload, output_order: bool) -> s_tir.schedule.LoopRV:
    """Split the gather into the blocks of :func:`tvm_convt.compute.block_positions`, parallel
    over (batch, block); the phases go innermost in output order. Returns the parallel loop."""
    n, co, r, q = sch.get_loops(sch.get_sblock(C.FULL))
    # The positions a block gathers, from its rows (a symbolic function's are its layout's).
    rows = int(sch.get(sch.get_sblock(C.X_BLOCKS)).writes[0].source.shape[-1])
    b, qq = sch.split(q, [None, rows - C.direct_reach(workload.params)])
    if output_order:
        sch.reorder(n, b, co, qq, r)
    else:
        sch.reorder(n, b, co, r, qq)
    # A symbolic block count stays unfused: a fused (batch, block) loop divides by it per block.
    outer = b if is_symbolic(sch) else sch.fuse(n, b)
    sch.parallel(outer)
    return outer


def _block_gemm(sch: s_tir.Schedule, workload: Workload, plan: GemmPlan, outer: s_tir.schedule.LoopRV) -> None:
    """``col`` and the input block under ``outer``: weight column blocks outside, each met by
    every register tile of the block's rows."""
    col = sch.get_sblock(C.COL)
    sch.compute_at(col, outer)
    sch.compute_at(sch.get_sblock(C.X_BLOCKS), outer)
    # Under the (batch, block) loop (the block loop, in a batch loop, when symbolic): the groups
    # (where there are more than one), rows, m, c.
    loops = sch.get_loops(col)
    below = [sch.get(lp).same_as(sch.get(outer)) for lp in loops].index(True) + 1
    *groups, j, m, c = loops[below:]
    mo, mi = sch.split(m, [None, plan.width])
    jo, ji = sch.split(j, [None, plan.rows])
    sch.reorder(*groups, mo, jo, c, ji, mi)
    if len(_read_buffer(sch, C.COL, "weight").shape) == 3:
        # Not given packed: the function packs all of it once, before the loops.
        _pack_weight(sch, col, None, workload.params.kernel_size, plan.width)
    _register_tile(sch, C.COL, plan.lanes)


def blocked_gemm(workload: Workload, target: Target) -> bool:
    """Whether ``target`` computes ``workload``, a layer of the GEMM form, in the blocked form.

    The blocked form saves ``col``'s trip to memory and back, and pays by reading the whole
    weight once per block, ``in_channels/groups / block_positions`` times the bytes of ``col``: it
    serves where ``col`` would exceed ``CpuArch.blocked_col_bytes`` and those reads are at most
    ``CpuArch.blocked_weight_reads`` times it.
    """
    arch = cpu_arch(target)
    if arch.blocked_col_bytes is None or blocked_plan(workload, target) is None:
        return False
    col = workload.batch * workload.length * col_row_bytes(workload)
    weight_reads = workload.params.in_per_group / C.block_positions(workload)
    return col > arch.blocked_col_bytes and weight_reads <= arch.blocked_weight_reads


@dataclass(frozen=True)
class CpuBlockedRule:
    """``cpu-gemm``'s register-tiled GEMM and gather, one block of output positions per task."""

    name: str = "cpu-gemm-blocked"
    form: str = C.BLOCKED

    def symbolic_layout(self, workload: Workload, target: Target) -> C.SymbolicLayout | None:
        if blocked_plan(workload, target) is None:
            return None
        return C.SymbolicLayout(block_rows=C.block_rows(workload))

    def plan_key(self, workload: Workload, target: Target) -> tuple:
        return (blocked_plan(workload, target),)

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        plan = blocked_plan(workload, target)
        if plan is None:
            return None
        sch = s_tir.Schedule(func)
        output_order = workload.params.dilation == 1 and full_in_output_order(sch, workload)
        outer = _block_loop(sch, workload, output_order)
        _block_gemm(sch, workload, plan, outer)
        # A symbolic function too: its bound makes the phases scalar in the gather, but at the lengths
        # this form serves a whole full, copied to the output after, cost more. Not a stream's kernel,
        # whose partial sums read full after the output.
        if output_order and not has_block(sch, C.STATE_OUT):
            _gather_writes_output(sch, outer)
            return sch
        if output_order:
            # A stream's: full's phases vectors, the output a stage of its own (its bound is symbolic).
            sch.vectorize(sch.get_loops(sch.get_sblock(C.FULL))[-1])
        schedule_fold_cpu(sch)
        return sch


RULES = (CpuBlockedRule(),)
