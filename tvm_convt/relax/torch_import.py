"""Models converted by ``tvm_convt.torch.convert`` through TVM's PyTorch importer.

A converted layer exports as the op ``tvm_convt::conv_transpose1d``, whose overload TVM's
``from_exported_program`` looks up by its bare name, ``conv_transpose1d.default``: aten's, whose
converter then misreads its arguments (``TypeError: Mismatched type on argument #4``). Passing
``custom_convert_map=torch_convert_map()`` gives that name a converter that reads this package's op
as the ``relax.nn.conv1d_transpose`` it is (which :func:`use_tvm_convt` then replaces) and hands
aten's own op to TVM's converter. Needs TVM, not torch.
"""

from __future__ import annotations

from typing import Any, Callable

from tvm import relax

from ..params import OP

# The overload name TVM's importer keys both ops by.
OP_NAME = "conv_transpose1d.default"


def _convert(node: Any, importer: Any) -> relax.Var:
    """``node`` as Relax: this package's op as ``relax.nn.conv1d_transpose`` plus its bias, aten's by
    TVM's own converter."""
    if getattr(node.target, "namespace", None) != "tvm_convt":
        return importer._conv_transpose1d(node)
    x, weight, bias, conv, padding_mode, _backend = importer.retrieve_args(node)
    stride, padding, output_padding, groups, dilation = (int(v) for v in conv)
    if padding_mode != "zeros":
        raise ValueError(f"{OP}: Relax's conv1d_transpose pads with zeros only, got padding_mode={padding_mode!r} "
                         f"in {node.name}; run that layer through tvm_convt.compile instead")
    dtype = str(x.ty.dtype)
    y = importer.block_builder.emit(relax.op.nn.conv1d_transpose(
        x, weight, strides=stride, padding=padding, output_padding=output_padding, dilation=dilation,
        groups=groups, data_layout="NCW", kernel_layout="IOW", out_dtype=dtype))
    if bias is None:
        return y
    return importer.block_builder.emit(relax.op.add(y, relax.op.reshape(bias, (1, -1, 1))))


def torch_convert_map() -> dict[str, Callable[[Any, Any], relax.Var]]:
    """``custom_convert_map`` for ``tvm.relax.frontend.torch.from_exported_program`` of a model that
    ``tvm_convt.torch.convert`` converted (a model without converted layers imports as before)."""
    return {OP_NAME: _convert}


__all__ = ["torch_convert_map"]
