"""One compiled module (:class:`CompiledConvTranspose1d`): its files, its checks, its dispatch
by length, and running it; :func:`compile`, and the process's modules by workload."""

from __future__ import annotations

import functools
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm_ffi

from ..build import (ModuleMetadata, build_library, copy_library, discard, load_library, read_library,
                     read_sidecar, sidecar_path)
from .._runtime_only import compiler_available, load_cuda_runtime, missing_isa
from ..errors import ModuleFileError
from ..lengths import check_batch, check_sizes, range_for
from ..linker import check_linkable
from ..params import OP, PACK_WEIGHT, ConvTranspose1dParams, SymbolicWorkload, Workload
from ..target import TargetLike, missing_cpu_support, resolve_target
from .arrays import (ALIGNMENT, NUMPY_OUTPUT, DeviceArray, Output, aligned_copy, as_array, batched, check_array,
                     check_array_dtype, check_channels, check_rank, describe, output_empty, shareable)


def as_path(value: Any, what: str) -> Path:
    """``value`` as a Path: a str or os.PathLike without NUL bytes (which no file name holds)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{OP}: {what} must be a str or a path, got {what}={value!r} ({type(value).__name__})")
    path = Path(value)
    if "\0" in str(path):
        raise ValueError(f"{OP}: {what} must not contain a NUL byte, got {what}={str(path)!r}")
    return path


def logs_arg(logs: Any) -> Path | None:
    """The tuning-logs folder argument: None (the default folder) or a path."""
    return None if logs is None else as_path(logs, "logs")


def os_error(err: OSError, what: str) -> OSError:
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
        self._on_cpu = not cuda
        self._device_type = self.device.dlpack_device_type()
        self._runnable = False  # once found runnable, not asked again (the question costs microseconds)
        self._module: Any = None  # loaded on first use: a CUDA module exports without a GPU
        self._functions: dict[str, Any] = {}
        self._cpu_missing: Any = _UNCHECKED
        # A symbolic module's (function name, output shape) by (batch, length), checked once each.
        self._shapes: dict[tuple[int, int], tuple[str, tuple[int, int, int]]] = {}
        # The weights run() last checked: tensors' shapes, dtypes and devices never change, so the
        # same objects pass again without their checks (6 us of a 24 us call on a short input).
        self._checked_weights: tuple[Any, ...] = ()

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
            found = self._shapes[(batch, length)] = ("main", w.output_shape)
            return found
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
        if self._runnable:
            return
        missing = self._missing()
        self._runnable = missing is None
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
        array is shared, not copied: later in-place changes to it are seen by the module (a
        symbolic module's input need not be aligned); a device array must be on the module's
        device, and is shared."""
        self._require_device()
        if isinstance(arr, DeviceArray):
            return self._on_device(arr, name)
        if not self._on_cpu:
            return tvm.runtime.tensor(np.ascontiguousarray(arr), self.device)
        alignment = self.metadata.input_alignment
        if name == "input" and alignment < ALIGNMENT and arr.flags.c_contiguous and arr.flags.writeable:
            # Functions that read the input only in scalar copies into their own tiles (the build
            # checked: ModuleMetadata.input_alignment) share NumPy's 16-byte aligned arrays instead
            # of copying them (3 MB of encodec_up3: 0.13 ms of a 1.7 ms call).
            try:
                return tvm_ffi.from_dlpack(arr, require_alignment=alignment)
            except ValueError:  # a view that is not even aligned to its element
                pass
        return tvm.runtime.from_dlpack(arr if shareable(arr) else aligned_copy(arr))

    def _on_device(self, arr: DeviceArray, name: str) -> tvm.runtime.Tensor:
        dev = arr.tensor.device
        if (dev.dlpack_device_type(), dev.index) != (self._device_type, self.device.index):
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
            check_array(bias, "bias", (p.out_channels,), dtype)
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
        check_array(weight, "weight", self.params.weight_shape, self.workload.dtype)
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
        x_shape = x.shape
        name, shape = self.shape_for(x_shape[0], x_shape[2])
        if out is None or not out.on_device:
            return (out or NUMPY_OUTPUT).from_host(self._run_to_host(name, shape, x, weights))
        y_dev = tvm.runtime.empty(shape, self.workload.dtype, self.device)
        self._invoke(name, x, *weights, y_dev)
        return out.from_dlpack(y_dev)

    def _check_run_tensors(self, x: Any, weights: Any) -> None:
        """What :meth:`run` is given, against what the module's function takes."""
        checked = self._checked_weights
        same = (type(weights) in (list, tuple) and len(weights) == len(checked)
                and all(a is b for a, b in zip(weights, checked)))
        self._check_tensors([("input", x, None)] if same else self._with_weights(x, weights))
        self._checked_weights = tuple(weights)

    def _with_weights(self, x: Any, weights: Any) -> list[tuple[str, Any, tuple[int, ...] | None]]:
        """(name, tensor, shape expected) of the input and the weights, after their count is checked."""
        p = self.params
        expected = [("weight", self.metadata.main_weight_shape)] + ([("bias", (p.out_channels,))] if p.bias else [])
        if not isinstance(weights, (list, tuple)) or len(weights) != len(expected):
            raise ValueError(f"{OP}: run takes the weights as prepare_weights returns them, "
                             f"[{', '.join(n for n, _ in expected)}], got {describe(weights)}")
        return [("input", x, None)] + [(n, t, sh) for (n, sh), t in zip(expected, weights)]

    def _check_tensors(self, tensors: list[tuple[str, Any, tuple[int, ...] | None]]) -> None:
        p, dtype = self.params, self.workload.dtype
        for name, t, shape in tensors:
            if not isinstance(t, tvm.runtime.Tensor):
                raise TypeError(f"{OP}: run takes TVM tensors (to_device, prepare_weights), got {name} of type "
                                f"{type(t).__name__}")
            got = t.shape  # a tuple of ints
            if name == "input" and (len(got) != 3 or got[1] != p.in_channels):
                raise ValueError(f"{OP}: input must have shape (batch, {p.in_channels}, L_in), got input.shape={got}")
            if shape is not None and got != tuple(shape):
                raise ValueError(f"{OP}: {name} must have shape {tuple(shape)} (as prepare_weights makes it), "
                                 f"got {name}.shape={got}")
            if t.dtype != dtype:
                raise TypeError(f"{OP}: {name} must have dtype {dtype}, got {name}.dtype={t.dtype}")
            if t.device.dlpack_device_type() != self._device_type:
                raise ValueError(f"{OP}: {name} must be on {self.device}, got {t.device}")

    def _run_to_host(self, name: str, shape: tuple[int, int, int], x: tvm.runtime.Tensor,
                     weights: list[tvm.runtime.Tensor]) -> np.ndarray:
        """The output as a NumPy array (written in place on the CPU, copied back otherwise)."""
        dtype = self.workload.dtype
        if self._on_cpu:
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
        check_rank(x)
        unbatched = x.ndim == 2
        if unbatched and not w.symbolic and w.batch != 1:
            raise ValueError(f"{OP}: this module was compiled for batch {w.batch}; an unbatched "
                             f"input needs batch 1, got input.shape={tuple(x.shape)}")
        xb = batched(x)[0]
        if w.symbolic:
            check_channels(xb, w.params.weight_shape, w.params.in_channels)
            check_array_dtype(xb, "input", w.dtype)
            if xb.shape[0] == 0:
                raise ValueError(f"{OP}: a compiled module needs a batch of at least 1, got input.shape="
                                 f"{tuple(x.shape)}; the layer and conv_transpose1d answer a batch of 0")
            self.shape_for(int(xb.shape[0]), int(xb.shape[2]))
        else:
            check_array(xb, "input", w.input_shape, w.dtype)
        return xb, unbatched

    def __call__(self, x: Any, weight: Any, bias: Any = None) -> Any:
        return self.call(x, weight, bias, Output.like(x))

    def call(self, x: Any, weight: Any, bias: Any, out: Output) -> Any:
        """The call, handing the output back as ``out`` says."""
        xb, unbatched = self.check_input(x)
        y = self._run_checked(self.to_device(xb, "input"), self.prepare_weights(weight, bias), out)
        return y[0] if unbatched else y

    def stream(self, weight: Any, bias: Any = None, *, batch: int = 1, causal: bool = False,
               trim_right_ratio: float = 1.0) -> Any:
        """A stream of this module's layer with these weights (read once, here) over ``batch`` rows
        (:class:`tvm_convt.runtime.streams.ConvTranspose1dStream`), on the module's target; its kernel
        is compiled (or found in the cache), which needs the full install."""
        from .streams import fixed_weights, open_stream

        self.check_weights(weight, bias)
        return open_stream(self.params, self.workload.dtype, self.metadata.target, fixed_weights(weight, bias),
                           batch=batch, causal=causal, trim_right_ratio=trim_right_ratio)

    # -- files ----------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the library to ``path`` (``.so``) and its metadata to the ``.json`` beside it."""
        path = as_path(path, "export path")
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
            raise os_error(err, f"cannot write the module to {path}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> CompiledConvTranspose1d:
        """Load a library written by :meth:`export` (or the cache) with its sidecar.

        The library must match the size and SHA-256 its sidecar records, and the
        sidecar its own checksum; anything else raises :class:`ModuleFileError`
        before the library is mapped.
        """
        path = as_path(path, "module path")
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
    stream: bool = False,
) -> CompiledConvTranspose1d:
    """Compile the operator for one input shape, or for every one (or take it from the cache).

    ``batch`` and ``length`` are the input's batch size and L_in; None (either) compiles a
    module that takes any batch and length (:attr:`CompiledConvTranspose1d.symbolic`), one
    function per range of lengths, with the default rules set by the layer's record of
    ``tvm-convt tune --any-length`` where there is one (:mod:`tvm_convt.layer_records`; CPU targets).
    For one shape, the schedule
    is the best tuned record for the target's hardware class in ``logs`` (default
    ``$TVM_CONVT_TUNING_LOGS``) or the shipped ``schedules/``: MetaSchedule's of that shape, else the
    default schedule steered by the layer's record for every length, else the default schedule;
    ``metadata.schedule`` says which. ``rule`` forces a named default
    rule and ``tuned=False`` ignores tuning records. With ``prepack_weight``, a default
    schedule that would pack the weight inside every call (``cpu-gemm``, ``cpu-gemm-blocked``) takes it packed
    instead, from :meth:`CompiledConvTranspose1d.prepare_weights`, which is then worth
    calling once per weight (``weight_packed`` says whether this module does). With ``stream``, the
    module is the kernel of a stream of the layer (:class:`tvm_convt.runtime.streams.ConvTranspose1dStream`
    runs it), for every batch and length.
    """
    if stream:
        if batch is not None or length is not None:
            raise ValueError(f"{OP}: a stream's kernel takes every batch and length, got batch={batch!r}, "
                             f"length={length!r}")
        workload = SymbolicWorkload(params.stream_params(), dtype, stream=True)
    elif batch is None or length is None:
        workload = SymbolicWorkload(params, dtype)
    else:
        workload = Workload(params, batch, length, dtype)
    check_linkable(resolve_target(target))
    logs = logs_arg(logs)

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
            found = compile(workload.params, batch=workload.batch, length=workload.length, dtype=workload.dtype,
                            target=target, logs=logs, prepack_weight=prepack_weight, stream=workload.stream)
            with self._lock:
                found = self._modules.setdefault(key, found)
        return found

    def adopt(self, compiled: CompiledConvTranspose1d, target: TargetLike, logs: str | Path | None = None,
              prepack_weight: bool = False) -> None:
        """Serve ``compiled``'s workload with it from now on (the benchmark's layer runs the module
        it times, whatever schedule that has)."""
        with self._lock:
            self._modules[(compiled.workload, repr(target), str(logs), prepack_weight)] = compiled


