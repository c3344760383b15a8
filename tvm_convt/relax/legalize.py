"""``use_tvm_convt``: each ``relax.nn.conv1d_transpose`` of a module (and, when asked, each
stride-1 ``relax.nn.conv1d``) becomes a ``call_tir`` to this package's scheduled PrimFunc.

The PrimFunc is the one :func:`tvm_convt.compile` builds for the same workload and
target (:func:`tvm_convt.build.schedule`: the user's tuning logs, the shipped
records, then the default rule). It is marked ``tirx.is_scheduled``, so the CUDA
pipeline's dlight rules leave it alone, and opaque (``op_pattern`` 8), so ``FuseOps``
never merges it into a neighbour's PrimFunc, which would drop its schedule.
A call the compute does not cover stays as it is, for TVM's own legalization,
with one log line saying why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..build import schedule, schedule_symbolic
from ..lengths import range_for
from ..params import OP, SymbolicWorkload, Workload
from ..target import TargetLike, resolve_target
from .calls import Unsupported, call_workload, is_converted, output_shape, shape_dims, transposed_weight
from .fuse import BiasAdd, bias_adds

logger = logging.getLogger("tvm_convt.relax")

# relax's OpPatternKind kOpaque: FuseOps fuses nothing into or out of such a function.
OPAQUE = 8
# The PrimFuncs' name prefix: CUDA kernels are named after it (``<name>_kernel``).
FUNC_PREFIX = "tvm_convt_conv_transpose1d"
SCHEDULE_ATTR = "tvm_convt.schedule"
# A symbolic call runs one function for every length (Relax's call_tir cannot pick one per call):
# the one a symbolic module plans for inputs of this many samples.
RELAX_PLANNED_LENGTH = 128


def func_name(workload: Workload | SymbolicWorkload) -> str:
    p = workload.params
    return (f"{FUNC_PREFIX}_{p.in_channels}x{p.out_channels}_k{p.kernel_size}_s{p.stride}"
            f"{'_bias' if p.bias else ''}{'_any' if workload.symbolic else ''}")


def _symbolic_main(workload: SymbolicWorkload, target: tvm.target.Target,
                   logs: str | Path | None) -> tuple[tvm.tirx.PrimFunc, str]:
    """The function of a symbolic module (tuned by the layer's record in ``logs`` where there is one)
    that serves :data:`RELAX_PLANNED_LENGTH` (correct at every batch and length, as each of its
    functions is)."""
    mod, source, ranges = schedule_symbolic(workload, target, logs=logs)
    length = max(RELAX_PLANNED_LENGTH, workload.params.min_length)
    return mod[range_for(ranges, length).function], source


def kernel_func(workload: Workload | SymbolicWorkload, target: tvm.target.Target,
                logs: str | Path | None) -> tuple[tvm.tirx.PrimFunc, str]:
    """The scheduled PrimFunc for ``workload`` on ``target``, ready to live in a Relax module
    (no global symbol of its own), and where its schedule came from (also its attribute
    ``tvm_convt.schedule``: ``tuned:<folder>`` or ``default:<rule>``)."""
    if workload.symbolic:
        main, source = _symbolic_main(workload, target, logs)
    else:
        mod, source = schedule(workload, target, logs=logs)
        main = mod["main"]
    func = main.without_attr("global_symbol")
    attrs = {"tirx.is_scheduled": True, "op_pattern": OPAQUE, SCHEDULE_ATTR: source}
    return func.with_attrs(attrs), source


@mutator
class _Legalizer(PyExprMutator):
    """Rewrites the conv1d_transpose calls (conv1d too when asked), and the bias adds fused
    into them, of one module's functions."""

    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, logs: str | Path | None,
                 conv1d: bool) -> None:
        super().__init__(mod)
        self.target, self.logs, self.conv1d = target, logs, conv1d
        self.kernels: dict[Workload | SymbolicWorkload, relax.GlobalVar] = {}
        self.where = ""
        self.fused: dict[relax.Var, BiasAdd] = {}
        self.dropped: set[relax.Var] = set()

    def run(self, name: str, func: relax.Function) -> relax.Function:
        self.where, self.fused = name, {}
        for var, add in bias_adds(func, self.conv1d).items():
            try:
                call_workload(add.conv, bias=True, target_kind=self.target.kind.name)
            except Unsupported:
                continue  # the skip is logged when the convolution itself is visited
            self.fused[var] = add
        self.dropped = {add.conv_var for add in self.fused.values()}
        return relax.analysis.remove_all_unused(self.visit_expr(func))

    def gvar(self, workload: Workload | SymbolicWorkload) -> relax.GlobalVar:
        if workload not in self.kernels:
            func, _ = kernel_func(workload, self.target, self.logs)
            self.kernels[workload] = self.builder_.add_func(func, func_name(workload))
        return self.kernels[workload]

    def kernel_call(self, conv: relax.Call, bias: relax.Expr | None) -> relax.Call:
        workload = call_workload(conv, bias=bias is not None, target_kind=self.target.kind.name)
        weight = transposed_weight(conv, workload.params.groups)
        args = [conv.args[0], weight] + ([bias] if bias is not None else [])
        shape = output_shape(workload, shape_dims(conv.args[0], "the input"))
        return relax.call_tir(self.gvar(workload), args, relax.TensorType(shape, workload.dtype))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.dropped:
            return  # its only use, the bias add, computes it
        add = self.fused.get(binding.var)
        if add is not None:
            # The new value is in the original variables; the default visit remaps them.
            binding = relax.VarBinding(binding.var, self.kernel_call(add.conv, add.bias))
        elif is_converted(binding.value, self.conv1d):
            binding = relax.VarBinding(binding.var, self.legalized(binding.value, binding.var.name))
        super().visit_var_binding_(binding)

    def legalized(self, call: relax.Call, name: str) -> relax.Expr:
        try:
            return self.kernel_call(call, None)
        except Unsupported as why:
            logger.warning("%s: %s %s in %s is left to TVM's default legalization: %s",
                           OP, call.op.name, name, self.where, why)
            return call


