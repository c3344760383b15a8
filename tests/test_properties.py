"""Property-based tests (Hypothesis) over the whole parameter space.

Valid parameter sets are drawn by strategies that follow the rules of
:class:`ConvTranspose1dParams` (groups dividing both channel counts, output_padding
below stride or dilation, padding within each mode's limit), run through one of
the three entry points (``conv_transpose1d``, ``ConvTranspose1d``, ``compile``) and
compared with the float64 NumPy reference and PyTorch. Invalid ones must raise
ValueError or TypeError from the operator, before anything is compiled.

Each valid example compiles a tiny module (0.3-0.5 s), so the default run is small
and derandomized (the same examples every run); set ``TVM_CONVT_PROPERTY_EXAMPLES``
for a longer one, e.g. ``TVM_CONVT_PROPERTY_EXAMPLES=500 pytest tests/test_properties.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tvm_convt  # noqa: E402
from tvm_convt.compute import MAX_UNROLLED_TAPS, TapPlan  # noqa: E402
from tvm_convt.params import PADDING_MODES, ConvTranspose1dParams, Workload  # noqa: E402
from tvm_convt.reference import conv_transpose1d_reference  # noqa: E402

from conftest import assert_close, torch, torch_conv_transpose1d  # noqa: E402

P = ConvTranspose1dParams
EXAMPLES = int(os.environ.get("TVM_CONVT_PROPERTY_EXAMPLES", "60"))
# Invalid examples compile nothing: many of them cost less than one valid one.
INVALID_EXAMPLES = 5 * EXAMPLES

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class Case:
    """One valid example: the layer, the input's shape, how it is called."""

    params: ConvTranspose1dParams  # with the output_padding the output has (from output_size too)
    layer_output_padding: int  # the layer's own output_padding, when output_size overrides it
    batch: int | None  # None: unbatched input
    length: int
    dtype: str
    entry: str  # "function", "layer" or "compiled"
    output_size: Any  # None, or what the layer call passes
    torch_inputs: bool  # pass torch tensors instead of NumPy arrays


def _max_padding(mode: str, base: int) -> int:
    """The largest padding that leaves L_out = base - 2*padding valid for ``mode``."""
    if mode == "reflect":  # padding < L_out
        return (base - 1) // 3
    if mode == "circular":  # padding <= L_out
        return base // 3
    return (base - 1) // 2  # L_out >= 1


@st.composite
def kernel_sizes(draw, stride: int, dilation: int) -> int:
    """Mostly short kernels; sometimes more than MAX_UNROLLED_TAPS live taps (a reduction loop)."""
    if draw(st.integers(0, 4)) == 0:
        step = stride // math.gcd(stride, dilation)
        return MAX_UNROLLED_TAPS * step + draw(st.integers(1, 8))
    return draw(st.integers(1, 7))


def _output_size_form(draw, size: int, batch: int | None, channels: int) -> Any:
    """``size`` as an int, a 1-list, or the full (N, C, L) / (C, L) shape, as PyTorch takes it."""
    form = draw(st.sampled_from(["int", "one", "full"]))
    if form == "int":
        return size
    if form == "one":
        return [size]
    return (batch, channels, size) if batch is not None else (channels, size)


@st.composite
def cases(draw, mode: str) -> Case:
    groups = draw(st.integers(1, 3))
    in_channels = groups * draw(st.integers(1, 3))
    out_channels = groups * draw(st.integers(1, 3))
    stride, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    kernel = draw(kernel_sizes(stride, dilation))
    limit = max(stride, dilation) if mode == "zeros" else stride
    output_padding = draw(st.integers(0, limit - 1))
    entry = draw(st.sampled_from(["function", "layer", "compiled"]))
    batch = draw(st.one_of(st.none(), st.integers(0 if entry != "compiled" else 1, 3)))
    length = draw(st.integers(1, 8))
    # The layer may ask for its output length instead (PyTorch's output_size): that output_padding
    # is below stride, whatever the layer's own.
    use_size = entry == "layer" and draw(st.booleans())
    effective = draw(st.integers(0, stride - 1)) if use_size else output_padding
    base = (length - 1) * stride + dilation * (kernel - 1) + effective + 1
    padding = draw(st.integers(0, min(_max_padding(mode, base), 6)))
    params = P(in_channels, out_channels, kernel, stride, padding, effective, groups,
               draw(st.booleans()), dilation, mode)
    output_size = None
    if use_size:
        size = base - 2 * padding
        output_size = _output_size_form(draw, size, batch, out_channels)
    return Case(params, output_padding, batch, length, draw(st.sampled_from(["float32", "float64"])),
                entry, output_size, torch is not None and draw(st.booleans()))


