"""``tvm-convt bundle``: a folder that runs exported modules where TVM's compiler is not installed.

A bundle holds the TVM package without its compiler (``libtvm_compiler.so`` and
every compiler-only Python package), ``tvm_ffi`` for the Python version that will
run it, psutil (one abi3 build serves every Python 3), typing_extensions, ``tvm_convt``'s runtime
files, one ``.so`` + ``.json`` per workload of a suite compiled for one target, a
``manifest.json``, a ``README.md`` and ``run.py`` (loads every module; ``--check``
compares each with the float64 NumPy reference). The machine that runs it needs
Python and NumPy (and ml_dtypes for bfloat16), nothing else.

CUDA kernels are shipped compiled by default: the CUDA source TVM 0.27 stores in a
module (compiled when loaded, by NVRTC or nvcc, on the machine that loads it) is
replaced by a fatbin that this machine's ``nvcc`` builds for the target's arch (SASS,
plus PTX that newer GPUs compile); ``kernels="source"`` keeps the source instead.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from . import __version__
from .build import ModuleMetadata, module_metadata, schedule, schedule_symbolic, write_library
from .linker import host_arch, target_arch
from .params import OP, SymbolicWorkload, Workload
from .target import TargetLike, resolve_target, target_json, target_key

MANIFEST_FORMAT = 1
# What a runtime-only install leaves out of the installed packages (paths relative to each);
# everything listed is compiler-only or sources/headers, checked by tests/test_bundle.py. The RPC
# server (rpc, exec) stays: a board measures tuning candidates with it.
TVM_LEFT_OUT = ("lib/libtvm_compiler.so", "lib/libtvm_runtime_extra.so", "3rdparty", "src", "include",
                "web", "relax", "topi", "s_tir", "contrib", "testing", "cmake", "lib64",
                "backend/adreno", "backend/cuda", "backend/hexagon", "backend/metal", "backend/opencl",
                "backend/rocm", "backend/trn", "backend/vulkan", "backend/webgpu")
CPU_LEFT_OUT = ("lib/libtvm_runtime_cuda.so",)  # a CPU bundle needs no CUDA runtime
FFI_LEFT_OUT = ("include", "3rdparty", "src", "share", "cython", "stub")
# tvm_convt's files that loading and running a module imports, and reference.py for run.py --check.
RUNTIME_FILES = ("__init__.py", "_cores.py", "_files.py", "_host_pool.py", "_runtime_only.py", "build.py",
                 "errors.py", "lengths.py", "linker.py", "params.py", "reference.py", "runtime/__init__.py",
                 "runtime/arrays.py", "runtime/layer.py", "runtime/module.py", "runtime/streams.py", "target.py")
KERNELS = ("fatbin", "source")
_PYTHON_VERSION = re.compile(r"3\.[0-9]{1,2}")
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
# pip's platform tags of the other architectures a bundle's runtime can be for (manylinux 2.28: the
# glibc of Debian 12, Ubuntu 20.04 and Raspberry Pi OS bookworm and later).
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64"}


@dataclass(frozen=True)
class BundleReport:
    """What :func:`write_bundle` wrote: the folder and its manifest."""

    folder: Path
    manifest: dict[str, Any]


def check_python_version(text: str) -> str:
    """A ``3.N`` Python version (the one that will run the bundle)."""
    if not isinstance(text, str) or not _PYTHON_VERSION.fullmatch(text):
        raise ValueError(f"{OP}: the bundle's Python version must read 3.N, such as 3.12, got python={text!r}")
    return text


def this_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _copy_package(source: Path, dest: Path, left_out: tuple[str, ...]) -> None:
    """Copy a package folder without ``left_out`` (relative paths) and byte-code caches."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for rel in left_out:
        path = dest / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _package_dir(name: str) -> Path:
    module = __import__(name)
    return Path(module.__file__).resolve().parent


