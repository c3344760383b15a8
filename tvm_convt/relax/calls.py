"""Reading one ``relax.nn.conv1d_transpose`` call: the :class:`Workload` it computes, or why not.

Relax keeps PyTorch's ConvTranspose1d attributes as they are: ``strides``,
``dilation``, ``output_padding`` and ``groups`` one to one, ``padding`` as a
(left, right) pair that ``from_exported_program`` writes as ``(p, p)``, the
weight in PyTorch's layout (IOW: in_channels, out_channels / groups,
kernel_size) and the output channels as ``groups * weight.shape[1]``. What the
package's compute does not express (another layout, a symbolic weight, mixed
dtypes, unequal padding) is refused with :class:`Unsupported`, whose message
is the reason logged for the skipped call. An input whose batch or length is symbolic (a
dynamic axis of ``torch.export`` or ONNX) gives a :class:`SymbolicWorkload`, computed by one
function for every batch and length (on CUDA, for a static batch).

A stride-1 ``relax.nn.conv1d`` (opt-in) is the same operator: ``conv1d(x, W, padding=p,
dilation=d, groups=g)`` equals the transposed convolution with ``padding = d*(K-1) - p`` and
the weight ``W'[g*Cig + c, o, k] = W[g*Cog + o, c, K-1-k]`` (each group's in/out swapped,
taps reversed), as long as ``p <= d*(K-1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm.sym.analyzer import Analyzer
from tvm import relax, tirx

from ..lengths import CUDA_MAX_BATCH
from ..params import ConvTranspose1dParams, SymbolicWorkload, Workload, check_dtype_for_target

OP_NAME = "relax.nn.conv1d_transpose"
CONV1D = "relax.nn.conv1d"


class Unsupported(Exception):
    """A call this package leaves to TVM's legalization; the message says why."""


def is_conv1d_transpose(expr: Any) -> bool:
    return isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == OP_NAME


def is_converted(expr: Any, conv1d: bool) -> bool:
    """Whether ``expr`` is a call this package converts: conv1d_transpose, and conv1d when asked."""
    return is_conv1d_transpose(expr) or (conv1d and isinstance(expr, relax.Call)
                                         and getattr(expr.op, "name", None) == CONV1D)


