"""tvm_convt: PyTorch's ConvTranspose1d as an Apache TVM tensor expression.

The public API: :func:`conv_transpose1d`, :class:`ConvTranspose1d`,
:class:`CompiledConvTranspose1d`, :func:`compile`, :func:`tune`, and the
parameter dataclasses :class:`ConvTranspose1dParams` and :class:`Workload`.

Each name is imported on first use (PEP 562): ``import tvm_convt`` loads neither TVM nor NumPy, so
a command line interrupted while TVM loads can still answer in one line, and ``tune`` (MetaSchedule
is compiler-only) stays out of a runtime-only install (``tvm-convt bundle``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from ._cores import use_all_cores  # noqa: E402 - light: neither TVM nor NumPy

use_all_cores()

# Public name -> the module of this package that defines it.
_EXPORTS = {
    "CompiledConvTranspose1d": "runtime",
    "ConvTranspose1d": "runtime",
    "compile": "runtime",
    "conv_transpose1d": "runtime",
    "ConvTranspose1dStream": "runtime",
    "stream": "runtime",
    "ConvTranspose1dParams": "params",
    "Workload": "params",
    "tune": "tuning",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "CompiledConvTranspose1d",
    "ConvTranspose1d",
    "ConvTranspose1dParams",
    "ConvTranspose1dStream",
    "Workload",
    "compile",
    "conv_transpose1d",
    "stream",
    "tune",
    "__version__",
]