def _inputs(case: Case, seed: int):
    p = case.params
    rng = np.random.default_rng(seed)
    shape = (p.in_channels, case.length) if case.batch is None else (case.batch, p.in_channels, case.length)
    x = rng.standard_normal(shape).astype(case.dtype)
    w = rng.standard_normal(p.weight_shape).astype(case.dtype)
    b = rng.standard_normal(p.out_channels).astype(case.dtype) if p.bias else None
    return x, w, b


def _run(case: Case, x, w, b) -> np.ndarray:
    p = case.params
    wrap = torch.from_numpy if case.torch_inputs else (lambda a: a)
    if case.entry == "function":
        return tvm_convt.conv_transpose1d(
            wrap(x), wrap(w), None if b is None else wrap(b), p.stride, p.padding, p.output_padding,
            p.groups, p.dilation, p.padding_mode)
    if case.entry == "layer":
        layer = tvm_convt.ConvTranspose1d(
            p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding, case.layer_output_padding,
            p.groups, p.bias, p.dilation, p.padding_mode, dtype=case.dtype)
        layer.weight = wrap(w)
        if b is not None:
            layer.bias = wrap(b)
        return layer(wrap(x), output_size=case.output_size)
    compiled = tvm_convt.compile(p, batch=case.batch or 1, length=case.length, dtype=case.dtype)
    return compiled(wrap(x), wrap(w), None if b is None else wrap(b))


@pytest.mark.parametrize("mode", PADDING_MODES)
@settings(max_examples=max(1, EXAMPLES // len(PADDING_MODES)), **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_valid_parameters_match_reference_and_torch(mode: str, data, seed: int):
    """Every padding mode gets its share of the examples (one Hypothesis run each)."""
    case = data.draw(cases(mode), label="case")
    _events(case)
    x, w, b = _inputs(case, seed)
    before = [a.copy() for a in (x, w, b) if a is not None]
    y = _run(case, x, w, b)
    if case.torch_inputs:
        assert isinstance(y, torch.Tensor)  # torch in, torch out
        y = y.numpy()
    assert isinstance(y, np.ndarray) and y.dtype == np.dtype(case.dtype)
    expected = conv_transpose1d_reference(x, w, b, case.params)
    assert_close(y, expected, case.dtype)
    if torch is not None:
        assert_close(y, torch_conv_transpose1d(x, w, b, case.params), case.dtype)
    for old, new in zip(before, (a for a in (x, w, b) if a is not None)):
        assert np.array_equal(old, new), "an input was modified"


def _events(case: Case) -> None:
    """What the example covers, for ``pytest --hypothesis-show-statistics``."""
    p = case.params
    event(f"entry={case.entry}")
    event(f"padding_mode={p.padding_mode}")
    event(f"dtype={case.dtype}")
    event("unbatched" if case.batch is None else f"batch={min(case.batch, 2)}")
    if TapPlan.of(p).taps > MAX_UNROLLED_TAPS:
        event("more than 16 live taps (reduction loop)")
    if p.dilation * (p.kernel_size - 1) + 1 > case.length:
        event("kernel longer than the input")
    if p.groups > 1:
        event("groups > 1")
    if case.output_size is not None:
        event("output_size")


def test_strategy_reaches_reduction_loop_gathers():
    """The kernel strategy does produce more live taps than are unrolled (a reduction loop)."""
    step_one = P(1, 1, MAX_UNROLLED_TAPS + 1)
    assert TapPlan.of(step_one).taps > MAX_UNROLLED_TAPS
    assert TapPlan.of(P(1, 1, 2 * MAX_UNROLLED_TAPS + 1, stride=2)).taps > MAX_UNROLLED_TAPS


# -- invalid parameters ------------------------------------------------------------------------

VALID = dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1,
             groups=3, bias=True, dilation=1, padding_mode="zeros")
SIZES = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding",
         "groups", "dilation")
POSITIVE = ("in_channels", "out_channels", "kernel_size", "stride", "groups", "dilation")

# Values no size accepts: wrong types, wrong tuple lengths, beyond 64 bits.
NOT_A_SIZE = st.one_of(
    st.floats(allow_nan=True), st.text(max_size=3), st.none(), st.booleans(),
    st.tuples(st.integers(1, 4), st.integers(1, 4)), st.just(()), st.just([]),
    st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1),
    st.builds(complex, st.integers(1, 3), st.integers(1, 3)),
)


