"""One library for every length: the functions of a symbolic module and the length ranges they serve.

A rule's plan depends on the length (rows per register tile, which operand the parallel loop
walks, the blocked form for long inputs, gather tiles), so a symbolic module holds one function
per range of input lengths where the plans differ. Each rule says what of its plan a symbolic
function takes from the length (:func:`tvm_convt.schedule.symbolic_choice`'s key, pure Python and
cheap); the layer's keys are read at the probe lengths :data:`PROBES` (powers of two from its
shortest input up) and, between two probes whose keys differ, bisected to the exact length where
the plan changes, the length a static module's rule would change it at. Each range is scheduled
once; neighbours whose functions come out the same program are merged. Lengths past the last
probe take its function, whose plan no longer changes with length.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from ..compute import COL_ROW_ALIGN
from ..lengths import LengthRange
from ..params import OP, ConvTranspose1dParams, Workload
from . import PREPACKABLE, symbolic_choice, symbolic_schedule, weight_block_for

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


# A layer whose SMALL_LENGTH samples take fewer multiply-adds than this (a few microseconds) plans
# every shorter input at SMALL_LENGTH: the functions that would fit their register tiles to 1, 2 or
# 4 rows save less than they cost to compile (0.2-0.3 s each here).
SMALL_LENGTH = 12
SMALL_LAYER_MACS = 1 << 20


def probe_lengths(params: ConvTranspose1dParams) -> list[int]:
    """The layer's shortest input, then every probe above it."""
    first = params.min_length
    return [first] + [p for p in PROBES if p > first]


def planned_length(params: ConvTranspose1dParams, length: int) -> int:
    """The length a function for inputs of ``length`` is planned at: the length itself, or for a
    small layer at least :data:`SMALL_LENGTH`."""
    if params.macs_per_sample * SMALL_LENGTH < SMALL_LAYER_MACS:
        return max(length, SMALL_LENGTH)
    return length


def _probe_workloads(params: ConvTranspose1dParams, dtype: str) -> list[Workload]:
    """A batch-1 workload per probe length, up to the first whose tensors 32-bit indices cannot reach."""
    found = []
    for length in probe_lengths(params):
        try:
            found.append(Workload(params, 1, length, dtype))
        except ValueError:
            break
    return found


def _key(w: Workload, target: Target, rule: str | None) -> tuple:
    chosen, form, layout, key = symbolic_choice(w, target, rule)
    return (chosen.name, form, layout, key)


def plan_segments(params: ConvTranspose1dParams, dtype: str, target: Target, rule: str | None = None,
                  workloads: list[Workload] | None = None) -> list[tuple[int, int | None]]:
    """The lengths ``(first, last)`` (last None: no end) over which the plan stays the same, read at
    ``workloads`` (default: :func:`_probe_workloads`)."""
    workloads = _probe_workloads(params, dtype) if workloads is None else workloads
    if not workloads:
        raise ValueError(f"{OP}: a symbolic module needs at least one length whose tensors 32-bit indices reach, "
                         f"got none for {params}")

    def key(length: int) -> tuple:
        return _key(Workload(params, 1, planned_length(params, length), dtype), target, rule)

    keys = [key(w.length) for w in workloads]
    segments, first = [], workloads[0].length
    for (a, key_a), (b, key_b) in zip(zip([w.length for w in workloads], keys),
                                      zip([w.length for w in workloads[1:]], keys[1:])):
        if key_a == key_b:
            continue
        lo, hi = a, b  # key(lo) == key_a != key(hi): bisect to the first length of the new plan
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if key(mid) == key_a else (lo, mid)
        segments.append((first, lo))
        first = hi
    segments.append((first, None))
    return segments


