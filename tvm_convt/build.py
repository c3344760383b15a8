"""Compiling a workload into a module, with an on-disk cache.

:func:`compile` schedules the tensor expression (a tuned record when one is
given, else the default rule for the target), builds it with ``tvm.compile``,
and writes the shared library and its metadata sidecar into the cache. The
cache key covers the scheduled program itself (its TVMScript text), the
target and the TVM version, so a new schedule or compute never reuses a stale
module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
from tvm.target import Target

from ._files import read_json, write_atomic
from .params import OP, Workload
from .records import find_tuned_schedule, prim_func
from .schedule import default_schedule
from .target import TargetLike, resolve_target, target_json, target_key

METADATA_FORMAT = 1


@dataclass(frozen=True)
class ModuleMetadata:
    """What a compiled module computes and how it was made; stored as the ``.json`` sidecar."""

    workload: Workload
    target: str  # JSON, accepted by resolve_target
    target_key: str
    schedule: str  # "default:<rule>" or "tuned:<source>"
    tvm_version: str
    package_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"format": METADATA_FORMAT, "workload": self.workload.to_dict(),
                # Derived, for readers of the file; from_dict recomputes them.
                "input_shape": list(self.workload.input_shape),
                "weight_shape": list(self.workload.params.weight_shape),
                "output_shape": list(self.workload.output_shape),
                "target": json.loads(self.target), "target_key": self.target_key,
                "schedule": self.schedule, "tvm_version": self.tvm_version,
                "package_version": self.package_version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModuleMetadata:
        if d.get("format") != METADATA_FORMAT:
            raise ValueError(f"{OP}: metadata format must be {METADATA_FORMAT}, got format={d.get('format')!r}")
        return cls(Workload.from_dict(d["workload"]), json.dumps(d["target"], sort_keys=True),
                   d["target_key"], d["schedule"], d["tvm_version"], d["package_version"])


def sidecar_path(library: Path) -> Path:
    return Path(library).with_suffix(".json")


def cache_dir() -> Path:
    """``$TVM_CONVT_CACHE``, else ``$XDG_CACHE_HOME/tvm_convt``, else ``~/.cache/tvm_convt``."""
    env = os.environ.get("TVM_CONVT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tvm_convt"


def schedule(
    workload: Workload, target: Target, *, rule: str | None = None, logs: str | Path | None = None,
    tuned: bool = True,
) -> tuple[tvm.IRModule, str]:
    """Return the scheduled module and where its schedule came from.

    A tuned record for the target's hardware class comes first (the user's
    tuning logs, ``logs`` or ``$TVM_CONVT_TUNING_LOGS``, then the shipped
    ``schedules/``), then the default rules. ``rule`` forces one default rule by
    name and ``tuned=False`` skips the records (for tests and benchmarks).
    The source reads ``tuned:<directory>`` or ``default:<rule>``.
    """
    if tuned and rule is None:
        found = find_tuned_schedule(workload, target, logs=logs)
        if found is not None:
            return found.mod, found.source
    sch, name = default_schedule(prim_func(workload), workload, target, rule=rule)
    return sch.mod, f"default:{name}"


def device_source(workload: Workload, *, target: TargetLike, rule: str | None = None) -> str:
    """The generated device code (CUDA C++ for a CUDA target) of the default schedule,
    or of the default rule named ``rule``.

    TVM 0.27 keeps CUDA kernels as source inside the library and compiles them
    when the library is loaded; this returns that source, so it can be checked
    with ``nvcc`` on a machine without a GPU.
    """
    tgt = resolve_target(target)
    if tgt.kind.name != "cuda":
        raise ValueError(f"{OP}: device_source needs a CUDA target, got kind={tgt.kind.name!r}")
    mod, _ = schedule(workload, tgt, rule=rule, tuned=False)
    executable = tvm.compile(mod, target=tgt)
    return "\n".join(m.inspect_source("cuda") for m in executable.mod.imports if m.kind == "cuda")


def write_library(executable: Any, metadata: ModuleMetadata, library: Path) -> None:
    """Export ``executable`` to ``library`` and its sidecar, each atomically; the sidecar
    goes last, so a reader that finds it also finds a complete library."""
    write_atomic(library, lambda tmp: executable.export_library(str(tmp)), 0o755)
    write_metadata(metadata, library)


def write_metadata(metadata: ModuleMetadata, library: Path) -> None:
    text = json.dumps(metadata.to_dict(), indent=2, sort_keys=True)
    write_atomic(sidecar_path(library), lambda tmp: tmp.write_text(text))


def copy_library(source: Path, metadata: ModuleMetadata, library: Path) -> None:
    write_atomic(library, lambda tmp: shutil.copyfile(source, tmp), 0o755)
    write_metadata(metadata, library)


def read_metadata(library: Path) -> ModuleMetadata:
    side = sidecar_path(library)
    data = read_json(side, "metadata sidecar")
    if not isinstance(data, dict):
        raise ValueError(f"{OP}: metadata sidecar {side} must hold a JSON object, got {type(data).__name__}")
    try:
        return ModuleMetadata.from_dict(data)
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{OP}: metadata sidecar {side} is incomplete: {err!r}") from None


_build_lock = threading.Lock()


def build_library(
    workload: Workload, *, target: TargetLike = "llvm", use_cache: bool = True,
    rule: str | None = None, logs: str | Path | None = None, tuned: bool = True,
) -> tuple[Path, ModuleMetadata]:
    """Compile ``workload`` for ``target`` and return the library's path and metadata.

    The library lives in :func:`cache_dir` under a key of the scheduled program,
    the target and the TVM version; a later call, in this or another process,
    finds it there and compiles nothing. With ``use_cache=False`` it is built
    into a fresh temporary folder instead, which the caller then owns.
    """
    from . import __version__

    tgt = resolve_target(target)
    mod, source = schedule(workload, tgt, rule=rule, logs=logs, tuned=tuned)
    tjson = target_json(tgt)
    metadata = ModuleMetadata(workload, tjson, target_key(tgt), source, tvm.__version__, __version__)
    digest = hashlib.sha256(
        json.dumps([mod.script(), tjson, tvm.__version__, __version__]).encode()
    ).hexdigest()[:24]
    if use_cache:
        library = cache_dir() / metadata.target_key / f"conv_transpose1d-{digest}.so"
        if library.exists() and sidecar_path(library).exists():
            # The same program may have been compiled for another reason (a tuned record
            # can be the default schedule itself): describe this request.
            return library, metadata
    else:
        library = Path(tempfile.mkdtemp(prefix="tvm_convt-")) / f"conv_transpose1d-{digest}.so"
    with _build_lock:  # LLVM code generation is not worth racing threads over
        executable = tvm.compile(mod, target=tgt)
    write_library(executable, metadata, library)
    return library, metadata
