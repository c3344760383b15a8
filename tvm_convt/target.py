"""Targets: parsing user input and naming the hardware class.

A target is given as ``"llvm"`` (this machine's CPU), ``"cuda"`` (the local
GPU, whose compute capability is then required), or a JSON dict in TVM 0.27's
form (``{"kind": "cuda", "arch": "sm_90"}``). :func:`target_key` names the
hardware class that schedules and tuning records are kept under, so a record
tuned for AVX-512 is never applied on an AVX2 machine, nor sm_90 on sm_80.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from typing import Any

import tvm
from tvm.target import Target

from ._cores import host_cores  # noqa: F401 - used here and imported from here by the benchmarks
from ._runtime_only import compiler_available
from .errors import CompilerUnavailable
from .linker import CROSS_LINKERS, host_arch, target_arch, triple_arch
from .params import OP

TargetLike = str | dict[str, Any] | Target

# MetaSchedule needs these four on a CUDA target; used when the user names only the arch.
_CUDA_DEFAULTS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                  "thread_warp_size": 32}


def logical_cpus() -> int:
    """Logical CPUs of this machine (at least those this process may run on)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = 0
    return max(usable, os.cpu_count() or 1)


def set_cpu_threads(threads: int) -> None:
    """Resize TVM's CPU thread pool to ``threads`` now (and for child processes).

    At most this machine's logical CPUs: TVM starts one OS thread per requested thread at
    the next parallel kernel (5000 took two minutes here, 50000 aborted the process), and
    a compute-bound kernel gains nothing past one thread per logical CPU.
    """
    import tvm_ffi

    limit = logical_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise ValueError(f"{OP}: threads must be an int from 1 to this machine's {limit} logical CPUs, "
                         f"got threads={threads!r}")
    if _FORKED and threads > 1:
        raise ValueError(f"{OP}: a process made by fork runs TVM's kernels on one thread (the parent's "
                         f"worker threads do not exist in it), got threads={threads}; start it with the "
                         "'spawn' method to use more")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    # mode 1: the "big" cores, which on a machine without big.LITTLE are all of them.
    tvm_ffi.get_global_func("runtime.config_threadpool")(1, threads)


# Whether this process was made by os.fork from one that had imported tvm_convt.
_FORKED = False


def _one_thread_after_fork() -> None:
    """In a forked child, TVM's thread pool (per calling thread) still lists the parent's worker
    threads, which fork did not copy: the first parallel kernel would wait for them forever. With
    one thread the calling thread runs every task itself and no worker is waited for."""
    global _FORKED
    _FORKED = True
    import tvm_ffi

    os.environ["TVM_NUM_THREADS"] = "1"
    tvm_ffi.get_global_func("runtime.config_threadpool")(1, 1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_thread_after_fork)


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


def _add_host_cpu(config: dict[str, Any]) -> None:
    """This machine's mcpu, and its mattr before the user's own (which LLVM applies last, so they win)."""
    host = host_cpu_config()
    config["mcpu"] = host["mcpu"]
    user = config.get("mattr", [])
    if isinstance(user, (list, tuple)):
        if host.get("mattr") or user:
            config["mattr"] = [*host.get("mattr", []), *user]
    # else: not a list, which Target() refuses below with TVM's message


# Examples of mattr entries per architecture, for the error message.
_MATTR_EXAMPLES = {"x86_64": "+avx2 or -avx512f", "aarch64": "+sve or +fullfp16"}


@functools.lru_cache(maxsize=8)
def _arch_features(triple: str) -> tuple[frozenset[str], frozenset[str]]:
    """The features some CPU of ``triple``'s architecture has and those every one has, as LLVM lists
    them (for another architecture than this machine's, which has no host CPU to ask)."""
    base = {"kind": "llvm", "mtriple": triple}
    cpus = [str(c) for c in tvm.target.codegen.llvm_get_cpu_archlist(Target(base))]
    each = [frozenset(str(f) for f in tvm.target.codegen.llvm_get_cpu_features(Target({**base, "mcpu": cpu})))
            for cpu in cpus]
    return frozenset().union(*each), frozenset.intersection(*each)


