"""The runtime: a wrapper class around one compiled module, a layer, and a function.

- :class:`CompiledConvTranspose1d` wraps one library for one static workload:
  it validates inputs against the module's metadata, runs it, and exports or
  loads it with its ``.json`` sidecar.
- :class:`ConvTranspose1d` is the layer, with PyTorch's constructor, weight
  initialisation and ``output_size``; it compiles (or finds in the cache) one
  module per input shape.
- :func:`conv_transpose1d` is the functional form of ``F.conv_transpose1d``.
"""

from __future__ import annotations

import math
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from .build import (ModuleMetadata, build_library, copy_library, discard, load_library, read_library,
                    read_sidecar)
from .errors import ModuleFileError
from .params import OP, ConvTranspose1dParams, Workload, check_dtype
from .target import TargetLike, device_of, resolve_target


def as_array(value: Any, name: str) -> np.ndarray:
    """Accept a NumPy array or any DLPack-capable CPU tensor (torch, JAX, CuPy on host)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__dlpack__"):
        if getattr(value, "requires_grad", False):
            value = value.detach()
        try:
            return np.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError) as err:
            raise TypeError(f"{OP}: {name} must be a NumPy array or a CPU tensor with DLPack, "
                            f"could not import {type(value).__name__}: {err}") from None
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise TypeError(f"{OP}: {name} must be a NumPy array or a DLPack-capable tensor, "
                    f"got {type(value).__name__}")


# TVM imports host memory through DLPack only at this alignment (its allocations' own).
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: str | np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous NumPy array whose data starts on an ``ALIGNMENT`` boundary."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned_copy(arr: np.ndarray) -> np.ndarray:
    out = aligned_empty(arr.shape, arr.dtype)
    np.copyto(out, arr)
    return out


def _shareable(arr: np.ndarray) -> bool:
    """Whether TVM can use ``arr``'s memory as it is (DLPack does not export read-only arrays)."""
    return arr.flags.c_contiguous and arr.flags.writeable and arr.ctypes.data % ALIGNMENT == 0


def _check_array_dtype(arr: np.ndarray, name: str, dtype: str) -> None:
    if arr.dtype != np.dtype(dtype):
        raise TypeError(f"{OP}: {name} must have dtype {dtype}, got {name}.dtype={arr.dtype}")


def _check_array(arr: np.ndarray, name: str, shape: tuple[int, ...], dtype: str) -> None:
    _check_array_dtype(arr, name, dtype)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{OP}: {name} must have shape {tuple(shape)}, got {name}.shape={tuple(arr.shape)}")