@st.composite
def invalid_params(draw) -> dict[str, Any]:
    """VALID with exactly one rule broken."""
    kwargs = dict(VALID)
    rule = draw(st.sampled_from(["type", "not-positive", "negative", "groups", "mode",
                                 "output_padding", "bias"]))
    if rule == "type":
        kwargs[draw(st.sampled_from(SIZES))] = draw(NOT_A_SIZE)
    elif rule == "not-positive":
        kwargs[draw(st.sampled_from(POSITIVE))] = draw(st.integers(max_value=0))
    elif rule == "negative":
        kwargs[draw(st.sampled_from(["padding", "output_padding"]))] = draw(st.integers(max_value=-1))
    elif rule == "groups":  # divides neither, or only one of the channel counts
        kwargs["groups"] = draw(st.sampled_from([4, 5, 7, 12]))
    elif rule == "mode":
        kwargs["padding_mode"] = draw(st.one_of(st.text(max_size=8).filter(lambda s: s not in PADDING_MODES),
                                                st.none(), st.integers()))
    elif rule == "output_padding":
        mode = draw(st.sampled_from(PADDING_MODES))
        limit = max(kwargs["stride"], kwargs["dilation"]) if mode == "zeros" else kwargs["stride"]
        kwargs.update(padding_mode=mode, output_padding=draw(st.integers(limit, 2**40)))
    else:
        kwargs["bias"] = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=2), st.none(),
                                        st.text(max_size=3), st.floats()))
    return kwargs


def _assert_operator_error(err: BaseException) -> None:
    assert isinstance(err, (ValueError, TypeError)), repr(err)
    assert str(err).startswith("conv_transpose1d: "), str(err)


@settings(max_examples=INVALID_EXAMPLES, **SETTINGS)
@given(kwargs=invalid_params())
def test_invalid_parameters_raise_operator_errors(kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        P(**kwargs)
    _assert_operator_error(info.value)


@st.composite
def invalid_workloads(draw) -> tuple[ConvTranspose1dParams, Any, Any, Any]:
    """A valid layer with a bad batch, length or dtype, or a length whose output breaks a limit."""
    mode = draw(st.sampled_from(PADDING_MODES))
    kernel, padding = draw(st.integers(1, 5)), draw(st.integers(3, 8))
    p = P(2, 2, kernel, padding=padding, padding_mode=mode)
    batch, length, dtype = 1, 3 * padding + 2, "float32"  # L_out = padding + kernel + 1: valid
    what = draw(st.sampled_from(["batch", "length", "dtype", "short-output"]))
    if what == "batch":
        batch = draw(st.one_of(st.integers(max_value=0), NOT_A_SIZE))
    elif what == "length":
        length = draw(st.one_of(st.integers(max_value=0), NOT_A_SIZE))
    elif what == "dtype":
        # float16 and bfloat16 are valid workloads (CUDA only: compiling refuses them on a CPU).
        dtype = draw(st.sampled_from(["half", "int32", "bool", "complex64", "float", "", "f4",
                                      np.int64, np.int8, object, None, 3]))
    else:  # L_out = kernel - 2*padding < 1 for one sample, or beyond the mode's padding limit
        length = 1
    return p, batch, length, dtype


@settings(max_examples=INVALID_EXAMPLES, **SETTINGS)
@given(args=invalid_workloads())
def test_invalid_workloads_raise_operator_errors(args):
    p, batch, length, dtype = args
    with pytest.raises((ValueError, TypeError)) as info:
        Workload(p, batch, length, dtype)
    _assert_operator_error(info.value)


@settings(max_examples=INVALID_EXAMPLES, **SETTINGS)
@given(stride=st.integers(1, 4), length=st.integers(1, 6), size=st.integers(-(2**70), 2**70),
       batched=st.booleans())
def test_output_size_out_of_range_raises_before_compiling(stride, length, size, batched):
    p = P(2, 3, 3, stride=stride, padding=1)
    low = (length - 1) * stride - 2 + 2 + 1
    if low <= size <= low + stride - 1:
        size = low + stride  # just past the largest valid size
    layer = tvm_convt.ConvTranspose1d(2, 3, 3, stride=stride, padding=1)
    x = np.zeros((1, 2, length) if batched else (2, length), "float32")

    def must_not_compile(*args, **kwargs):
        raise AssertionError("compiled before refusing output_size")

    # Issue #26, 6: refusing after compiling passed this test; nothing may compile first.
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ValueError, match=r"valid sizes range from|must fit "
                                                                            r"in a 64-bit") as info:
        mp.setattr("tvm_convt.runtime.module.build_library", must_not_compile)
        layer(x, output_size=[size])
    _assert_operator_error(info.value)
    assert p.output_padding_for(length, low) == 0