def _check_cpu_features(config: dict[str, Any]) -> None:
    """Refuse an mattr entry that is not a feature of the target's architecture (LLVM ignores an
    unknown one with a warning; on this machine's architecture, its mode and ABI switches such as
    +16bit-mode, +soft-float or +retpoline-external-thunk crash the process when compiling or
    calling), one that switches off what every CPU of the architecture has (-sse, -64bit, -neon),
    and an mcpu that lacks those (i386 on x86_64): LLVM aborts or writes a library that cannot run."""
    host = tvm.target.codegen.llvm_get_system_triple()
    triple = config.get("mtriple", host)
    if not isinstance(triple, str):
        return  # Target() refuses it below with TVM's message
    arch = triple_arch(triple)
    if arch == triple_arch(host):
        isa = {str(k) for k in dict(_host_cpu_features())}
        generic = Target({"kind": "llvm", "mcpu": "generic", **({"mtriple": triple} if "mtriple" in config else {})})
        baseline = isa & {str(f) for f in tvm.target.codegen.llvm_get_cpu_features(generic)}
    elif arch in CROSS_LINKERS:
        isa, baseline = (set(features) for features in _arch_features(triple))
    else:
        return  # refused by check_linkable when compiled
    mattr = config.get("mattr", [])
    for entry in mattr if isinstance(mattr, (list, tuple)) else []:
        if not (isinstance(entry, str) and entry[:1] in ("+", "-") and entry[1:] in isa):
            raise ValueError(f"{OP}: mattr entries must be +feature or -feature for an instruction-set "
                             f"feature of {arch} such as {_MATTR_EXAMPLES.get(arch, '+feature')}, got {entry!r}")
        if entry[0] == "-" and entry[1:] in baseline:
            raise ValueError(f"{OP}: mattr cannot switch off {entry[1:]}, which every {arch} CPU has, got {entry!r}")
    if isinstance(config.get("mcpu"), str):
        cpu = Target({k: v for k, v in config.items() if k in ("kind", "mtriple", "mcpu")})
        lacking = sorted(baseline - {str(f) for f in tvm.target.codegen.llvm_get_cpu_features(cpu)})
        if lacking:
            raise ValueError(f"{OP}: mcpu must name an {arch} CPU, but {config['mcpu']!r} lacks "
                             f"{', '.join(lacking)} (a 32-bit CPU?), got mcpu={config['mcpu']!r}")


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
    if not compiler_available():
        raise CompilerUnavailable(
            f"{OP}: compiling needs the full install (pip install tvm_convt, with apache-tvm's compiler), and this "
            "is a runtime-only install (a bundle): load its compiled modules with CompiledConvTranspose1d.load")
    key = _cache_key(spec)
    return _resolve(spec) if key is None else _resolve_cached(key)


def _cache_key(spec: Any) -> str | None:
    """A string naming ``spec`` exactly, or None when it has no exact JSON form (a Target, a tuple)."""
    if isinstance(spec, str):
        return json.dumps(spec)
    if isinstance(spec, dict):
        try:
            text = json.dumps(spec, sort_keys=True)
        except (TypeError, ValueError):
            return None
        return text if json.loads(text) == spec else None
    return None


@functools.lru_cache(maxsize=256)
def _resolve_cached(key: str) -> Target:
    # Checking a target asks LLVM about CPUs and features (10 ms); the functional API
    # resolves its target on every call.
    return _resolve(json.loads(key))


