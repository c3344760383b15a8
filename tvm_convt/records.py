"""Tuning records: where they live, reading them safely, and finding one for a workload.

MetaSchedule's query ignores the target, so records are kept per hardware
class, in ``<root>/<target key>/`` (see :func:`tvm_convt.target.target_key`):
a record tuned for AVX-512 is never applied on an AVX2 machine. Compiling
looks in the user's tuning logs (``$TVM_CONVT_TUNING_LOGS``, or the ``logs``
argument), then in the pruned records shipped in the package's
``schedules/``; without a record the default schedule is used.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
from tvm.target import Target

from . import _tvmscript_patch
from ._files import read_json, write_atomic
from .compute import conv_transpose1d_te
from .params import OP, Workload
from .target import target_key

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# Our own index beside MetaSchedule's files: the Workload (parameters, shapes, dtype)
# behind each tuned TensorIR workload, so records can be checked against the
# current compute, which a change to compute.py silently invalidates.
INDEX_FILE = "workloads.json"


class TuningLogWarning(UserWarning):
    """A line of a tuning log could not be read and was skipped."""


# -- where records live -------------------------------------------------------------------
def default_logs_dir() -> Path:
    """``$TVM_CONVT_TUNING_LOGS``, else ``$XDG_DATA_HOME/tvm_convt/tuning_logs``
    (``~/.local/share/tvm_convt/tuning_logs``)."""
    env = os.environ.get("TVM_CONVT_TUNING_LOGS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "tvm_convt" / "tuning_logs"


def shipped_schedules_dir() -> Path:
    """The pruned records that ship with the package (``schedules/`` in a source checkout)."""
    inside = Path(__file__).resolve().parent / "schedules"
    return inside if inside.is_dir() else Path(__file__).resolve().parent.parent / "schedules"


# -- reading logs safely ------------------------------------------------------------------
def _read_lines(path: Path, kind: str, valid) -> tuple[dict[int, Any], bool]:
    """Read a JSON-lines file of MetaSchedule's. Returns ``{position: value}`` for the
    lines that parse and pass ``valid`` (position: index among non-empty lines, which
    is how records refer to workloads), and whether the file needs rewriting. Each
    skipped line is reported with its file and line number."""
    raw = path.read_bytes()
    good: dict[int, Any] = {}
    position = 0
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            warnings.warn(f"{OP}: skipped unreadable {kind} at {path}:{number} ({err.msg})",
                          TuningLogWarning, stacklevel=3)
        else:
            if valid(value):
                good[position] = value
            else:
                warnings.warn(f"{OP}: skipped malformed {kind} at {path}:{number}", TuningLogWarning,
                              stacklevel=3)
        position += 1
    return good, len(good) != position or not raw.endswith(b"\n")


def sanitize_logs(directory: Path, *, into: Path | None = None) -> Path:
    """Drop truncated or corrupted lines from a MetaSchedule JSON database.

    A tuning run killed mid-write can leave half a line. Each bad line is
    reported (file and line) and left out; workloads are renumbered and records
    that pointed at a dropped workload are left out too. With ``into=None`` the
    files are rewritten in place (atomically), as the tuner does before it
    appends; otherwise clean copies go to ``into``, so a reader never writes to a
    database that a tuner may be appending to (or that is read-only). Nothing is
    written when nothing was wrong. Returns the folder holding clean files.
    """
    wl_path, rec_path = directory / WORKLOAD_FILE, directory / RECORD_FILE
    if not wl_path.exists():
        return directory
    workloads, wl_dirty = _read_lines(
        wl_path, "workload", lambda v: isinstance(v, list) and len(v) == 2 and isinstance(v[0], str))
    renumber = {old: new for new, old in enumerate(workloads)}
    records, rec_dirty = {}, False
    if rec_path.exists():
        records, rec_dirty = _read_lines(
            rec_path, "record", lambda v: isinstance(v, list) and len(v) == 2 and isinstance(v[0], int)
            and v[0] in renumber)
    if not (wl_dirty or rec_dirty):
        return directory
    out = directory if into is None else Path(into)
    _rewrite(out / WORKLOAD_FILE, list(workloads.values()))
    _rewrite(out / RECORD_FILE, [[renumber[index], rest] for index, rest in records.values()])
    return out


def _rewrite(path: Path, values: list[Any]) -> None:
    text = "".join(json.dumps(value) + "\n" for value in values)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def open_database(directory: Path, *, create: bool = False) -> Any:
    """The JSON database in ``directory``, or None when there is none.

    ``create=True`` (tuning) creates it if needed, repairs it in place and returns
    a database that appends there. Otherwise (compiling) it is read, through
    clean temporary copies when it needs repair, and never written.
    """
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    directory = Path(directory)
    if not create and not (directory / WORKLOAD_FILE).exists():
        return None
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
            sanitize_logs(directory)
            return JSONDatabase(str(directory / WORKLOAD_FILE), str(directory / RECORD_FILE),
                                allow_missing=True)
        with tempfile.TemporaryDirectory(prefix="tvm_convt-logs-") as tmp:
            clean = sanitize_logs(directory, into=Path(tmp))
            # The database reads both files whole when it is made; the copies can go after.
            return JSONDatabase(str(clean / WORKLOAD_FILE), str(clean / RECORD_FILE), allow_missing=False)
    except Exception as err:  # noqa: BLE001 - a record TVM cannot parse: never a crash
        if create:
            raise ValueError(f"{OP}: cannot open the tuning database in {directory}: {err}") from None
        warnings.warn(f"{OP}: ignored the tuning database in {directory}: {err}", TuningLogWarning,
                      stacklevel=2)
        return None


@dataclass(frozen=True)
class TunedSchedule:
    mod: tvm.IRModule
    source: str  # "tuned:<directory>"


_db_cache: dict[str, tuple[tuple[int, ...], Any]] = {}
_db_lock = threading.Lock()


def _cached_database(directory: Path):
    """Open each database once per process, and again only when its files change."""
    stamps = []
    for name in (WORKLOAD_FILE, RECORD_FILE):
        try:
            stat = (directory / name).stat()
            stamps += [stat.st_mtime_ns, stat.st_size]
        except FileNotFoundError:
            stamps += [0, 0]
    with _db_lock:
        cached = _db_cache.get(str(directory))
        if cached is None or cached[0] != tuple(stamps):
            cached = _db_cache[str(directory)] = (tuple(stamps), open_database(directory))
        return cached[1]


def find_tuned_schedule(workload: Workload, target: Target, *, logs: str | Path | None = None) -> TunedSchedule | None:
    """The best tuned schedule for ``workload`` on ``target``'s hardware class, or None."""
    from tvm.s_tir.meta_schedule.tir_integration import compile_tir

    key = target_key(target)
    func = None
    for root in (Path(logs) if logs is not None else default_logs_dir(), shipped_schedules_dir()):
        directory = root / key
        if not (directory / WORKLOAD_FILE).exists():
            continue
        db = _cached_database(directory)
        if db is None:
            continue
        _tvmscript_patch.install()
        func = func or prim_func(workload)
        with target:
            sch = compile_tir(db, func, target)
        if sch is not None:
            return TunedSchedule(sch.mod, f"tuned:{directory}")
    return None