_MODULES = _ModuleCache()
# The (batch, length) pairs a symbolic module remembers as checked; past this many it starts again.
_SHAPES_KEPT = 4096


LENGTHS = ("any", "exact")


@functools.lru_cache(maxsize=4096)
def _checked_call(params: ConvTranspose1dParams, batch: int, length: int, dtype: str) -> Workload:
    """A call's static workload, checked once per shape (its checks cost tens of microseconds)."""
    return Workload(params, batch, length, dtype)


def check_lengths(lengths: Any) -> str:
    if lengths not in LENGTHS:
        raise ValueError(f"{OP}: lengths must be one of {', '.join(map(repr, LENGTHS))}, got lengths={lengths!r}")
    return lengths


def module_workload(params: ConvTranspose1dParams, batch: int, length: int, dtype: str, target: TargetLike,
                    lengths: str = "any") -> Workload | SymbolicWorkload:
    """What the layer, the function and the PyTorch op compile for a call of ``batch`` x ``length``:
    the call's static workload, checked (so a bad shape fails before anything compiles), or with
    ``lengths="any"`` the layer's symbolic workload, one module for every call."""
    call = _checked_call(params, batch, length, dtype) if type(batch) is int and type(length) is int \
        else Workload(params, batch, length, dtype)
    if lengths == "any":
        # The target's kind, not its hardware class: this runs on every call, and target_key costs 0.3 ms.
        check_batch(resolve_target(target).kind.name == "cuda", batch)
        return SymbolicWorkload(params, dtype)
    return call
