"""Default schedule rules for LLVM CPUs (x86 AVX2/AVX-512, AArch64)."""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from .. import compute as C
from ..params import Workload
from .common import has_block


def _parallel_outer(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, n_outer: int) -> None:
    """Fuse the first ``n_outer`` (spatial) loops of ``block`` and run them in parallel."""
    loops = sch.get_loops(block)[:n_outer]
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _schedule_epilogue_cpu(sch: s_tir.Schedule) -> None:
    """Gather, fold and bias stages: cheap next to the GEMM; parallel over (batch, channel)."""
    for name in (C.FULL, C.MARGIN_LEFT, C.MARGIN_RIGHT, C.OUT):
        if has_block(sch, name):
            _parallel_outer(sch, sch.get_sblock(name), 2)


def cpu_vector_lanes(target: Target, dtype: str) -> int:
    """SIMD lanes of ``dtype`` in the target's widest vector register."""
    bits = int(tvm.target.codegen.llvm_get_vector_width(target))
    return max(1, bits // tvm.DataType(dtype).bits)


def cpu_vector_registers(target: Target) -> int:
    # AVX-512 has 32 vector registers, AVX2 16, AArch64 NEON/SVE 32.
    arch = str(target.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple()
    if arch.startswith("aarch64") or arch.startswith("arm64"):
        return 32
    return 32 if int(tvm.target.codegen.llvm_get_vector_width(target)) >= 512 else 16


@dataclass(frozen=True)
class CpuGemmRule:
    """Register-blocked GEMM for the ``col`` stage, vectorised along (out channel, tap).

    The weight's contiguous (o, k) axis ``m`` is split into ``lanes * vectors``-wide
    vector blocks; ``rows`` input samples are
    unrolled beside them, so ``rows * vectors`` accumulators stay in registers
    across the whole reduction over input channels. A block of the weight is
    loaded once per parallel task and reused for every input sample. Not
    applicable when ``m`` has no vector-lane multiple as a divisor.
    """

    name: str = "cpu-gemm"

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        p = workload.params
        m_total = p.out_per_group * p.kernel_size
        lanes = cpu_vector_lanes(target, workload.dtype)
        # Halve the vector while it does not divide m: a ragged split would leave a
        # predicate inside the vectorised loop.
        while lanes > 1 and m_total % lanes:
            lanes //= 2
        if lanes < 4:
            return None
        regs = cpu_vector_registers(target)
        # rows * vectors accumulators, the weight vectors and one broadcast of x
        # must fit in the register file (AVX2: 2x6 + 2 + 1 = 15 of 16; AVX-512 with
        # 1x12 measured faster than 2x12 or 1x24 on the demo layer).
        vectors = 2 if regs == 16 and m_total % (2 * lanes) == 0 else 1
        rows = min(workload.length, 6 if vectors == 2 else 12)
        sch = s_tir.Schedule(func)
        col = sch.get_sblock(C.COL)
        n, g, j, m, c = sch.get_loops(col)
        mo, mi = sch.split(m, [None, lanes * vectors])
        jo, ji = sch.split(j, [None, rows])
        sch.reorder(n, g, mo, jo, c, ji, mi)
        sch.parallel(sch.fuse(n, g, mo))
        acc = sch.cache_write(col, 0, "local")
        sch.reverse_compute_at(acc, jo)
        # The gather walks col down a column (stride m): a power-of-two row
        # stride would map every row to one cache set. Pad rows by one vector.
        sch.storage_align(acc, 0, axis=2, factor=256, offset=lanes)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.unroll(ji)
        sch.vectorize(mi)
        sch.decompose_reduction(col, c)
        _schedule_epilogue_cpu(sch)
        return sch


@dataclass(frozen=True)
class CpuFallbackRule:
    """Always applies on CPU: every stage parallel over its outer loops.

    The ``col`` stage is laid out (batch, group, channel, tap, sample) so that
    the GEMM vectorises along the input samples: right for depthwise and other
    layers where out_channels/groups * kernel_size is too small or odd to
    vectorise along.
    """

    name: str = "cpu-fallback"

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        if target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        col = sch.get_sblock(C.COL)
        sch.transform_layout(col, ("write", 0), lambda n, g, j, m: (n, g, m, j))
        n, g, j, m, c = sch.get_loops(col)
        sch.reorder(n, g, m, c, j)
        sch.parallel(sch.fuse(n, g, m))
        lanes = cpu_vector_lanes(target, workload.dtype)
        if workload.length >= lanes:
            _, ji = sch.split(j, [None, lanes])
            sch.vectorize(ji)
        _schedule_epilogue_cpu(sch)
        return sch


RULES = (CpuGemmRule(), CpuFallbackRule())
