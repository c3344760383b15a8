"""Finding the bias add after a transposed convolution, to compute both in one function.

``from_exported_program`` writes a layer with a bias as::

    lv = R.nn.conv1d_transpose(x, w, ...)
    lv1 = R.reshape(b, R.shape([1, C, 1]))
    lv2 = R.add(lv, lv1)

The add is fused when the convolution's result has no other use and the other
operand is one value per channel (shape (1, C, 1) or (C, 1), the same dtype); the
bias handed to the operator is then ``b`` itself when it is such a reshape of a
(C,) tensor, else a reshape of the operand to (C,).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tvm import relax

from .calls import Unsupported, dtype_of, is_converted, shape_dims, static_shape


@dataclass(frozen=True)
class BiasAdd:
    """An add binding that becomes the convolution ``conv`` (bound to ``conv_var``) with ``bias``."""

    conv_var: relax.Var
    conv: relax.Call
    bias: relax.Expr  # shape (C,), in terms of the function's original variables


def _uses(func: relax.Function) -> Counter:
    uses: Counter = Counter()
    relax.analysis.post_order_visit(func, lambda e: uses.update([e]) if isinstance(e, relax.Var) else None)
    return uses


def per_channel_bias(expr: relax.Expr, values: dict, channels: int, dtype: str) -> relax.Expr | None:
    """``expr`` as a (C,) bias when it holds one value per output channel, else None."""
    try:
        shape = static_shape(expr, "the bias")
    except Unsupported:
        return None
    if shape not in ((1, channels, 1), (channels, 1)) or dtype_of(expr) != dtype:
        return None
    source = values.get(expr) if isinstance(expr, relax.Var) else None
    if isinstance(source, relax.Call) and getattr(source.op, "name", None) == "relax.reshape":
        inner = source.args[0]
        try:
            if static_shape(inner, "the bias") == (channels,):
                return inner
        except Unsupported:
            pass
    return relax.op.reshape(expr, (channels,))


def _as_bias_add(value: relax.Expr, values: dict, uses: Counter, conv1d: bool) -> BiasAdd | None:
    if not (isinstance(value, relax.Call) and getattr(value.op, "name", None) == "relax.add"):
        return None
    for conv_var, other in (value.args, value.args[::-1]):
        conv = values.get(conv_var) if isinstance(conv_var, relax.Var) else None
        if not is_converted(conv, conv1d) or uses[conv_var] != 1:
            continue
        try:
            channels = shape_dims(conv, "the output")[1]
        except Unsupported:
            continue
        if not isinstance(channels, int):
            continue
        bias = per_channel_bias(other, values, channels, dtype_of(conv))
        if bias is not None:
            return BiasAdd(conv_var, conv, bias)
    return None


def bias_adds(func: relax.Function, conv1d: bool = False) -> dict[relax.Var, BiasAdd]:
    """The add bindings of ``func`` that can be fused into the convolution they add to
    (a conv1d too when ``conv1d``), by the add's variable."""
    values = relax.analysis.get_var2val(func)
    uses = _uses(func)
    found = {}
    for var, value in values.items():
        fused = _as_bias_add(value, values, uses, conv1d)
        if fused is not None:
            found[var] = fused
    return found
