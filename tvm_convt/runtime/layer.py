"""The layer (:class:`ConvTranspose1d`, PyTorch's module) and the function
(:func:`conv_transpose1d`, PyTorch's functional): what they compile for a call, their weights,
and their answers to a batch of 0 and to ``output_size``."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from ..params import (OP, ConvTranspose1dParams, Workload, check_dtype, check_dtype_for_target)
from ..target import TargetLike, resolve_target
from .arrays import (DeviceArray, Output, aligned_copy, aligned_empty, as_array, batched, check_array,
                     check_array_dtype, check_channels, host_array)
from .module import _MODULES, CompiledConvTranspose1d, check_lengths, logs_arg, module_workload


class ConvTranspose1d:
    """A transposed 1-D convolution layer with PyTorch's ``nn.ConvTranspose1d`` semantics.

    ``weight`` is (in_channels, out_channels/groups, kernel_size) and ``bias``
    (out_channels,), both NumPy arrays of ``dtype``, initialised from
    U(-sqrt(k), sqrt(k)) with k = groups / (out_channels * kernel_size), the
    bound PyTorch's default initialisation gives; ``seed`` makes them
    reproducible. Assign new arrays to ``.weight`` and ``.bias`` to load trained
    values; the arrays the layer hands out are read-only, since its modules read copies
    made once per assignment (packed for the CPU GEMM schedule, on the GPU's memory for a
    GPU target), which an in-place edit would miss. ``logs`` is where to look for tuning records first (default
    ``$TVM_CONVT_TUNING_LOGS``). Calling the layer on (batch, in_channels, L_in) or (in_channels,
    L_in) returns (batch, out_channels, L_out) or (out_channels, L_out); see
    :class:`ConvTranspose1dParams` for L_out and the padding modes. With ``lengths="any"`` (the
    default) a CPU layer compiles one module that serves every batch and length; ``"exact"``
    compiles one per input shape, each able to use a tuning record tuned for that shape.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: int | tuple[int] = 0,
        output_padding: int | tuple[int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int] = 1,
        padding_mode: str = "zeros",
        *,
        target: TargetLike = "llvm",
        dtype: str = "float32",
        seed: int | None = None,
        logs: str | Path | None = None,
        lengths: str = "any",
    ) -> None:
        self.params = ConvTranspose1dParams(in_channels, out_channels, kernel_size, stride, padding,
                                            output_padding, groups, bias, dilation, padding_mode)
        self.lengths = check_lengths(lengths)
        self.dtype = check_dtype(dtype)
        # A bad target is rejected now, not at the first call.
        kind = resolve_target(target).kind.name
        check_dtype_for_target(self.dtype, kind)
        self.target = target
        self.logs = logs_arg(logs)
        _check_seed(seed)
        p = self.params
        bound = math.sqrt(p.groups / (p.out_channels * p.kernel_size))
        rng = np.random.default_rng(seed)
        weight = _frozen_copy(rng.uniform(-bound, bound, p.weight_shape).astype(self.dtype))
        bias = _frozen_copy(rng.uniform(-bound, bound, (p.out_channels,)).astype(self.dtype)) if p.bias else None
        # (weight, bias, prepared copies by device and weight layout): replaced as one on
        # assignment, so a call running meanwhile can only fill the copies of the values it read.
        self._state: tuple[np.ndarray, np.ndarray | None,
                           dict[tuple[str, int | None], list[tvm.runtime.Tensor]]] = (weight, bias, {})
        # What a call of each input shape (without output_size) found it needs, so that the next
        # call of that shape skips the checks and look-ups it passed (tens of microseconds).
        self._plans: dict[tuple[int, ...], _CallPlan] = {}

    def __repr__(self) -> str:
        p = self.params
        extra = "".join(
            f", {name}={getattr(p, name)!r}" for name, default in (
                ("stride", 1), ("padding", 0), ("output_padding", 0), ("groups", 1),
                ("bias", True), ("dilation", 1), ("padding_mode", "zeros"))
            if getattr(p, name) != default)
        return f"ConvTranspose1d({p.in_channels}, {p.out_channels}, kernel_size={p.kernel_size}{extra})"

    @property
    def weight(self) -> np.ndarray:
        """The weight, read-only: the modules hold copies prepared from it (packed, or on the
        GPU), which an in-place edit would silently miss; assign a new array instead."""
        return self._state[0]

    @weight.setter
    def weight(self, value: Any) -> None:
        arr = host_array(as_array(value, "weight"))  # kept on the host, uploaded once per device
        check_array(arr, "weight", self.params.weight_shape, self.dtype)
        self._state = (_frozen_copy(arr), self._state[1], {})

    @property
    def bias(self) -> np.ndarray | None:
        """The bias (None without one), read-only as :attr:`weight` is."""
        return self._state[1]

    @bias.setter
    def bias(self, value: Any) -> None:
        if not self.params.bias:
            if value is not None:
                raise ValueError(f"{OP}: this layer was built with bias=False; cannot assign a bias")
            return
        if value is None:
            raise ValueError(f"{OP}: this layer was built with bias=True; assign an array, not None")
        arr = host_array(as_array(value, "bias"))
        check_array(arr, "bias", (self.params.out_channels,), self.dtype)
        self._state = (self._state[0], _frozen_copy(arr), {})

    def compiled_for(self, x_shape: tuple[int, ...], output_size: Any = None) -> CompiledConvTranspose1d:
        """The compiled module that serves an input of ``x_shape`` (compiling it if needed)."""
        batch = x_shape[0] if len(x_shape) == 3 else 1
        params = self.params
        if output_size is not None:
            params = params.with_output_padding(
                params.output_padding_for(x_shape[-1], _output_length(output_size, len(x_shape))))
        workload = module_workload(params, batch, x_shape[-1], self.dtype, self.target, self.lengths)
        return _MODULES.get(workload, self.target, self.logs, prepack_weight=True)

    def __call__(self, x: Any, output_size: Any = None) -> Any:
        """The output as the caller's kind of array, on the input's device (see :class:`Output`)."""
        out = Output.like(x)
        arr = as_array(x, "input")
        plan = self._plans.get(arr.shape) if output_size is None else None
        if plan is None or not plan.serves(self):
            check_channels(arr, self.params.weight_shape, self.params.in_channels)
            check_array_dtype(arr, "input", self.dtype)
            if arr.ndim == 3 and arr.shape[0] == 0:
                return self._empty_batch(out, arr, output_size)
            plan = self._plan(arr, output_size)
        else:  # the shape passed every check before; the dtype is the array's own
            check_array_dtype(arr, "input", self.dtype)
        compiled = plan.compiled
        xb, unbatched = batched(arr)
        weight, bias, copies = self._state
        weights = copies.get(plan.weights_key)
        if weights is None:  # prepared once per assignment (and layout), not per call
            weights = compiled.prepare_weights(weight, bias)
            copies[plan.weights_key] = weights
        y = compiled._run_checked(compiled.to_device(xb, "input"), weights, out)
        return y[0] if unbatched else y

    def stream(self, batch: int = 1, *, causal: bool = False, trim_right_ratio: float = 1.0) -> Any:
        """A stream of this layer over ``batch`` rows (:class:`tvm_convt.runtime.streams.ConvTranspose1dStream`):
        chunks pushed one after another give the layer's output on the whole signal. It reads the
        layer's weights as they are at each push. ``causal`` takes Moshi's and EnCodec's convention
        instead (no padding; ``trim_right_ratio`` of the overlap trimmed from the end)."""
        from .streams import open_stream

        return open_stream(self.params, self.dtype, self.target, self._stream_weights, batch=batch,
                           causal=causal, trim_right_ratio=trim_right_ratio, logs=self.logs)

    def _stream_weights(self, kernel: CompiledConvTranspose1d) -> Any:
        """The layer's weights as a stream's kernel reads them, prepared once per assignment."""
        in_kernel = kernel.params.bias
        key = ("stream", kernel.metadata.weight_block, in_kernel)

        def source() -> tuple[list[tvm.runtime.Tensor], np.ndarray | None]:
            weight, bias, copies = self._state
            prepared = copies.get(key)
            if prepared is None:
                prepared = copies[key] = kernel.prepare_weights(weight, bias if in_kernel else None)
            return prepared, bias

        return source

    def _plan(self, arr: np.ndarray | DeviceArray, output_size: Any) -> _CallPlan:
        """The module for an input like ``arr`` after every check of its shape, remembered by
        shape when ``output_size`` is None."""
        shape = tuple(arr.shape)
        compiled = self.compiled_for(shape, output_size)
        compiled.check_input(arr)
        plan = _CallPlan(compiled, (self.target, self.logs, self.lengths),
                         (str(compiled.device), compiled.metadata.weight_block))
        if output_size is None:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            self._plans[shape] = plan
        return plan

    def _empty_batch(self, out: Output, arr: np.ndarray | DeviceArray, output_size: Any) -> Any:
        params = self.params
        if output_size is not None:
            params = params.with_output_padding(params.output_padding_for(arr.shape[-1], _output_length(output_size, 3)))
        return _empty_output(out, arr, params, self.dtype)