def shape_dims(expr: relax.Expr, what: str) -> tuple[Any, ...]:
    """The shape of a tensor expression: ints, and TIR expressions for symbolic dimensions."""
    ty = expr.ty
    shape = getattr(ty, "shape", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(shape, relax.ShapeExpr):
        raise Unsupported(f"{what} must be a tensor of known rank and shape, got {ty}")
    return tuple(int(d) if isinstance(d, tirx.IntImm) else d for d in shape.values)


def static_shape(expr: relax.Expr, what: str) -> tuple[int, ...]:
    """The shape of a tensor expression as ints; :class:`Unsupported` when any dimension is symbolic."""
    dims = shape_dims(expr, what)
    if not all(isinstance(d, int) for d in dims):
        raise Unsupported(f"{what} must have a static shape, got shape ({', '.join(map(str, dims))})")
    return dims


def dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _check_layouts(attrs: Any, kernel: str) -> None:
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts != ("NCW", kernel, "NCW"):
        raise Unsupported(f"layouts must be data NCW, kernel {kernel}, output NCW, got data_layout="
                          f"{layouts[0]}, kernel_layout={layouts[1]}, out_layout={layouts[2]}")


def _dtype(call: relax.Call, target_kind: str | None) -> str:
    """The one dtype of input, weight and output; refused when they differ."""
    dtypes = (dtype_of(call.args[0]), dtype_of(call.args[1]), dtype_of(call))
    if len(set(dtypes)) != 1:
        raise Unsupported(f"input, weight and output must have one dtype, got "
                          f"input={dtypes[0]}, weight={dtypes[1]}, out_dtype={dtypes[2]}")
    if target_kind is not None:
        try:
            check_dtype_for_target(dtypes[0], target_kind)
        except (TypeError, ValueError) as err:
            raise Unsupported(str(err).split(": ", 1)[-1]) from None
    return dtypes[0]


def _padding(attrs: Any) -> int:
    pad = [int(p) for p in attrs.padding]
    if len(pad) == 2 and pad[0] != pad[1]:
        raise Unsupported(f"padding must be equal on both sides, got padding=({pad[0]}, {pad[1]})")
    return pad[0]


def _conv_transpose_fields(call: relax.Call, w_shape: tuple[int, ...]) -> dict[str, Any]:
    attrs = call.attrs
    _check_layouts(attrs, "IOW")
    return dict(out_channels=w_shape[1] * int(attrs.groups), padding=_padding(attrs),
                stride=tuple(int(s) for s in attrs.strides),
                output_padding=tuple(int(o) for o in attrs.output_padding))


def _conv1d_fields(call: relax.Call, w_shape: tuple[int, ...]) -> dict[str, Any]:
    """conv1d's fields as a transposed convolution's (see the module docstring)."""
    attrs = call.attrs
    _check_layouts(attrs, "OIW")
    strides, dilation = [int(s) for s in attrs.strides], int(attrs.dilation[0])
    if strides != [1]:
        raise Unsupported(f"a conv1d must have stride 1 to be a transposed convolution, got strides={strides}")
    pad, reach = _padding(attrs), dilation * (w_shape[2] - 1)
    if pad > reach:
        raise Unsupported(f"a conv1d's padding must be at most dilation*(kernel_size-1), got padding={pad}, "
                          f"dilation*(kernel_size-1)={reach}")
    return dict(out_channels=w_shape[0], padding=reach - pad)


def call_workload(call: relax.Call, *, bias: bool, target_kind: str | None = None) -> Workload | SymbolicWorkload:
    """The workload of ``call`` (a conv1d_transpose, or a conv1d as its transposed form), with
    a bias when ``bias`` (one fused into it): a :class:`SymbolicWorkload` when the input's batch
    or length is symbolic.

    ``target_kind`` ("llvm", "cuda") also refuses dtypes the target's rules lack, and on CUDA a
    symbolic or too large batch with a symbolic length.
    Raises :class:`Unsupported` for what the compute does not cover.
    """
    x_shape = shape_dims(call.args[0], "the input")
    if not isinstance(x_shape[1], int) or len(x_shape) != 3:
        raise Unsupported(f"the input must be 3-D with static channels, got shape ({', '.join(map(str, x_shape))})")
    if not all(isinstance(d, int) for d in x_shape):
        return _symbolic_workload(call, x_shape, bias=bias, target_kind=target_kind)
    params, dtype = _params_and_dtype(call, x_shape[1], bias=bias, target_kind=target_kind)
    try:
        workload = Workload(params, x_shape[0], x_shape[2], dtype)
    except (TypeError, ValueError) as err:
        raise Unsupported(str(err).split(": ", 1)[-1]) from None
    if workload.output_shape != static_shape(call, "the output"):
        raise Unsupported(f"the output shape must be PyTorch's for this layer, got "
                          f"{static_shape(call, 'the output')} for the input {workload.input_shape}")
    return workload


def _params_and_dtype(call: relax.Call, in_channels: int, *, bias: bool,
                      target_kind: str | None) -> tuple[ConvTranspose1dParams, str]:
    """The call's parameters (with a bias when ``bias``) and its one dtype; :class:`Unsupported`
    for what the compute does not cover."""
    w_shape = static_shape(call.args[1], "the weight")
    fields = (_conv_transpose_fields if is_conv1d_transpose(call) else _conv1d_fields)(call, w_shape)
    dtype = _dtype(call, target_kind)
    try:
        params = ConvTranspose1dParams(
            in_channels=in_channels, kernel_size=w_shape[2], groups=int(call.attrs.groups), bias=bias,
            dilation=tuple(int(d) for d in call.attrs.dilation), **fields)
    except (TypeError, ValueError) as err:
        raise Unsupported(str(err).split(": ", 1)[-1]) from None
    return params, dtype


def _symbolic_workload(call: relax.Call, x_shape: tuple[Any, ...], *, bias: bool,
                       target_kind: str | None) -> SymbolicWorkload:
    """:func:`call_workload` for an input of symbolic batch or length; the output's length must be
    PyTorch's expression of the input's."""
    if target_kind == "cuda" and not (isinstance(x_shape[0], int) and x_shape[0] <= CUDA_MAX_BATCH):
        # A call_tir cannot check its batch before the launch: the grid's y extent must hold it.
        raise Unsupported(f"a CUDA call for every length needs a static batch of at most {CUDA_MAX_BATCH}, got "
                          f"batch {x_shape[0]}")
    workload = SymbolicWorkload(*_params_and_dtype(call, x_shape[1], bias=bias, target_kind=target_kind))
    out = shape_dims(call, "the output")
    expected = output_shape(workload, x_shape)
    analyzer = Analyzer()
    if len(out) != 3 or not all(analyzer.can_prove_equal(a, b) for a, b in zip(out, expected)):
        raise Unsupported(f"the output shape must be PyTorch's for this layer, got ({', '.join(map(str, out))}) "
                          f"for the input ({', '.join(map(str, x_shape))})")
    return workload


def output_shape(workload: Workload | SymbolicWorkload, x_shape: tuple[Any, ...]) -> tuple[Any, ...]:
    """The call's output shape: the static one, or (batch, out_channels, L_out as an expression of
    the input's length) for a symbolic input."""
    if not workload.symbolic:
        return workload.output_shape
    return (x_shape[0], workload.params.out_channels, workload.params.output_length_of(x_shape[2]))


def transposed_weight(call: relax.Call, groups: int) -> relax.Expr:
    """The weight in the transposed convolution's layout: as it is for conv1d_transpose; for
    conv1d, each group's in/out swapped and the taps reversed (folded now when a constant)."""
    weight = call.args[1]
    if is_conv1d_transpose(call):
        return weight
    c_out, c_in_group, k = static_shape(weight, "the weight")
    shape = (groups, c_out // groups, c_in_group, k)
    if isinstance(weight, tvm.ir.expr.Constant):
        w = weight.value.numpy().reshape(shape).transpose(0, 2, 1, 3)[..., ::-1]
        return relax.const(np.ascontiguousarray(w.reshape(groups * c_in_group, c_out // groups, k)))
    w = relax.op.permute_dims(relax.op.reshape(weight, shape), [0, 2, 1, 3])
    return relax.op.flip(relax.op.reshape(w, (groups * c_in_group, c_out // groups, k)), axis=2)