def _download(dist: str, python: str, platform: str | None, into: Path) -> Path:
    """The wheel of the installed version of ``dist`` built for ``python`` (and pip's ``platform``
    tag; None: this machine's), fetched with pip: compiled extensions must match the machine and
    the Python that import them."""
    version = importlib.metadata.version(dist)
    into = into / dist
    cmd = [sys.executable, "-m", "pip", "download", f"{dist}=={version}", "--python-version", python,
           "--only-binary=:all:", "--no-deps", "--quiet", "-d", str(into)]
    done = subprocess.run(cmd + (["--platform", platform] if platform else []), capture_output=True, text=True,
                          check=False)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        why = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no wheel found")
        where = f"Python {python} on {platform}" if platform else f"Python {python}"
        raise ValueError(f"{OP}: a bundle for {where} needs {dist}=={version} built for it, and pip could not "
                         f"download it ({why.strip()}); bundle where pip can reach PyPI")
    return wheels[0]


def _unpack(wheel: Path, package: str, dest: Path, left_out: tuple[str, ...]) -> None:
    """Extract the folder ``package`` of ``wheel`` to ``dest``, without ``left_out`` (paths relative
    to it) and byte-code caches; compiler-only files are never written."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            parts = Path(member.filename).parts
            if not parts or parts[0] != package or member.is_dir() or "__pycache__" in parts:
                continue
            rel = "/".join(parts[1:])
            if any(rel == out or rel.startswith(out + "/") for out in left_out):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, target.open("wb") as out_file:
                shutil.copyfileobj(src, out_file)
            if (member.external_attr >> 16) & 0o111:
                target.chmod(0o755)


def bundle_platform(arch: str) -> str | None:
    """pip's platform tag for a bundle whose modules run on ``arch`` (None: this machine's)."""
    if arch == host_arch():
        return None
    if arch not in WHEEL_PLATFORMS:
        raise ValueError(f"{OP}: a bundle can hold the runtime of this machine's architecture ({host_arch()}) "
                         f"or of {', '.join(WHEEL_PLATFORMS)}, got a target for {arch}")
    return WHEEL_PLATFORMS[arch]


def copy_runtime(folder: Path, python: str, cuda: bool, platform: str | None = None) -> None:
    """The TVM runtime packages, psutil, cloudpickle and tvm_convt's runtime files into ``folder``, for
    ``python`` on pip's ``platform`` (None: this machine; otherwise NumPy for it too): the installed
    packages where they fit, wheels downloaded for that Python and platform where they do not."""
    # (distribution, its folders, left out of the first, whether the installed one fits)
    plan = [("apache-tvm", ("tvm",), TVM_LEFT_OUT + (() if cuda else CPU_LEFT_OUT), platform is None),
            ("apache-tvm-ffi", ("tvm_ffi",), FFI_LEFT_OUT, platform is None and python == this_python()),
            ("psutil", ("psutil",), (), platform is None)]  # abi3: one build serves every Python 3
    if platform is not None:  # a board has no NumPy at hand as this machine has; its OpenBLAS beside it
        plan.append(("numpy", ("numpy", "numpy.libs"), ("tests",), False))
    with tempfile.TemporaryDirectory(prefix="tvm_convt-wheels-") as tmp:
        for dist, packages, left_out, installed in plan:
            if installed:
                _copy_package(_package_dir(packages[0]), folder / packages[0], left_out)
                continue
            wheel = _download(dist, python, platform, Path(tmp))
            for package in packages:
                _unpack(wheel, package, folder / package, left_out if package == packages[0] else ())
    import cloudpickle  # the RPC server's workers (tvm.exec.rpc_server); pure Python
    import typing_extensions  # tvm_ffi's one pure-Python dependency

    _copy_package(_package_dir("cloudpickle"), folder / "cloudpickle", ())
    shutil.copy2(typing_extensions.__file__, folder / "typing_extensions.py")
    (folder / "tvm_convt").mkdir()
    here = Path(__file__).resolve().parent
    for name in RUNTIME_FILES:
        (folder / "tvm_convt" / name).parent.mkdir(exist_ok=True)
        shutil.copy2(here / name, folder / "tvm_convt" / name)


# -- CUDA kernels shipped compiled ---------------------------------------------------------------
# TVM packs a module's imports as: u64 size, the import tree (two u64 vectors), then per module
# its type key and, unless it is "_lib" (the host code itself), its serialised bytes. A CUDA
# module's bytes (TVM 0.27) are: format ("cuda": source), function table, code.


def _u64(data: bytes, at: int) -> tuple[int, int]:
    return struct.unpack_from("<Q", data, at)[0], at + 8


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    size, at = _u64(data, at)
    if at + size > len(data):
        raise ValueError(f"{OP}: a packed TVM module ends inside a string of {size} bytes at byte {at}")
    return data[at:at + size], at + size


def _packed(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def _vector(data: bytes, at: int) -> tuple[list[int], int]:
    count, at = _u64(data, at)
    return list(struct.unpack_from(f"<{count}Q", data, at)), at + 8 * count


def read_imports_blob(blob: bytes) -> tuple[bytes, list[tuple[bytes, bytes | None]]]:
    """The import tree (raw bytes) and the ``(type key, bytes or None)`` of each packed module."""
    size, at = _u64(blob, 0)
    if size + 8 != len(blob):
        raise ValueError(f"{OP}: a packed TVM module says {size} bytes and holds {len(blob) - 8}")
    row_ptr, at = _vector(blob, at)
    _, at = _vector(blob, at)
    tree, modules = blob[8:at], []
    for _ in range(len(row_ptr) - 1):
        key, at = _string(blob, at)
        data = None
        if key != b"_lib":
            data, at = _string(blob, at)
        modules.append((key, data))
    return tree, modules


def write_imports_blob(tree: bytes, modules: list[tuple[bytes, bytes | None]]) -> bytes:
    body = tree + b"".join(_packed(key) + (b"" if data is None else _packed(data)) for key, data in modules)
    return _packed(body)


def cuda_with_fatbin(module: bytes, source: bytes, fatbin: bytes) -> bytes:
    """A serialised CUDA module holding ``source`` as code, with ``fatbin`` in its place."""
    fmt, at = _string(module, 0)
    code = _packed(source)
    if fmt != b"cuda" or module.count(code) != 1:
        raise ValueError(f"{OP}: this TVM ({tvm.__version__}) packs CUDA modules in a layout tvm_convt "
                         f"does not know (format {fmt[:20]!r}); bundle with kernels='source'")
    start = module.index(code)
    return _packed(b"fatbin") + module[at:start] + _packed(fatbin) + module[start + len(code):]


def compile_fatbin(source: str, target: tvm.target.Target) -> bytes:
    """``source`` compiled by nvcc into a fatbin for the target's arch: its SASS, and its PTX
    for GPUs newer than the arch (the same flags TVM uses to compile at load time)."""
    from tvm.support import nvcc

    if shutil.which("nvcc") is None:
        raise ValueError(f"{OP}: shipping compiled CUDA kernels needs nvcc on PATH, and none was found; "
                         "install the CUDA toolkit, or bundle with kernels='source' (compiled at load time)")
    n = str(target.attrs["arch"]).removeprefix("sm_")
    with target:
        return bytes(nvcc.compile_cuda(source, target_format="fatbin", compiler="nvcc",
                                       arch=["-gencode", f"arch=compute_{n},code=[sm_{n},compute_{n}]"]))


def _blob_c_source(blob: bytes, symbol: str) -> str:
    """C source defining ``symbol`` as ``blob``, as TVM's own import packing writes it."""
    rows = ",\n".join(",".join(f"0x{b:02x}" for b in blob[i:i + 32]) for i in range(0, len(blob), 32))
    return (f'#ifdef __cplusplus\nextern "C" {{\n#endif\n'
            f"__attribute__((visibility(\"default\"))) extern const unsigned char {symbol}[];\n"
            f"const unsigned char {symbol}[{len(blob)}] = {{\n{rows}\n}};\n"
            f"#ifdef __cplusplus\n}}\n#endif\n")