def read_index(directory: Path) -> list[Workload]:
    """The workloads listed in ``directory``'s index (empty when there is none)."""
    path = Path(directory) / INDEX_FILE
    if not path.exists():
        return []
    return [Workload.from_dict(entry) for entry in read_json(path, "workload index")]


def write_index(directory: Path, workloads: list[Workload]) -> None:
    """Add ``workloads`` to ``directory``'s index (kept sorted and without repeats)."""
    known = {json.dumps(w.to_dict(), sort_keys=True) for w in read_index(directory) + list(workloads)}
    entries = [json.loads(text) for text in sorted(known)]
    write_atomic(Path(directory) / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(entries, indent=1) + "\n"))


def stale_workloads(directory: Path) -> list[Workload]:
    """Indexed workloads whose current TensorIR has no record in ``directory``'s database:
    records made before a change to the compute, which no compile will ever match."""
    db = open_database(Path(directory))
    return [w for w in read_index(directory) if db is None or not db.has_workload(workload_module(w))]


def prim_func(workload: Workload) -> tvm.tirx.PrimFunc:
    """The unscheduled TensorIR function ``main(x, weight[, bias], y)``: what is tuned and looked up."""
    inputs, out = conv_transpose1d_te(workload)
    return tvm.te.create_prim_func(inputs + [out]).with_attr("global_symbol", "main")


def workload_module(workload: Workload) -> tvm.IRModule:
    """The module MetaSchedule tunes and keys its records by (``main`` = :func:`prim_func`)."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(prim_func(workload))
