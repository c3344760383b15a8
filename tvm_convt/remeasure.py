"""Re-measuring the best tuning records against each other before one is kept.

MetaSchedule measures each candidate once, in its own round; on a shared or busy
machine a candidate that is no faster than the default schedule can win by noise
(measured here: records 2-6 % slower than the default schedule came out on top).
:func:`rank_candidates` builds the few best records of a workload and its current
default schedule, times them interleaved in one process (medians), and ranks them;
the default schedule keeps its place unless a record beats it by
:data:`DEFAULT_MARGIN`. :func:`tvm_convt.tuning.prune` uses it with ``confirm_on=target``.
Where the default rule is ``cpu-gemm`` or ``cpu-gemm-blocked``, the default is timed as the layer
runs it, reading the weight packed once (``prepack_weight``): a record must beat that, not the
per-call pack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import s_tir

from .lowering import compile_module
from .params import PACK_WEIGHT, Workload
from .records import workload_module
from .reference import CHECK_TOLERANCE, conv_transpose1d_reference, relative_error
from .target import device_of
from .timing import interleaved_medians, layer_inputs

# A record must beat the default schedule by this fraction to be kept instead of it: the
# default improves with the package while a record stays as tuned, and records 2-3 % ahead
# in one run fell behind in the next (a shared 2-core VM; see docs/performance.md).
DEFAULT_MARGIN = 0.05


@dataclass(frozen=True)
class Candidate:
    """A schedule of one workload: its trace, where it came from, its median seconds here."""

    trace: Any
    source: str  # "default" or "record <rank in the database>"
    seconds: float


def tuned_module(workload: Workload, target) -> tvm.IRModule:
    """The module tuned, and looked up, for ``workload`` on ``target``: in the formulation
    of its default schedule there (:func:`tvm_convt.schedule.schedule_form`)."""
    from .schedule import schedule_form

    return workload_module(workload, target.kind.name, schedule_form(workload, target))


def _candidate_traces(database, mod: tvm.IRModule, workload: Workload, target,
                      candidates: int) -> tuple[list[tuple[Any, str]], str]:
    """The default schedule's trace and the best records' of ``mod`` (``workload``'s
    :func:`tuned_module`), as (trace, source), and the name of the default rule."""
    from .schedule import default_schedule

    default, rule = default_schedule(workload, target, func=mod["main"])
    traces = [(default.trace, "default")]
    if database.has_workload(mod):
        for rank, record in enumerate(database.get_top_k(database.commit_workload(mod), candidates)):
            if str(record.trace) != str(default.trace):
                traces.append((record.trace, f"record {rank + 1}"))
    return traces, rule


def _prepacked_default_call(workload: Workload, target, arrays: list[np.ndarray], rule: str):
    """The default schedule of ``rule`` (``cpu-gemm``, ``cpu-gemm-blocked``) with its weight
    packed once, before the timed calls."""
    from .schedule import prepacked_schedule

    main, pack = prepacked_schedule(workload, target, rule)
    lib = compile_module(tvm.IRModule({"main": main.mod["main"], PACK_WEIGHT: pack.mod["main"]}), target)
    dev = device_of(target)
    x, weight, *bias = [tvm.runtime.tensor(a, dev) for a in arrays]
    block = int(pack.mod["main"].params[1].shape[-1])
    packed = tvm.runtime.empty(workload.params.packed_weight_shape(block), workload.dtype, dev)
    lib[PACK_WEIGHT](weight, packed)
    out = tvm.runtime.empty(workload.output_shape, workload.dtype, dev)
    func = lib["main"]
    return lambda: func(x, packed, *bias, out)


def _timed_call(mod: tvm.IRModule, trace, workload: Workload, target, arrays: list[np.ndarray]):
    """The scheduled module's call on ``arrays`` and the tensor it writes."""
    sch = s_tir.Schedule(mod)
    trace.apply_to_schedule(sch, remove_postproc=False)
    main = tvm.compile(sch.mod, target=target)["main"]
    dev = device_of(target)
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    out = tvm.runtime.empty(workload.output_shape, workload.dtype, dev)
    if target.kind.name != "cuda":
        return (lambda: main(*args, out)), out

    def call():
        main(*args, out)
        dev.sync()

    return call, out


def _right(call, out, expected: np.ndarray, dtype: str) -> bool:
    """Whether the call's output matches the float64 reference (MetaSchedule measured speed only)."""
    call()
    return relative_error(out.numpy(), expected) <= CHECK_TOLERANCE[dtype]


def rank_candidates(database, workload: Workload, target, *, candidates: int = 4,
                    rounds: int = 9) -> list[Candidate]:
    """The default schedule and the ``candidates`` best records of ``workload`` in
    ``database``, fastest first, as measured now on this machine's ``target``; a record whose
    output differs from the float64 reference is left out.

    The default schedule's time is reduced by :data:`DEFAULT_MARGIN` for the ranking
    (its :attr:`Candidate.seconds` is the measured one).
    """
    from .schedule import PREPACKABLE

    mod = tuned_module(workload, target)
    x, weight, bias = layer_inputs(workload)
    arrays = [x, weight] + ([bias] if bias is not None else [])
    traces, rule = _candidate_traces(database, mod, workload, target, candidates)
    expected = conv_transpose1d_reference(x, weight, bias, workload.params)
    calls = {}
    for trace, source in traces:
        call, out = _timed_call(mod, trace, workload, target, arrays)
        if source == "default" or _right(call, out, expected, workload.dtype):
            calls[source] = call
    traces = [(trace, source) for trace, source in traces if source in calls]  # a wrong record is never kept
    if rule in PREPACKABLE:
        calls["default"] = _prepacked_default_call(workload, target, arrays, rule)
    times = interleaved_medians(calls, rounds=rounds)
    ranked = [Candidate(trace, source, times[source]) for trace, source in traces]

    def key(c: Candidate) -> float:
        return c.seconds * (1 - DEFAULT_MARGIN) if c.source == "default" else c.seconds

    return sorted(ranked, key=key)


def describe(ranked: list[Candidate]) -> str:
    """One line for people: each candidate's source and median, fastest first."""
    return ", ".join(f"{c.source} {c.seconds * 1e3:.3f} ms" for c in ranked)


__all__ = ["Candidate", "DEFAULT_MARGIN", "describe", "rank_candidates", "tuned_module"]
