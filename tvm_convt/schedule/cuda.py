"""Default schedule rules for CUDA GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from ..params import Workload


@dataclass(frozen=True)
class GpuFallbackRule:
    """Always applies on GPU: dlight's fallback, every spatial loop bound to threads."""

    name: str = "gpu-fallback"

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        if "gpu" not in target.keys:
            return None
        from tvm.s_tir.dlight.gpu import Fallback

        with target:
            return Fallback().apply(func, target, False)


RULES = (GpuFallbackRule(),)
