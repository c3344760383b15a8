"""The operator workloads of a Relax module, and writing them as a suite file to tune.

:func:`workloads` lists what :func:`~tvm_convt.relax.use_tvm_convt` would compile
(the bias fused where it would be), so ``tvm_convt.tune`` or ``tvm-convt tune --suite``
on :func:`write_suite`'s file tunes exactly the model's layers, and the records are
then found by the legalization.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from .. import suite as suite_file
from ..params import OP, Workload
from ..target import TargetLike, resolve_target
from .calls import Unsupported, call_workload, is_converted
from .fuse import bias_adds


def _function_workloads(func: relax.Function, kind: str | None, conv1d: bool) -> list[Workload]:
    fused = {}
    for add in bias_adds(func, conv1d).values():
        try:
            fused[add.conv_var] = call_workload(add.conv, bias=True, target_kind=kind)
        except Unsupported:
            pass
    found = []
    for var, value in relax.analysis.get_var2val(func).items():
        if not is_converted(value, conv1d):
            continue
        try:
            found.append(fused.get(var) or call_workload(value, bias=False, target_kind=kind))
        except Unsupported:
            pass  # use_tvm_convt logs these
    # Tuning records are per static shape: a symbolic call has nothing to tune.
    return [w for w in found if not w.symbolic]


def workloads(mod: tvm.IRModule, target: TargetLike | None = None, *, conv1d: bool = False) -> list[Workload]:
    """The distinct workloads of ``mod``'s conv1d_transpose calls, in the module's order.

    With ``target``, only those its rules cover (half precision needs CUDA); with ``conv1d``,
    also the stride-1 conv1d calls, as :func:`~tvm_convt.relax.use_tvm_convt` converts them.
    """
    if not isinstance(mod, tvm.IRModule):
        raise TypeError(f"{OP}: mod must be a tvm.IRModule, got mod={type(mod).__name__}")
    kind = resolve_target(target).kind.name if target is not None else None
    found: list[Workload] = []
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            for w in _function_workloads(func, kind, conv1d):
                if w not in found:
                    found.append(w)
    return found


def suite_name(index: int, workload: Workload) -> str:
    p = workload.params
    return f"layer{index}_{p.in_channels}x{p.out_channels}_k{p.kernel_size}_s{p.stride}_l{workload.length}"


def write_suite(path: str | Path, mod: tvm.IRModule, target: TargetLike | None = None, *,
                conv1d: bool = False) -> Path:
    """Write :func:`workloads` of ``mod`` as a suite file (``tvm-convt tune --suite PATH``)."""
    found = workloads(mod, target, conv1d=conv1d)
    if not found:
        raise ValueError(f"{OP}: a suite needs at least one layer, got a module with no "
                         "conv1d_transpose this package computes")
    return suite_file.write_suite(path, {suite_name(i, w): w for i, w in enumerate(found)})
