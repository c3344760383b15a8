"""The NumPy reference against PyTorch, on parameter sets no compile is needed for."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tvm_convt.params import ConvTranspose1dParams
from tvm_convt.reference import conv_transpose1d_reference

from conftest import needs_torch, random_inputs, torch_conv_transpose1d

pytestmark = needs_torch


def _grid():
    for k, s, d, pad, mode in itertools.product((1, 3, 4), (1, 2, 3), (1, 2), (0, 1, 4),
                                                 ("zeros", "reflect", "replicate", "circular")):
        for op in range(max(s, d) if mode == "zeros" else s):
            try:
                p = ConvTranspose1dParams(4, 6, k, s, pad, op, 2, True, d, mode)
                p.output_length(5)
            except ValueError:
                continue
            yield p


@pytest.mark.parametrize("p", list(_grid()), ids=str)
def test_reference_matches_torch(p):
    x, w, b = random_inputs(p, 2, 5, "float64")
    np.testing.assert_allclose(conv_transpose1d_reference(x, w, b, p),
                               torch_conv_transpose1d(x, w, b, p), rtol=1e-12, atol=1e-12)
