"""Streams: a transposed convolution fed chunk by chunk, each push returning the output samples no
later input can change, the concatenation of every push and the flush equal to the whole signal's.

Positions below are of the padding-free output ("full": input sample ``i`` reaches positions
``i*stride + k*dilation``). After ``E`` input samples, positions below ``E*stride`` are final; the
``overlap`` after them hold partial sums, which the kernel carries to the next chunk itself
(:func:`tvm_convt.compute.stream_te`). The whole signal's output is ``full[left:end]`` with
``end = E*stride + end_offset`` (PyTorch: ``left = padding``, ``end_offset = overlap + output_padding
- padding``), plus the bias, and in reflect and replicate modes with the ``padding``-wide margins
folded back onto it: the left fold is final once the margin has passed, the right one at the flush,
so the samples it reaches are held back until then.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import tvm

from ..params import OP, ConvTranspose1dParams, SymbolicWorkload, numpy_dtype
from ..target import TargetLike, resolve_target
from .arrays import (Output, aligned_copy, aligned_empty, as_array, check_array, check_array_dtype, output_empty,
                     shareable)
from .module import _MODULES, CompiledConvTranspose1d

# What a stream reads its weights through: the kernel's prepared weights and the layer's bias (None
# without one; the stream adds it where the kernel does not), asked on every push (a layer's may change).
WeightSource = Callable[[], tuple[list[tvm.runtime.Tensor], np.ndarray | None]]


@dataclass(frozen=True)
class StreamGeometry:
    """Where a stream's output starts and ends in the padding-free output, and what it holds back.

    ``carried``: partial sums a chunk leaves per channel and row; ``left``: positions the output
    starts at; ``end_offset``: the output ends at position ``frames*stride + end_offset``; ``hold``:
    final positions held back until the next push or the flush (the end may crop or fold them);
    ``pad``: the margins that reflect and replicate fold back (0 in zeros mode).
    """

    stride: int
    carried: int
    left: int
    end_offset: int
    hold: int
    mode: str
    pad: int

    @classmethod
    def of(cls, p: ConvTranspose1dParams, causal: bool = False, trim_right_ratio: float = 1.0) -> StreamGeometry:
        if p.padding_mode == "circular" and p.folds_margins:
            raise ValueError(f"{OP}: a stream cannot compute padding_mode='circular', whose last samples wrap "
                             f"onto its first ones before the end is known; got padding_mode='circular', "
                             f"padding={p.padding}")
        if causal:
            return cls._causal(p, trim_right_ratio)
        end_offset = p.overlap + p.output_padding - p.padding
        # Without padding every mode is zeros mode (the kernel then adds the bias too: stream_params).
        mode = p.padding_mode if p.folds_margins else "zeros"
        # The right fold reaches the last sample of the output (replicate) or the padding before it (reflect).
        reach = {"zeros": 0, "replicate": 1, "reflect": p.padding + 1}[mode]
        pad = p.padding if p.folds_margins else 0
        return cls(p.stride, max(p.overlap, 0), p.padding, end_offset, max(0, reach - end_offset), mode, pad)

    @classmethod
    def _causal(cls, p: ConvTranspose1dParams, ratio: float) -> StreamGeometry:
        """Moshi's and EnCodec's causal convention: the layer has no padding, and of its
        ``overlap`` extra samples ``ceil(overlap * trim_right_ratio)`` are trimmed from the end and the
        rest from the start; with ratio 1, every push returns ``stride`` samples per input sample."""
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio <= 1:
            raise ValueError(f"{OP}: trim_right_ratio must be a number from 0 to 1, got trim_right_ratio={ratio!r}")
        if p.padding or p.output_padding or p.padding_mode != "zeros" or p.overlap < 0:
            raise ValueError(f"{OP}: a causal stream trims the layer's overlap instead of padding it: it needs "
                             "padding=0, output_padding=0, padding_mode='zeros' and dilation*(kernel_size-1)+1 >= "
                             f"stride, got padding={p.padding}, output_padding={p.output_padding}, "
                             f"padding_mode={p.padding_mode!r}, overlap={p.overlap}")
        right = math.ceil(p.overlap * ratio)
        # The output is full[overlap - right : frames*stride + overlap - right]: nothing to hold back.
        return cls(p.stride, p.overlap, p.overlap - right, p.overlap - right, 0, "zeros", 0)

    @property
    def per_row_after_start(self) -> bool:
        """Whether, once past the cropped start, every push returns ``stride`` samples per input sample."""
        return self.mode == "zeros" and self.hold == 0

    @property
    def per_row(self) -> bool:
        """Whether every push returns ``stride`` samples per input sample, whatever came before (so
        rows can restart one by one)."""
        return self.per_row_after_start and self.left == 0

    def end(self, frames: int) -> int:
        """Where the output of ``frames`` input samples ends (exclusive)."""
        return frames * self.stride + self.end_offset


class ConvTranspose1dStream:
    """A stream of one layer over ``batch`` rows: :meth:`push` chunks of (batch, in_channels, T) for
    any T >= 1 (T may change between pushes) and get back every output sample that no later input
    can change; :meth:`flush` returns the rest and ends the stream; :meth:`reset` starts again.

    The concatenation along the last axis of every push and the flush equals the layer's output on
    the whole signal (PyTorch's convention), or with ``causal`` the causal convention of Moshi and
    EnCodec (see :meth:`StreamGeometry._causal`). Outputs come back as the caller's kind of array
    (NumPy, or torch on the CPU), each a new array unless :meth:`push` is given ``out``. Made by
    :meth:`tvm_convt.ConvTranspose1d.stream`, :meth:`tvm_convt.CompiledConvTranspose1d.stream` or
    :func:`open_stream`.
    """

    def __init__(self, params: ConvTranspose1dParams, kernel: CompiledConvTranspose1d, weights: WeightSource,
                 batch: int, geometry: StreamGeometry) -> None:
        self.params, self.batch, self.geometry = params, batch, geometry
        self.dtype = kernel.workload.dtype
        self._kernel, self._weights = kernel, weights
        acc = numpy_dtype(kernel.workload.accumulator)
        shape = (batch, params.out_channels, geometry.carried)
        # Two buffers of partial sums, read and written in turn: the kernel reads one and writes the other.
        self._states = [aligned_empty(shape, acc), aligned_empty(shape, acc)]
        self._state_tensors = [tvm.runtime.from_dlpack(s) for s in self._states] if geometry.carried else []
        self._current = 0  # the buffer the next push reads
        self._flush_as = (Output(), False)
        self.reset()

    def __deepcopy__(self, memo: dict) -> ConvTranspose1dStream:
        """A stream at the same point with its own state (the kernel and the weights are shared)."""
        twin = copy.copy(self)
        twin._states = [aligned_copy(s) for s in self._states]
        twin._state_tensors = [tvm.runtime.from_dlpack(s) for s in twin._states] if self.geometry.carried else []
        for name in ("_pending", "_margin"):
            setattr(twin, name, copy.deepcopy(getattr(self, name), memo))
        return twin

    def __repr__(self) -> str:
        return f"ConvTranspose1dStream({self.params}, batch={self.batch}, dtype={self.dtype!r}, frames={self.frames})"

    @property
    def frames(self) -> int:
        """Input samples pushed since the stream started."""
        return self._frames

    def state(self) -> dict[str, Any]:
        """Where the stream stands, as plain values and arrays (copies): what :meth:`load_state` takes."""
        return {"batch": self.batch, "frames": self._frames, "start": self._start, "ended": self._ended,
                "partial": self._states[self._current].copy(), "margin": self._margin.copy(),
                "pending": None if self._pending is None else self._pending.copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`'s answer (of a stream of the same layer and batch)."""
        g, p = self.geometry, self.params
        expected = {"partial": (self.batch, p.out_channels, g.carried), "margin": (self.batch, p.out_channels, g.pad)}
        if state.get("batch") != self.batch:
            raise ValueError(f"{OP}: a stream state of batch {state.get('batch')!r} cannot load into a stream of "
                             f"batch {self.batch}")
        for name, shape in expected.items():
            if np.shape(state[name]) != shape:
                raise ValueError(f"{OP}: stream state {name} must have shape {shape}, got {np.shape(state[name])}")
        self._current = 0
        self._states[0][...] = state["partial"]
        self._margin = np.array(state["margin"], self.dtype)
        self._pending = None if state["pending"] is None else np.array(state["pending"], self.dtype)
        self._frames, self._start, self._ended = int(state["frames"]), int(state["start"]), bool(state["ended"])

    def reset(self, rows: Any = None) -> None:
        """Start again: every row (``rows`` None), or only the rows listed, which needs a stream whose
        pushes return ``stride`` samples per input sample (:attr:`StreamGeometry.per_row`)."""
        if rows is None:
            for s in self._states:
                s.fill(0)
            self._frames, self._start, self._ended = 0, 0, False
            self._pending: np.ndarray | None = None
            self._margin = np.zeros((self.batch, self.params.out_channels, self.geometry.pad), self.dtype)
            return
        if not self.geometry.per_row:
            raise ValueError(f"{OP}: rows of this stream cannot restart one by one: its output starts "
                             f"{self.geometry.left} samples into the signal or holds {self.geometry.hold} back "
                             f"(padding={self.params.padding}, padding_mode={self.params.padding_mode!r}); "
                             "reset() every row instead")
        self._states[self._current][_rows(rows, self.batch)] = 0

    def push(self, x: Any, out: np.ndarray | None = None) -> Any:
        """The output samples that ``x`` (batch, in_channels, T), or (in_channels, T) for a batch of 1,
        makes final. With ``out`` (a NumPy array of the shape the push returns), the output is
        written there and ``out`` returned."""
        if self._ended:
            raise ValueError(f"{OP}: this stream was flushed; reset() starts it again")
        kind = Output.like(x)
        xb, unbatched = self._checked_input(x, kind)
        weights, bias = self._weights()
        # Once the cropped start has passed, a zeros-mode stream that holds nothing back hands the
        # kernel's output over as it is (every push of a layer whose padding is at most its overlap).
        through = self._start >= self.geometry.left and self._pending is None and self.geometry.per_row_after_start
        direct = out if through and out is not None and _fits(out, self._push_shape(xb), self.dtype) else None
        y = self._run(xb, weights, direct)
        self._frames += xb.shape[2]
        if through:
            self._start = self._frames * self.geometry.stride
        else:
            y = self._release(y, bias)
        return self._hand_back(y, out, kind, unbatched)

    def flush(self) -> Any:
        """The rest of the output (the partial sums, the output padding, the folds of the right margin)
        and the end of the stream. Raises ValueError when the whole signal pushed is too short for the
        layer, as the layer itself would."""
        if self._ended:
            raise ValueError(f"{OP}: this stream was flushed already; reset() starts it again")
        if self._frames == 0:
            raise ValueError(f"{OP}: nothing was pushed: push at least {self.params.min_length} input samples first")
        # The layer's own refusals of the whole signal (too short, reflect's padding); not its index limits,
        # which bound one call's tensors and a stream never holds the whole signal.
        self.params.output_length(self._frames)
        _, bias = self._weights()
        g = self.geometry
        seq = self._tail(bias, g.end(self._frames) + g.pad)
        y = self._emit(seq, g.end(self._frames), bias, right=True)
        self._ended = True
        return self._hand_back(y, None, *self._flush_as)

    # -- the kernel ---------------------------------------------------------------------------------
    def _checked_input(self, x: Any, kind: Output) -> tuple[np.ndarray, bool]:
        arr = as_array(x, "input")
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{OP}: a stream runs on the CPU and takes host arrays, got input of type {type(x).__name__}")
        unbatched = arr.ndim == 2 and self.batch == 1
        xb = arr[None] if unbatched else arr
        p = self.params
        if xb.ndim != 3 or xb.shape[:2] != (self.batch, p.in_channels) or xb.shape[2] < 1:
            raise ValueError(f"{OP}: a stream of batch {self.batch} takes chunks of shape ({self.batch}, "
                             f"{p.in_channels}, T) with T >= 1, got input.shape={tuple(arr.shape)}")
        check_array_dtype(xb, "input", self.dtype)
        # The flush hands back what the pushes did: their kind of array, batched or not.
        self._flush_as = (kind, unbatched)
        return xb, unbatched

    def _push_shape(self, xb: np.ndarray) -> tuple[int, int, int]:
        return (self.batch, self.params.out_channels, xb.shape[2] * self.geometry.stride)

    def _run(self, xb: np.ndarray, weights: list[tvm.runtime.Tensor], out: np.ndarray | None) -> np.ndarray:
        """The chunk's final samples from the kernel, the partial sums carried in its state buffers."""
        name, _ = self._kernel.shape_for(self.batch, xb.shape[2])
        y = out if out is not None else output_empty(self._push_shape(xb), self.dtype)
        states = ([self._state_tensors[self._current], self._state_tensors[1 - self._current]]
                  if self.geometry.carried else [])
        args = [self._kernel.to_device(xb, "input"), *weights, *states[:1], tvm.runtime.from_dlpack(y), *states[1:]]
        self._kernel._invoke(name, *args)
        if states:
            self._current = 1 - self._current
        return y

    # -- what a push or the flush hands back ----------------------------------------------------------
    def _release(self, y: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """The final samples of a push that the end cannot change; the rest stays pending."""
        seq = y if self._pending is None else np.concatenate([self._pending, y], axis=2)
        end = max(self._frames * self.geometry.stride - self.geometry.hold, self._start)
        return self._emit(seq, end, bias, right=False)

    def _tail(self, bias: np.ndarray | None, full_end: int) -> np.ndarray:
        """Pending samples, then the partial sums, then zeros, to position ``full_end`` (bias added
        to what the kernel did not add it to, in zeros mode)."""
        g = self.geometry
        known = self._frames * g.stride
        tail = np.zeros((self.batch, self.params.out_channels, max(full_end - known, 0)), self.dtype)
        carried = min(g.carried, tail.shape[2])
        tail[:, :, :carried] = self._states[self._current][:, :, :carried]
        if g.mode == "zeros" and bias is not None:
            tail += bias[None, :, None]
        parts = ([self._pending] if self._pending is not None else []) + [tail]
        seq = np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]
        return seq[:, :, :full_end - self._start]

    def _emit(self, seq: np.ndarray, end: int, bias: np.ndarray | None, right: bool) -> np.ndarray:
        """Output positions from the pending start to ``end`` of ``seq`` (which starts at the pending
        start): the cropped start dropped (kept as the left margin in the fold modes), the folds and
        the bias applied there; the stream's start moves to ``end``."""
        g, start = self.geometry, self._start
        lo = max(start, g.left)
        if g.pad and start < g.pad:
            upto = min(end, g.pad)
            self._margin[:, :, start:upto] = seq[:, :, :upto - start]
        values = np.array(seq[:, :, lo - start:max(end, lo) - start], order="C")
        if g.pad:
            self._fold(values, lo - g.left, seq[:, :, end - start:] if right else None)
            if bias is not None:
                values += bias[None, :, None]
        rest = seq.shape[2] - (end - start)
        self._pending = seq[:, :, end - start:] if rest and not right else None
        self._start = end
        return values

    def _fold(self, values: np.ndarray, first: int, right_margin: np.ndarray | None) -> None:
        """Add the margins folded onto output samples ``first ..`` (``values``, in place): the left one
        always, the right one (``right_margin``, the last ``pad`` positions) at the flush."""
        g, n = self.geometry, values.shape[2]
        pad = g.pad
        out_length = first + n if right_margin is not None else None
        if g.mode == "replicate":
            if first == 0 and n:
                values[:, :, 0] += self._margin.sum(axis=2)
            if out_length is not None:
                values[:, :, n - 1] += right_margin.sum(axis=2)
            return
        for l in range(max(first, 1), min(first + n, pad + 1)):  # reflect: l in [1, pad] reads margin[pad - l]
            values[:, :, l - first] += self._margin[:, :, pad - l]
        if out_length is not None:
            for l in range(max(first, out_length - 1 - pad), out_length - 1):
                values[:, :, l - first] += right_margin[:, :, out_length - 2 - l]

    def _hand_back(self, y: np.ndarray, out: np.ndarray | None, kind: Output, unbatched: bool) -> Any:
        if out is not None:
            if out is not y:
                if not _fits(out, y.shape, self.dtype):
                    raise ValueError(f"{OP}: out must be a writable C-contiguous {self.dtype} array of shape "
                                     f"{y.shape}, got {_describe(out)}")
                np.copyto(out, y)
            return out[0] if unbatched else out
        y = kind.from_host(y)
        return y[0] if unbatched else y


def _fits(out: Any, shape: tuple[int, ...], dtype: str) -> bool:
    """Whether the kernel can write into ``out`` as it is."""
    return (isinstance(out, np.ndarray) and out.shape == tuple(shape) and out.dtype == numpy_dtype(dtype)
            and out.flags.c_contiguous and out.flags.writeable and shareable(out))


def _describe(out: Any) -> str:
    if not isinstance(out, np.ndarray):
        return f"out of type {type(out).__name__}"
    return f"out.shape={out.shape}, dtype={out.dtype}, C-contiguous={out.flags.c_contiguous}"


def _rows(rows: Any, batch: int) -> Any:
    """``rows`` as an index of the batch rows: ints from 0 to batch - 1."""
    listed = [rows] if isinstance(rows, numbers.Integral) and not isinstance(rows, bool) else list(rows)
    for r in listed:
        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or not 0 <= r < batch:
            raise ValueError(f"{OP}: rows must be batch rows from 0 to {batch - 1}, got rows={rows!r}")
    return np.asarray(listed, dtype=np.intp)


def stream_kernel(params: ConvTranspose1dParams, dtype: str, target: TargetLike,
                  logs: Any = None) -> CompiledConvTranspose1d:
    """The compiled kernel of the layer's streams (cached like the layer's modules)."""
    check_stream_target(target)
    workload = SymbolicWorkload(params.stream_params(), dtype, stream=True)
    return _MODULES.get(workload, target, logs, prepack_weight=True)


def check_stream_target(target: TargetLike) -> None:
    """Streams run on CPU targets (their Python side holds host arrays)."""
    kind = resolve_target(target).kind.name
    if kind != "llvm":
        raise ValueError(f"{OP}: streams run on CPU targets, got target kind {kind!r}")


def check_batch_size(batch: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"{OP}: a stream's batch must be a positive int, got batch={batch!r}")
    return int(batch)


def open_stream(params: ConvTranspose1dParams, dtype: str, target: TargetLike,
                weights: Callable[[CompiledConvTranspose1d], WeightSource], *, batch: int = 1,
                causal: bool = False, trim_right_ratio: float = 1.0, logs: Any = None) -> ConvTranspose1dStream:
    """A stream of the layer ``params``; ``weights(kernel)`` makes its :data:`WeightSource`."""
    batch = check_batch_size(batch)
    if not isinstance(causal, bool):
        raise TypeError(f"{OP}: causal must be a bool, got causal={causal!r}")
    geometry = StreamGeometry.of(params, causal, trim_right_ratio)
    kernel = stream_kernel(params, dtype, target, logs)
    return ConvTranspose1dStream(params, kernel, weights(kernel), batch, geometry)


def fixed_weights(weight: Any, bias: Any) -> Callable[[CompiledConvTranspose1d], WeightSource]:
    """A :data:`WeightSource` maker for weights given once: prepared for the kernel when the stream opens."""

    def make(kernel: CompiledConvTranspose1d) -> WeightSource:
        in_kernel = kernel.params.bias
        prepared = kernel.prepare_weights(weight, bias if in_kernel else None)
        kept = None if bias is None else np.array(as_array(bias, "bias"))
        return lambda: (prepared, kept)

    return make


def stream(
    weight: Any,
    bias: Any = None,
    stride: int | tuple[int] = 1,
    padding: int | tuple[int] = 0,
    output_padding: int | tuple[int] = 0,
    groups: int = 1,
    dilation: int | tuple[int] = 1,
    padding_mode: str = "zeros",
    *,
    batch: int = 1,
    causal: bool = False,
    trim_right_ratio: float = 1.0,
    target: TargetLike = "llvm",
    logs: Any = None,
) -> ConvTranspose1dStream:
    """A stream of :func:`tvm_convt.conv_transpose1d` with these weights and parameters over ``batch``
    rows (:class:`ConvTranspose1dStream`). The weights are read once, here; the dtype is theirs."""
    from .layer import _function_params  # the function's own reading of its parameters

    weight = as_array(weight, "weight")
    if not isinstance(weight, np.ndarray) or weight.ndim != 3:
        raise ValueError(f"{OP}: weight must be a 3-D host array (in_channels, out_channels/groups, kernel_size), "
                         f"got {type(weight).__name__} of shape {tuple(getattr(weight, 'shape', ()))}")
    params = _function_params(tuple(weight.shape), stride, padding, output_padding, groups, bias is not None,
                              dilation, padding_mode)
    dtype = str(weight.dtype)
    check_array(weight, "weight", params.weight_shape, dtype)
    if bias is not None:
        check_array(as_array(bias, "bias"), "bias", (params.out_channels,), dtype)
    return open_stream(params, dtype, target, fixed_weights(weight, bias), batch=batch, causal=causal,
                       trim_right_ratio=trim_right_ratio, logs=logs)
