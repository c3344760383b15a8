"""Compiling a workload into a module, with an on-disk cache.

:func:`compile` schedules the tensor expression (a tuned record when one is
given, else the default rule for the target), builds it with ``tvm.compile``,
and writes the shared library and its metadata sidecar into the cache. The
cache key covers the scheduled program itself (its TVMScript text), the
target and the TVM version, so a new schedule or compute never reuses a stale
module.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm.target import Target

from ._files import read_json, write_atomic
from .errors import CacheWarning, ModuleFileError, TunedRecordWarning
from .lengths import LengthRange, check_ranges
from .linker import linker_for
from .params import (DATA_ALIGNMENT, OP, PACK_WEIGHT, SymbolicWorkload, Workload, check_dtype_for_target, itemsize,
                     workload_from_dict)
from .target import TargetLike, resolve_target, target_json, target_key

# 2: the sidecar records the library's size and SHA-256 and a checksum of itself.
# 3: the same, with ``weight_block``: written only for a module whose main reads a packed weight,
# so that a version that cannot run one refuses it by its format.
# 4: a symbolic module (any batch and length): null batch and length, and ``ranges``, its functions
# by input length; ``weight_block`` as in 3 where it has one.
METADATA_FORMAT = 2
PACKED_METADATA_FORMAT = 3
SYMBOLIC_METADATA_FORMAT = 4
READABLE_FORMATS = (METADATA_FORMAT, PACKED_METADATA_FORMAT, SYMBOLIC_METADATA_FORMAT)


@dataclass(frozen=True)
class ModuleMetadata:
    """What a compiled module computes and how it was made; stored as the ``.json`` sidecar."""

    workload: Workload | SymbolicWorkload
    target: str  # JSON, accepted by resolve_target
    target_key: str
    schedule: str  # "default:<rule>" or "tuned:<source>"
    tvm_version: str
    package_version: str
    # The column block of the packed weight that ``main`` reads (its ``pack_weight``
    # function makes it); None: ``main`` reads the weight as it is.
    weight_block: int | None = None
    # A symbolic module's functions by input length (None for a static module, whose function is ``main``).
    ranges: tuple[LengthRange, ...] | None = None
    # The bytes the functions need the input's data aligned to: DATA_ALIGNMENT, or the element's size
    # where no function reads the input in vectors (input_alignment_of).
    input_alignment: int = DATA_ALIGNMENT

    def __post_init__(self) -> None:
        a = self.input_alignment
        if isinstance(a, bool) or not isinstance(a, int) or not 1 <= a <= DATA_ALIGNMENT or a & (a - 1):
            raise ValueError(f"{OP}: input_alignment must be a power of two from 1 to {DATA_ALIGNMENT}, "
                             f"got input_alignment={a!r}")
        if (self.ranges is not None) != self.workload.symbolic:
            raise ValueError(f"{OP}: length ranges must be given for a symbolic module only, got "
                             f"ranges={self.ranges!r} for batch={self.workload.batch}, length={self.workload.length}")
        if self.ranges is not None:
            object.__setattr__(self, "ranges", tuple(self.ranges))
            check_ranges(self.ranges)
            first = self.workload.params.min_length
            if self.ranges[0].first != first:
                raise ValueError(f"{OP}: the first length range must start at the layer's shortest input, "
                                 f"got first={self.ranges[0].first}, shortest={first}")

    @property
    def symbolic(self) -> bool:
        """Whether the module takes any batch and length."""
        return self.ranges is not None

    @property
    def functions(self) -> tuple[str, ...]:
        """The names of the module's functions that compute the operator."""
        return ("main",) if self.ranges is None else tuple(r.function for r in self.ranges)

    @property
    def main_weight_shape(self) -> tuple[int, ...]:
        """The shape of the weight ``main`` takes: the layer's, or the packed one."""
        p = self.workload.params
        return p.weight_shape if self.weight_block is None else p.packed_weight_shape(self.weight_block)

    def to_dict(self) -> dict[str, Any]:
        packed = ({"format": METADATA_FORMAT} if self.weight_block is None
                  else {"format": PACKED_METADATA_FORMAT, "weight_block": self.weight_block})
        if self.symbolic:
            packed = {**packed, "format": SYMBOLIC_METADATA_FORMAT, "ranges": [r.to_dict() for r in self.ranges]}
        w, p = self.workload, self.workload.params
        aligned = {} if self.input_alignment == DATA_ALIGNMENT else {"input_alignment": self.input_alignment}
        return {**packed, **aligned, "workload": w.to_dict(),
                # Derived, for readers of the file; from_dict recomputes them. null: any.
                "input_shape": [w.batch, p.in_channels, w.length],
                "weight_shape": list(p.weight_shape),
                "output_shape": [w.batch, p.out_channels, None if w.symbolic else w.out_length],
                "target": json.loads(self.target), "target_key": self.target_key,
                "schedule": self.schedule, "tvm_version": self.tvm_version,
                "package_version": self.package_version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModuleMetadata:
        if d.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{OP}: metadata format must be one of {READABLE_FORMATS}, got format={d.get('format')!r}")
        block = d.get("weight_block")
        symbolic = d["format"] == SYMBOLIC_METADATA_FORMAT
        if not symbolic and (block is not None) != (d["format"] == PACKED_METADATA_FORMAT):
            raise ValueError(f"{OP}: weight_block must be given with format {PACKED_METADATA_FORMAT} only, "
                             f"got format={d['format']!r}, weight_block={block!r}")
        if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block <= 0):
            raise ValueError(f"{OP}: weight_block must be a positive int, got weight_block={block!r}")
        workload = workload_from_dict(d["workload"])
        if workload.symbolic != symbolic:
            raise ValueError(f"{OP}: a module of any batch and length must have format {SYMBOLIC_METADATA_FORMAT}, "
                             f"got format={d['format']!r} with batch={workload.batch}, length={workload.length}")
        ranges = tuple(LengthRange.from_dict(r) for r in d["ranges"]) if symbolic else None
        metadata = cls(workload, json.dumps(d["target"], sort_keys=True),
                       d["target_key"], d["schedule"], d["tvm_version"], d["package_version"], block, ranges,
                       d.get("input_alignment", DATA_ALIGNMENT))
        p = metadata.workload.params
        if block is not None and (p.out_per_group * p.kernel_size) % block:
            raise ValueError(f"{OP}: weight_block must divide out_channels/groups * kernel_size, "
                             f"got weight_block={block} for {p}")
        return metadata