# The input shapes a layer remembers the plan of; past this many it starts again.
_PLANS_KEPT = 1024


@dataclass(frozen=True)
class _CallPlan:
    """What a layer's call of one input shape needs: the module, the layer's settings it was found
    for (compared by identity: a new target, logs folder or ``lengths`` makes a new plan), and the
    key of the weights prepared for it."""

    compiled: CompiledConvTranspose1d
    settings: tuple[Any, Any, str]
    weights_key: tuple[str, int | None]

    def serves(self, layer: ConvTranspose1d) -> bool:
        target, logs, lengths = self.settings
        return target is layer.target and logs is layer.logs and lengths is layer.lengths


def _check_seed(seed: Any) -> None:
    """None or a non-negative int, as ``numpy.random.default_rng`` takes (and PyTorch's manual_seed)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{OP}: seed must be None or an int, got seed={seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"{OP}: seed must be non-negative, got seed={seed}")


def _empty_batch(params: ConvTranspose1dParams, length: int, dtype: str) -> np.ndarray:
    """PyTorch's answer to a batch of 0: an empty (0, out_channels, L_out) output, with every
    check of a real call (the sizes of one sample) and nothing compiled."""
    w = Workload(params, 1, length, dtype)
    return aligned_empty((0, params.out_channels, w.out_length), dtype)


def _empty_output(out: Output, x: np.ndarray | DeviceArray, params: ConvTranspose1dParams, dtype: str) -> Any:
    """The empty output of a batch of 0, as the caller's kind of array on the input's device."""
    y = _empty_batch(params, x.shape[-1], dtype)
    return out.from_host(y, x.tensor.device if isinstance(x, DeviceArray) else None)


def _frozen_copy(arr: np.ndarray) -> np.ndarray:
    """An aligned copy of ``arr`` that no view of it can make writable again: a layer's
    weights, which its modules read through copies prepared on assignment."""
    copy = aligned_copy(arr)
    # The memory's owner too: a view's WRITEABLE flag follows it, not the array viewed.
    for part in (copy, copy.base, getattr(copy.base, "base", None)):
        if isinstance(part, np.ndarray):
            part.flags.writeable = False
    return copy


def _output_length(output_size: Any, ndim: int) -> Any:
    """The length PyTorch reads from ``output_size``: an int, or a sequence of 1 or ``ndim`` sizes."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) not in (1, ndim):
            raise ValueError(f"{OP}: for {ndim}D input, output_size must have 1 or {ndim} elements, "
                             f"got output_size={list(output_size)}")
        return output_size[-1]
    return output_size