class FatbinExport:
    """An executable whose ``export_library`` packs its CUDA kernels as fatbins, not source."""

    def __init__(self, executable: Any, target: tvm.target.Target,
                 compile_kernels: Callable[[str, tvm.target.Target], bytes] = compile_fatbin) -> None:
        self.executable = executable
        self.target = target
        self.compile_kernels = compile_kernels

    def export_library(self, path: str) -> None:
        self.executable.export_library(path, fpack_imports=self._pack)

    def _pack(self, mod: Any, is_system_lib: bool, prefix: str, workspace: str) -> str:
        blob = tvm.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes()
        tree, modules = read_imports_blob(blob)
        sources = [m.inspect_source("cuda").encode() for m in mod.imports if m.kind == "cuda"]
        patched = []
        for key, data in modules:
            if key == b"cuda":
                source = next(s for s in sources if _packed(s) in data)
                data = cuda_with_fatbin(data, source, self.compile_kernels(source.decode(), self.target))
            patched.append((key, data))
        symbol = prefix + tvm.get_global_func("runtime.ModuleImportsBlobName")()
        path = Path(workspace) / f"{prefix}devc.c"
        path.write_text(_blob_c_source(write_imports_blob(tree, patched), symbol))
        return str(path)


def fatbin_entries(data: bytes) -> list[str]:
    """What the fatbin inside ``data`` holds, as ``sm_90 SASS`` / ``compute_90 PTX`` (its header:
    magic, version, header size, size; each entry: kind, version, header size, size, ..., arch)."""
    at = data.find(FATBIN_MAGIC)
    if at < 0:
        return []
    _, _, header, size = struct.unpack_from("<IHHQ", data, at)
    entries, pos = [], at + header
    while pos < at + header + size:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
        arch = struct.unpack_from("<I", data, pos + 28)[0]
        entries.append({1: f"compute_{arch} PTX", 2: f"sm_{arch} SASS"}.get(kind, f"kind {kind} for {arch}"))
        pos += entry_header + payload
    return entries


