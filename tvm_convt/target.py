"""Targets: parsing user input and naming the hardware class.

A target is given as ``"llvm"`` (this machine's CPU), ``"cuda"`` (the local
GPU, whose compute capability is then required), or a JSON dict in TVM 0.27's
form (``{"kind": "cuda", "arch": "sm_90"}``). :func:`target_key` names the
hardware class that schedules and tuning records are kept under, so a record
tuned for AVX-512 is never applied on an AVX2 machine, nor sm_90 on sm_80.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from typing import Any

import tvm
from tvm.target import Target

from .params import OP

TargetLike = str | dict[str, Any] | Target

# MetaSchedule needs these four on a CUDA target; used when the user names only the arch.
_CUDA_DEFAULTS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                  "thread_warp_size": 32}


def host_cores() -> int:
    """Physical cores this process may run on: the threads a compute-bound kernel wants."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    import psutil

    physical = psutil.cpu_count(logical=False) or usable
    return max(1, min(usable, physical))


def use_all_cores() -> None:
    """Give TVM's CPU thread pool one thread per physical core, unless the user chose.

    On x86 TVM's runtime starts half as many threads as logical CPUs, assuming
    hyper-threading; on a machine without it (a 2-vCPU VM, say) that is half the
    cores: measured here, 88 GFLOP/s with 1 thread against 166 with 2 on the same
    GEMM. TVM reads ``TVM_NUM_THREADS`` when its pool first starts, so this must
    run before any TVM CPU kernel does; child processes (MetaSchedule's
    measuring workers) inherit it.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))


def set_cpu_threads(threads: int) -> None:
    """Resize TVM's CPU thread pool to ``threads`` now (and for child processes)."""
    import tvm_ffi

    os.environ["TVM_NUM_THREADS"] = str(threads)
    # mode 1: the "big" cores, which on a machine without big.LITTLE are all of them.
    tvm_ffi.get_global_func("runtime.config_threadpool")(1, threads)


def host_cpu_config() -> dict[str, Any]:
    """``mcpu`` and ``mattr`` for this machine's CPU, limited to what the CPU reports it has.

    LLVM names the CPU from its family and model, so a virtual machine that hides
    AVX-512 from a Zen 4 host still gets ``znver4`` and code that dies with SIGILL;
    the features the named CPU implies and the host lacks are switched off in ``mattr``.
    """
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    config: dict[str, Any] = {"mcpu": cpu}
    host = {str(k): bool(v) for k, v in dict(_host_cpu_features()).items()}
    implied = tvm.target.codegen.llvm_get_cpu_features(Target({"kind": "llvm", "mcpu": cpu}))
    absent = sorted(f for f in implied if f in host and not host[f])
    if absent:
        config["mattr"] = [f"-{f}" for f in absent]
    return config


def _host_cpu_features():
    import tvm_ffi

    return tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()


def _cuda_arch_of_local_gpu() -> str:
    dev = tvm.cuda(0)
    if not dev.exist:
        raise ValueError(
            f"{OP}: target 'cuda' needs a GPU to read its compute capability, and none was found; "
            'name the architecture instead, for example {"kind": "cuda", "arch": "sm_90"}'
        )
    return "sm_" + dev.compute_version.replace(".", "")


# Architecture names LLVM accepts in a triple beyond its target names (sub-architectures).
_TRIPLE_ARCH_ALIASES = re.compile(r"i[3-6]86|amd64|arm64|(arm|armeb|thumb|thumbeb)v[0-9][0-9.a-z]*")


def _check_mtriple(triple: Any) -> None:
    """Refuse a triple whose architecture LLVM has no backend for (TVM 0.27 segfaults on one)."""
    arch = triple.split("-")[0] if isinstance(triple, str) else None
    known = [str(name) for name in tvm.target.codegen.llvm_get_targets()]
    if arch is None or not (arch in known or _TRIPLE_ARCH_ALIASES.fullmatch(arch)):
        raise ValueError(
            f"{OP}: mtriple must start with an architecture LLVM can generate code for "
            f"(one of {', '.join(known)}), got mtriple={triple!r}")


def _check_mcpu(config: dict[str, Any]) -> None:
    """Refuse a CPU name LLVM does not know (it would warn and build for a generic CPU)."""
    mcpu = config["mcpu"]
    base: dict[str, Any] = {"kind": "llvm"}
    if "mtriple" in config:
        base["mtriple"] = config["mtriple"]
    known = [str(name) for name in tvm.target.codegen.llvm_get_cpu_archlist(Target(base))]
    if not isinstance(mcpu, str) or mcpu not in known:
        close = difflib.get_close_matches(str(mcpu), known, n=4)
        hint = f"close names: {', '.join(close)}; " if close else ""
        raise ValueError(
            f"{OP}: mcpu must be a CPU name LLVM knows for this triple, got mcpu={mcpu!r}; {hint}"
            f"tvm.target.codegen.llvm_get_cpu_archlist() lists all {len(known)} "
            f"(this machine: {tvm.target.codegen.llvm_get_system_cpu()})")