def plan_lengths(params: ConvTranspose1dParams, dtype: str, target: Target, *, rule: str | None = None,
                 prepack_weight: bool = False, stream: bool = False) -> SymbolicPlan:
    """Schedule the layer once per range of :func:`plan_segments` and merge neighbours that agree.

    With ``prepack_weight``, every function reads the weight packed by one column block when every
    range's rule is one of :data:`PREPACKABLE` (and all pack alike); otherwise none does. With
    ``stream``, the functions are a stream's kernels (:func:`tvm_convt.compute.stream_te`).
    """
    probes = _probe_workloads(params, dtype)
    segments = plan_segments(params, dtype, target, rule, probes)
    # Each range planned at its longest length (the open last one at the longest probe).
    longest = probes[-1].length
    reps = [Workload(params, 1, planned_length(params, last if last is not None else max(first, longest)), dtype)
            for first, last in segments]
    block = _common_weight_block(reps, target, rule) if prepack_weight else None
    merged: list[tuple[int, int | None, s_tir.Schedule, str]] = []
    for (first, last), rep in zip(segments, reps):
        sch, name = symbolic_schedule(rep, target, rule=rule, weight_block=block, stream=stream)
        if merged and tvm_ffi.structural_equal(merged[-1][2].mod["main"], sch.mod["main"]):
            merged[-1] = (merged[-1][0], last, merged[-1][2], merged[-1][3])
        else:
            merged.append((first, last, sch, name))
    ranges, functions = [], {}
    for index, (first, last, sch, _) in enumerate(merged):
        name = f"main_{index}"
        functions[name] = sch.mod["main"].with_attr("global_symbol", name)
        ranges.append(LengthRange(first, last, name, buffer_sizes(sch)))
    return SymbolicPlan(tuple(ranges), functions, tuple(m[3] for m in merged), block)


def functions_at(params: ConvTranspose1dParams, dtype: str, target: Target, lengths: list[int], *,
                 prepack_weight: bool = False) -> tuple[dict[int, tirx.PrimFunc], int | None]:
    """The function a symbolic module of the layer runs at each of ``lengths`` (the one its range's
    plan gives: equal plan keys schedule equal functions) and the packed weight's column block, without
    planning the other lengths: what tuning compares candidates by."""
    reps = [Workload(params, 1, planned_length(params, n), dtype) for n in lengths]
    block = _common_weight_block(reps, target, None) if prepack_weight else None
    return {n: symbolic_schedule(w, target, weight_block=block)[0].mod["main"]
            for n, w in zip(lengths, reps)}, block


def _common_weight_block(reps: list[Workload], target: Target, rule: str | None) -> int | None:
    """The packed weight's column block when every range's rule packs it and all by one block."""
    blocks = set()
    for w in reps:
        chosen, _, _, _ = symbolic_choice(w, target, rule)
        if chosen.name not in PREPACKABLE:
            return None
        blocks.add(weight_block_for(chosen.name, w, target))
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


_OPS = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.FloorMod: "%",
        tirx.LT: "<", tirx.LE: "<=", tirx.GT: ">", tirx.GE: ">=", tirx.EQ: "==", tirx.NE: "!=",
        tirx.And: "and", tirx.Or: "or"}


def python_expr(e) -> str:
    """A TIR integer expression in the symbolic module's two variables as Python arithmetic
    (:func:`tvm_convt.lengths._size_function` reads it back)."""
    if isinstance(e, tirx.IntImm):
        return str(int(e.value))
    if isinstance(e, tirx.Var):
        return e.name
    if isinstance(e, tirx.Cast):
        return python_expr(e.value)
    if isinstance(e, tirx.Select):
        return f"select({python_expr(e.condition)}, {python_expr(e.true_value)}, {python_expr(e.false_value)})"
    if isinstance(e, tirx.Not):
        return f"(not {python_expr(e.a)})"
    if isinstance(e, (tirx.Min, tirx.Max)):
        return f"{'min' if isinstance(e, tirx.Min) else 'max'}({python_expr(e.a)}, {python_expr(e.b)})"
    for kind, op in _OPS.items():
        if isinstance(e, kind):
            return f"({python_expr(e.a)} {op} {python_expr(e.b)})"
    raise AssertionError(f"unexpected size expression {e!r} ({type(e).__name__})")
