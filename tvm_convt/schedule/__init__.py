"""Default (untuned) schedules: an ordered list of rules per target kind.

A rule schedules one formulation of the compute (its ``form``) and returns a
:class:`tvm.s_tir.Schedule` or ``None`` for "not applicable"; :func:`default_schedule`
tries the rules of the workload's formulation in order, and the last of them always
applies (``cpu-direct`` is the only rule of the direct form; ``cpu-gemm-blocked`` the only one of
the blocked form, which a target takes only where that rule applies). The rules find the
compute's stages by the names in :mod:`tvm_convt.compute`. CPU rules live in :mod:`.cpu` (the GEMM form),
:mod:`.cpu_direct` (the direct form) and :mod:`.cpu_blocked` (the blocked form), GPU rules in
:mod:`.cuda`, each with its tile sizes as data per architecture.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from ..compute import (BLOCKED, DIRECT, GEMM, SymbolicLayout, blocked_applies, direct_applies, form_for, prim_func,
                       weight_pack_func)
from ..params import OP, Workload
from . import cpu, cpu_blocked, cpu_direct, cuda
from .common import ScheduleRule

RULES: dict[str, tuple[ScheduleRule, ...]] = {
    "llvm": (cpu_direct.CpuDirectRule(),) + cpu_blocked.RULES + cpu.RULES,
    "cuda": cuda.RULES,
}
# The rules whose ``main`` can read the weight packed (by weight_block_for's block), and their forms.
PREPACKABLE = {"cpu-gemm": GEMM, "cpu-gemm-blocked": BLOCKED, "cpu-direct": DIRECT}


def weight_block_for(rule: str, workload: Workload, target: Target) -> int | None:
    """The column block by which ``rule`` (one of :data:`PREPACKABLE`) reads a packed weight of
    ``workload`` on ``target``; None where it does not apply."""
    if rule == "cpu-direct":
        return cpu_direct.packed_weight_block(workload, target)
    return cpu.packed_weight_block(workload, target)


def _named_rule(kind: str, rule: str) -> ScheduleRule:
    rules = RULES[kind]
    names = [r.name for r in rules]
    if rule not in names:
        raise ValueError(f"{OP}: schedule rule for {kind} must be one of "
                         f"{', '.join(names)}, got rule={rule!r}")
    return next(r for r in rules if r.name == rule)


def _check_kind(kind: str) -> None:
    if kind not in RULES:
        raise ValueError(
            f"{OP}: target kind must be one of {', '.join(sorted(RULES))}, got kind={kind!r}")


def schedule_form(workload: Workload, target: Target, rule: str | None = None) -> str:
    """The formulation (:data:`tvm_convt.compute.FORMS`) the default schedule of ``workload``
    on ``target`` is written for: the target's (:func:`~tvm_convt.compute.form_for`, with
    its core's choice for dense strided layers, and the blocked form for long layers of the
    GEMM form, :func:`.cpu_blocked.blocked_gemm`), or the named rule's. Tuning tunes, and
    the tuned records are looked up, in this formulation."""
    kind = target.kind.name
    _check_kind(kind)
    if rule is not None:
        return _named_rule(kind, rule).form
    strided = kind == "llvm" and cpu_direct.strided_direct(workload, target)
    form = form_for(workload, kind, strided_direct=strided)
    if form == GEMM and _narrow_groups_direct(workload, target):
        return DIRECT
    if form == GEMM and kind == "llvm" and cpu_blocked.blocked_gemm(workload, target):
        return BLOCKED
    return form


def form_applies(workload: Workload, form: str) -> bool:
    """Whether ``workload`` can be computed in ``form`` (the GEMM form always can)."""
    return {DIRECT: direct_applies, BLOCKED: blocked_applies}.get(form, lambda _w: True)(workload)


def default_schedule(
    workload: Workload, target: Target, *, rule: str | None = None, func: tirx.PrimFunc | None = None
) -> tuple[s_tir.Schedule, str]:
    """Apply the first applicable rule for ``target`` (or only the one named ``rule``);
    return the schedule and the rule's name.

    ``func`` is the unscheduled function in :func:`schedule_form`'s formulation (a
    tuning task's own, so that the trace replays on it); by default it is made here.
    """
    kind = target.kind.name
    form = schedule_form(workload, target, rule)
    applies = form_applies(workload, form)
    if func is None and applies:
        func = prim_func(workload, form)
    if rule is not None:
        chosen = _named_rule(kind, rule)
        sch = chosen.apply(func, workload, target) if applies else None
        if sch is None:
            raise ValueError(f"{OP}: schedule rule {rule!r} does not apply to this workload, got "
                             f"rule={rule!r} for {workload.params}")
        return sch, chosen.name
    for candidate in RULES[kind]:
        if candidate.form != form:
            continue
        sch = candidate.apply(func, workload, target)
        if sch is not None:
            return sch, candidate.name
    raise AssertionError(f"the fallback rule for {kind} in form {form} did not apply")


def symbolic_choice(workload: Workload, target: Target, rule: str | None = None
                    ) -> tuple[ScheduleRule, str, SymbolicLayout, tuple]:
    """The rule that schedules a function symbolic in batch and length, planned for ``workload``
    (the static workload of a length range): the first rule of :func:`schedule_form`'s formulation
    (or the one named ``rule``) that schedules symbolic functions for it; with its formulation,
    layout and plan key (equal choices give the same function)."""
    kind = target.kind.name
    form = schedule_form(workload, target, rule)
    if rule is not None and not form_applies(workload, form):
        raise ValueError(f"{OP}: schedule rule {rule!r} does not apply to this layer, got rule={rule!r} for "
                         f"{workload.params}")
    candidates = [_named_rule(kind, rule)] if rule is not None else [r for r in RULES[kind] if r.form == form]
    for candidate in candidates:
        layout = getattr(candidate, "symbolic_layout", lambda *_: None)(workload, target)
        if layout is not None:
            return candidate, form, layout, candidate.plan_key(workload, target)
    raise ValueError(f"{OP}: no schedule rule for {kind} schedules this layer at any length, got "
                     f"rule={rule!r} for {workload.params}; compile it for a static length instead")


def _narrow_groups_direct(workload: Workload, target: Target) -> bool:
    """Grouped layers too narrow for the GEMM rule's register tile (fewer than 16 input channels a
    group: depthwise and the like) take the direct form, where the GEMM form's fallback would write
    ``col`` (kernel_size times the input) and gather it back: 1.1-1.5x faster on mimi_depthwise and
    groups of 1-8 channels (docs/performance.md), and the direct form reads its input in scalar copies
    only, so an unaligned input is not copied (the fallback's vector reads need 64-byte data)."""
    return (target.kind.name == "llvm" and workload.params.groups > 1 and direct_applies(workload)
            and cpu.gemm_plan(workload, target) is None)


def symbolic_schedule(workload: Workload, target: Target, *, rule: str | None = None,
                      weight_block: int | None = None, stream: bool = False) -> tuple[s_tir.Schedule, str]:
    """The schedule of :func:`symbolic_choice`'s rule and its name. With ``weight_block``,
    ``main`` reads the weight packed (the rule must then be one of :data:`PREPACKABLE`); with
    ``stream``, ``main`` is a stream's kernel (:func:`tvm_convt.compute.stream_te`)."""
    chosen, form, layout, _ = symbolic_choice(workload, target, rule)
    sch = chosen.apply(prim_func(workload, form, weight_block, layout, stream), workload, target)
    assert sch is not None, (chosen.name, workload)
    return sch, chosen.name


def prepacked_schedule(workload: Workload, target: Target,
                       rule: str = "cpu-gemm") -> tuple[s_tir.Schedule, s_tir.Schedule] | None:
    """The schedule of ``main`` by ``rule`` (one of :data:`PREPACKABLE`) reading the weight
    packed already, and the schedule of ``pack_weight`` that packs it, once per weight; None
    where the rule does not apply.

    ``main`` is the same schedule as the rule's own (:func:`default_schedule` with that
    rule, whether chosen or named), without its pack stage.
    """
    block = weight_block_for(rule, workload, target)
    if block is None:
        return None
    chosen = _named_rule("llvm", rule)
    assert chosen.form == PREPACKABLE[rule], rule
    func = prim_func(workload, chosen.form, weight_block=block)
    sch = chosen.apply(func, workload, target)
    assert sch is not None, (workload, target)
    pack = cpu.schedule_weight_pack(weight_pack_func(workload.params, workload.dtype, block))
    return sch, pack


__all__ = ["PREPACKABLE", "RULES", "ScheduleRule", "SymbolicLayout", "default_schedule", "prepacked_schedule",
           "schedule_form", "symbolic_choice", "symbolic_schedule"]