_CUDA_ARCH = re.compile(r"sm_([1-9][0-9]{1,2})[af]?")


def _check_cuda_arch(arch: Any) -> None:
    """Refuse an arch that is not ``sm_<compute capability>`` (TVM fails deep inside otherwise)."""
    match = _CUDA_ARCH.fullmatch(arch) if isinstance(arch, str) else None
    if match is None or int(match.group(1)) < 50:
        raise ValueError(
            f"{OP}: CUDA arch must be sm_ and a compute capability of 5.0 or later, such as "
            f"sm_80, sm_90 or sm_90a, got arch={arch!r}; "
            "`nvidia-smi --query-gpu=compute_cap --format=csv` prints a GPU's")


def resolve_target(spec: TargetLike) -> Target:
    """Turn ``"llvm"``, ``"cuda"``, a JSON string or a dict into a complete TVM target.

    A CPU target gets this machine's ``mcpu`` and ``mattr`` (so LLVM uses its
    instruction set, and only what the CPU reports) and ``num-cores`` unless given; a CUDA target gets ``arch`` from the local GPU
    when not given, and MetaSchedule's required limits.
    """
    if isinstance(spec, Target):
        config: dict[str, Any] = dict(spec.export())
    elif isinstance(spec, dict):
        config = dict(spec)
    elif isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                config = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{OP}: target is not valid JSON ({err.msg}), got target={spec!r}") from None
            if not isinstance(config, dict):
                raise ValueError(f"{OP}: a JSON target must be an object, got target={spec!r}")
        elif text in ("llvm", "cpu", "cuda"):
            config = {"kind": "llvm" if text == "cpu" else text}
        else:
            raise ValueError(
                f"{OP}: target must be 'llvm', 'cuda' or a JSON dict such as "
                f'{{"kind": "llvm", "mcpu": "znver3"}}, got target={spec!r}'
            )
    else:
        raise TypeError(f"{OP}: target must be a str, dict or tvm.target.Target, got target={spec!r} "
                        f"({type(spec).__name__})")
    kind = config.get("kind")
    if kind == "llvm":
        if "mtriple" in config:
            _check_mtriple(config["mtriple"])
        if "mtriple" not in config and "mcpu" not in config:
            config.update(host_cpu_config())
        elif "mcpu" in config:
            _check_mcpu(config)
        config.setdefault("num-cores", host_cores())
    elif kind == "cuda":
        if "arch" not in config:
            config["arch"] = _cuda_arch_of_local_gpu()
        _check_cuda_arch(config["arch"])
        for key, value in _CUDA_DEFAULTS.items():
            config.setdefault(key, value)
    else:
        raise ValueError(f"{OP}: target kind must be 'llvm' or 'cuda', got kind={kind!r}")
    config.pop("keys", None)  # derived by TVM from the kind
    config.pop("tag", None)
    try:
        return Target(config)
    except Exception as err:  # noqa: BLE001 - TVM reports bad attributes with its own errors
        raise ValueError(f"{OP}: TVM rejected target {json.dumps(config)}: {err}") from None


def cpu_isa(target: Target) -> tuple[str, str]:
    """The CPU's architecture and widest vector instruction set, as LLVM sees the target:
    ``("x86_64", "avx512")``, ``("x86_64", "avx2")``, ``("aarch64", "neon")``.

    Read from the target's features (its ``mcpu``/``mattr``), not from the host:
    ``llvm_get_vector_width`` reports the host's width whatever ``mcpu`` says.
    """
    triple = str(target.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple()
    arch = triple.split("-")[0]
    has = tvm.target.codegen.llvm_cpu_has_features
    if arch in ("x86_64", "i686", "i386"):
        with target:
            isa = next((name for feature, name in (("avx512f", "avx512"), ("avx2", "avx2"),
                                                    ("avx", "avx"), ("sse4.2", "sse4"))
                        if has(feature, target)), "generic")
    elif arch in ("aarch64", "arm64"):
        with target:
            isa = "sve" if has("sve", target) else "neon"
    else:
        isa = str(target.attrs.get("mcpu", "generic"))
    return arch, isa


def target_key(target: Target) -> str:
    """Name the hardware class: ``llvm-x86_64-avx512``, ``llvm-aarch64-neon``, ``cuda-sm_90``."""
    if target.kind.name == "cuda":
        return f"cuda-{target.attrs['arch']}"
    arch, isa = cpu_isa(target)
    return f"llvm-{arch}-{isa}"


def target_json(target: Target) -> str:
    """A stable JSON form of a target, for metadata and cache keys."""
    # keys, tag and feature.* are derived by TVM from the rest; dropping them keeps
    # the JSON accepted by resolve_target, so it round-trips.
    config = {k: _plain(v) for k, v in dict(target.export()).items()
              if k not in ("keys", "tag") and not k.startswith("feature.")}
    return json.dumps(config, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    """TVM's containers as JSON-ready Python values (an ``mattr`` Array as a list)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    try:
        return [_plain(v) for v in value]
    except TypeError:
        return str(value)


def device_of(target: Target) -> tvm.runtime.Device:
    return tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)