def _resolve(spec: TargetLike) -> Target:
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
            except RecursionError:
                raise ValueError(f"{OP}: target nests its JSON too deeply, got target={spec[:40]!r}...") from None
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
            _add_host_cpu(config)
        elif "mcpu" in config:
            _check_mcpu(config)
        _check_cpu_features(config)
        cores = config.setdefault("num-cores", host_cores())
        if isinstance(cores, int) and cores < 1:  # other types: TVM's own check below
            raise ValueError(f"{OP}: num-cores must be positive, got num-cores={cores!r}")
    elif kind == "cuda":
        if "arch" not in config:
            config["arch"] = _cuda_arch_of_local_gpu()
        _check_cuda_arch(config["arch"])
        for key, value in _CUDA_DEFAULTS.items():
            config.setdefault(key, value)
    else:
        raise ValueError(f"{OP}: target kind must be 'llvm' or 'cuda', got kind={kind!r}")
    if "host" in config:
        config["host"] = _host_target(config["host"])
    config.pop("keys", None)  # derived by TVM from the kind
    config.pop("tag", None)
    try:
        target = Target(config)
        for cpu in (target, target.host):
            if cpu is not None and cpu.kind.name == "llvm":
                # LLVM reads some options (vector-width, mfloat-abi) only when it builds for the
                # target, where TVM raises an InternalError: read them now.
                tvm.target.codegen.llvm_get_cpu_features(cpu)
        return target
    except Exception as err:  # noqa: BLE001 - TVM reports bad attributes with its own errors
        raise ValueError(f"{OP}: TVM rejected target {json.dumps(config)}: {err}") from None


def _host_target(spec: Any) -> dict[str, Any]:
    """A target's ``host`` (the CPU that runs its host code), completed and checked as a target."""
    if isinstance(spec, dict) and "host" in spec:
        raise ValueError(f"{OP}: a target's host cannot have a host of its own, got host={spec!r}")
    host = resolve_target(spec)
    if host.kind.name != "llvm":
        raise ValueError(f"{OP}: a target's host must be an llvm target, got host={spec!r}")
    return json.loads(target_json(host))


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


# Features LLVM uses only through intrinsics, never in generated arithmetic: a module built
# for a CPU that has them runs on one that does not. sse4a (AMD) is emitted only for a few
# integer shuffles this operator has none of; exempting it lets Zen code (mcpu=znver3, the
# README's AVX2 path) run on Intel hosts. pku, shstk and wbnoinvd are system instructions
# (protection keys, shadow stacks, cache write-back) that VMs hide from their guests.
_INTRINSIC_ONLY = frozenset({
    "avx512vp2intersect", "avxifma", "avxneconvert", "avxvnniint8", "avxvnniint16", "clzero",
    "cmpccxadd", "enqcmd", "hreset", "kl", "widekl", "lwp", "movrs", "mwaitx", "pconfig", "pku",
    "prefetchi", "ptwrite", "raoint", "rdpru", "rtm", "sgx", "sha512", "shstk", "sm3", "sm4", "sse4a",
    "uintr", "usermsr", "waitpkg", "wbnoinvd"})


def missing_cpu_support(target: Target) -> str | None:
    """What this machine's CPU lacks to run code built for ``target`` (None: nothing), so that
    a module for another CPU raises instead of dying of SIGILL."""
    if target.host is not None and target.host.kind.name == "llvm" and not target.host.same_as(target):
        missing = missing_cpu_support(target.host)
        if missing is not None:
            return missing
    if target.kind.name != "llvm":
        return None
    arch = target_arch(target)
    if arch != host_arch():
        return f"an {arch} CPU"
    host = {str(k): bool(v) for k, v in dict(_host_cpu_features()).items()}
    wanted = [str(f) for f in tvm.target.codegen.llvm_get_cpu_features(target)]
    # Features the host dict does not name are LLVM's tuning flags, not instructions.
    missing = sorted(f for f in wanted if host.get(f) is False and f not in _INTRINSIC_ONLY)
    return f"a CPU with {', '.join(missing)}" if missing else None


def device_of(target: Target) -> tvm.runtime.Device:
    return tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)
