"""Tuning records: where they live, reading them safely, and finding one for a workload.

MetaSchedule's query ignores the target, so records are kept per hardware
class, in ``<root>/<target key>/`` (see :func:`tvm_convt.target.target_key`):
a record tuned for AVX-512 is never applied on an AVX2 machine. Compiling
looks in the user's tuning logs (``$TVM_CONVT_TUNING_LOGS``, or the ``logs``
argument), then in the pruned records shipped in the package's
``schedules/``; without a record the default schedule is used.

A database is read line by line (:func:`open_database`): a bad line is reported
with its file and line and skipped, and a lost or damaged workload file is
rebuilt from the package's index of tuned workloads, or the database refused.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm.target import Target

from . import _tvmscript_patch
from ._files import read_json, write_atomic
from .compute import form_for, forms_of, prim_func
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
# TVM's JSONDatabase fails on the first line it cannot parse (and crashes on a record line
# that is not a JSON list), so the files are checked line by line first. A line TVM would
# not read is reported with its file and line and skipped; what passes is what TVM reads.
class _BadLine(Exception):
    """A line TVM would not read; the message says why."""


class _Unrepairable(Exception):
    """Records lost their workload and cannot be matched to one again; the message says why."""


def _tvm_error(err: Exception) -> str:
    """The first line of a TVM error (the rest repeats the whole JSON object)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _brief(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _no_constant(name: str):
    # Python reads NaN and Infinity; TVM's JSON reader fails on them.
    raise _BadLine(f"a line must be plain JSON, got {name}")


def _json(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise _BadLine(f"a line must be UTF-8, got byte {line[err.start]:#04x} at column {err.start + 1}") from None
    except json.JSONDecodeError as err:
        raise _BadLine(f"a line must be one JSON value, got {err.msg.lower()} (column {err.colno})") from None
    except RecursionError:
        raise _BadLine("a line must be a record, got JSON nested too deeply to read") from None


def _lines(path: Path) -> tuple[list[tuple[int, bytes]], bool]:
    """The non-empty lines of ``path`` with their numbers, and whether the file has blank
    lines or lacks its last newline: TVM fails on a blank line, so such a file is rewritten."""
    if not path.exists():
        return [], False
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    kept = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    return kept, len(kept) != len(lines) or (raw != b"" and not raw.endswith(b"\n"))


# A \u escape: a backslash before "u" that is not itself escaped.
_UNICODE_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u")


def _escaped(line: bytes) -> bool:
    # TVM's JSON reader has no \u escapes; a rewrite writes the characters themselves.
    return b"\\u" in line and _UNICODE_ESCAPE.search(line) is not None  # the regex only when it may match


def _args_json(mod: tvm.IRModule) -> list | None:
    """The buffers (shape, dtype) of ``mod``'s ``main``, as records store them in args_info."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    try:
        return [arg.as_json() for arg in ArgInfo.from_prim_func(mod["main"])]
    except Exception:  # noqa: BLE001 - someone else's workload, without a main
        return None


def _parse_workload(line: bytes) -> tuple[Any, Any]:
    from tvm.s_tir.meta_schedule.database import Workload as TVMWorkload

    value = _json(line)
    try:
        return value, TVMWorkload.from_json(value)
    except Exception as err:  # noqa: BLE001 - TVM's error, whatever its type
        raise _BadLine(f"TVM cannot parse it as a workload, got {_tvm_error(err)}") from None


def _record_parts(line: bytes) -> tuple[int, Any]:
    """``[workload index, record]``, checked as far as TVM's loader assumes without checking."""
    value = _json(line)
    if not (isinstance(value, list) and len(value) == 2 and type(value[0]) is int and value[0] >= 0
            and isinstance(value[1], list) and len(value[1]) == 4):
        raise _BadLine(f"a record must be [workload index, [trace, run_secs, target, args_info]], "
                       f"got {_brief(value)}")
    return value[0], value[1]


def _parse_record(record: Any, workload: Any) -> Any:
    from tvm.s_tir.meta_schedule.database import TuningRecord

    try:
        return TuningRecord.from_json(record, workload)
    except Exception as err:  # noqa: BLE001 - TVM's error, whatever its type
        raise _BadLine(f"TVM cannot parse it as a record of its workload, got {_tvm_error(err)}") from None


@dataclass
class _Tables:
    """What TVM reads from a database folder: workloads in file order, each once, and records
    by position among them. ``db`` (in memory) holds them parsed. A quick read (``full=False``)
    parses only the workloads, checks the records' form, and reports nothing: it only finds
    whether the files are clean enough to hand to JSONDatabase as they are."""

    db: Any
    full: bool
    workloads: list[tuple[Any, Any, list | None]] = field(default_factory=list)  # JSON, Workload, args
    records: list[tuple[int, Any]] = field(default_factory=list)  # position in workloads, JSON
    rewrite: bool = False  # the files differ from what TVM must read
    repaired: str = ""

    def skip(self, path: Path, number: int, kind: str, why: str) -> None:
        self.rewrite = True
        if self.full:
            warnings.warn(f"{OP}: skipped the {kind} at {path}:{number}: {why}", TuningLogWarning, stacklevel=2)

    def position(self, value: Any, workload: Any) -> int:
        """Where ``workload`` (committed to ``db``) is, added at the end when it is new."""
        for i, (_, known, _) in enumerate(self.workloads):
            if known.same_as(workload):
                return i
        self.workloads.append((value, workload, _args_json(workload.mod)))
        return len(self.workloads) - 1

    def add_record(self, position: int, record: Any) -> None:
        if self.full:
            self.db.commit_tuning_record(_parse_record(record, self.workloads[position][1]))
        self.records.append((position, record))


def _read_workloads(path: Path, tables: _Tables) -> tuple[dict[int, int], int]:
    """Fill ``tables`` with the workloads TVM reads. Returns ``{line position: position in
    tables}`` (records refer to workloads by line position) and how many lines were skipped."""
    lines, untidy = _lines(path)
    at, skipped = {}, 0
    for position, (number, line) in enumerate(lines):
        try:
            value, parsed = _parse_workload(line)
        except _BadLine as bad:
            tables.skip(path, number, "workload", str(bad))
            skipped += 1
            continue
        before = len(tables.workloads)
        at[position] = tables.position(value, tables.db.commit_workload(parsed.mod))
        # A repeated workload must go: TVM numbers the workloads it appends after it wrongly.
        untidy |= len(tables.workloads) == before or _escaped(line)
    tables.rewrite |= untidy or at != {p: p for p in at}
    return at, skipped


def _lost_workload(index: int, record: Any, tables: _Tables, at: dict[int, int]) -> str:
    """Why ``record`` cannot be read with workload ``index``, or "" when it can."""
    if index not in at:
        return f"its workload index must be below {len(at)} (the workloads in {WORKLOAD_FILE}), got {index}"
    expected = tables.workloads[at[index]][2]
    # Catches a record numbered for another workload (by a rewrite stopped halfway, say).
    if record[3] is not None and expected is not None and record[3] != expected:
        return f"its buffers must match workload {index}'s {_brief(expected)}, got args_info {_brief(record[3])}"
    return ""


def _read_records(path: Path, tables: _Tables, at: dict[int, int]) -> list[tuple[int, Any, str]]:
    """Add the records TVM reads to ``tables``. Returns the ones whose workload is lost,
    as ``(line number, record, why)``."""
    lines, untidy = _lines(path)
    orphans = []
    for number, line in lines:
        try:
            index, record = _record_parts(line)
            why = _lost_workload(index, record, tables, at)
            if why:
                orphans.append((number, record, why))
                continue
            tables.add_record(at[index], record)
            untidy |= _escaped(line)
        except _BadLine as bad:
            tables.skip(path, number, "record", str(bad))
    tables.rewrite |= untidy or bool(orphans)
    return orphans


def _indexed_modules(directory: Path) -> dict[str, list[tvm.IRModule]]:
    """The modules of the workloads in ``directory``'s index, by their buffers (as JSON)."""
    try:
        index = read_index(directory)
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise _Unrepairable(f"{INDEX_FILE} must list the tuned workloads, got {_tvm_error(err)}") from None
    if not index:
        found = "an empty one" if (directory / INDEX_FILE).exists() else f"no {INDEX_FILE}"
        raise _Unrepairable(f"{INDEX_FILE} must list the tuned workloads to rebuild {WORKLOAD_FILE} from, "
                            f"got {found}")
    by_args: dict[str, list[list[tvm.IRModule]]] = {}
    kind = directory_kind(directory)
    for workload in index:
        # The formulations of one workload share its buffers; the record's trace tells them apart.
        mods = workload_modules(workload, kind)
        by_args.setdefault(json.dumps(_args_json(mods[0])), []).append(mods)
    return by_args


def _replaying_workload(tables: _Tables, mods: list[tvm.IRModule], record: Any) -> Any:
    """The committed workload of the formulation in ``mods`` on which ``record`` replays, else None."""
    for mod in mods:
        workload = tables.db.commit_workload(mod)
        try:
            _parse_record(record, workload)
        except _BadLine:
            continue
        return workload
    return None


def _numbers(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    return shown + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")


def _reattach(directory: Path, orphans: list[tuple[int, Any, str]], tables: _Tables) -> str:
    """Give each record that lost its workload the one indexed workload with its buffers
    (args_info), on which TVM must replay its trace; refuse when any record has none or
    several. Returns what was repaired."""
    by_args = _indexed_modules(directory)
    unmatched, ambiguous, rebuilt = [], [], set()
    for number, record, _ in orphans:
        candidates = by_args.get(json.dumps(record[3]), []) if record[3] is not None else []
        if len(candidates) != 1:
            (ambiguous if candidates else unmatched).append(number)
            continue
        workload = _replaying_workload(tables, candidates[0], record)
        if workload is None:
            unmatched.append(number)
            continue
        before = len(tables.workloads)
        position = tables.position(workload.as_json(), workload)
        try:
            tables.add_record(position, record)
        except _BadLine:
            unmatched.append(number)
            continue
        if len(tables.workloads) > before:
            rebuilt.add(position)
    problems = []
    if unmatched:
        problems.append(f"each record must match a workload in {INDEX_FILE} by its buffers and replay on it, "
                        f"got {len(unmatched)} that do not ({RECORD_FILE} line(s) {_numbers(unmatched)})")
    if ambiguous:
        problems.append(f"each record must match one workload in {INDEX_FILE}, got {len(ambiguous)} that "
                        f"match several with the same buffers ({RECORD_FILE} line(s) {_numbers(ambiguous)})")
    if problems:
        raise _Unrepairable("; ".join(problems))
    return (f"{len(orphans)} record(s) matched again to their workloads in {INDEX_FILE} by their buffers "
            f"({len(rebuilt)} workload(s) rebuilt)")


def _read_tables(directory: Path, *, full: bool = True) -> _Tables:
    """Read a database folder line by line (see :class:`_Tables` for ``full``).

    A record whose workload is lost is matched again to a workload of the index
    (:func:`_reattach`) when ``database_workload.json`` is missing or has unreadable
    lines; when that file is whole, such a record is skipped like any bad line.
    """
    from tvm.s_tir.meta_schedule.database import MemoryDatabase

    tables = _Tables(MemoryDatabase(), full)
    wl_path = directory / WORKLOAD_FILE
    at, skipped = _read_workloads(wl_path, tables)
    orphans = _read_records(directory / RECORD_FILE, tables, at)
    if not orphans or not full:
        return tables
    if wl_path.exists() and at and not skipped:
        for number, _, why in orphans:
            tables.skip(directory / RECORD_FILE, number, "record", why)
        return tables
    damage = (f"{WORKLOAD_FILE} was missing" if not wl_path.exists() else
              f"{WORKLOAD_FILE} had {skipped} unreadable line(s)" if skipped else f"{WORKLOAD_FILE} was empty")
    tables.repaired = f"{damage}; {_reattach(directory, orphans, tables)}"
    return tables


def _has_database(directory: Path) -> bool:
    return (directory / WORKLOAD_FILE).exists() or (directory / RECORD_FILE).exists()


def _json_database(directory: Path, *, create: bool, quiet: bool = True) -> Any:
    """TVM's JSONDatabase of ``directory``'s files; when TVM rejects one of their lines,
    None (``quiet``) or TVM's error."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    try:
        return JSONDatabase(str(directory / WORKLOAD_FILE), str(directory / RECORD_FILE), allow_missing=create)
    except Exception:  # noqa: BLE001 - a line TVM cannot parse: found line by line instead
        if quiet:
            return None
        raise


def _in_memory(db: Any, tables: _Tables) -> Any:
    """``tables.db`` (which holds the workloads) with ``db``'s records, for a reader that must never write."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    seen: list[tuple[Any, Any]] = []  # JSONDatabase's workload -> ours; records share them
    for record in db.get_all_tuning_records():  # fastest first; ties in file order
        mine = next((ours for theirs, ours in seen if theirs.same_as(record.workload)), None)
        if mine is None:
            mine = tables.db.commit_workload(record.workload.mod)
            seen.append((record.workload, mine))
        tables.db.commit_tuning_record(TuningRecord(record.trace, mine, record.run_secs, record.target,
                                                    record.args_info))
    return tables.db


def _write_tables(tables: _Tables, out: Path) -> None:
    # Records first: if this stops between the two files, the old workload file is left,
    # and records whose buffers do not match its workloads are caught when it is read.
    _rewrite(out / RECORD_FILE, [[position, record] for position, record in tables.records])
    _rewrite(out / WORKLOAD_FILE, [value for value, _, _ in tables.workloads])


def _rewrite(path: Path, values: list[Any]) -> None:
    # As TVM writes them: compact, and characters unescaped (its reader has no \u escapes).
    text = "".join(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n" for value in values)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _cannot_repair(directory: Path, err: _Unrepairable) -> str:
    return (f"{OP}: cannot repair the tuning database in {directory}: {err}; "
            f"remove {directory / RECORD_FILE} to start over")


def sanitize_logs(directory: Path, *, into: Path | None = None) -> Path:
    """Drop truncated or corrupted lines from a MetaSchedule JSON database, and rebuild a
    missing or damaged workload file from the package's index (see :func:`open_database`).

    With ``into=None`` the files are rewritten in place (atomically), as the tuner does
    before it appends; otherwise clean copies go to ``into``. Nothing is written when
    nothing was wrong. Returns the folder holding clean files; raises ValueError when
    records lost their workload and cannot be matched again.
    """
    directory = Path(directory)
    if not _has_database(directory):
        return directory
    try:
        tables = _read_tables(directory)
    except _Unrepairable as err:
        raise ValueError(_cannot_repair(directory, err)) from None
    if not tables.rewrite:
        return directory
    out = directory if into is None else Path(into)
    _write_tables(tables, out)
    return out


def open_database(directory: Path, *, create: bool = False) -> Any:
    """The tuning database in ``directory``, or None when there is none.

    A bad line (cut off, not JSON, not a record, a record of an unknown workload, a
    workload or record TVM cannot parse) is reported with its file and line
    (:class:`TuningLogWarning`) and skipped. When ``database_workload.json`` is missing
    or damaged, the records that lost their workload are matched again to the workloads
    of the package's index by their buffers, reported in one warning; when that is not
    possible for every record, the database is refused.

    ``create=True`` (tuning) creates the database if needed, repairs it in place and
    returns a JSONDatabase that appends there; one that cannot be repaired raises
    ValueError. Otherwise (compiling) it is read into memory and never written; one
    that cannot be repaired is ignored with a warning (None).
    """
    directory = Path(directory)
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    elif not _has_database(directory):
        return None
    try:
        # Clean files (the usual case) go to TVM's loader, which parses records on all
        # cores; only when it rejects a line are the records parsed one by one.
        tables = _read_tables(directory, full=False)
        db = None if tables.rewrite else _json_database(directory, create=create)
        if db is None:
            tables = _read_tables(directory)
    except (_Unrepairable, OSError) as err:
        message = (_cannot_repair(directory, err) if isinstance(err, _Unrepairable)
                   else f"{OP}: cannot read the tuning database in {directory}: {err}")
        if create:
            raise ValueError(message) from None
        warnings.warn(message, TuningLogWarning, stacklevel=2)
        return None
    if not create:
        if tables.repaired:
            warnings.warn(f"{OP}: read the tuning database in {directory} as repaired (nothing written; "
                          f"tuning there repairs the files): {tables.repaired}", TuningLogWarning, stacklevel=2)
        return tables.db if db is None else _in_memory(db, tables)
    if db is not None:
        return db
    if tables.rewrite:
        _write_tables(tables, directory)
    if tables.repaired:
        warnings.warn(f"{OP}: repaired the tuning database in {directory}: {tables.repaired}",
                      TuningLogWarning, stacklevel=2)
    try:
        return _json_database(directory, create=True, quiet=False)
    except Exception as err:  # noqa: BLE001 - should not happen after the checks: never a crash
        raise ValueError(f"{OP}: cannot open the tuning database in {directory}: {_tvm_error(err)}") from None


@dataclass(frozen=True)
class TunedSchedule:
    mod: tvm.IRModule
    source: str  # "tuned:<directory>"


_db_cache: dict[str, tuple[tuple[int, ...], Any]] = {}
_db_lock = threading.Lock()


def _cached_database(directory: Path):
    """Open each database once per process, and again only when its files change (the
    index too: a missing workload file is rebuilt from it)."""
    stamps = []
    for name in (WORKLOAD_FILE, RECORD_FILE, INDEX_FILE):
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


def find_tuned_schedule(workload: Workload, target: Target, *, logs: str | Path | None = None,
                        form: str | None = None) -> TunedSchedule | None:
    """The best tuned schedule for ``workload`` in formulation ``form`` (by default the
    target kind's, :func:`~tvm_convt.compute.form_for`) on ``target``'s hardware class, or None."""
    from tvm.s_tir.meta_schedule.tir_integration import compile_tir

    key = target_key(target)
    func = None
    for root in (Path(logs) if logs is not None else default_logs_dir(), shipped_schedules_dir()):
        directory = root / key
        if not _has_database(directory):
            continue
        db = _cached_database(directory)
        if db is None:
            continue
        _tvmscript_patch.install()
        func = func or prim_func(workload, form or form_for(workload, target.kind.name))
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
    kind = directory_kind(directory)
    return [w for w in read_index(directory)
            if db is None or not any(db.has_workload(mod) for mod in workload_modules(w, kind))]


def workload_module(workload: Workload, kind: str, form: str | None = None) -> tvm.IRModule:
    """The module MetaSchedule tunes for target kind ``kind`` and keys its records by:
    ``main`` = :func:`prim_func` in formulation ``form``, by default the kind's
    (:func:`~tvm_convt.compute.form_for`; a target's own is
    :func:`tvm_convt.schedule.schedule_form`)."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(prim_func(workload, form or form_for(workload, kind)))


def workload_modules(workload: Workload, kind: str) -> list[tvm.IRModule]:
    """The modules of every formulation that a machine of target kind ``kind`` may have tuned
    ``workload`` in (:func:`~tvm_convt.compute.forms_of`): a hardware class's folder holds
    records of any of them."""
    return [workload_module(workload, kind, form) for form in forms_of(workload, kind)]


def directory_kind(directory: Path) -> str:
    """The target kind of a hardware-class directory (``llvm-x86_64-avx2`` -> ``llvm``)."""
    return Path(directory).name.split("-", 1)[0]
