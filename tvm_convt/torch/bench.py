"""Helpers the benchmark uses: PyTorch's version, its thread count, and its own
``conv_transpose1d`` as a no-argument call on NumPy arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..params import Workload

__all__ = ["functional_call", "set_threads", "version"]


def version() -> str:
    return torch.__version__


def set_threads(threads: int) -> None:
    """Run PyTorch's CPU kernels on ``threads`` threads (intra-op)."""
    torch.set_num_threads(threads)


def functional_call(workload: Workload, x: np.ndarray, weight: np.ndarray,
                    bias: np.ndarray | None) -> Callable[[], np.ndarray]:
    """A no-argument call of ``torch.nn.functional.conv_transpose1d`` on these arrays.

    The tensors share memory with the NumPy arrays (no copies per call; a read-only array,
    such as a layer's weight, is copied once, since torch tensors are always writable); the
    call returns the output as NumPy. PyTorch's transposed convolution has only
    zero padding, so other padding modes raise ValueError.
    """
    p = workload.params
    if p.padding_mode != "zeros":
        raise ValueError(f"PyTorch's conv_transpose1d has no padding_mode={p.padding_mode!r}")
    xt, wt = _tensor(x), _tensor(weight)
    bt = _tensor(bias) if bias is not None else None

    @torch.no_grad()
    def call() -> np.ndarray:
        return F.conv_transpose1d(xt, wt, bt, p.stride, p.padding, p.output_padding, p.groups,
                                  p.dilation).numpy()

    return call


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
