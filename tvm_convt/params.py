"""The operator's parameters: one frozen dataclass, validated once.

Every other module (compute, reference, build, runtime, CLI) takes a
:class:`ConvTranspose1dParams` and, where static shapes are needed, a
:class:`Workload` that adds batch, input length and dtype.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

OP = "conv_transpose1d"
# The function of a compiled module that packs the weight for its ``main``, when it has one
# (:meth:`ConvTranspose1dParams.packed_weight_shape`).
PACK_WEIGHT = "pack_weight"

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")
DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")
# The half-precision dtypes: stored in 16 bits, accumulated in float32 (col, the gather,
# the folds), cast back once at the output. CUDA only: no CPU rule is written for them.
ACCUMULATOR: dict[str, str] = {"float16": "float32", "bfloat16": "float32"}
CUDA_ONLY_DTYPES: tuple[str, ...] = tuple(ACCUMULATOR)

# TVM indexes buffers with 32-bit integers: every tensor of the compute, and every
# index into one, must stay below this.
INDEX_LIMIT = 2**31
# TVM's buffers assume their data starts on this many bytes (its allocations' alignment); from_dlpack
# checks it unless told otherwise.
DATA_ALIGNMENT = 64
# Sizes are C int64 in TVM and in the DLPack shapes that carry them.
SIZE_LIMIT = 2**63


def _size(name: str, value: Any) -> int:
    """Accept an int or a 1-tuple/list holding one int, as PyTorch's ``_single``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(
                f"{OP}: {name} must be an int or a 1-tuple for a 1-D convolution, "
                f"got {name}={tuple(value)!r}"
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{OP}: {name} must be an int, got {name}={value!r} ({type(value).__name__})")
    value = int(value)
    if not -SIZE_LIMIT <= value < SIZE_LIMIT:
        raise ValueError(f"{OP}: {name} must fit in a 64-bit integer, got {name}={value}")
    return value


SPLIT_HINT = "; split the batch or the input's length into smaller calls"


def within_index_range(count: int) -> bool:
    """Whether a tensor or index span of ``count`` elements is reachable by 32-bit indices."""
    return count < INDEX_LIMIT


def check_index_range(what: str, count: int, sizes: str, hint: str = "") -> None:
    """Refuse a tensor or index span of ``count`` elements that 32-bit indices cannot reach."""
    if not within_index_range(count):
        raise ValueError(
            f"{OP}: {what} must have fewer than 2**31 elements for TVM's 32-bit indices, "
            f"got {count} elements ({sizes}){hint}")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{OP}: {name} must be positive, got {name}={value}")


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{OP}: {name} must be non-negative, got {name}={value}")


def check_dtype(dtype: Any) -> str:
    """Return the canonical dtype name, or raise for anything but :data:`DTYPES`.

    Accepts names, NumPy dtypes and scalar types (``np.float32``, ``ml_dtypes.bfloat16``)
    and torch dtypes (``torch.bfloat16``).
    """
    if dtype is None:  # NumPy reads None as float64, PyTorch as its default float32
        raise TypeError(f"{OP}: dtype must be one of {', '.join(DTYPES)}, got dtype=None")
    if isinstance(dtype, str) or str(dtype).startswith("torch."):
        # Names are taken literally: NumPy would read "float" as float64, torch as float32.
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in DTYPES:
        raise TypeError(f"{OP}: dtype must be one of {', '.join(DTYPES)}, got dtype={name!r}")
    return name


def check_dtype_for_target(dtype: str, kind: str) -> None:
    """Refuse a half-precision dtype on a target kind other than CUDA (``kind`` as TVM names it)."""
    if dtype in CUDA_ONLY_DTYPES and kind != "cuda":
        raise ValueError(f"{OP}: dtype {dtype} needs a CUDA target, got dtype={dtype!r}, target={kind!r}")


@functools.lru_cache(maxsize=16)
def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype of ``dtype`` (one of :data:`DTYPES`): bfloat16 is ``ml_dtypes.bfloat16``,
    which NumPy knows by name only once ml_dtypes (a dependency of TVM) is imported. Cached: every
    call of a module reads it, and ``np.dtype`` of a name costs a microsecond."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def itemsize(dtype: str) -> int:
    """Bytes an element of ``dtype`` (one of :data:`DTYPES`)."""
    return numpy_dtype(dtype).itemsize


