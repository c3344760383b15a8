"""One library for every length: the functions of a symbolic module and the length ranges they serve.

A rule's plan depends on the length (rows per register tile, which operand the parallel loop
walks, the blocked form for long inputs, gather tiles), so a symbolic module holds one function
per range of input lengths where the plans differ. The ranges are found by planning the layer at
the probe lengths :data:`PROBES` (powers of two from the layer's shortest input up): the
function scheduled for a probe serves the lengths from just above the probe before it up to the
probe itself, and consecutive probes whose scheduled functions are the same program make one
range. Lengths past the last probe take its function, whose plan no longer changes with length.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from ..compute import COL_ROW_ALIGN
from ..lengths import LengthRange
from ..params import OP, ConvTranspose1dParams, Workload
from . import PREPACKABLE, symbolic_schedule
from .cpu import packed_weight_block

# Lengths at which a layer is planned: beyond 2**16 input samples no rule's plan changes
# (the largest threshold, the blocked form's col of 8 MiB, is crossed well before for real layers).
PROBES = tuple(2**k for k in range(17))


@dataclass(frozen=True)
class SymbolicPlan:
    """The scheduled functions of a symbolic module, one per length range, with the rule of each
    and the column block of the packed weight they all read (None: the weight as it is)."""

    ranges: tuple[LengthRange, ...]
    functions: dict[str, tirx.PrimFunc]
    rules: tuple[str, ...]
    weight_block: int | None


def probe_lengths(params: ConvTranspose1dParams) -> list[int]:
    """The layer's shortest input, then every probe above it."""
    first = params.min_length
    return [first] + [p for p in PROBES if p > first]


def _probe_workloads(params: ConvTranspose1dParams, dtype: str) -> list[Workload]:
    """A batch-1 workload per probe length, up to the first whose tensors 32-bit indices cannot reach."""
    found = []
    for length in probe_lengths(params):
        try:
            found.append(Workload(params, 1, length, dtype))
        except ValueError:
            break
    return found


def plan_lengths(params: ConvTranspose1dParams, dtype: str, target: Target, *, rule: str | None = None,
                 prepack_weight: bool = False) -> SymbolicPlan:
    """Schedule the layer at every probe length and merge the probes whose functions agree.

    With ``prepack_weight``, every function reads the weight packed by one column block when every
    range's rule is one of :data:`PREPACKABLE` (and all pack alike); otherwise none does.
    """
    workloads = _probe_workloads(params, dtype)
    if not workloads:
        raise ValueError(f"{OP}: a symbolic module needs at least one length whose tensors 32-bit indices reach, "
                         f"got none for {params}")
    block = _common_weight_block(workloads, target, rule) if prepack_weight else None
    scheduled = [symbolic_schedule(w, target, rule=rule, weight_block=block) for w in workloads]
    groups: list[tuple[int, int, s_tir.Schedule, str]] = []  # (first, last probe, schedule, rule)
    previous_last = 0
    for w, (sch, name) in zip(workloads, scheduled):
        func = sch.mod["main"]
        if groups and tvm_ffi.structural_equal(groups[-1][2].mod["main"], func):
            first, _, kept, kept_name = groups[-1]
            groups[-1] = (first, w.length, kept, kept_name)
        else:
            groups.append((previous_last + 1 if groups else params.min_length, w.length, sch, name))
        previous_last = w.length
    ranges, functions = [], {}
    for index, (first, last, sch, _) in enumerate(groups):
        name = f"main_{index}"
        functions[name] = sch.mod["main"].with_attr("global_symbol", name)
        ranges.append(LengthRange(first, last if index < len(groups) - 1 else None, name, buffer_sizes(sch)))
    return SymbolicPlan(tuple(ranges), functions, tuple(g[3] for g in groups), block)


def _common_weight_block(workloads: list[Workload], target: Target, rule: str | None) -> int | None:
    """The packed weight's column block when every probe's rule packs it and all by one block."""
    blocks = set()
    for w in workloads:
        _, name = symbolic_schedule(w, target, rule=rule)
        if name not in PREPACKABLE:
            return None
        blocks.add(packed_weight_block(w, target))
    return blocks.pop() if len(blocks) == 1 and None not in blocks else None


def buffer_sizes(sch: s_tir.Schedule) -> tuple[str, ...]:
    """The element count of each buffer the scheduled function allocates, as Python arithmetic in
    ``n`` and ``l``: a row of a buffer padded by ``storage_align`` counts its padding too."""
    sizes: list[str] = []
    # The rules leave every intermediate in the root block's allocations.
    for buf in sch.mod["main"].body.block.alloc_buffers:
        dims = [python_expr(d) for d in buf.shape]
        dims[-1] = f"({dims[-1]} + {COL_ROW_ALIGN[0]})"  # the most storage_align pads a row
        sizes.append(" * ".join(dims))
    return tuple(sorted(set(sizes)))


_OPS = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.FloorMod: "%"}


def python_expr(e) -> str:
    """A TIR integer expression in the symbolic module's two variables as Python arithmetic
    (:func:`tvm_convt.lengths._size_function` reads it back)."""
    if isinstance(e, tirx.IntImm):
        return str(int(e.value))
    if isinstance(e, tirx.Var):
        return e.name
    if isinstance(e, tirx.Cast):
        return python_expr(e.value)
    if isinstance(e, (tirx.Min, tirx.Max)):
        return f"{'min' if isinstance(e, tirx.Min) else 'max'}({python_expr(e.a)}, {python_expr(e.b)})"
    for kind, op in _OPS.items():
        if isinstance(e, kind):
            return f"({python_expr(e.a)} {op} {python_expr(e.b)})"
    raise AssertionError(f"unexpected size expression {e!r} ({type(e).__name__})")
