"""Arrays a call takes and gives: NumPy arrays, DLPack tensors on the host or a device, the
alignment TVM's kernels assume, the caller's kind of output, and the checks of an array's rank,
channels, shape and dtype, in the operator's words."""

from __future__ import annotations

import functools
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
import tvm_ffi

from .._host_pool import pooled_empty
from ..params import DATA_ALIGNMENT, OP, numpy_dtype


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
            return NUMPY_OUTPUT
        if isinstance(value, DeviceArray):
            return cls(value.hand_back, True)
        device = _dlpack_device(value)
        if device is None:
            return NUMPY_OUTPUT
        return cls(_library_from_dlpack(type(value)), device[0] != _DLPACK_CPU)

    def from_host(self, y: np.ndarray, device: tvm.runtime.Device | None = None) -> Any:
        """A host result as the caller's kind of array, copied to ``device`` when on_device."""
        if self.on_device:
            return self.from_dlpack(tvm.runtime.tensor(y, device))
        return y if self.from_dlpack is None else self.from_dlpack(y)


NUMPY_OUTPUT = Output()


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
ALIGNMENT = DATA_ALIGNMENT


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
    np_dtype = numpy_dtype(dtype)
    pooled = pooled_empty(shape, np_dtype, ALIGNMENT)
    return aligned_empty(shape, np_dtype) if pooled is None else pooled


def aligned_copy(arr: np.ndarray) -> np.ndarray:
    out = aligned_empty(arr.shape, arr.dtype)
    np.copyto(out, arr)
    return out


def shareable(arr: np.ndarray) -> bool:
    """Whether TVM can use ``arr``'s memory as it is (DLPack does not export read-only arrays)."""
    return arr.flags.c_contiguous and arr.flags.writeable and arr.ctypes.data % ALIGNMENT == 0


def check_array_dtype(arr: np.ndarray, name: str, dtype: str) -> None:
    if arr.dtype != numpy_dtype(dtype):
        raise TypeError(f"{OP}: {name} must have dtype {dtype}, got {name}.dtype={arr.dtype}")


def check_array(arr: np.ndarray, name: str, shape: tuple[int, ...], dtype: str) -> None:
    check_array_dtype(arr, name, dtype)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{OP}: {name} must have shape {tuple(shape)}, got {name}.shape={tuple(arr.shape)}")


def describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def batched(x: np.ndarray | DeviceArray) -> tuple[np.ndarray | DeviceArray, bool]:
    """``x`` (of rank 2 or 3) as a batched view, and whether it came unbatched."""
    if x.ndim == 3:
        return x, False
    return (x.view((1, *x.shape)) if isinstance(x, DeviceArray) else x[None]), True


def check_rank(x: np.ndarray) -> None:
    if x.ndim not in (2, 3):
        raise ValueError(f"{OP}: expected a 2-D (unbatched) or 3-D (batched) input, "
                         f"got input.shape={tuple(x.shape)}")


def check_channels(x: np.ndarray, weight_shape: tuple[int, ...], in_channels: int) -> None:
    """Rank, then channels, in PyTorch's words; before anything is compiled."""
    check_rank(x)
    if x.shape[-2] != in_channels:
        raise ValueError(
            f"{OP}: given transposed=1, weight of size {list(weight_shape)}, expected "
            f"input{list(x.shape)} to have {in_channels} channels, but got {x.shape[-2]} channels instead"
        )