def library_imports(path: Path) -> list[tuple[bytes, bytes | None]]:
    """The packed modules inside an exported library, read from its blob symbol."""
    lib = ctypes.CDLL(str(path))
    symbol = tvm.get_global_func("runtime.ModuleImportsBlobName")()
    size = ctypes.c_uint64.in_dll(lib, symbol).value
    blob = ctypes.string_at(ctypes.addressof(ctypes.c_uint64.in_dll(lib, symbol)), size + 8)
    return read_imports_blob(blob)[1]


# -- the folder ------------------------------------------------------------------------------------
def _file_stem(index: int, name: str) -> str:
    """A file name for a suite entry: its index (unique) and its name's safe characters."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60]
    return f"{index:02d}_{slug}" if slug else f"{index:02d}"


def write_fatbin_module(workload: Workload | SymbolicWorkload, target: tvm.target.Target, path: Path, *,
                        logs: Path | None = None, tuned: bool = True) -> ModuleMetadata:
    """Compile ``workload`` (one shape, or every one) for a CUDA target and write it to ``path`` with
    its sidecar, its kernels packed as an nvcc fatbin (:class:`FatbinExport`)."""
    if workload.symbolic:
        mod, source, ranges = schedule_symbolic(workload, target, logs=logs, tuned=tuned)
        metadata = module_metadata(workload, target, source, ranges=ranges)
    else:
        mod, source = schedule(workload, target, logs=logs, tuned=tuned)
        metadata = module_metadata(workload, target, source)
    write_library(FatbinExport(tvm.compile(mod, target=target), target), metadata, path)
    return metadata


def write_module(workload: Workload | SymbolicWorkload, target: tvm.target.Target, path: Path, *, kernels: str,
                 logs: Path | None = None, tuned: bool = True) -> ModuleMetadata:
    """Compile ``workload`` and write it to ``path`` with its sidecar; CUDA kernels as fatbins
    when ``kernels`` is "fatbin", else as the source TVM compiles at load time."""
    from .runtime import compile as compile_module

    if target.kind.name == "cuda" and kernels == "fatbin":
        return write_fatbin_module(workload, target, path, logs=logs, tuned=tuned)
    compiled = compile_module(workload.params, batch=workload.batch, length=workload.length,
                              dtype=workload.dtype, target=target, logs=logs, tuned=tuned)
    compiled.export(path)
    return compiled.metadata


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def kernels_statement(target: tvm.target.Target, kernels: str) -> str | None:
    """How the CUDA kernels are shipped, in words (None for a CPU target)."""
    if target.kind.name != "cuda":
        return None
    arch = target.attrs["arch"]
    if kernels == "fatbin":
        return (f"compiled: a fatbin built by nvcc for {arch} (SASS) with PTX that newer GPUs compile; "
                "loading needs neither NVRTC nor nvcc")
    return ("CUDA source, compiled when a module is loaded: by NVRTC through the cuda-bindings package "
            "(default) or by nvcc (TVM_CUDA_COMPILE_MODE=nvcc) on the machine that loads it")


def _tolerances() -> dict[str, float]:
    from .benchmark import CHECK_TOLERANCE

    return dict(CHECK_TOLERANCE)


def manifest(entries: list[dict[str, Any]], target: tvm.target.Target,
             python: str, kernels: str, folder: Path) -> dict[str, Any]:
    parts = ("tvm", "tvm_ffi", "psutil", "cloudpickle", "tvm_convt", "modules", "numpy", "numpy.libs")
    sizes = {name: _tree_bytes(folder / name) for name in parts if (folder / name).exists()}
    sizes["typing_extensions"] = (folder / "typing_extensions.py").stat().st_size
    numpy = [] if (folder / "numpy").exists() else ["numpy"]
    return {"format": MANIFEST_FORMAT, "python": python, "arch": bundle_arch(target), "tvm": tvm.__version__,
            "tvm_ffi": importlib.metadata.version("apache-tvm-ffi"), "tvm_convt": __version__,
            "target": json.loads(target_json(target)), "target_key": target_key(target),
            "cuda_kernels": kernels_statement(target, kernels), "workloads": entries,
            "tolerance": _tolerances(), "needs": ["python " + python, *numpy, "ml_dtypes (bfloat16 only)"],
            "sizes": {**sizes, "total": sum(sizes.values())}}


def bundle_arch(target: tvm.target.Target) -> str:
    """The architecture of the CPU that runs a bundle for ``target`` (a CUDA target's host: this one's)."""
    return target_arch(target) if target.kind.name == "llvm" else host_arch()


def write_modules(suite: dict[str, Workload], target: tvm.target.Target, folder: Path, *, kernels: str,
                  logs: Path | None, any_length: bool = False) -> list[dict[str, Any]]:
    """One module per suite entry: for its shape, or (``any_length``) for every batch and length,
    which ``run.py --check`` runs at the entry's shape and at lengths on either side of it."""
    (folder / "modules").mkdir()
    entries = []
    for index, (name, workload) in enumerate(suite.items()):
        path = folder / "modules" / f"{_file_stem(index, name)}.so"
        built = SymbolicWorkload(workload.params, workload.dtype) if any_length else workload
        metadata = write_module(built, target, path, kernels=kernels, logs=logs)
        entries.append({"name": name, "workload": workload.to_dict(), "any_length": any_length,
                        "library": str(path.relative_to(folder)),
                        "sidecar": str(path.with_suffix(".json").relative_to(folder)),
                        "schedule": metadata.schedule, "bytes": path.stat().st_size,
                        "fatbin": fatbin_entries(path.read_bytes()) if kernels == "fatbin" else []})
    return entries


