"""The runtime: a wrapper class around one compiled module, a layer, and a function.

- :class:`CompiledConvTranspose1d` wraps one library for one static workload, or for any
  batch and length (a symbolic module, which picks its function by length): it validates
  inputs against the module's metadata, runs it, and exports or loads it with its ``.json`` sidecar.
- :class:`ConvTranspose1d` is the layer, with PyTorch's constructor, weight
  initialisation and ``output_size``; it compiles (or finds in the cache) one symbolic
  module on CPUs (``lengths="any"``), or one module per input shape.
- :func:`conv_transpose1d` is the functional form of ``F.conv_transpose1d``.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import shutil
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm_ffi

from .build import (ModuleMetadata, build_library, copy_library, discard, load_library, read_library,
                    read_sidecar, sidecar_path)
from ._host_pool import pooled_empty
from ._runtime_only import compiler_available, load_cuda_runtime, missing_isa
from .errors import ModuleFileError
from .lengths import check_batch, check_sizes, range_for
from .params import (OP, PACK_WEIGHT, ConvTranspose1dParams, SymbolicWorkload, Workload, check_dtype,
                     check_dtype_for_target, numpy_dtype)
from .target import TargetLike, check_linkable, missing_cpu_support, resolve_target


def as_array(value: Any, name: str) -> np.ndarray:
    """Accept a NumPy array or any DLPack-capable CPU tensor (torch, JAX, CuPy on host)."""
    if isinstance(value, (np.ndarray, DeviceArray)):
        return value
    device = _dlpack_device(value)
    if device is not None and device[0] != _DLPACK_CPU:
        return _device_array(value, name)
    if hasattr(value, "__dlpack__"):
        if getattr(value, "requires_grad", False):
            _warn_no_gradient(name)
            value = value.detach()
        try:
            return np.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError) as err:
            copied = _bfloat16_copy(value)
            if copied is not None:
                return copied
            raise TypeError(f"{OP}: {name} must be a NumPy array or a CPU tensor with DLPack, "
                            f"could not import {type(value).__name__}: {err}") from None
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except ValueError as err:  # ragged nesting
            raise ValueError(f"{OP}: {name} given as a list must be rectangular, got a list NumPy "
                             f"cannot read as an array ({err})") from None
    raise TypeError(f"{OP}: {name} must be a NumPy array or a DLPack-capable tensor, "
                    f"got {type(value).__name__}")


def _warn_no_gradient(name: str) -> None:
    """A tensor that requires grad, given where no graph is recorded, while autograd records."""
    torch = sys.modules.get("torch")  # a tensor with requires_grad means torch is imported
    if torch is not None and torch.is_grad_enabled():
        warnings.warn(f"{OP}: this call records no gradient for {name}, which requires grad: its output is "
                      "detached; tvm_convt.torch.conv_transpose1d (or the tvm_convt.torch layer) records "
                      "them", stacklevel=4)


def _bfloat16_copy(value: Any) -> np.ndarray | None:
    """A bfloat16 tensor as an ``ml_dtypes.bfloat16`` array, copied through TVM's DLPack import
    (NumPy's refuses bfloat16); None for any other tensor or when TVM refuses it too."""
    if "bfloat16" not in str(getattr(value, "dtype", "")):
        return None
    try:
        return tvm.runtime.from_dlpack(value).numpy()
    except (BufferError, RuntimeError, TypeError, ValueError):
        return None


# DLPack's device type for host memory; an array on any other is a device array.
_DLPACK_CPU = 1


def _dlpack_device(value: Any) -> tuple[int, int] | None:
    """The DLPack (device type, id) of a tensor other than a NumPy array; None for anything else."""
    query = getattr(value, "__dlpack_device__", None)
    if query is None or isinstance(value, np.ndarray):
        return None
    try:
        kind, index = query()
        return int(kind), int(index)
    except (BufferError, RuntimeError, TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=64)
def _library_from_dlpack(cls: type) -> Any:
    """``from_dlpack`` of the library defining ``cls`` (``torch.from_dlpack`` for a torch tensor),
    found through the type's module so that nothing here imports torch or CuPy; None if it has none."""
    return getattr(sys.modules.get(cls.__module__.partition(".")[0]), "from_dlpack", None)


@dataclass(frozen=True)
class Output:
    """How a call hands its output back: through ``from_dlpack`` of the input's library (None:
    as a NumPy array), left in device memory when the input was there."""

    from_dlpack: Any = None
    on_device: bool = False

    @classmethod
    def like(cls, value: Any) -> Output:
        """The output kind for input ``value``: torch in, torch out; CuPy in, CuPy out; else NumPy."""
        if isinstance(value, np.ndarray):
            return _NUMPY_OUTPUT
        if isinstance(value, DeviceArray):
            return cls(value.hand_back, True)
        device = _dlpack_device(value)
        if device is None:
            return _NUMPY_OUTPUT
        return cls(_library_from_dlpack(type(value)), device[0] != _DLPACK_CPU)

    def from_host(self, y: np.ndarray, device: tvm.runtime.Device | None = None) -> Any:
        """A host result as the caller's kind of array, copied to ``device`` when on_device."""
        if self.on_device:
            return self.from_dlpack(tvm.runtime.tensor(y, device))
        return y if self.from_dlpack is None else self.from_dlpack(y)


_NUMPY_OUTPUT = Output()


class DeviceArray:
    """A caller's array in device memory (a CUDA torch tensor, a CuPy array), shared through
    DLPack: ``tensor`` is the TVM tensor on its memory, ``shape``, ``ndim`` and ``dtype`` are
    the array's, and ``hand_back`` is its library's ``from_dlpack``."""

    def __init__(self, tensor: tvm.runtime.Tensor, hand_back: Any) -> None:
        self.tensor = tensor
        self.hand_back = hand_back
        self.shape = tuple(int(n) for n in tensor.shape)
        self.ndim = len(self.shape)
        text = str(tensor.dtype)
        try:
            self.dtype: Any = numpy_dtype(text)
        except TypeError:  # a dtype NumPy has no name for: reported as TVM names it
            self.dtype = text

    def view(self, shape: tuple[int, ...]) -> DeviceArray:
        return DeviceArray(self.tensor._create_view(shape), self.hand_back)

    def numpy(self) -> np.ndarray:
        """A host copy (a layer keeps its weights on the host)."""
        return self.tensor.numpy()


def _device_array(value: Any, name: str) -> DeviceArray:
    """``value`` (in device memory) as a DeviceArray: shared when contiguous and aligned,
    else an aligned copy made on its device."""
    hand_back = _library_from_dlpack(type(value))
    if hand_back is None:
        raise TypeError(f"{OP}: {name} in device memory must come from a library with from_dlpack "
                        f"(torch, CuPy), got a {type(value).__module__}.{type(value).__name__}")
    if getattr(value, "requires_grad", False):
        value = value.detach()
    try:
        tensor = tvm_ffi.from_dlpack(value, require_alignment=0, require_contiguous=False)
    except (BufferError, RuntimeError, TypeError, ValueError) as err:
        raise TypeError(f"{OP}: {name} could not be shared through DLPack, got a "
                        f"{type(value).__name__}: {err}") from None
    if not tensor.is_contiguous():
        raise ValueError(f"{OP}: {name} in device memory must be contiguous, got {name}.shape="
                         f"{tuple(tensor.shape)} with strides {tuple(tensor.strides)}; pass a contiguous copy")
    if tensor.data_ptr() % ALIGNMENT:  # a view at an offset: TVM's kernels assume aligned data
        copy = tvm.runtime.empty(tensor.shape, tensor.dtype, tensor.device)
        tensor.copyto(copy)
        tensor = copy
    return DeviceArray(tensor, hand_back)


def host_array(arr: np.ndarray | DeviceArray) -> np.ndarray:
    """``arr`` in host memory: a device array copied back, a NumPy array as it is."""
    return arr.numpy() if isinstance(arr, DeviceArray) else arr


# TVM imports host memory through DLPack only at this alignment (its allocations' own).
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: str | np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous NumPy array whose data starts on an ``ALIGNMENT`` boundary."""
    dtype = numpy_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def output_empty(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """:func:`aligned_empty` for a call's output: large ones on memory the pool keeps between
    calls (:mod:`tvm_convt._host_pool`), so their pages are not mapped and zeroed afresh."""
    pooled = pooled_empty(shape, numpy_dtype(dtype), ALIGNMENT)
    return aligned_empty(shape, dtype) if pooled is None else pooled


def aligned_copy(arr: np.ndarray) -> np.ndarray:
    out = aligned_empty(arr.shape, arr.dtype)
    np.copyto(out, arr)
    return out


def _shareable(arr: np.ndarray) -> bool:
    """Whether TVM can use ``arr``'s memory as it is (DLPack does not export read-only arrays)."""
    return arr.flags.c_contiguous and arr.flags.writeable and arr.ctypes.data % ALIGNMENT == 0


def _check_array_dtype(arr: np.ndarray, name: str, dtype: str) -> None:
    if arr.dtype != numpy_dtype(dtype):
        raise TypeError(f"{OP}: {name} must have dtype {dtype}, got {name}.dtype={arr.dtype}")


def _check_array(arr: np.ndarray, name: str, shape: tuple[int, ...], dtype: str) -> None:
    _check_array_dtype(arr, name, dtype)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{OP}: {name} must have shape {tuple(shape)}, got {name}.shape={tuple(arr.shape)}")


def _path(value: Any, what: str) -> Path:
    """``value`` as a Path: a str or os.PathLike without NUL bytes (which no file name holds)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{OP}: {what} must be a str or a path, got {what}={value!r} ({type(value).__name__})")
    path = Path(value)
    if "\0" in str(path):
        raise ValueError(f"{OP}: {what} must not contain a NUL byte, got {what}={str(path)!r}")
    return path


def _logs(logs: Any) -> Path | None:
    """The tuning-logs folder argument: None (the default folder) or a path."""
    return None if logs is None else _path(logs, "logs")


def _os_error(err: OSError, what: str) -> OSError:
    """The same kind of OSError, saying what failed in the operator's words."""
    return type(err)(err.errno, f"{OP}: {what}: {err.strerror or err}")


_UNCHECKED = object()


class CompiledConvTranspose1d:
    """One compiled module for one workload (parameters, batch, input length, dtype, target), or
    for the parameters, dtype and target at any batch and length (:attr:`symbolic`).

    Call it as ``compiled(x, weight, bias=None)`` with ``x`` of shape (batch,
    in_channels, L_in), or (in_channels, L_in) when batch is 1; it returns the
    output of shape (batch, out_channels, L_out), unbatched when ``x`` was, as the
    caller's kind of array on the input's device: a NumPy array for NumPy input, a torch
    tensor for a torch tensor, a CuPy array for a CuPy array (see :class:`Output`). Device
    arrays are shared, not copied; host arrays given to a CUDA module are copied to the GPU.
    Every argument is checked against the module's metadata first. To call it many times with
    one weight, :meth:`prepare_weights` once and :meth:`run` per call: a module compiled with
    ``prepack_weight`` (:attr:`weight_packed`) then packs the weight once, not in every call.
    """

    def __init__(self, library: str | Path, metadata: ModuleMetadata | None = None) -> None:
        self.library = Path(library)
        described, self.digest = read_sidecar(self.library)
        self.metadata = metadata if metadata is not None else described
        # A TVM target needs the compiler; a runtime-only install goes by the target key.
        self._target = resolve_target(self.metadata.target) if compiler_available() else None
        cuda = self.metadata.target_key.startswith("cuda")
        if cuda:
            load_cuda_runtime()
        self.device = tvm.cuda(0) if cuda else tvm.cpu(0)
        self._module: Any = None  # loaded on first use: a CUDA module exports without a GPU
        self._functions: dict[str, Any] = {}
        self._cpu_missing: Any = _UNCHECKED
        # A symbolic module's (function name, output shape) by (batch, length), checked once each.
        self._shapes: dict[tuple[int, int], tuple[str, tuple[int, int, int]]] = {}

    @property
    def target(self) -> Any:
        """The module's ``tvm.target.Target`` (needs TVM's compiler, which a runtime-only install lacks)."""
        if self._target is None:
            self._target = resolve_target(self.metadata.target)
        return self._target

    def _function(self, name: str) -> Any:
        """The module's function ``name``; the library is loaded on first use from the bytes its
        sidecar vouches for (:class:`ModuleFileError` when they do not match or do not load)."""
        found = self._functions.get(name)
        if found is not None:
            return found
        if self._module is None:
            self._require_device()
            self._module = load_library(self.library, self.digest)
        try:
            found = self._functions[name] = self._module[name]
        except AttributeError:  # TVM's answer for a function the library lacks
            raise ModuleFileError(f"{OP}: library {self.library} has no function {name!r}, which its sidecar "
                                  "describes: compile and export the module again") from None
        return found

    @property
    def func(self) -> Any:
        """The module's ``main`` function: (input, weight as :attr:`ModuleMetadata.main_weight_shape`
        says[, bias], output); a symbolic module's function for its shortest inputs
        (:meth:`function_for` picks by length)."""
        return self._function(self.metadata.functions[0])

    @property
    def symbolic(self) -> bool:
        """Whether the module takes any batch and length."""
        return self.metadata.symbolic

    def shape_for(self, batch: int, length: int) -> tuple[str, tuple[int, int, int]]:
        """The function that runs an input of ``batch`` x in_channels x ``length`` and the output's
        shape; raises ValueError for a shape the module does not take (any static shape but its
        own; for a symbolic module, a length too short for the layer or tensors past 32-bit indices)."""
        found = self._shapes.get((batch, length))
        if found is not None:
            return found
        w = self.workload
        if not w.symbolic:
            if (batch, length) != (w.batch, w.length):
                raise ValueError(f"{OP}: input must have shape {w.input_shape}, got "
                                 f"input.shape={(batch, w.params.in_channels, length)}")
            return "main", w.output_shape
        call = w.at(batch, length)  # every check of a static workload of this shape
        r = range_for(self.metadata.ranges, length)
        check_sizes(r, batch, length)
        check_batch(self.metadata.target_key.startswith("cuda"), batch)
        found = (r.function, call.output_shape)
        if len(self._shapes) >= _SHAPES_KEPT:
            self._shapes.clear()
        self._shapes[(batch, length)] = found
        return found

    def function_for(self, batch: int, length: int) -> tuple[Any, tuple[int, int, int]]:
        """The loaded function that runs ``batch`` x in_channels x ``length`` and the output's shape."""
        name, shape = self.shape_for(batch, length)
        return self._function(name), shape

    @property
    def weight_packed(self) -> bool:
        """Whether ``main`` reads the weight packed (by :meth:`prepare_weights`) rather than as it is."""
        return self.metadata.weight_block is not None

    def _missing(self) -> str | None:
        """What this machine lacks to run the module: a device, or CPU features (None: nothing)."""
        if not self.device.exist:
            return f"a {self.device} device"
        if self._cpu_missing is _UNCHECKED:
            self._cpu_missing = (missing_cpu_support(self._target) if self._target is not None
                                 else missing_isa(self.metadata.target_key))
        return self._cpu_missing

    @property
    def runnable(self) -> bool:
        """Whether this machine can run the module (it can always be exported)."""
        return self._missing() is None

    def _require_device(self) -> None:
        missing = self._missing()
        if missing is not None:
            raise RuntimeError(
                f"{OP}: this module targets {self.metadata.target_key} and needs {missing} "
                "to run, which this machine does not have; it can still be exported")

    # -- metadata ---------------------------------------------------------------------
    @property
    def workload(self) -> Workload:
        return self.metadata.workload

    @property
    def params(self) -> ConvTranspose1dParams:
        return self.metadata.workload.params

    def __repr__(self) -> str:
        w = self.workload
        shape = "any batch and length" if w.symbolic else f"batch={w.batch}, length={w.length}"
        return (f"CompiledConvTranspose1d({w.params}, {shape}, "
                f"dtype={w.dtype!r}, target={self.metadata.target_key!r}, "
                f"schedule={self.metadata.schedule!r})")

    # -- running ------------------------------------------------------------------------
    def to_device(self, arr: np.ndarray | DeviceArray, name: str = "array") -> tvm.runtime.Tensor:
        """``arr`` as a tensor on the module's device. On the CPU an aligned C-contiguous
        array is shared, not copied: later in-place changes to it are seen by the module;
        a device array must be on the module's device, and is shared."""
        self._require_device()
        if isinstance(arr, DeviceArray):
            return self._on_device(arr, name)
        if self.device.dlpack_device_type() != tvm.cpu(0).dlpack_device_type():
            return tvm.runtime.tensor(np.ascontiguousarray(arr), self.device)
        return tvm.runtime.from_dlpack(arr if _shareable(arr) else aligned_copy(arr))

    def _on_device(self, arr: DeviceArray, name: str) -> tvm.runtime.Tensor:
        dev = arr.tensor.device
        if (dev.dlpack_device_type(), dev.index) != (self.device.dlpack_device_type(), self.device.index):
            raise ValueError(f"{OP}: {name} must be in host memory or on this module's device "
                             f"{self.device}, got {name} on {dev}")
        return arr.tensor

    def check_weights(self, weight: Any, bias: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        p, dtype = self.params, self.workload.dtype
        weight = self._checked_weight(weight)
        if p.bias:
            if bias is None:
                raise ValueError(f"{OP}: this module was compiled with bias=True, got bias=None")
            bias = as_array(bias, "bias")
            _check_array(bias, "bias", (p.out_channels,), dtype)
        elif bias is not None:
            raise ValueError(f"{OP}: this module was compiled with bias=False, got a bias")
        return weight, bias

    def prepare_weights(self, weight: Any, bias: Any = None) -> list[tvm.runtime.Tensor]:
        """``[weight(, bias)]`` checked and on the module's device, as :meth:`run` takes them: the
        weight packed when :attr:`weight_packed`. Preparing once and running many times is what
        the layer does. A packed weight is a copy, which later edits of ``weight`` do not
        reach; an unpacked weight and the bias are shared on the CPU when they are C-contiguous
        and aligned (see :meth:`to_device`), so edits of those do reach the module."""
        weight, bias = self.check_weights(weight, bias)
        return [self._weight_on_device(weight)] + ([self.to_device(bias, "bias")] if bias is not None else [])

    def prepare_weight(self, weight: Any) -> tvm.runtime.Tensor:
        """The weight alone, checked and on the device as ``main`` reads it (packed when
        :attr:`weight_packed`), for callers that keep the bias apart."""
        return self._weight_on_device(self._checked_weight(weight))

    def _checked_weight(self, weight: Any) -> np.ndarray | DeviceArray:
        weight = as_array(weight, "weight")
        _check_array(weight, "weight", self.params.weight_shape, self.workload.dtype)
        return weight

    def _weight_on_device(self, weight: np.ndarray | DeviceArray) -> tvm.runtime.Tensor:
        weight_dev = self.to_device(weight, "weight")
        if not self.weight_packed:
            return weight_dev
        packed = tvm.runtime.empty(self.metadata.main_weight_shape, self.workload.dtype, self.device)
        self._invoke(PACK_WEIGHT, weight_dev, packed)
        return packed

    def run(self, x: tvm.runtime.Tensor, weights: list[tvm.runtime.Tensor], out: Output | None = None) -> Any:
        """Run on device tensors: ``x`` batched, ``weights`` from :meth:`prepare_weights`; return the
        output as ``out`` says (default: a NumPy array). Their count, shapes, dtypes and device are
        checked here (ValueError or TypeError naming the tensor), the values are not."""
        self._check_run_tensors(x, weights)
        return self._run_checked(x, weights, out)

    def _run_checked(self, x: tvm.runtime.Tensor, weights: list[tvm.runtime.Tensor], out: Output | None = None) -> Any:
        """:meth:`run` on tensors this module made (``to_device``, ``prepare_weights``) itself."""
        name, shape = self.shape_for(int(x.shape[0]), int(x.shape[2]))
        if out is None or not out.on_device:
            return (out or _NUMPY_OUTPUT).from_host(self._run_to_host(name, shape, x, weights))
        y_dev = tvm.runtime.empty(shape, self.workload.dtype, self.device)
        self._invoke(name, x, *weights, y_dev)
        return out.from_dlpack(y_dev)

    def _check_run_tensors(self, x: Any, weights: Any) -> None:
        """What :meth:`run` is given, against what the module's function takes."""
        p, dtype = self.params, self.workload.dtype
        expected = [("weight", self.metadata.main_weight_shape)] + ([("bias", (p.out_channels,))] if p.bias else [])
        if not isinstance(weights, (list, tuple)) or len(weights) != len(expected):
            raise ValueError(f"{OP}: run takes the weights as prepare_weights returns them, "
                             f"[{', '.join(n for n, _ in expected)}], got {_describe(weights)}")
        for name, t, shape in [("input", x, None)] + [(n, t, sh) for (n, sh), t in zip(expected, weights)]:
            if not isinstance(t, tvm.runtime.Tensor):
                raise TypeError(f"{OP}: run takes TVM tensors (to_device, prepare_weights), got {name} of type "
                                f"{type(t).__name__}")
            got = tuple(int(d) for d in t.shape)
            if name == "input" and (len(got) != 3 or got[1] != p.in_channels):
                raise ValueError(f"{OP}: input must have shape (batch, {p.in_channels}, L_in), got input.shape={got}")
            if shape is not None and got != tuple(shape):
                raise ValueError(f"{OP}: {name} must have shape {tuple(shape)} (as prepare_weights makes it), "
                                 f"got {name}.shape={got}")
            if str(t.dtype) != dtype:
                raise TypeError(f"{OP}: {name} must have dtype {dtype}, got {name}.dtype={t.dtype}")
            if t.device.dlpack_device_type() != self.device.dlpack_device_type():
                raise ValueError(f"{OP}: {name} must be on {self.device}, got {t.device}")

    def _run_to_host(self, name: str, shape: tuple[int, int, int], x: tvm.runtime.Tensor,
                     weights: list[tvm.runtime.Tensor]) -> np.ndarray:
        """The output as a NumPy array (written in place on the CPU, copied back otherwise)."""
        dtype = self.workload.dtype
        if self.device.dlpack_device_type() == tvm.cpu(0).dlpack_device_type():
            y = output_empty(shape, dtype)
            self._invoke(name, x, *weights, tvm.runtime.from_dlpack(y))
            return y
        y_dev = tvm.runtime.empty(shape, dtype, self.device)
        self._invoke(name, x, *weights, y_dev)
        return y_dev.numpy()

    def _invoke(self, name: str, *tensors: tvm.runtime.Tensor) -> None:
        """Call the module's function ``name`` on tensors already checked against the sidecar's
        workload."""
        func = self._function(name)  # its own errors (ModuleFileError, RuntimeError) pass as they are
        try:
            func(*tensors)
        except (TypeError, ValueError) as err:
            # The library's own argument checks (count, shapes, dtypes) refused what its sidecar
            # describes: a sidecar rewritten with a new checksum, or put beside another library.
            first = next((line.strip().rstrip(":") for line in str(err).splitlines() if line.strip()),
                         type(err).__name__)
            raise ModuleFileError(
                f"{OP}: library {self.library} does not take the tensors its sidecar describes ({first}); "
                "the sidecar belongs to another module: compile and export the module again") from None

    def check_input(self, x: Any) -> tuple[np.ndarray, bool]:
        """Return ``x`` as a batched array and whether it came unbatched."""
        w = self.workload
        x = as_array(x, "input")
        _check_rank(x)
        unbatched = x.ndim == 2
        if unbatched and not w.symbolic and w.batch != 1:
            raise ValueError(f"{OP}: this module was compiled for batch {w.batch}; an unbatched "
                             f"input needs batch 1, got input.shape={tuple(x.shape)}")
        xb = (x.view((1, *x.shape)) if isinstance(x, DeviceArray) else x[None]) if unbatched else x
        if w.symbolic:
            _check_channels(xb, w.params.weight_shape, w.params.in_channels)
            _check_array_dtype(xb, "input", w.dtype)
            if xb.shape[0] == 0:
                raise ValueError(f"{OP}: a compiled module needs a batch of at least 1, got input.shape="
                                 f"{tuple(x.shape)}; the layer and conv_transpose1d answer a batch of 0")
            self.shape_for(int(xb.shape[0]), int(xb.shape[2]))
        else:
            _check_array(xb, "input", w.input_shape, w.dtype)
        return xb, unbatched

    def __call__(self, x: Any, weight: Any, bias: Any = None) -> Any:
        return self.call(x, weight, bias, Output.like(x))

    def call(self, x: Any, weight: Any, bias: Any, out: Output) -> Any:
        """The call, handing the output back as ``out`` says."""
        xb, unbatched = self.check_input(x)
        y = self._run_checked(self.to_device(xb, "input"), self.prepare_weights(weight, bias), out)
        return y[0] if unbatched else y

    # -- files ----------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the library to ``path`` (``.so``) and its metadata to the ``.json`` beside it."""
        path = _path(path, "export path")
        if path.suffix != ".so":
            raise ValueError(f"{OP}: export path must end in .so, got {str(path)!r}")
        # os.path's tests answer False for a name the file system refuses (too long, say);
        # writing it then raises the file system's reason.
        if not os.path.isdir(path.parent):
            raise FileNotFoundError(f"{OP}: export folder {path.parent} does not exist")
        for target in (path, sidecar_path(path)):
            if os.path.isdir(target):
                raise ValueError(f"{OP}: export path {target} must be a file, got a folder")
        data = read_library(self.library, self.digest)
        try:
            copy_library(data, self.metadata, path)
        except OSError as err:  # a name too long, a full disk: the file system's reason
            raise _os_error(err, f"cannot write the module to {path}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> CompiledConvTranspose1d:
        """Load a library written by :meth:`export` (or the cache) with its sidecar.

        The library must match the size and SHA-256 its sidecar records, and the
        sidecar its own checksum; anything else raises :class:`ModuleFileError`
        before the library is mapped.
        """
        path = _path(path, "module path")
        if not os.path.isfile(path):  # False, not OSError, for a name too long or a loop of links
            raise FileNotFoundError(f"{OP}: no compiled module at {path}")
        compiled = cls(path)
        read_library(path, compiled.digest)
        return compiled


def compile(  # noqa: A001 - mirrors tvm.compile
    params: ConvTranspose1dParams,
    *,
    batch: int | None = None,
    length: int | None = None,
    dtype: str = "float32",
    target: TargetLike = "llvm",
    logs: str | Path | None = None,
    use_cache: bool = True,
    rule: str | None = None,
    tuned: bool = True,
    prepack_weight: bool = False,
) -> CompiledConvTranspose1d:
    """Compile the operator for one input shape, or for every one (or take it from the cache).

    ``batch`` and ``length`` are the input's batch size and L_in; None (either) compiles a
    module that takes any batch and length (:attr:`CompiledConvTranspose1d.symbolic`), one
    function per range of lengths, with the default rules set by the layer's record of
    ``tvm-convt tune --any-length`` where there is one (:mod:`tvm_convt.layer_records`; CPU targets).
    For one shape, the schedule
    is the best tuned record for the target's hardware class in ``logs`` (default
    ``$TVM_CONVT_TUNING_LOGS``) or the shipped ``schedules/``, else the default
    schedule; ``metadata.schedule`` says which. ``rule`` forces a named default
    rule and ``tuned=False`` ignores tuning records. With ``prepack_weight``, a default
    schedule that would pack the weight inside every call (``cpu-gemm``, ``cpu-gemm-blocked``) takes it packed
    instead, from :meth:`CompiledConvTranspose1d.prepare_weights`, which is then worth
    calling once per weight (``weight_packed`` says whether this module does).
    """
    if batch is None or length is None:
        workload = SymbolicWorkload(params, dtype)
    else:
        workload = Workload(params, batch, length, dtype)
    check_linkable(resolve_target(target))
    logs = _logs(logs)

    def build() -> CompiledConvTranspose1d:
        library, metadata = build_library(workload, target=target, use_cache=use_cache, rule=rule,
                                          logs=logs, tuned=tuned, prepack_weight=prepack_weight)
        return CompiledConvTranspose1d(library, metadata)

    compiled = build()
    if not use_cache:  # the library's temporary folder lives as long as the object
        weakref.finalize(compiled, shutil.rmtree, compiled.library.parent, True)
    elif compiled.runnable:
        try:  # a cache entry that verifies but does not load is rebuilt, not kept
            compiled.func
        except ModuleFileError as err:
            discard(compiled.library, str(err))
            compiled = build()
    return compiled


class _ModuleCache:
    """Compiled modules of this process, by workload, target and whether the weight is prepacked."""

    def __init__(self) -> None:
        self._modules: dict[tuple[Workload | SymbolicWorkload, str, str, bool], CompiledConvTranspose1d] = {}
        self._lock = threading.Lock()

    def get(self, workload: Workload | SymbolicWorkload, target: TargetLike, logs: str | Path | None = None,
            prepack_weight: bool = False) -> CompiledConvTranspose1d:
        key = (workload, repr(target), str(logs), prepack_weight)
        with self._lock:
            found = self._modules.get(key)
        if found is None:
            found = compile(workload.params, batch=workload.batch, length=workload.length,
                            dtype=workload.dtype, target=target, logs=logs, prepack_weight=prepack_weight)
            with self._lock:
                found = self._modules.setdefault(key, found)
        return found


_MODULES = _ModuleCache()
# The (batch, length) pairs a symbolic module remembers as checked; past this many it starts again.
_SHAPES_KEPT = 4096


LENGTHS = ("any", "exact")


def _check_lengths(lengths: Any) -> str:
    if lengths not in LENGTHS:
        raise ValueError(f"{OP}: lengths must be one of {', '.join(map(repr, LENGTHS))}, got lengths={lengths!r}")
    return lengths


def module_workload(params: ConvTranspose1dParams, batch: int, length: int, dtype: str, target: TargetLike,
                    lengths: str = "any") -> Workload | SymbolicWorkload:
    """What the layer, the function and the PyTorch op compile for a call of ``batch`` x ``length``:
    the call's static workload, checked (so a bad shape fails before anything compiles), or with
    ``lengths="any"`` the layer's symbolic workload, one module for every call."""
    call = Workload(params, batch, length, dtype)
    if lengths == "any":
        # The target's kind, not its hardware class: this runs on every call, and target_key costs 0.3 ms.
        check_batch(resolve_target(target).kind.name == "cuda", batch)
        return SymbolicWorkload(params, dtype)
    return call


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


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
        self.lengths = _check_lengths(lengths)
        self.dtype = check_dtype(dtype)
        # A bad target is rejected now, not at the first call.
        kind = resolve_target(target).kind.name
        check_dtype_for_target(self.dtype, kind)
        self.target = target
        self.logs = _logs(logs)
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
        _check_array(arr, "weight", self.params.weight_shape, self.dtype)
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
        _check_array(arr, "bias", (self.params.out_channels,), self.dtype)
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
        _check_channels(arr, self.params.weight_shape, self.params.in_channels)
        _check_array_dtype(arr, "input", self.dtype)
        if arr.ndim == 3 and arr.shape[0] == 0:
            params = self.params
            if output_size is not None:
                params = params.with_output_padding(
                    params.output_padding_for(arr.shape[-1], _output_length(output_size, 3)))
            return _empty_output(out, arr, params, self.dtype)
        compiled = self.compiled_for(tuple(arr.shape), output_size)
        xb, unbatched = compiled.check_input(arr)
        weight, bias, copies = self._state
        key = (str(compiled.device), compiled.metadata.weight_block)
        weights = copies.get(key)
        if weights is None:  # prepared once per assignment (and layout), not per call
            weights = compiled.prepare_weights(weight, bias)
            copies[key] = weights
        y = compiled._run_checked(compiled.to_device(xb, "input"), weights, out)
        return y[0] if unbatched else y


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
    lengths = _check_lengths(lengths)
    out = Output.like(x)
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
    _check_array_dtype(x, "input", dtype)  # a byte-swapped float32 is not float32
    _check_array(weight, "weight", params.weight_shape, dtype)
    if bias is not None:
        bias = as_array(bias, "bias")
        _check_array(bias, "bias", (params.out_channels,), dtype)
    check_dtype_for_target(dtype, resolve_target(target).kind.name)
    logs = _logs(logs)
    if x.ndim == 3 and x.shape[0] == 0:
        return _empty_output(out, x, params, dtype)
    workload = module_workload(params, x.shape[0] if x.ndim == 3 else 1, x.shape[-1], dtype, target, lengths)
    return _MODULES.get(workload, target, logs).call(x, weight, bias, out)