@dataclass(frozen=True)
class LibraryDigest:
    """The size and SHA-256 of a library file, kept in its sidecar."""

    size: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> LibraryDigest:
        return cls(len(data), hashlib.sha256(data).hexdigest())


def sidecar_path(library: Path) -> Path:
    return Path(library).with_suffix(".json")


# The module cache's bound, in bytes of libraries and sidecars; past it the least recently used
# entries go first. $TVM_CONVT_CACHE_MAX_BYTES sets it (0: no bound).
DEFAULT_CACHE_MAX_BYTES = 1 << 30


def cache_max_bytes() -> int | None:
    """``$TVM_CONVT_CACHE_MAX_BYTES`` (a non-negative int; 0: unbounded), else :data:`DEFAULT_CACHE_MAX_BYTES`."""
    text = os.environ.get("TVM_CONVT_CACHE_MAX_BYTES")
    if text is None or not text.strip():
        return DEFAULT_CACHE_MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{OP}: TVM_CONVT_CACHE_MAX_BYTES must be a non-negative integer (0: no bound), "
                         f"got {text!r}")
    return value or None


def bound_cache(root: Path, keep: Path, limit: int | None) -> list[Path]:
    """Remove the least recently used entries under ``root`` (by the library's modification time,
    which a cache hit renews) until libraries and sidecars take at most ``limit`` bytes; never
    ``keep``, the entry just made. Returns the libraries removed."""
    if limit is None:
        return []
    entries = []
    for library in root.glob("*/conv_transpose1d-*.so"):
        try:
            stat = library.stat()
            side = sidecar_path(library)
            size = stat.st_size + (side.stat().st_size if side.exists() else 0)
        except OSError:  # removed meanwhile by another process
            continue
        entries.append((stat.st_mtime, size, library))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, library in sorted(entries):
        if total <= limit:
            break
        if library == keep:
            continue
        for path in (sidecar_path(library), library):  # the sidecar first: a reader never finds half an entry
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        total -= size
        removed.append(library)
    return removed