def write_bundle(suite: dict[str, Workload], folder: str | Path, *, target: TargetLike = "llvm",
                 python: str | None = None, kernels: str = "fatbin", logs: Path | None = None,
                 any_length: bool = False) -> BundleReport:
    """Write a self-contained runtime-only folder for ``suite`` compiled for ``target``.

    A CPU target of another architecture (aarch64 on an x86 machine) gets that architecture's
    runtime: TVM's runtime libraries, tvm_ffi, psutil and NumPy from the wheels for it and
    ``python``, downloaded with pip.

    Args:
        suite: workloads by name (a suite file's, :func:`tvm_convt.suite.load_suite`).
        folder: the folder to create; it must not exist, or be empty.
        target: the target to compile for (``"llvm"`` is this machine's CPU).
        python: the ``3.N`` Python version that will run it (default: this one's).
        kernels: CUDA kernels as a "fatbin" compiled here (default) or as "source".
        logs: tuning logs to take schedules from (default: as :func:`tvm_convt.compile`).
        any_length: one module per layer for every batch and length, instead of the suite's shape.
    """
    python = check_python_version(this_python() if python is None else python)
    if kernels not in KERNELS:
        raise ValueError(f"{OP}: kernels must be one of {', '.join(KERNELS)}, got kernels={kernels!r}")
    tgt = resolve_target(target)
    platform = bundle_platform(bundle_arch(tgt))
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{OP}: the bundle folder must not exist or be empty, got {str(folder)!r}")
    # Written beside the folder and renamed at the end, so a failure leaves no half bundle.
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as err:  # a read-only or special file system
        raise type(err)(err.errno, f"{OP}: cannot write a bundle into {folder.parent}: {err.strerror}") from None
    work.chmod(0o755)
    try:
        copy_runtime(work, python, cuda=tgt.kind.name == "cuda", platform=platform)
        entries = write_modules(suite, tgt, work, kernels=kernels, logs=logs, any_length=any_length)
        info = manifest(entries, tgt, python, kernels, work)
        write_docs(work, info)
        if folder.exists():
            folder.rmdir()
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BundleReport(folder, info)


