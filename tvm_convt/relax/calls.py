"""Reading one ``relax.nn.conv1d_transpose`` call: the :class:`Workload` it computes, or why not.

Relax keeps PyTorch's ConvTranspose1d attributes as they are: ``strides``,
``dilation``, ``output_padding`` and ``groups`` one to one, ``padding`` as a
(left, right) pair that ``from_exported_program`` writes as ``(p, p)``, the
weight in PyTorch's layout (IOW: in_channels, out_channels / groups,
kernel_size) and the output channels as ``groups * weight.shape[1]``. What the
package's compute does not express (another layout, a symbolic shape, mixed
dtypes, unequal padding) is refused with :class:`Unsupported`, whose message
is the reason logged for the skipped call.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, tirx

from ..params import ConvTranspose1dParams, Workload, check_dtype_for_target

OP_NAME = "relax.nn.conv1d_transpose"


class Unsupported(Exception):
    """A call this package leaves to TVM's legalization; the message says why."""


def is_conv1d_transpose(expr: Any) -> bool:
    return isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == OP_NAME


def static_shape(expr: relax.Expr, what: str) -> tuple[int, ...]:
    """The shape of a tensor expression as ints; :class:`Unsupported` when any dimension is symbolic."""
    ty = expr.ty
    shape = getattr(ty, "shape", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(shape, relax.ShapeExpr):
        raise Unsupported(f"{what} must be a tensor of known rank and shape, got {ty}")
    dims = list(shape.values)
    if not all(isinstance(d, tirx.IntImm) for d in dims):
        raise Unsupported(f"{what} must have a static shape, got shape "
                          f"({', '.join(str(d) for d in dims)})")
    return tuple(int(d) for d in dims)


def dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _check_layouts(attrs: Any) -> None:
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts != ("NCW", "IOW", "NCW"):
        raise Unsupported(f"layouts must be data NCW, kernel IOW, output NCW, got data_layout="
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


def call_workload(call: relax.Call, *, bias: bool, target_kind: str | None = None) -> Workload:
    """The workload of ``call``, with a bias when ``bias`` (one fused into it).

    ``target_kind`` ("llvm", "cuda") also refuses dtypes the target's rules lack.
    Raises :class:`Unsupported` for what the compute does not cover.
    """
    attrs = call.attrs
    _check_layouts(attrs)
    x_shape = static_shape(call.args[0], "the input")
    w_shape = static_shape(call.args[1], "the weight")
    dtype = _dtype(call, target_kind)
    groups = int(attrs.groups)
    try:
        params = ConvTranspose1dParams(
            in_channels=x_shape[1], out_channels=w_shape[1] * groups, kernel_size=w_shape[2],
            stride=tuple(int(s) for s in attrs.strides), padding=_padding(attrs),
            output_padding=tuple(int(o) for o in attrs.output_padding), groups=groups, bias=bias,
            dilation=tuple(int(d) for d in attrs.dilation))
        workload = Workload(params, x_shape[0], x_shape[2], dtype)
    except (TypeError, ValueError) as err:
        raise Unsupported(str(err).split(": ", 1)[-1]) from None
    if w_shape[0] != params.in_channels or workload.output_shape != static_shape(call, "the output"):
        raise Unsupported(f"the weight and output shapes must be PyTorch's for this layer, got weight "
                          f"{w_shape} and output {static_shape(call, 'the output')} for {workload.input_shape}")
    return workload
