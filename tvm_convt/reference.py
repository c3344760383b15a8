"""An independent float64 NumPy reference, written from the scatter definition.

It shares nothing with the tensor expression but the parameter dataclass:
every input sample ``i`` scatters ``x[i] * w[k]`` onto output position
``i*stride + k*dilation`` of the padding-free output, which is then cropped
(zeros mode) or folded through the adjoint of ``numpy.pad`` (other modes).
"""

from __future__ import annotations

import numpy as np

from .params import ConvTranspose1dParams

# Largest |tvm_convt - reference| / max(1, max|reference|) accepted against this reference: by the
# benchmark before anything is timed, by the build before a tuned record is used, and by the tests
# (tests/conftest.py reads these). float32 accumulates in float32 (about 1e-6 on the default suite);
# the half dtypes round their output once (issue #7's 1e-2 for float16, bfloat16's 8 bits).
CHECK_TOLERANCE = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-2, "bfloat16": 2e-2}


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max(1, max |expected|), in float64 (0 for empty arrays)."""
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    return float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale if expected.size else 0.0


_NUMPY_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def conv_transpose1d_reference(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, params: ConvTranspose1dParams
) -> np.ndarray:
    """Return the transposed convolution of ``x`` in float64.

    ``x`` is (batch, in_channels, L_in) or (in_channels, L_in); the result has
    the same rank, with out_channels and L_out (see :class:`ConvTranspose1dParams`).
    Inputs of any float dtype (``ml_dtypes.bfloat16`` included) are read exactly into float64.
    """
    p = params
    x = np.asarray(x, dtype=np.float64)
    unbatched = x.ndim == 2
    if unbatched:
        x = x[None]
    weight = np.asarray(weight, dtype=np.float64)
    n, _, length = x.shape
    l_out = p.output_length(length)
    pad = p.padding
    # The padded Conv1d input's length; it covers the last tap of the last sample too.
    full = np.zeros((n, p.out_channels, l_out + 2 * pad))
    cig, cog = p.in_per_group, p.out_per_group
    for g in range(p.groups):
        xg = x[:, g * cig:(g + 1) * cig, :]  # (n, cig, L)
        wg = weight[g * cig:(g + 1) * cig]  # (cig, cog, K)
        prod = np.einsum("ncl,cok->nokl", xg, wg)
        for k in range(p.kernel_size):
            start = k * p.dilation
            stop = start + (length - 1) * p.stride + 1
            full[:, g * cog:(g + 1) * cog, start:stop:p.stride] += prod[:, :, k, :]
    if p.padding_mode == "zeros":
        y = full[:, :, pad:pad + l_out].copy()
    else:
        # Adjoint of padding: padded sample j holds z[src[j]], so it adds back there.
        src = np.pad(np.arange(l_out), pad, mode=_NUMPY_PAD_MODE[p.padding_mode])
        y = np.zeros((n, p.out_channels, l_out))
        np.add.at(y.transpose(2, 0, 1), src, full.transpose(2, 0, 1))
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None]
    return y[0] if unbatched else y