def _touch(library: Path) -> None:
    """Mark a cache entry as used now, so the bound drops it last."""
    try:
        os.utime(library)
    except OSError:  # a read-only cache: the bound is the writer's business
        pass


def cache_dir() -> Path:
    """``$TVM_CONVT_CACHE``, else ``$XDG_CACHE_HOME/tvm_convt``, else ``~/.cache/tvm_convt``."""
    env = os.environ.get("TVM_CONVT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tvm_convt"


def schedule(
    workload: Workload, target: Target, *, rule: str | None = None, logs: str | Path | None = None,
    tuned: bool = True, prepack_weight: bool = False,
) -> tuple[tvm.IRModule, str]:
    """Return the scheduled module and where its schedule came from.

    A tuned record for the target's hardware class comes first (the user's
    tuning logs, ``logs`` or ``$TVM_CONVT_TUNING_LOGS``, then the shipped
    ``schedules/``): MetaSchedule's record of this exact shape, else the layer's record for
    every length, whose fields steer the default rules as in :func:`schedule_symbolic`; then
    the default rules. ``rule`` forces one default rule by name and ``tuned=False`` skips the
    records (for tests and benchmarks). The source reads ``tuned:<directory>`` or
    ``default:<rule>``.

    With ``prepack_weight``, a default schedule that packs the weight inside each call
    (``cpu-gemm``, ``cpu-gemm-blocked``) reads it packed instead, and the module gains the function
    ``pack_weight`` that packs it (:func:`weight_block_of` tells the block); so does one steered by a
    layer's record. A MetaSchedule record other than that default schedule, or any other rule, leaves
    the module as it is.
    """
    # Imported here: loading and running a module (a runtime-only install) needs neither.
    from .records import find_tuned_schedule
    from .schedule import PREPACKABLE, default_schedule, prepacked_schedule, schedule_form

    check_dtype_for_target(workload.dtype, target.kind.name)
    found = fields = origin = None
    sch, name = default_schedule(workload, target, rule=rule)
    if tuned and rule is None:
        found = find_tuned_schedule(workload, target, logs=logs, form=schedule_form(workload, target))
        # No record of this shape, or MetaSchedule's of the plain default (tuning seeds one): the
        # layer's record for every length, where there is one, steers the default rules instead.
        if found is None or tvm_ffi.structural_equal(found.mod, sch.mod):
            fields, origin = _layer_fields(workload, target, logs)
            found = None if fields else found
    with _steered(fields):
        if fields:
            sch, name = default_schedule(workload, target, rule=rule)
        prepacked = prepacked_schedule(workload, target, name) if prepack_weight and name in PREPACKABLE else None
    if found is not None and (prepacked is None or not tvm_ffi.structural_equal(found.mod, sch.mod)):
        return found.mod, found.source
    source = f"tuned:{origin}" if origin else f"default:{name}"
    # No record, or the best record is the default schedule itself (tuning records it first,
    # and keeps it when nothing measured faster): the prepacked form of that schedule.
    if prepacked is None:
        return sch.mod, source
    main, pack = prepacked
    return tvm.IRModule({"main": main.mod["main"], PACK_WEIGHT: pack.mod["main"]}), source


def schedule_symbolic(
    workload: SymbolicWorkload, target: Target, *, rule: str | None = None, prepack_weight: bool = False,
    logs: str | Path | None = None, tuned: bool = True, fields: dict[str, Any] | None = None,
) -> tuple[tvm.IRModule, str, tuple[LengthRange, ...]]:
    """The module of a :class:`SymbolicWorkload`: one function per length range
    (:func:`tvm_convt.schedule.lengths.plan_lengths`), plus ``pack_weight`` where they read the weight
    packed; where its schedule came from (``tuned:<folder>`` or ``default:<rule>[,<rule>...]``); and
    the ranges.

    The layer's tuned record (:func:`tvm_convt.layer_records.find_layer_record`, in ``logs`` then the
    shipped ``schedules/``) sets the rules' fields on CPU targets, unless ``tuned=False`` or a ``rule``
    is forced; ``fields`` gives them instead (the tuner's candidates). MetaSchedule's records are kept
    per static shape and are not used here.
    """
    from .compute import weight_pack_func
    from .schedule.cpu import schedule_weight_pack
    from .schedule.lengths import plan_lengths

    check_dtype_for_target(workload.dtype, target.kind.name)
    origin = None
    if fields is None and tuned and rule is None:
        fields, origin = _layer_fields(workload, target, logs)
    with _steered(fields):
        plan = plan_lengths(workload.params, workload.dtype, target, rule=rule, prepack_weight=prepack_weight,
                            stream=workload.stream)
    functions = dict(plan.functions)
    if plan.weight_block is not None:
        pack = weight_pack_func(workload.params, workload.dtype, plan.weight_block)
        functions[PACK_WEIGHT] = schedule_weight_pack(pack).mod["main"]
    source = f"tuned:{origin}" if origin else "default:" + ",".join(dict.fromkeys(plan.rules))
    return tvm.IRModule(functions), source, plan.ranges


def _steered(fields: dict[str, Any] | None) -> Any:
    """The rules steered by a layer's ``fields`` within the block; without any, a caller's own
    :func:`~tvm_convt.schedule.cpu.tuned_fields` stay in force (a test's forced field)."""
    from .schedule.cpu import tuned_fields

    return tuned_fields(fields) if fields else contextlib.nullcontext()


def _layer_fields(workload: Workload | SymbolicWorkload, target: Target,
                  logs: str | Path | None) -> tuple[dict[str, Any] | None, Path | None]:
    """The checked fields of the layer's tuned record on a CPU target and its folder; (None, None)
    without one. A record whose fields this version cannot use is warned about and skipped."""
    from .layer_records import find_layer_record
    from .records import TuningLogWarning
    from .schedule.cpu import base_cpu_arch
    from .schedule.cpu_space import checked_fields

    if target.kind.name != "llvm":
        return None, None
    found = find_layer_record(workload.params, workload.dtype, target, logs=logs)
    if found is None:
        return None, None
    record, directory = found
    try:
        return checked_fields(base_cpu_arch(target), record.fields), directory
    except ValueError as err:
        warnings.warn(f"{OP}: the layer record in {directory} is skipped: {err}", TuningLogWarning, stacklevel=3)
        return None, None


def weight_block_of(mod: tvm.IRModule) -> int | None:
    """The column block of the packed weight ``mod``'s ``main`` reads; None when it reads the
    weight as it is (``mod`` has no ``pack_weight``)."""
    if PACK_WEIGHT not in [gv.name_hint for gv in mod.get_global_vars()]:
        return None
    return int(mod[PACK_WEIGHT].params[1].shape[-1])


def device_source(workload: Workload | SymbolicWorkload, *, target: TargetLike, rule: str | None = None) -> str:
    """The generated device code (CUDA C++ for a CUDA target) of the default schedule,
    or of the default rule named ``rule`` (every length range's kernels for a symbolic workload).

    TVM 0.27 keeps CUDA kernels as source inside the library and compiles them
    when the library is loaded; this returns that source, so it can be checked
    with ``nvcc`` on a machine without a GPU.
    """
    tgt = resolve_target(target)
    if tgt.kind.name != "cuda":
        raise ValueError(f"{OP}: device_source needs a CUDA target, got kind={tgt.kind.name!r}")
    if workload.symbolic:
        mod = schedule_symbolic(workload, tgt, rule=rule, tuned=False)[0]
    else:
        mod = schedule(workload, tgt, rule=rule, tuned=False)[0]
    executable = tvm.compile(mod, target=tgt)
    return "\n".join(m.inspect_source("cuda") for m in executable.mod.imports if m.kind == "cuda")


def write_library(executable: Any, metadata: ModuleMetadata, library: Path, target: Target | None = None) -> None:
    """Export ``executable`` to ``library`` and its sidecar, each atomically; the sidecar
    goes last, so a reader that finds it also finds a complete library. A CPU ``target`` of
    another architecture is linked by its cross linker (:func:`tvm_convt.linker.linker_for`)."""
    digest: list[LibraryDigest] = []
    options = linker_for(target).export_options() if target is not None else {}

    def export(tmp: Path) -> None:
        executable.export_library(str(tmp), **options)
        digest.append(LibraryDigest.of(tmp.read_bytes()))

    write_atomic(library, export, 0o755)
    write_sidecar(metadata, digest[0], library)


def copy_library(data: bytes, metadata: ModuleMetadata, library: Path) -> None:
    """Write the library bytes ``data`` (already verified) to ``library`` with its sidecar."""
    write_atomic(library, lambda tmp: tmp.write_bytes(data), 0o755)
    write_sidecar(metadata, LibraryDigest.of(data), library)


def _checksum(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def write_sidecar(metadata: ModuleMetadata, digest: LibraryDigest, library: Path) -> None:
    fields = {**metadata.to_dict(), "library": {"bytes": digest.size, "sha256": digest.sha256}}
    text = json.dumps({**fields, "checksum": _checksum(fields)}, indent=2, sort_keys=True)
    write_atomic(sidecar_path(library), lambda tmp: tmp.write_text(text))


def read_sidecar(library: Path) -> tuple[ModuleMetadata, LibraryDigest]:
    """The metadata and library digest in ``library``'s sidecar, checked against the
    sidecar's own checksum: an edited or damaged sidecar raises :class:`ModuleFileError`."""
    side = sidecar_path(library)
    try:
        data = read_json(side, "metadata sidecar")
    except FileNotFoundError:
        raise
    except ValueError as err:  # not JSON, not text, a folder
        raise ModuleFileError(str(err)) from None
    if not isinstance(data, dict):
        raise ModuleFileError(f"{OP}: metadata sidecar {side} must hold a JSON object, "
                              f"got {type(data).__name__}")
    if data.get("format") not in READABLE_FORMATS:
        raise ModuleFileError(f"{OP}: metadata sidecar {side} must have format "
                              f"{', '.join(map(str, READABLE_FORMATS))} "
                              f"(written by another version of tvm_convt?), got format={data.get('format')!r}; "
                              "compile and export the module again")
    fields = {k: v for k, v in data.items() if k != "checksum"}
    if data.get("checksum") != _checksum(fields):
        raise ModuleFileError(f"{OP}: metadata sidecar {side} does not match its checksum: it was "
                              "edited or damaged; compile and export the module again")
    try:
        digest = LibraryDigest(int(fields["library"]["bytes"]), str(fields["library"]["sha256"]))
        return ModuleMetadata.from_dict(fields), digest
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ModuleFileError(f"{OP}: metadata sidecar {side} is incomplete: {err!r}") from None


def read_metadata(library: Path) -> ModuleMetadata:
    return read_sidecar(library)[0]


def read_library(library: Path, digest: LibraryDigest) -> bytes:
    """The bytes of ``library``, refused with :class:`ModuleFileError` unless they match
    ``digest``; a library is read whole and checked before it is ever mapped."""
    try:
        data = Path(library).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{OP}: no compiled module at {library}") from None
    if LibraryDigest.of(data) != digest:
        raise ModuleFileError(
            f"{OP}: library {library} does not match its sidecar ({len(data)} bytes, sidecar says "
            f"{digest.size} with another SHA-256): it was changed or damaged after it was written")
    return data


def load_library(library: Path, digest: LibraryDigest) -> Any:
    """Load ``library`` as a TVM module from a private snapshot of the verified bytes, so
    that a later change to the file (even truncation in place) cannot reach the mapping."""
    data = read_library(library, digest)
    with tempfile.TemporaryDirectory(prefix="tvm_convt-load-") as tmp:
        snapshot = Path(tmp) / Path(library).name
        snapshot.write_bytes(data)
        try:
            return tvm.runtime.load_module(str(snapshot))
        except Exception as err:  # noqa: BLE001 - TVM reports a bad library with its own errors
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise ModuleFileError(f"{OP}: library {library} cannot be loaded: {first}") from None


def check_fits_in_memory(workload: Workload) -> None:
    """Refuse, before compiling, a CPU workload whose tensors exceed this machine's memory."""
    import psutil

    need, have = workload.working_set_bytes, psutil.virtual_memory().total
    if need > have:
        raise ValueError(
            f"{OP}: one call of this layer needs {need / 2**30:.1f} GiB (input, col = batch x L_in x "
            f"out_channels x kernel_size, output) and this machine has {have / 2**30:.1f} GiB, got "
            f"batch={workload.batch}, L_in={workload.length}, {workload.params}; split the input")


_build_lock = threading.Lock()
_fallback_lock = threading.Lock()
_fallback_roots: dict[str, Path] = {}


def usable_cache_dir() -> Path:
    """:func:`cache_dir` when it can be written, else a temporary folder for this process
    (removed at exit), announced by one :class:`CacheWarning` naming ``TVM_CONVT_CACHE``."""
    root = cache_dir()
    with _fallback_lock:
        if str(root) in _fallback_roots:
            return _fallback_roots[str(root)]
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK | os.X_OK):
            return root
        reason = "it is not writable"
    except OSError as err:
        reason = f"{type(err).__name__}: {err.strerror or err}"
    return fall_back_from(root, reason)


def fall_back_from(root: Path, reason: str) -> Path:
    """Compile into a temporary folder instead of ``root`` for the rest of this process."""
    with _fallback_lock:
        if str(root) not in _fallback_roots:
            tmp = Path(tempfile.mkdtemp(prefix="tvm_convt-cache-"))
            atexit.register(shutil.rmtree, tmp, True)
            _fallback_roots[str(root)] = tmp
            warnings.warn(f"{OP}: cannot use the module cache {root} ({reason}); compiling into {tmp} "
                          "for this process; set TVM_CONVT_CACHE to a writable folder",
                          CacheWarning, stacklevel=4)
        return _fallback_roots[str(root)]


def discard(library: Path, reason: str) -> None:
    """Remove a cache entry that failed its checks, with one warning; it is then rebuilt."""
    warnings.warn(f"{OP}: removed a damaged module from the cache, rebuilding it: "
                  f"{reason.removeprefix(OP + ': ')}",
                  CacheWarning, stacklevel=4)
    for path in (library, sidecar_path(library)):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache: the entry is rebuilt elsewhere (fall_back_from)


def _cached(library: Path) -> bool:
    """Whether the cache holds a complete entry for ``library`` that matches its sidecar;
    a damaged one is discarded."""
    try:
        if not (library.exists() and sidecar_path(library).exists()):
            return False
        _, digest = read_sidecar(library)
        read_library(library, digest)
        return True
    except ModuleFileError as err:
        discard(library, str(err))
    except OSError:  # unreadable: compile into a usable place instead
        pass
    return False


def program_key(mod: tvm.IRModule, tjson: str) -> str:
    """The cache key: the scheduled program, the target and every version that shapes the file."""
    from . import __version__
    from .lowering import KEY  # what the lowering adds to TVM's: the program's text does not show it

    text = json.dumps([mod.script(), tjson, tvm.__version__, __version__, METADATA_FORMAT, KEY])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def module_metadata(workload: Workload | SymbolicWorkload, tgt: Target, source: str, weight_block: int | None = None,
                    ranges: tuple[LengthRange, ...] | None = None,
                    input_alignment: int = DATA_ALIGNMENT) -> ModuleMetadata:
    """The sidecar's description of ``workload`` compiled for ``tgt`` with the schedule ``source``
    (``main`` reading the weight packed by ``weight_block`` when given; a symbolic module's
    functions by length in ``ranges``; the input's alignment its functions need)."""
    from . import __version__

    return ModuleMetadata(workload, target_json(tgt), target_key(tgt), source, tvm.__version__, __version__,
                          weight_block, ranges, input_alignment)


def input_alignment_of(mod: tvm.IRModule, workload: Workload | SymbolicWorkload, tgt: Target) -> int:
    """The alignment a scheduled CPU module's functions need of their input: its element's size where
    none reads it in vectors (:func:`tvm_convt.schedule.common.reads_input_in_vectors`), else TVM's."""
    from .schedule.common import reads_input_in_vectors

    if tgt.kind.name != "llvm" or any(reads_input_in_vectors(mod[gv]) for gv in mod.get_global_vars()
                                      if gv.name_hint != PACK_WEIGHT):
        return DATA_ALIGNMENT
    return itemsize(workload.dtype)


def build_library(
    workload: Workload | SymbolicWorkload, *, target: TargetLike = "llvm", use_cache: bool = True,
    rule: str | None = None, logs: str | Path | None = None, tuned: bool = True,
    prepack_weight: bool = False,
) -> tuple[Path, ModuleMetadata]:
    """Compile ``workload`` for ``target`` and return the library's path and metadata.

    The library lives in :func:`cache_dir` under a key of the scheduled program,
    the target and the TVM version; a later call, in this or another process,
    finds it there and compiles nothing. An entry that does not match its
    sidecar is removed and rebuilt; an unusable cache folder is replaced by a
    temporary one (:func:`usable_cache_dir`). With ``use_cache=False`` the library
    is built into a fresh temporary folder instead, which the caller then owns.
    ``prepack_weight`` is :func:`schedule`'s. A :class:`SymbolicWorkload` compiles to one library for
    every batch and length (:func:`schedule_symbolic`), cached under its program like any other.
    """
    tgt = resolve_target(target)
    if workload.symbolic:
        mod, source, ranges = schedule_symbolic(workload, tgt, rule=rule, prepack_weight=prepack_weight,
                                                 logs=logs, tuned=tuned)
    else:
        if tgt.kind.name == "llvm":
            check_fits_in_memory(workload)
        mod, source = schedule(workload, tgt, rule=rule, logs=logs, tuned=tuned, prepack_weight=prepack_weight)
        ranges = None
    metadata = module_metadata(workload, tgt, source, weight_block_of(mod), ranges,
                               input_alignment_of(mod, workload, tgt))
    # A tuned record is checked against the reference before its library is kept (MetaSchedule
    # measures speed only, and one record in a test run computed a wrong last sample).
    # (A symbolic module's record holds the default rules' own fields, not a MetaSchedule trace.)
    check = (_record_check(workload, tgt, metadata.weight_block) if source.startswith("tuned:") and not workload.symbolic
             else None)
    try:
        return _cached_library(mod, tgt, metadata, use_cache, check)
    except _WrongRecord as wrong:
        warnings.warn(f"{OP}: the tuned record for {workload} in {source.removeprefix('tuned:')} computes a wrong "
                      f"result here (relative error {wrong.error:.2e} to the float64 reference); the default "
                      "schedule is used instead. Tune this layer again.", TunedRecordWarning, stacklevel=2)
        return build_library(workload, target=target, use_cache=use_cache, rule=rule, logs=logs, tuned=False,
                             prepack_weight=prepack_weight)


def _cached_library(mod: tvm.IRModule, tgt: Target, metadata: ModuleMetadata, use_cache: bool,
                    check: Any) -> tuple[Path, ModuleMetadata]:
    """The library of ``mod``: found in the cache, or compiled (and ``check``-ed) into it."""
    name = f"conv_transpose1d-{program_key(mod, metadata.target)}.so"
    if not use_cache:
        library = Path(tempfile.mkdtemp(prefix="tvm_convt-")) / name
        _compile_into(mod, tgt, metadata, library, check)
        return library, metadata
    limit = cache_max_bytes()
    library = usable_cache_dir() / metadata.target_key / name
    if _cached(library):
        # The same program may have been compiled for another reason (a tuned record
        # can be the default schedule itself): describe this request.
        _touch(library)
        return library, metadata
    try:
        _compile_into(mod, tgt, metadata, library, check)
    except OSError as err:  # the cache folder went bad under us: never fail the call for it
        root = fall_back_from(cache_dir(), f"{type(err).__name__}: {err.strerror or err}")
        library = root / metadata.target_key / name
        _compile_into(mod, tgt, metadata, library, check)
    bound_cache(library.parent.parent, library, limit)
    return library, metadata


class _WrongRecord(Exception):
    def __init__(self, error: float) -> None:
        super().__init__(error)
        self.error = error


def _record_check(workload: Workload, tgt: Target, weight_block: int | None) -> Any:
    """A check of a compiled static module against the float64 reference on random inputs, raising
    :class:`_WrongRecord`; None where the module cannot run here (another CPU, a GPU target). With
    ``weight_block``, ``main`` reads the weight packed by the module's ``pack_weight``."""
    from .reference import CHECK_TOLERANCE, conv_transpose1d_reference, relative_error
    from .target import missing_cpu_support
    from .timing import layer_inputs

    if tgt.kind.name != "llvm" or missing_cpu_support(tgt) is not None:
        return None

    def check(executable: Any) -> None:
        x, weight, bias = layer_inputs(workload)
        dev = tvm.cpu(0)
        w = tvm.runtime.tensor(weight, dev)
        if weight_block is not None:
            packed = tvm.runtime.empty(workload.params.packed_weight_shape(weight_block), workload.dtype, dev)
            executable[PACK_WEIGHT](w, packed)
            w = packed
        arrays = [tvm.runtime.tensor(x, dev), w] + ([tvm.runtime.tensor(bias, dev)] if bias is not None else [])
        out = tvm.runtime.empty(workload.output_shape, workload.dtype, dev)
        executable["main"](*arrays, out)
        error = relative_error(out.numpy(), conv_transpose1d_reference(x, weight, bias, workload.params))
        if not error <= CHECK_TOLERANCE[workload.dtype]:
            raise _WrongRecord(error)

    return check


def _compile_into(mod: tvm.IRModule, tgt: Target, metadata: ModuleMetadata, library: Path, check: Any = None) -> None:
    from .lowering import compile_module, declare_input_alignment  # the compiler's: a bundle's runtime has none

    mod = declare_input_alignment(mod, metadata.input_alignment)
    with _build_lock:  # LLVM code generation is not worth racing threads over
        executable = compile_module(mod, tgt)
    if check is not None:
        check(executable)
    write_library(executable, metadata, library, tgt)