def use_tvm_convt(mod: tvm.IRModule, target: TargetLike, logs: str | Path | None = None, *,
                  conv1d: bool = False) -> tvm.IRModule:
    """``mod`` with every ``relax.nn.conv1d_transpose`` it can express computed by this package.

    Args:
        mod: a Relax module, for example from ``from_exported_program``.
        target: what the module will be compiled for (``"llvm"``, a CUDA JSON target, a
            ``tvm.target.Target``); schedules are chosen for it, so compile the result with
            ``tvm.compile(mod, target=tvm_convt.target.resolve_target(target))``.
        logs: a tuning-log folder searched before the shipped records (default
            ``$TVM_CONVT_TUNING_LOGS``).
        conv1d: also compute stride-1 ``relax.nn.conv1d`` calls, as the transposed convolution
            they equal (TVM 0.27 leaves conv1d unscheduled on CPU, single-threaded).

    A bias add right after a call is computed by the same function. Calls it cannot express
    stay for TVM's legalization, each with one warning on the ``tvm_convt.relax`` logger.
    """
    if not isinstance(mod, tvm.IRModule):
        raise TypeError(f"{OP}: mod must be a tvm.IRModule, got mod={type(mod).__name__}")
    if logs is not None and not isinstance(logs, (str, os.PathLike)):
        raise TypeError(f"{OP}: logs must be a folder path or None, got logs={logs!r} ({type(logs).__name__})")
    tgt = resolve_target(target)
    legalizer = _Legalizer(mod, tgt, logs, bool(conv1d))
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            legalizer.builder_.update_func(gvar, legalizer.run(gvar.name_hint, func))
    return legalizer.builder_.get()
