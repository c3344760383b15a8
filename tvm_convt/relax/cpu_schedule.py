"""A CPU pipeline for whole models: TVM's fusion, then a schedule for the element-wise rest.

``tvm.compile``'s default pipeline for ``llvm`` legalizes every Relax op into its own
PrimFunc and schedules none of them, so LeakyReLU, residual adds, the mean of the
ResBlocks and tanh run as single-threaded scalar loops. :func:`cpu_pipeline` is TVM's own
CPU pipeline (``relax.backend.cpu_generic``: legalize, ``FuseOps``, ``FuseTIR``, lowering)
with one pass added after fusion: :class:`SpatialCPU`, which gives each PrimFunc whose
blocks are all spatial (element-wise, broadcast, injective) one loop, parallel outside and
vectorised inside, and leaves every other PrimFunc (reductions, this package's scheduled
convolutions) as it is. Use it as ``tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target))``.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight

from ..params import OP
from ..schedule.cpu import cpu_vector_lanes
from ..target import TargetLike, resolve_target

# Below this many elements a loop stays on one thread: waking the pool costs more.
PARALLEL_MIN_ELEMENTS = 4096


def _extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _lanes(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, target: tvm.target.Target) -> int:
    """Vector lanes of the block's output dtype (that of its first written buffer)."""
    return cpu_vector_lanes(target, str(sch.get(block).writes[0].source.dtype))


def _schedule_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, target: tvm.target.Target) -> None:
    """All loops of ``block`` as one, split into vectors; the vectors taken in parallel."""
    loops = sch.get_loops(block)
    if not loops:
        return
    loop = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent, lanes = _extent(sch, loop), _lanes(sch, block, target)
    if extent is None:
        return
    if lanes > 1 and extent % lanes == 0 and extent > lanes:
        # A ragged split would put a predicate inside the vector loop; only exact ones.
        loop, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)
    if extent >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(loop)


class SpatialCPU(dlight.ScheduleRule):
    """A dlight rule: PrimFuncs made only of spatial blocks get fused, vectorised, parallel
    loops (the blocks inlined into one another where TVM can); any other PrimFunc is refused."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = dlight.normalize_prim_func(sch)
        if not blocks or not all(b.is_injective() for b in blocks):
            return None
        for info in dlight.try_inline(sch, blocks):
            _schedule_block(sch, info.block_rv, target)
        return sch


def schedule_spatial() -> tvm.transform.Pass:
    """The pass giving each unscheduled all-spatial PrimFunc :class:`SpatialCPU`'s schedule
    and the ``tirx.is_scheduled`` mark (run it under the target, ``with target:``)."""
    return dlight.ApplyDefaultSchedule(SpatialCPU())


def cpu_pipeline(target: TargetLike) -> tvm.transform.Pass:
    """TVM's CPU pipeline for ``target`` with :func:`schedule_spatial` after its fusion, to
    pass as ``tvm.compile(..., relax_pipeline=...)``.

    Unlike ``tvm.compile``'s default for CPUs it fuses operators (``FuseOps``/``FuseTIR``) and
    folds constants, as TVM's GPU pipelines do; TVM's note in ``relax.build`` warns that its
    fusion may drop a ``call_pure_packed`` whose unused result a model relies on.
    """
    tgt = resolve_target(target)
    if tgt.kind.name != "llvm":
        raise ValueError(f"{OP}: cpu_pipeline needs an llvm target, got target kind {tgt.kind.name} "
                         f"(tvm.compile's default pipeline for it already schedules every function)")
    passes = (cpu_generic.library_dispatch_passes(tgt) + cpu_generic.legalize_passes(tgt) + [schedule_spatial()]
              + cpu_generic.dataflow_lower_passes(tgt) + cpu_generic.finalize_passes(tgt))

    @tvm.transform.module_pass(opt_level=0, name="TvmConvtCpuPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with tgt:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline

