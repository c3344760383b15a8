"""What loading and running a module needs where only TVM's runtime libraries are installed.

A folder written by ``tvm-convt bundle`` holds the TVM package without
``libtvm_compiler.so``. There ``tvm.target.Target`` cannot be built (it lives in
the compiler), LLVM cannot be asked about CPU features, and ``import tvm`` does not
load ``libtvm_runtime_cuda.so``; these helpers stand in for those three.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import tvm
import tvm_ffi

# The flags /proc/cpuinfo must list for each instruction set a target key names.
ISA_FLAGS = {"avx512": ("avx512f", "avx2", "fma"), "avx2": ("avx2", "fma"), "avx": ("avx",),
             "sse4": ("sse4_2",), "neon": ("asimd",), "sve": ("sve",)}
# LLVM triples and platform.machine() name these architectures two ways.
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


@functools.lru_cache(maxsize=1)
def compiler_available() -> bool:
    """Whether TVM's compiler library is loaded (False in a runtime-only install)."""
    return tvm_ffi.get_global_func("target.Target", allow_missing=True) is not None


# The /proc/cpuinfo field that lists the instruction-set flags, per architecture.
_FLAGS_FIELD = {"x86_64": "flags", "aarch64": "Features"}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU, from /proc/cpuinfo (empty if unreadable, or
    if the file is another architecture's: qemu-user shows the host's)."""
    here = platform.machine().lower()
    field = _FLAGS_FIELD.get(ARCH_ALIASES.get(here, here))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == field:
            return frozenset(value.split())
    return frozenset()


def missing_isa(target_key: str) -> str | None:
    """What this CPU lacks for a module of ``target_key`` (``llvm-x86_64-avx512``), by the
    key's architecture and vector instruction set; None when it has them or cannot tell.
    Coarser than :func:`tvm_convt.target.missing_cpu_support`, which asks LLVM."""
    _, arch, isa = (target_key.split("-", 2) + ["", ""])[:3]
    here = platform.machine().lower()
    if arch and ARCH_ALIASES.get(here, here) != arch:
        return f"an {arch} CPU"
    flags = _cpu_flags()
    lacking = [f for f in ISA_FLAGS.get(isa, ()) if flags and f not in flags]
    return f"a CPU with {', '.join(lacking)}" if lacking else None


def load_cuda_runtime() -> None:
    """Register TVM's CUDA device API, which ``import tvm`` loads only beside the compiler;
    without a CUDA driver the library does not load and the GPU reads as absent."""
    if tvm_ffi.get_global_func("device_api.cuda", allow_missing=True) is not None:
        return
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(tvm.base._LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        tvm.base._LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            "tvm", "tvm_runtime_cuda", "RTLD_LOCAL", extra_lib_paths=[runtime_dir])
    except (OSError, RuntimeError):
        pass