@dataclass(frozen=True)
class ConvTranspose1dParams:
    """Parameters of a transposed 1-D convolution, with PyTorch's semantics.

    Shapes, in words: the input is (batch, in_channels, length) or, unbatched,
    (in_channels, length); the weight is (in_channels, out_channels / groups,
    kernel_size); the bias is (out_channels,); the output is
    (batch, out_channels, output length), where::

        L_out = (L_in - 1) * stride - 2 * padding + dilation * (kernel_size - 1)
                + output_padding + 1

    ``padding_mode`` other than ``"zeros"`` is defined as the adjoint of
    ``F.conv1d(F.pad(z, (padding, padding), mode), ...)`` with respect to ``z``:
    the output of the zero-padding transposed convolution with ``padding=0`` has
    its two ``padding``-wide margins folded back onto the output (circular:
    wrap-add; reflect: mirror-add around the edge sample; replicate: add into
    the edge sample).

    Sizes may be given as ints or 1-tuples; they are stored as ints.
    """

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    groups: int = 1
    bias: bool = True
    dilation: int = 1
    padding_mode: PaddingMode = "zeros"

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "output_padding", "groups", "dilation"):
            object.__setattr__(self, name, _size(name, getattr(self, name)))
        if not isinstance(self.bias, (bool, numbers.Integral)) or self.bias not in (0, 1):
            raise TypeError(f"{OP}: bias must be a bool, got bias={self.bias!r}")
        object.__setattr__(self, "bias", bool(self.bias))
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "groups", "dilation"):
            _positive(name, getattr(self, name))
        _non_negative("padding", self.padding)
        _non_negative("output_padding", self.output_padding)
        if self.in_channels % self.groups:
            raise ValueError(
                f"{OP}: in_channels must be divisible by groups, "
                f"got in_channels={self.in_channels}, groups={self.groups}"
            )
        if self.out_channels % self.groups:
            raise ValueError(
                f"{OP}: out_channels must be divisible by groups, "
                f"got out_channels={self.out_channels}, groups={self.groups}"
            )
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(
                f"{OP}: padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, "
                f"got padding_mode={self.padding_mode!r}"
            )
        if self.padding_mode == "zeros":
            if self.output_padding >= self.stride and self.output_padding >= self.dilation:
                raise ValueError(
                    f"{OP}: output_padding must be smaller than stride or dilation, "
                    f"got output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation}"
                )
        elif self.output_padding >= self.stride:
            # Beyond stride, the extra samples are not in the adjoint's range: the
            # padded Conv1d input would need more than one extra sample per stride.
            raise ValueError(
                f"{OP}: output_padding must be smaller than stride for "
                f"padding_mode={self.padding_mode!r}, got output_padding={self.output_padding}, "
                f"stride={self.stride}"
            )
        sizes = (f"in_channels={self.in_channels}, out_channels/groups={self.out_per_group}, "
                 f"kernel_size={self.kernel_size}")
        check_index_range("the weight", self.in_channels * self.out_per_group * self.kernel_size, sizes)
        check_index_range("the kernel's span dilation*(kernel_size-1)+1",
                          self.dilation * (self.kernel_size - 1) + 1,
                          f"dilation={self.dilation}, kernel_size={self.kernel_size}")

    @staticmethod
    def check_positive_size(name: str, value: Any) -> int:
        """Validate one size argument on its own (an int or 1-tuple, positive)."""
        size = _size(name, value)
        _positive(name, size)
        return size

    # -- derived sizes -------------------------------------------------------------
    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def weight_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.out_per_group, self.kernel_size)

    def packed_weight_shape(self, block: int) -> tuple[int, int, int, int]:
        """The weight packed by column blocks of ``block``: (groups, out_channels/groups *
        kernel_size / ``block``, in_channels/groups, ``block``). Element ``[g, b, c, i]`` is
        ``weight[g*Cig + c, o, k]`` with ``o*K + k = b*block + i``, so that a column block of
        every input channel is one contiguous run (``block`` divides out_channels/groups * K)."""
        m_total = self.out_per_group * self.kernel_size
        assert block > 0 and m_total % block == 0, (m_total, block)
        return (self.groups, m_total // block, self.in_per_group, block)

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        return (self.out_channels,) if self.bias else None

    def output_length_of(self, length: Any) -> Any:
        """L_out for ``length`` input samples, unchecked: ``length`` may be an int or a TVM
        expression (a symbolic length), and the result is of the same kind."""
        return ((length - 1) * self.stride - 2 * self.padding
                + self.dilation * (self.kernel_size - 1) + self.output_padding + 1)

    def phase_range_of(self, out_length: Any) -> tuple[Any, Any]:
        """``(q_first, n_q)`` for an output of ``out_length`` samples (an int or a TVM expression):
        the gather covers output positions ``u = q*stride + r`` with ``q_first <= q < q_first +
        n_q``: the cropped range for zeros mode, the whole padding-free output (padding included)
        for the others."""
        if self.padding_mode == "zeros":
            u_first, u_end = self.padding, self.padding + out_length
        else:
            u_first, u_end = 0, out_length + 2 * self.padding
        q_first = u_first // self.stride
        return q_first, -(-u_end // self.stride) - q_first

    def output_length(self, length: int) -> int:
        """Output length for an input of ``length`` samples; raises when it is below 1."""
        length = _size("length", length)
        _positive("length", length)
        out = self.output_length_of(length)
        if out < 1:
            raise ValueError(
                f"{OP}: output length must be at least 1, got L_out={out} for L_in={length}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"kernel_size={self.kernel_size}, output_padding={self.output_padding}"
            )
        if self.padding_mode == "reflect" and self.padding >= out:
            raise ValueError(
                f"{OP}: padding_mode='reflect' needs padding smaller than the output length, "
                f"got padding={self.padding}, L_out={out}"
            )
        if self.padding_mode == "circular" and self.padding > out:
            raise ValueError(
                f"{OP}: padding_mode='circular' needs padding at most the output length, "
                f"got padding={self.padding}, L_out={out}"
            )
        return out

    @property
    def min_length(self) -> int:
        """The shortest input this layer takes: L_out must be at least 1 (and, for reflect,
        above the padding; for circular, at least the padding)."""
        need = {"reflect": self.padding + 1, "circular": max(1, self.padding)}.get(self.padding_mode, 1)
        base = self.output_length_of(1)
        return 1 + max(0, -(-(need - base) // self.stride))

    def output_padding_for(self, length: int, output_size: int) -> int:
        """Resolve ``output_padding`` from a requested output length, as PyTorch does."""
        size = _size("output_size", output_size)
        min_size = ((length - 1) * self.stride - 2 * self.padding
                    + self.dilation * (self.kernel_size - 1) + 1)
        max_size = min_size + self.stride - 1
        if not min_size <= size <= max_size:
            raise ValueError(
                f"{OP}: requested an output size of {size}, but valid sizes range from "
                f"{min_size} to {max_size} (for an input of {length})"
            )
        return size - min_size

    def with_output_padding(self, output_padding: int) -> ConvTranspose1dParams:
        return ConvTranspose1dParams(**{**self.to_dict(), "output_padding": output_padding})

    @property
    def overlap(self) -> int:
        """How far the padding-free output of one input sample reaches past its ``stride`` own
        samples: ``dilation * (kernel_size - 1) + 1 - stride`` (negative when the taps leave gaps).
        A stream carries this many partial sums per channel from one chunk to the next."""
        return self.dilation * (self.kernel_size - 1) + 1 - self.stride

    def stream_params(self) -> ConvTranspose1dParams:
        """The parameters a stream's kernel computes a chunk with: no padding (the stream crops and
        folds the whole signal's ends itself), zeros mode, and the output padding that makes a chunk of
        T samples give at least ``T * stride`` outputs. The bias is added in the kernel in zeros mode
        only (or without padding): the other modes fold margins that must not carry it."""
        return ConvTranspose1dParams(**{**self.to_dict(), "padding": 0, "output_padding": max(0, -self.overlap),
                                        "padding_mode": "zeros", "bias": self.bias and not self.folds_margins})

    @property
    def folds_margins(self) -> bool:
        """Whether the padding's margins fold back onto the output (a mode other than zeros, with padding)."""
        return self.padding_mode != "zeros" and self.padding > 0

    @property
    def macs_per_sample(self) -> int:
        """Useful multiply-adds per input sample position and batch element."""
        return self.in_channels * self.out_per_group * self.kernel_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvTranspose1dParams:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{OP}: parameters must be fields of {cls.__name__}, got unknown {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Workload:
    """A parameter set with static shapes: what one compiled module computes.

    ``batch`` is the leading dimension of the input (an unbatched call is run
    as batch 1), ``length`` the input length L_in.
    """

    params: ConvTranspose1dParams
    batch: int
    length: int
    dtype: str = "float32"
    symbolic = False
    stream = False  # a stream's kernel is a SymbolicWorkload

    def __post_init__(self) -> None:
        if not isinstance(self.params, ConvTranspose1dParams):
            raise TypeError(f"{OP}: params must be a ConvTranspose1dParams, got params={self.params!r} "
                            f"({type(self.params).__name__})")
        object.__setattr__(self, "batch", _size("batch", self.batch))
        _positive("batch", self.batch)
        object.__setattr__(self, "length", _size("length", self.length))
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        self.params.output_length(self.length)  # validates the length and the padding limits
        self._check_index_ranges()

    def _check_index_ranges(self) -> None:
        p = self.params
        shape = f"batch={self.batch}, L_in={self.length}"
        check_index_range("the input", self.batch * p.in_channels * self.length,
                          f"{shape}, in_channels={p.in_channels}", SPLIT_HINT)
        check_index_range("col (batch x L_in x out_channels x kernel_size)",
                          self.batch * self.length * p.out_channels * p.kernel_size,
                          f"{shape}, out_channels={p.out_channels}, kernel_size={p.kernel_size}", SPLIT_HINT)
        q_first, n_q = self.phase_range
        check_index_range("the gathered output (batch x out_channels x stride x positions)",
                          self.batch * p.out_channels * p.stride * n_q,
                          f"{shape}, out_channels={p.out_channels}, stride={p.stride}")
        check_index_range("the output before cropping, (L_in - 1)*stride + dilation*(kernel_size - 1)",
                          (q_first + n_q) * p.stride + p.dilation * (p.kernel_size - 1),
                          f"L_in={self.length}, stride={p.stride}, padding={p.padding}")
        check_index_range("the output", self.batch * p.out_channels * self.out_length,
                          f"{shape}, out_channels={p.out_channels}, L_out={self.out_length}", SPLIT_HINT)

    @property
    def phase_range(self) -> tuple[int, int]:
        """``(q_first, n_q)`` of :meth:`ConvTranspose1dParams.phase_range_of` for this output."""
        return self.params.phase_range_of(self.out_length)

    @property
    def out_length(self) -> int:
        return self.params.output_length(self.length)

    @property
    def accumulator(self) -> str:
        """The dtype of ``col``, the gather and the folds: float32 for the half dtypes."""
        return ACCUMULATOR.get(self.dtype, self.dtype)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.params.in_channels, self.length)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.params.out_channels, self.out_length)

    @property
    def working_set_bytes(self) -> int:
        """Bytes of every tensor one call touches: input, weight, bias, ``col``, the gather, output
        (``col`` and the gather in the accumulator dtype)."""
        p = self.params
        _, n_q = self.phase_range
        stored = (self.batch * p.in_channels * self.length + math.prod(p.weight_shape) + p.out_channels
                  + self.batch * p.out_channels * self.out_length)
        accumulated = (self.batch * self.length * p.out_channels * p.kernel_size
                       + self.batch * p.out_channels * p.stride * n_q)
        return stored * itemsize(self.dtype) + accumulated * itemsize(self.accumulator)

    @property
    def flops(self) -> int:
        """Useful floating-point operations (2 per multiply-add), bias not counted."""
        return 2 * self.batch * self.length * self.params.macs_per_sample

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params.to_dict(), "batch": self.batch,
                "length": self.length, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workload:
        return cls(ConvTranspose1dParams.from_dict(d["params"]), d["batch"], d["length"], d["dtype"])


@dataclass(frozen=True)
class SymbolicWorkload:
    """A parameter set and dtype with any batch and any input length: what one symbolic module
    computes. :meth:`at` gives the static :class:`Workload` of one call, whose checks (output
    length, 32-bit index ranges) every call passes before it runs."""

    params: ConvTranspose1dParams
    dtype: str = "float32"
    # A stream's kernel (:meth:`ConvTranspose1dParams.stream_params`): it also takes the partial sums
    # the chunk before left and returns the chunk's ``L_in * stride`` final outputs and its own.
    stream: bool = False
    batch = None
    length = None
    symbolic = True

    def __post_init__(self) -> None:
        if not isinstance(self.params, ConvTranspose1dParams):
            raise TypeError(f"{OP}: params must be a ConvTranspose1dParams, got params={self.params!r} "
                            f"({type(self.params).__name__})")
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        if type(self.stream) is not bool:
            raise TypeError(f"{OP}: stream must be a bool, got stream={self.stream!r}")
        if self.stream and self.params.stream_params() != self.params:
            raise ValueError(f"{OP}: a stream's workload takes the layer's stream_params(), got {self.params}")

    def at(self, batch: int, length: int) -> Workload:
        """The static workload of a call with ``batch`` rows of ``length`` samples."""
        return Workload(self.params, batch, length, self.dtype)

    @property
    def accumulator(self) -> str:
        return ACCUMULATOR.get(self.dtype, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        d = {"params": self.params.to_dict(), "batch": None, "length": None, "dtype": self.dtype}
        return {**d, "stream": True} if self.stream else d


def workload_from_dict(d: dict[str, Any]) -> Workload | SymbolicWorkload:
    """A :class:`Workload`, or a :class:`SymbolicWorkload` where batch and length are null."""
    if d.get("batch") is None and d.get("length") is None:
        return SymbolicWorkload(ConvTranspose1dParams.from_dict(d["params"]), d["dtype"], d.get("stream", False))
    return Workload.from_dict(d)
