"""What every schedule rule shares: the rule protocol and stage look-ups."""

from __future__ import annotations

from typing import Protocol

from tvm import s_tir, tirx
from tvm.target import Target

from ..compute import SymbolicLayout
from ..params import Workload


class ScheduleRule(Protocol):
    """A default schedule for some workloads on some targets.

    ``apply`` returns the scheduled program, or ``None`` when the rule does not
    apply (wrong target kind, a shape it does not cover); rules never raise for that.
    """

    name: str
    form: str  # the formulation it schedules (tvm_convt.compute.FORMS)

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        ...

    def symbolic_layout(self, workload: Workload, target: Target) -> SymbolicLayout | None:
        """How a function symbolic in batch and length pads its intermediates for this rule's
        plan of ``workload`` (the static workload a length range is planned for), or None when
        the rule does not schedule symbolic functions for it. ``apply`` then takes that function
        with the same ``workload``."""
        ...

    def plan_key(self, workload: Workload, target: Target) -> tuple:
        """What the symbolic function's schedule takes from ``workload``'s length beyond its layout:
        two lengths with equal keys (and layouts) get the same function."""
        ...


# A CPU register tile's scope: TVM 0.27's LowerTVMBuiltin turns every "local" allocation into a
# TVMBackendAllocWorkspace call (whose pointers, live across it, spill), a "global" one under 1 KiB
# into a stack alloca that LLVM keeps in registers.
CPU_ACCUMULATOR_SCOPE = "global"


def is_symbolic(sch: s_tir.Schedule) -> bool:
    """Whether the scheduled function takes any batch and length (its input's shape is not constant)."""
    from ..compute import OUT

    y = sch.get(sch.get_sblock(OUT)).writes[0].source
    return not all(isinstance(dim, tirx.IntImm) for dim in y.shape)


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM raises its own ScheduleError subclasses
        return False
    return True


def blocks_writing(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, buffer: str) -> list[str]:
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


def read_index(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, buffer: str) -> int:
    """Which of ``block``'s reads is ``buffer`` (for ``cache_read`` and ``transform_layout``)."""
    reads = [r.source.name for r in sch.get(block).reads]
    assert buffer in reads, (buffer, reads)
    return reads.index(buffer)


def reads_input_in_vectors(func: tirx.PrimFunc) -> bool:
    """Whether scheduled ``func`` reads its input ``x`` inside a vectorised loop, whose loads assume
    the buffer's 64-byte alignment; a function that reads it in scalars only (every rule's symbolic
    functions, the GEMM and direct rules' static ones: they copy it into their own tiles first) can
    take an input aligned to its element, as NumPy allocates them, without a copy.

    Read from the function's TVMScript: a scheduled function (partitioned loops) fails the
    well-formedness checks a ``Schedule`` starts with, and TVM 0.27's Python has no TIR visitor."""
    lines = func.script().splitlines()
    for i, line in enumerate(lines):
        if not any(tag in line for tag in (" x[", "(x[", "[x[")):
            continue
        depth = len(line) - len(line.lstrip())
        for above in reversed(lines[:i]):
            above_depth = len(above) - len(above.lstrip())
            if above_depth < depth and above.strip().startswith("for "):
                depth = above_depth
                if "T.vectorized" in above:
                    return True
    return False
