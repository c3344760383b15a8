"""What every schedule rule shares: the rule protocol and stage look-ups."""

from __future__ import annotations

from typing import Protocol

from tvm import s_tir, tirx
from tvm.target import Target

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


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM raises its own ScheduleError subclasses
        return False
    return True
