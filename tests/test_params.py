"""Parameter validation, output lengths and output_size, against PyTorch's rules."""

from __future__ import annotations

import re

import pytest

from tvm_convt.params import ConvTranspose1dParams, Workload, check_dtype

from conftest import needs_torch, torch

P = ConvTranspose1dParams


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(in_channels=0), ValueError, r"in_channels must be positive, got in_channels=0"),
        (dict(out_channels=-2), ValueError, r"out_channels must be positive, got out_channels=-2"),
        (dict(kernel_size=0), ValueError, r"kernel_size must be positive, got kernel_size=0"),
        (dict(stride=0), ValueError, r"stride must be positive, got stride=0"),
        (dict(dilation=-1), ValueError, r"dilation must be positive, got dilation=-1"),
        (dict(groups=0), ValueError, r"groups must be positive, got groups=0"),
        (dict(padding=-1), ValueError, r"padding must be non-negative, got padding=-1"),
        (dict(output_padding=-1), ValueError, r"output_padding must be non-negative"),
        (dict(stride=2, output_padding=2), ValueError,
         r"output_padding must be smaller than stride or dilation, got output_padding=2, stride=2, dilation=1"),
        (dict(stride=2, dilation=3, output_padding=3), ValueError, r"output_padding must be smaller than stride or dilation, got output_padding=3, stride=2, dilation=3"),
        (dict(stride=2, dilation=4, output_padding=3, padding_mode="reflect"), ValueError,
         r"output_padding must be smaller than stride for padding_mode='reflect'"),
        (dict(groups=4), ValueError, r"in_channels must be divisible by groups, got in_channels=6, groups=4"),
        (dict(groups=3, out_channels=4), ValueError, r"out_channels must be divisible by groups"),
        (dict(padding_mode="mirror"), ValueError, r"padding_mode must be one of .*got padding_mode='mirror'"),
        (dict(kernel_size=2.0), TypeError, r"kernel_size must be an int, got kernel_size=2.0"),
        (dict(stride=True), TypeError, r"stride must be an int"),
        (dict(kernel_size=(3, 3)), ValueError, r"kernel_size must be an int or a 1-tuple"),
        (dict(padding="1"), TypeError, r"padding must be an int"),
        (dict(bias="yes"), TypeError, r"bias must be a bool"),
    ],
)
def test_invalid_parameters(kwargs, error, pattern):
    args = dict(in_channels=6, out_channels=6, kernel_size=3) | kwargs
    with pytest.raises(error, match=r"^conv_transpose1d: " + pattern):
        P(**args)


def test_sizes_accept_one_tuples():
    p = P(4, 4, (3,), stride=[2], padding=(1,), output_padding=(1,), dilation=(1,))
    assert (p.kernel_size, p.stride, p.padding, p.output_padding) == (3, 2, 1, 1)
    assert p.output_length(5) == (5 - 1) * 2 - 2 + 1 * 2 + 1 + 1


@pytest.mark.parametrize(
    "kwargs, length, pattern",
    [
        (dict(kernel_size=1, padding=1), 1, r"output length must be at least 1, got L_out=-1 for L_in=1"),
        (dict(kernel_size=3, padding=1, padding_mode="reflect"), 1, r"reflect.*padding=1, L_out=1"),
        (dict(kernel_size=5, padding=2, padding_mode="circular"), 1, r"circular.*padding=2, L_out=1"),
        (dict(kernel_size=3), 0, r"length must be positive, got length=0"),
    ],
)
def test_invalid_lengths(kwargs, length, pattern):
    p = P(2, 2, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        p.output_length(length)


def test_edge_paddings_allowed():
    # L_out = (L_in - 1)*stride - 2*padding + dilation*(K - 1) + output_padding + 1
    assert P(2, 2, 7, padding=2, padding_mode="reflect").output_length(1) == 3  # padding < L_out
    assert P(2, 2, 9, padding=3, padding_mode="circular").output_length(1) == 3  # padding == L_out
    assert P(2, 2, 9, padding=4, padding_mode="replicate").output_length(1) == 1  # padding > L_out


@needs_torch
@pytest.mark.parametrize("stride, dilation, kernel, padding, length", [
    (1, 1, 3, 0, 5), (2, 1, 4, 1, 7), (3, 2, 5, 2, 4), (4, 3, 2, 5, 9), (8, 1, 16, 4, 86), (1, 3, 7, 9, 11),
])
def test_output_length_and_output_size_match_torch(stride, dilation, kernel, padding, length):
    layer = torch.nn.ConvTranspose1d(2, 2, kernel, stride, padding, dilation=dilation)
    x = torch.zeros(1, 2, length)
    p = P(2, 2, kernel, stride, padding, dilation=dilation)
    assert p.output_length(length) == layer(x).shape[-1]
    lo = p.output_length(length)
    for size in range(lo - 2, lo + stride + 2):
        try:
            expected = layer(x, output_size=[size]).shape[-1]
        except (ValueError, RuntimeError) as err:
            torch_msg = re.search(r"valid sizes range from \d+ to \d+", str(err))
            with pytest.raises(ValueError, match=torch_msg.group(0) if torch_msg else "valid sizes"):
                p.output_padding_for(length, size)
            continue
        op = p.output_padding_for(length, size)
        assert p.with_output_padding(op).output_length(length) == expected == size


def test_workload_shapes_and_flops():
    w = Workload(P(512, 256, 16, 8, 4), 1, 86)
    assert w.input_shape == (1, 512, 86)
    assert w.output_shape == (1, 256, 688)
    assert w.flops == 2 * 512 * 256 * 16 * 86
    assert Workload.from_dict(w.to_dict()) == w
    with pytest.raises(ValueError, match="batch must be positive"):
        Workload(P(2, 2, 3), 0, 4)


@pytest.mark.parametrize("dtype", ["int32", "float", "half", "float8_e4m3fn"])
def test_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match=f"dtype must be one of float32, float64, float16, bfloat16, "
                                        f"got dtype='{dtype}'"):
        check_dtype(dtype)


def test_dtype_objects_are_accepted():
    import numpy as np

    assert check_dtype(np.float32) == "float32" and check_dtype(np.dtype("float64")) == "float64"
    if torch is not None:
        assert check_dtype(torch.float32) == "float32"
    with pytest.raises(TypeError, match="got dtype='int64'"):
        check_dtype(np.int64)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"parameters must be fields of ConvTranspose1dParams, got unknown \[.padd.\]"):
        P.from_dict({"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padd": 1})
