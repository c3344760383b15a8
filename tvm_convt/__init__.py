"""tvm_convt: PyTorch's ConvTranspose1d as an Apache TVM tensor expression.

The public API: :func:`conv_transpose1d`, :class:`ConvTranspose1d`,
:class:`CompiledConvTranspose1d`, :func:`compile`, :func:`tune`, and the
parameter dataclasses :class:`ConvTranspose1dParams` and :class:`Workload`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .target import use_all_cores  # noqa: E402

use_all_cores()

from .params import ConvTranspose1dParams, Workload  # noqa: E402
from .runtime import (  # noqa: E402
    CompiledConvTranspose1d,
    ConvTranspose1d,
    compile,  # noqa: A004
    conv_transpose1d,
)


def __getattr__(name: str):
    # tune is imported on first use: MetaSchedule is compiler-only, and a runtime-only
    # install (tvm-convt bundle) must import tvm_convt without it.
    if name == "tune":
        from .tuning import tune

        return tune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CompiledConvTranspose1d",
    "ConvTranspose1d",
    "ConvTranspose1dParams",
    "Workload",
    "compile",
    "conv_transpose1d",
    "tune",
    "__version__",
]
