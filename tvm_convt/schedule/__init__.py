"""Default (untuned) schedules: an ordered list of rules per target kind.

A rule returns a :class:`tvm.s_tir.Schedule` or ``None`` for "not applicable";
:func:`default_schedule` tries them in order, and the fallback of each target
kind goes last and always applies. The rules find the compute's stages by the
names in :mod:`tvm_convt.compute`. CPU rules live in :mod:`.cpu`, GPU rules in
:mod:`.cuda`, each with its tile sizes as data per architecture.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from ..params import OP, Workload
from . import cpu, cuda
from .common import ScheduleRule

RULES: dict[str, tuple[ScheduleRule, ...]] = {
    "llvm": cpu.RULES,
    "cuda": cuda.RULES,
}


def _named_rule(kind: str, rule: str) -> ScheduleRule:
    rules = RULES[kind]
    names = [r.name for r in rules]
    if rule not in names:
        raise ValueError(f"{OP}: schedule rule for {kind} must be one of "
                         f"{', '.join(names)}, got rule={rule!r}")
    return next(r for r in rules if r.name == rule)


def default_schedule(
    func: tirx.PrimFunc, workload: Workload, target: Target, *, rule: str | None = None
) -> tuple[s_tir.Schedule, str]:
    """Apply the first applicable rule for ``target`` (or only the one named ``rule``);
    return the schedule and the rule's name."""
    kind = target.kind.name
    if kind not in RULES:
        raise ValueError(
            f"{OP}: target kind must be one of {', '.join(sorted(RULES))}, got kind={kind!r}")
    if rule is not None:
        chosen = _named_rule(kind, rule)
        sch = chosen.apply(func, workload, target)
        if sch is None:
            raise ValueError(f"{OP}: schedule rule {rule!r} does not apply to this workload, got "
                             f"rule={rule!r} for {workload.params}")
        return sch, chosen.name
    for candidate in RULES[kind]:
        sch = candidate.apply(func, workload, target)
        if sch is not None:
            return sch, candidate.name
    raise AssertionError(f"the fallback rule for {kind} did not apply")


__all__ = ["RULES", "ScheduleRule", "default_schedule"]