RUN_PY = '''\"\"\"Load every module of this bundle; with --check, run each on random input against the NumPy reference.

Usage: python run.py [--check] [--time]   (it puts its own folder first on sys.path)
Prints one line per module (OK or FAIL and why; with --time, the median of 21 calls at the manifest's
shape, NumPy in and a new array out, and its GFLOP/s) and exits with 1 when any failed, 2 when the
bundle itself cannot be used here (its manifest, the Python version it was built for, its libraries).
\"\"\"

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_manifest():
    \"\"\"The manifest, or None after saying why it cannot be read.\"\"\"
    try:
        manifest = json.loads((HERE / "manifest.json").read_text())
        manifest["workloads"], manifest["python"], manifest["tolerance"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"run.py: error: {HERE / 'manifest.json'} cannot be read as this bundle's manifest: "
              f"{type(err).__name__}: {err}")
        return None
    return manifest


def import_runtime():
    \"\"\"The runtime's pieces, or None after saying why they do not import.\"\"\"
    sys.path.insert(0, str(HERE))
    try:
        import numpy as np
        from tvm_convt import CompiledConvTranspose1d
        from tvm_convt.params import Workload, numpy_dtype
        from tvm_convt.reference import conv_transpose1d_reference
    except Exception as err:  # noqa: BLE001 - a damaged library raises whatever its loader raises
        print(f"run.py: error: the bundle's runtime does not import here: {type(err).__name__}: {err}")
        return None
    return np, CompiledConvTranspose1d, numpy_dtype, conv_transpose1d_reference, Workload


def check_shapes(entry, workload_class):
    \"\"\"The shapes a module is checked at: its entry's; for a module of every length, also length 1
    (batch 1) and 7 beyond the entry's (batch 2).\"\"\"
    w = workload_class.from_dict(entry["workload"])
    if not entry.get("any_length"):
        return [w]
    return [w] + [workload_class(w.params, batch, length, w.dtype) for batch, length in ((1, 1), (2, w.length + 7))]


def random_inputs(w, rng, numpy_dtype):
    \"\"\"x, weight and bias (None without one) of ``w``'s shapes, random.\"\"\"
    dtype = numpy_dtype(w.dtype)
    x = rng.standard_normal(w.input_shape).astype(dtype)
    weight = rng.standard_normal(w.params.weight_shape).astype(dtype)
    bias = rng.standard_normal(w.params.out_channels).astype(dtype) if w.params.bias else None
    return x, weight, bias


def relative_error(w, module, rng, np, numpy_dtype, reference):
    \"\"\"The module's largest error on random input of ``w``'s shape, relative to max(1, max|reference|).\"\"\"
    x, weight, bias = random_inputs(w, rng, numpy_dtype)
    y = np.asarray(module(x, weight, bias), dtype=np.float64)
    expected = reference(x, weight, bias, w.params)
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(y - expected))) / max(1.0, float(np.max(np.abs(expected))))


def median_call(w, module, rng, numpy_dtype, calls=21):
    \"\"\"Median seconds of the module's call on random input of ``w``'s shape, after two warm-up calls.\"\"\"
    import time

    x, weight, bias = random_inputs(w, rng, numpy_dtype)
    module(x, weight, bias)
    module(x, weight, bias)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        module(x, weight, bias)
        times.append(time.perf_counter() - start)
    return sorted(times)[calls // 2]


def check_module(entry, check, manifest, runtime, rng, timed=False):
    \"\"\"One module's line and whether it passed.\"\"\"
    np, compiled_class, numpy_dtype, reference, workload_class = runtime
    name = entry.get("name", "?")
    try:
        module = compiled_class.load(HERE / entry["library"])
        line = f"{name}: loaded {entry['library']} ({module.metadata.target_key})"
        if timed:
            w = workload_class.from_dict(entry["workload"])
            seconds = median_call(w, module, rng, numpy_dtype)
            line += f", {seconds * 1e3:.3f} ms, {w.flops / seconds / 1e9:.3g} GFLOP/s"
        if not check:
            return line + ": OK", True
        error = max(relative_error(w, module, rng, np, numpy_dtype, reference)
                    for w in check_shapes(entry, workload_class))
    except RuntimeError as err:  # no GPU, or a CPU without the target's instructions
        return f"{name}: FAIL: cannot run here: {err}", False
    except Exception as err:  # noqa: BLE001 - a damaged file: say so and go on to the next module
        return f"{name}: FAIL: {type(err).__name__}: {err}", False
    ok = error <= manifest["tolerance"][module.workload.dtype]
    return line + f", max relative error {error:.2e}: {'OK' if ok else 'FAIL'}", ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="run each module on random input and compare with the float64 reference")
    parser.add_argument("--time", action="store_true",
                        help="time each module's call at the manifest's shape (median of 21) and its GFLOP/s")
    args = parser.parse_args()
    manifest = read_manifest()
    if manifest is None:
        return 2
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        print(f"run.py: error: this bundle was built for Python {manifest['python']} and this is Python {here}: "
              f"run it with python{manifest['python']}, or build it again with --python {here}")
        return 2
    runtime = import_runtime()
    if runtime is None:
        return 2
    rng = runtime[0].random.default_rng(0)
    failed = 0
    for entry in manifest["workloads"]:
        line, ok = check_module(entry, args.check, manifest, runtime, rng, timed=args.time)
        failed += not ok
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
'''


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def readme(info: dict[str, Any]) -> str:
    """The bundle's README: what is in it, what the machine needs, how to run it."""
    s = info["sizes"]
    first = info["workloads"][0]["library"]
    kernels = f"\nCUDA kernels: {info['cuda_kernels']}.\n" if info["cuda_kernels"] else ""
    numpy = s.get("numpy", 0) + s.get("numpy.libs", 0)
    numpy_row = f"\n| numpy (for this architecture) | {_mib(numpy)} |" if numpy else ""
    needs = " and ".join(n for n in info["needs"] if not n.startswith("ml_dtypes")) + " (ml_dtypes for bfloat16)"
    return f"""# tvm_convt runtime bundle ({info['target_key']})

Compiled ConvTranspose1d modules and the runtime that loads them, without TVM's compiler.
Target: `{json.dumps(info['target'], sort_keys=True)}`; tvm {info['tvm']}, tvm_ffi {info['tvm_ffi']},
tvm_convt {info['tvm_convt']}; for Python {info['python']} on Linux {info['arch']}.
{kernels}
| part | size |
|---|---|
| tvm (runtime libraries and Python, no libtvm_compiler.so) | {_mib(s['tvm'])} |
| tvm_ffi | {_mib(s['tvm_ffi'])} |
| psutil, cloudpickle, typing_extensions | {_mib(s['psutil'] + s['cloudpickle'] + s['typing_extensions'])} |{numpy_row}
| tvm_convt (runtime files) | {_mib(s['tvm_convt'])} |
| modules ({len(info['workloads'])} x .so + .json) | {_mib(s['modules'])} |
| total | {_mib(s['total'])} |

The machine needs {needs}, nothing else.

    python run.py --check          # load every module, run it, compare with the NumPy reference
    python run.py --time           # and time each one here (median ms and GFLOP/s)
    PYTHONPATH=$PWD python -c "from tvm_convt import CompiledConvTranspose1d as C; print(C.load('{first}'))"

To tune for this machine from another one (`tvm-convt tune --rpc-tracker HOST:9190 --rpc-key KEY` there),
start TVM's RPC server here with this runtime; it measures the modules it is sent, no compiler needed:

    PYTHONPATH=$PWD python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY

`CompiledConvTranspose1d.load(path)(x, weight, bias)` takes NumPy arrays or DLPack tensors
(torch, CuPy; CUDA tensors stay on the GPU) and returns the caller's kind of array.
`manifest.json` lists the workloads, their files, the target and the sizes.
"""


def write_docs(folder: Path, info: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").write_text(readme(info))
    (folder / "run.py").write_text(RUN_PY)