class CompiledConvTranspose1d:
    """One compiled module for one workload (parameters, batch, input length, dtype, target).

    Call it as ``compiled(x, weight, bias=None)`` with ``x`` of shape (batch,
    in_channels, L_in), or (in_channels, L_in) when batch is 1; it returns the
    output as a NumPy array of shape (batch, out_channels, L_out), unbatched when
    ``x`` was. Every argument is checked against the module's metadata first.
    """

    def __init__(self, library: str | Path, metadata: ModuleMetadata | None = None) -> None:
        self.library = Path(library)
        described, self.digest = read_sidecar(self.library)
        self.metadata = metadata if metadata is not None else described
        self.target = resolve_target(self.metadata.target)
        self.device = device_of(self.target)
        self._func: Any = None  # loaded on first use: a CUDA module exports without a GPU

    @property
    def func(self) -> Any:
        """The module's ``main`` function, loaded on first use from the bytes its sidecar
        vouches for (:class:`ModuleFileError` when they do not match or do not load)."""
        if self._func is None:
            self._require_device()
            self._func = load_library(self.library, self.digest)["main"]
        return self._func

    def _require_device(self) -> None:
        if not self.device.exist:
            raise RuntimeError(
                f"{OP}: this module targets {self.metadata.target_key} and needs a "
                f"{self.device} device to run, which this machine does not have; "
                "it can still be exported")

    # -- metadata ---------------------------------------------------------------------
    @property
    def workload(self) -> Workload:
        return self.metadata.workload

    @property
    def params(self) -> ConvTranspose1dParams:
        return self.metadata.workload.params

    def __repr__(self) -> str:
        w = self.workload
        return (f"CompiledConvTranspose1d({w.params}, batch={w.batch}, length={w.length}, "
                f"dtype={w.dtype!r}, target={self.metadata.target_key!r}, "
                f"schedule={self.metadata.schedule!r})")

    # -- running ------------------------------------------------------------------------
    def to_device(self, arr: np.ndarray) -> tvm.runtime.Tensor:
        """``arr`` as a tensor on the module's device. On the CPU an aligned C-contiguous
        array is shared, not copied: later in-place changes to it are seen by the module."""
        self._require_device()
        if self.device.dlpack_device_type() != tvm.cpu(0).dlpack_device_type():
            return tvm.runtime.tensor(np.ascontiguousarray(arr), self.device)
        return tvm.runtime.from_dlpack(arr if _shareable(arr) else aligned_copy(arr))

    def check_weights(self, weight: Any, bias: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        p, dtype = self.params, self.workload.dtype
        weight = as_array(weight, "weight")
        _check_array(weight, "weight", p.weight_shape, dtype)
        if p.bias:
            if bias is None:
                raise ValueError(f"{OP}: this module was compiled with bias=True, got bias=None")
            bias = as_array(bias, "bias")
            _check_array(bias, "bias", (p.out_channels,), dtype)
        elif bias is not None:
            raise ValueError(f"{OP}: this module was compiled with bias=False, got a bias")
        return weight, bias

    def run(self, x: tvm.runtime.Tensor, weights: list[tvm.runtime.Tensor]) -> np.ndarray:
        """Run on device tensors already checked: ``x`` batched, ``weights`` = [weight(, bias)];
        return the output as a NumPy array (written in place on the CPU, copied back otherwise)."""
        w = self.workload
        if self.device.dlpack_device_type() == tvm.cpu(0).dlpack_device_type():
            y = aligned_empty(w.output_shape, w.dtype)
            self.func(x, *weights, tvm.runtime.from_dlpack(y))
            return y
        y_dev = tvm.runtime.empty(w.output_shape, w.dtype, self.device)
        self.func(x, *weights, y_dev)
        return y_dev.numpy()

    def check_input(self, x: Any) -> tuple[np.ndarray, bool]:
        """Return ``x`` as a batched array and whether it came unbatched."""
        w = self.workload
        x = as_array(x, "input")
        _check_rank(x)
        unbatched = x.ndim == 2
        if unbatched and w.batch != 1:
            raise ValueError(f"{OP}: this module was compiled for batch {w.batch}; an unbatched "
                             f"input needs batch 1, got input.shape={tuple(x.shape)}")
        xb = x[None] if unbatched else x
        _check_array(xb, "input", w.input_shape, w.dtype)
        return xb, unbatched

    def __call__(self, x: Any, weight: Any, bias: Any = None) -> np.ndarray:
        xb, unbatched = self.check_input(x)
        weight, bias = self.check_weights(weight, bias)
        weights = [self.to_device(weight)] + ([self.to_device(bias)] if bias is not None else [])
        y = self.run(self.to_device(xb), weights)
        return y[0] if unbatched else y

    # -- files ----------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the library to ``path`` (``.so``) and its metadata to the ``.json`` beside it."""
        path = Path(path)
        if path.suffix != ".so":
            raise ValueError(f"{OP}: export path must end in .so, got {str(path)!r}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{OP}: export folder {path.parent} does not exist")
        copy_library(read_library(self.library, self.digest), self.metadata, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CompiledConvTranspose1d:
        """Load a library written by :meth:`export` (or the cache) with its sidecar.

        The library must match the size and SHA-256 its sidecar records, and the
        sidecar its own checksum; anything else raises :class:`ModuleFileError`
        before the library is mapped.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{OP}: no compiled module at {path}")
        compiled = cls(path)
        read_library(path, compiled.digest)
        return compiled


def compile(  # noqa: A001 - mirrors tvm.compile
    params: ConvTranspose1dParams,
    *,
    batch: int,
    length: int,
    dtype: str = "float32",
    target: TargetLike = "llvm",
    logs: str | Path | None = None,
    use_cache: bool = True,
    rule: str | None = None,
    tuned: bool = True,
) -> CompiledConvTranspose1d:
    """Compile the operator for one input shape (or take it from the cache).

    ``batch`` and ``length`` are the input's batch size and L_in. The schedule
    is the best tuned record for the target's hardware class in ``logs`` (default
    ``$TVM_CONVT_TUNING_LOGS``) or the shipped ``schedules/``, else the default
    schedule; ``metadata.schedule`` says which. ``rule`` forces a named default
    rule and ``tuned=False`` ignores tuning records.
    """
    workload = Workload(params, batch, length, dtype)

    def build() -> CompiledConvTranspose1d:
        library, metadata = build_library(workload, target=target, use_cache=use_cache, rule=rule,
                                          logs=logs, tuned=tuned)
        return CompiledConvTranspose1d(library, metadata)

    compiled = build()
    if not use_cache:  # the library's temporary folder lives as long as the object
        weakref.finalize(compiled, shutil.rmtree, compiled.library.parent, True)
    elif compiled.device.exist:
        try:  # a cache entry that verifies but does not load is rebuilt, not kept
            compiled.func
        except ModuleFileError as err:
            discard(compiled.library, str(err))
            compiled = build()
    return compiled


class _ModuleCache:
    """Compiled modules of this process, by workload and target."""

    def __init__(self) -> None:
        self._modules: dict[tuple[Workload, str, str], CompiledConvTranspose1d] = {}
        self._lock = threading.Lock()

    def get(self, workload: Workload, target: TargetLike,
            logs: str | Path | None = None) -> CompiledConvTranspose1d:
        key = (workload, repr(target), str(logs))
        with self._lock:
            found = self._modules.get(key)
        if found is None:
            found = compile(workload.params, batch=workload.batch, length=workload.length,
                            dtype=workload.dtype, target=target, logs=logs)
            with self._lock:
                found = self._modules.setdefault(key, found)
        return found


_MODULES = _ModuleCache()


def _check_rank(x: np.ndarray) -> None:
    if x.ndim not in (2, 3):
        raise ValueError(f"{OP}: expected a 2-D (unbatched) or 3-D (batched) input, "
                         f"got input.shape={tuple(x.shape)}")


def _check_channels(x: np.ndarray, weight_shape: tuple[int, ...], in_channels: int) -> None:
    """Rank, then channels, in PyTorch's words; before anything is compiled."""
    _check_rank(x)
    if x.shape[-2] != in_channels:
        raise ValueError(
            f"{OP}: given transposed=1, weight of size {list(weight_shape)}, expected "
            f"input{list(x.shape)} to have {in_channels} channels, but got {x.shape[-2]} channels instead"
        )


class ConvTranspose1d:
    """A transposed 1-D convolution layer with PyTorch's ``nn.ConvTranspose1d`` semantics.

    ``weight`` is (in_channels, out_channels/groups, kernel_size) and ``bias``
    (out_channels,), both NumPy arrays of ``dtype``, initialised from
    U(-sqrt(k), sqrt(k)) with k = groups / (out_channels * kernel_size), the
    bound PyTorch's default initialisation gives; ``seed`` makes them
    reproducible. Assign new arrays to ``.weight`` and ``.bias`` to load trained
    values; on a CPU target in-place edits take effect too, on a GPU target the
    arrays are read-only. ``logs`` is where to look for tuning records first (default
    ``$TVM_CONVT_TUNING_LOGS``). Calling the layer on (batch, in_channels, L_in) or (in_channels,
    L_in) returns (batch, out_channels, L_out) or (out_channels, L_out); see
    :class:`ConvTranspose1dParams` for L_out and the padding modes.
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
    ) -> None:
        self.params = ConvTranspose1dParams(in_channels, out_channels, kernel_size, stride, padding,
                                            output_padding, groups, bias, dilation, padding_mode)
        self.dtype = check_dtype(dtype)
        # A bad target is rejected now, not at the first call.
        self._host_weights = resolve_target(target).kind.name == "llvm"
        self.target = target
        self.logs = logs
        p = self.params
        bound = math.sqrt(p.groups / (p.out_channels * p.kernel_size))
        rng = np.random.default_rng(seed)
        weight = aligned_copy(rng.uniform(-bound, bound, p.weight_shape).astype(self.dtype))
        bias = aligned_copy(rng.uniform(-bound, bound, (p.out_channels,)).astype(self.dtype)) if p.bias else None
        # (weight, bias, device copies by device): replaced as one on assignment, so a
        # call running meanwhile can only fill the copies of the values it read.
        self._state: tuple[np.ndarray, np.ndarray | None, dict[str, list[tvm.runtime.Tensor]]] = (
            weight, bias, {})

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
        """The weight. On a CPU target the module reads this very array, so in-place edits
        take effect; on a GPU target it is read-only (the module holds a device copy, which
        an in-place edit would silently miss): assign a new array instead."""
        return self._state[0] if self._host_weights else _read_only(self._state[0])

    @weight.setter
    def weight(self, value: Any) -> None:
        arr = as_array(value, "weight")
        _check_array(arr, "weight", self.params.weight_shape, self.dtype)
        self._state = (aligned_copy(arr), self._state[1], {})

    @property
    def bias(self) -> np.ndarray | None:
        """The bias (None without one); in-place edits as for :attr:`weight`."""
        bias = self._state[1]
        return bias if bias is None or self._host_weights else _read_only(bias)

    @bias.setter
    def bias(self, value: Any) -> None:
        if not self.params.bias:
            if value is not None:
                raise ValueError(f"{OP}: this layer was built with bias=False; cannot assign a bias")
            return
        if value is None:
            raise ValueError(f"{OP}: this layer was built with bias=True; assign an array, not None")
        arr = as_array(value, "bias")
        _check_array(arr, "bias", (self.params.out_channels,), self.dtype)
        self._state = (self._state[0], aligned_copy(arr), {})

    def compiled_for(self, x_shape: tuple[int, ...], output_size: Any = None) -> CompiledConvTranspose1d:
        """The compiled module that serves an input of ``x_shape`` (compiling it if needed)."""
        batch = x_shape[0] if len(x_shape) == 3 else 1
        params = self.params
        if output_size is not None:
            params = params.with_output_padding(
                params.output_padding_for(x_shape[-1], _output_length(output_size, len(x_shape))))
        return _MODULES.get(Workload(params, batch, x_shape[-1], self.dtype), self.target, self.logs)

    def __call__(self, x: Any, output_size: Any = None) -> np.ndarray:
        arr = as_array(x, "input")
        _check_channels(arr, self.params.weight_shape, self.params.in_channels)
        _check_array_dtype(arr, "input", self.dtype)
        if arr.ndim == 3 and arr.shape[0] == 0:
            params = self.params
            if output_size is not None:
                params = params.with_output_padding(
                    params.output_padding_for(arr.shape[-1], _output_length(output_size, 3)))
            return _empty_batch(params, arr.shape[-1], self.dtype)
        compiled = self.compiled_for(tuple(arr.shape), output_size)
        xb, unbatched = compiled.check_input(arr)
        weight, bias, copies = self._state
        key = str(compiled.device)
        weights = copies.get(key)
        if weights is None:  # moved to the device once per assignment, not per call
            w, b = compiled.check_weights(weight, bias)
            weights = [compiled.to_device(w)] + ([compiled.to_device(b)] if b is not None else [])
            copies[key] = weights
        y = compiled.run(compiled.to_device(xb), weights)
        return y[0] if unbatched else y


def _empty_batch(params: ConvTranspose1dParams, length: int, dtype: str) -> np.ndarray:
    """PyTorch's answer to a batch of 0: an empty (0, out_channels, L_out) output, with every
    check of a real call (the sizes of one sample) and nothing compiled."""
    w = Workload(params, 1, length, dtype)
    return aligned_empty((0, params.out_channels, w.out_length), dtype)


def _read_only(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


def _output_length(output_size: Any, ndim: int) -> Any:
    """The length PyTorch reads from ``output_size``: an int, or a sequence of 1 or ``ndim`` sizes."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) not in (1, ndim):
            raise ValueError(f"{OP}: for {ndim}D input, output_size must have 1 or {ndim} elements, "
                             f"got output_size={list(output_size)}")
        return output_size[-1]
    return output_size


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
) -> np.ndarray:
    """Transposed 1-D convolution of ``x`` with ``weight``, as ``torch.nn.functional.conv_transpose1d``.

    ``x`` is (batch, in_channels, L_in) or (in_channels, L_in); ``weight`` is
    (in_channels, out_channels/groups, kernel_size); ``bias`` is (out_channels,)
    or None. Returns a NumPy array (batch, out_channels, L_out) with L_out as in
    :class:`ConvTranspose1dParams`, which also defines the padding modes. The
    dtype (float32 or float64) is the input's; weight and bias must match it.
    Tuning records are looked up in ``logs`` (default ``$TVM_CONVT_TUNING_LOGS``),
    then in the shipped ``schedules/``.
    """
    x = as_array(x, "input")
    weight = as_array(weight, "weight")
    if weight.ndim != 3:
        raise ValueError(f"{OP}: weight must be 3-D (in_channels, out_channels/groups, kernel_size), "
                         f"got weight.shape={tuple(weight.shape)}")
    # groups is checked before out_channels is derived from it.
    groups = ConvTranspose1dParams.check_positive_size("groups", groups)
    params = ConvTranspose1dParams(
        weight.shape[0], weight.shape[1] * groups, weight.shape[2], stride, padding, output_padding,
        groups, bias is not None, dilation, padding_mode)
    _check_channels(x, weight.shape, params.in_channels)
    dtype = check_dtype(x.dtype)
    # Every input is checked here, so that nothing is compiled for a call that must fail.
    _check_array(weight, "weight", params.weight_shape, dtype)
    if bias is not None:
        bias = as_array(bias, "bias")
        _check_array(bias, "bias", (params.out_channels,), dtype)
    resolve_target(target)
    if x.ndim == 3 and x.shape[0] == 0:
        return _empty_batch(params, x.shape[-1], dtype)
    workload = Workload(params, x.shape[0] if x.ndim == 3 else 1, x.shape[-1], dtype)
    return _MODULES.get(workload, target, logs)(x, weight, bias)