def _function_params(weight_shape: tuple[int, int, int], stride: Any, padding: Any, output_padding: Any,
                     groups: Any, bias: bool, dilation: Any, padding_mode: Any) -> ConvTranspose1dParams:
    """The function's parameters, read from the weight's shape; validated once per set of plain ints
    (a cache compares by value, and 2.0 or True must still fail as they do the first time)."""
    # groups is checked before out_channels is derived from it.
    groups = ConvTranspose1dParams.check_positive_size("groups", groups)
    args = (weight_shape[0], weight_shape[1] * groups, weight_shape[2], stride, padding, output_padding,
            groups, bias, dilation, padding_mode)
    if all(type(v) is int for v in (stride, padding, output_padding, dilation)) and type(padding_mode) is str:
        return _cached_params(*args)
    return ConvTranspose1dParams(*args)


@functools.lru_cache(maxsize=256)
def _cached_params(*args: Any) -> ConvTranspose1dParams:
    return ConvTranspose1dParams(*args)


def conv_transpose1d(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: int | tuple[int] = 1,
    padding: int | tuple[int] = 0,
    output_padding: int | tuple[int] = 0,
    groups: int = 1,
    dilation: int | tuple[int] = 1,
    padding_mode: str = "zeros",
    *,
    target: TargetLike = "llvm",
    logs: str | Path | None = None,
    lengths: str = "any",
) -> np.ndarray:
    """Transposed 1-D convolution of ``x`` with ``weight``, as ``torch.nn.functional.conv_transpose1d``.

    ``x`` is (batch, in_channels, L_in) or (in_channels, L_in); ``weight`` is
    (in_channels, out_channels/groups, kernel_size); ``bias`` is (out_channels,)
    or None. Returns (batch, out_channels, L_out) with L_out as in
    :class:`ConvTranspose1dParams`, which also defines the padding modes, as the caller's
    kind of array on the input's device (NumPy for NumPy, torch for torch, CuPy for CuPy). The
    dtype is the input's (float32 or float64; float16 and bfloat16 on CUDA); weight and
    bias must match it.
    Tuning records are looked up in ``logs`` (default ``$TVM_CONVT_TUNING_LOGS``),
    then in the shipped ``schedules/``, for ``lengths="exact"`` (a module per input shape); with
    ``"any"`` (the default) one module per layer serves every batch and length (on CUDA, batches of at
    most :data:`~tvm_convt.lengths.CUDA_MAX_BATCH`).
    """
    lengths = check_lengths(lengths)
    out = Output.like(x)
    x = as_array(x, "input")
    weight = as_array(weight, "weight")
    if weight.ndim != 3:
        raise ValueError(f"{OP}: weight must be 3-D (in_channels, out_channels/groups, kernel_size), "
                         f"got weight.shape={tuple(weight.shape)}")
    params = _function_params(tuple(weight.shape), stride, padding, output_padding, groups, bias is not None,
                              dilation, padding_mode)
    check_channels(x, weight.shape, params.in_channels)
    dtype = check_dtype(x.dtype)
    # Every input is checked here, so that nothing is compiled for a call that must fail.
    check_array_dtype(x, "input", dtype)  # a byte-swapped float32 is not float32
    check_array(weight, "weight", params.weight_shape, dtype)
    if bias is not None:
        bias = as_array(bias, "bias")
        check_array(bias, "bias", (params.out_channels,), dtype)
    check_dtype_for_target(dtype, resolve_target(target).kind.name)
    logs = logs_arg(logs)
    if x.ndim == 3 and x.shape[0] == 0:
        return _empty_output(out, x, params, dtype)
    workload = module_workload(params, x.shape[0] if x.ndim == 3 else 1, x.shape[-1], dtype, target, lengths)
    return _MODULES.get(workload, target, logs).call(x, weight, bias, out)
