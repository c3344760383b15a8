"""Auto-tuning with MetaSchedule (evolutionary search, XGBoost cost model).

Tuning and compiling are separate: :func:`tune` returns a database and writes
its records under ``<logs>/<target key>/`` (see :mod:`tvm_convt.records`),
where compiling finds them. :func:`prune` makes the shipped ``schedules/``
from ``tuning_logs/``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm

from . import _tvmscript_patch
from .linker import Linker, host_arch, linker_for, target_arch
from .params import OP, Workload, check_dtype_for_target, numpy_dtype
from .records import (INDEX_FILE, RECORD_FILE, WORKLOAD_FILE, default_logs_dir, directory_kind, open_database,
                      read_index, workload_modules, write_index)
from .remeasure import tuned_module
from .target import TargetLike, resolve_target, target_key


# -- progress -------------------------------------------------------------------------------
@dataclass
class TuningReport:
    """What a tuning run did, task by task."""

    target_key: str
    logs: Path
    trials: int = 0
    built: int = 0
    build_errors: int = 0
    run_errors: int = 0
    best_seconds: dict[str, float] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    interrupted: bool = False

    def best_gflops(self, name: str) -> float:
        secs = self.best_seconds.get(name, math.inf)
        return self.flops[name] / secs / 1e9 if secs < math.inf else 0.0


class _Progress:
    """One live line: trials done/total, best latency and GFLOP/s per task, elapsed, ETA."""

    def __init__(self, report: TuningReport, names: list[str], total: int, stream, live: bool,
                 build_only: bool = False) -> None:
        self.report, self.names, self.total = report, names, total
        # Build-only runs measure nothing: their runner's empty results are not failures.
        self.build_only = build_only
        self.stream, self.live = stream, live
        self.start = time.monotonic()
        self._last_print = 0.0
        self._last_line = ""

    def update(self, task_id: int, builder_results, runner_results) -> None:
        r = self.report
        name = self.names[task_id]
        for b, res in zip(builder_results, runner_results):
            r.trials += 1
            if b.error_msg is not None:
                r.build_errors += 1
                continue
            r.built += 1
            if self.build_only:
                continue
            if res.error_msg is not None or not res.run_secs:
                r.run_errors += 1
                continue
            secs = sum(float(s) for s in res.run_secs) / len(res.run_secs)
            if secs < r.best_seconds.get(name, math.inf):
                r.best_seconds[name] = secs
        r.elapsed = time.monotonic() - self.start
        self.show()

    def line(self) -> str:
        r = self.report
        done = min(r.trials, self.total)
        eta = r.elapsed / done * (self.total - done) if done else math.nan
        best = ", ".join(
            f"{n}: {r.best_seconds[n] * 1e3:.3f} ms {r.best_gflops(n):.1f} GFLOP/s"
            for n in self.names if n in r.best_seconds) or "no measurement yet"
        if self.build_only:
            best = f"{r.built} built, nothing measured (build-only)"
        failed = f", {r.build_errors} build / {r.run_errors} run failures" if r.build_errors or r.run_errors else ""
        head = "" if self.build_only else "best "
        return (f"tuning {done}/{self.total} trials | {head}{best}{failed} | "
                f"{r.elapsed:.0f}s elapsed, ETA {eta:.0f}s")

    def show(self, final: bool = False) -> None:
        if self.stream is None:
            return
        now, line = time.monotonic(), self.line()
        if self.live:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        elif (final and line != self._last_line) or now - self._last_print >= 10:
            self.stream.write(line + "\n")
            self._last_print, self._last_line = now, line
        self.stream.flush()


# MetaSchedule's evolutionary search, with TVM's default settings (the keywords of
# tvm.s_tir.meta_schedule.search_strategy.EvolutionarySearch); a test that only needs
# a few records, not good ones, makes the population smaller to run in seconds.
EVOLUTIONARY_SEARCH: dict[str, Any] = {"population_size": 512, "init_min_unmeasured": 50, "genetic_num_iters": 4}

INTERRUPT_HINT = "Ctrl-C stops after the current round and keeps its records"


def _search_strategy(build_only: bool):
    from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch, ReplayTrace

    return ReplayTrace() if build_only else EvolutionarySearch(**EVOLUTIONARY_SEARCH)


class _StopTuning(Exception):
    """Raised from the measure callback to end a run after a round's records are committed."""


def _measure_callback(progress: _Progress, stop: threading.Event):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        # Runs after MetaSchedule's AddToDatabase: the round's records are on disk.
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            progress.update(task_id, builder_results, runner_results)
            if stop.is_set():
                raise _StopTuning()

    return ProgressCallback()


@contextlib.contextmanager
def _graceful_interrupt(stop: threading.Event, stream):
    """First Ctrl-C: finish the current round, keep its records, stop. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if stream is not None:
            stream.write("\nstopping after this round (its records are kept); Ctrl-C again stops now\n")
            stream.flush()

    previous = signal.signal(signal.SIGINT, handler)
    if stream is not None:
        # Said once the handler is in place, so that a Ctrl-C from now on is graceful.
        stream.write(INTERRUPT_HINT + "\n")
        stream.flush()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _build_only_runner():
    """A runner that measures nothing, so a dry run needs no device."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult
    from tvm.s_tir.meta_schedule.runner.runner import PyRunnerFuture

    @derived_object
    class _Done(PyRunnerFuture):
        def done(self) -> bool:
            return True

        def result(self) -> RunnerResult:
            return RunnerResult(None, "build-only: not run")

    @derived_object
    class BuildOnlyRunner(PyRunner):
        def run(self, runner_inputs) -> list[RunnerFuture]:
            return [_Done() for _ in runner_inputs]

    return BuildOnlyRunner()


def parse_tracker(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{OP}: rpc_tracker must be HOST:PORT, got rpc_tracker={value!r}")
    return host, int(port)


def check_tracker(rpc_tracker: str, rpc_key: str) -> None:
    """Fail fast when the tracker is unreachable or has no free or busy device under ``rpc_key``."""
    from tvm import rpc

    host, port = parse_tracker(rpc_tracker)
    try:
        # TVM's own connect retries for a minute; a refused port should fail at once.
        socket.create_connection((host, port), timeout=10).close()
        summary = rpc.connect_tracker(host, port).summary()
    except Exception as err:  # noqa: BLE001 - socket and TVM errors alike
        raise ValueError(f"{OP}: cannot reach the RPC tracker at {rpc_tracker}: {err}") from None
    keys = {entry["key"].removeprefix("server:") for entry in summary.get("server_info", [])}
    keys |= set(summary.get("queue_info", {}))
    if rpc_key not in keys:
        raise ValueError(f"{OP}: the RPC tracker at {rpc_tracker} has no device with "
                         f"rpc_key={rpc_key!r}; it knows {sorted(keys) or 'no devices'}")


def _seed_default_schedules(named: dict[str, Workload], mods: dict[str, tvm.IRModule], target, builder,
                            runner, database, report: TuningReport) -> None:
    """Measure each workload's default schedule and commit it as a record, unless the
    database already holds a record of this very schedule.

    The evolutionary search starts from the best records in the database, so the
    search begins at the hand-written schedule and a tuned result is never worse;
    when a later version improves the default, its record joins the old ones and
    the best of them is what gets used.
    """
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.database import TuningRecord
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from .schedule import default_schedule

    pending = []
    for name, mod in mods.items():
        # Scheduled from the task's own function, so the trace replays on the task.
        sch, _ = default_schedule(named[name], target, func=mod["main"])
        if database.has_workload(mod):
            known = {str(r.trace) for r in database.get_top_k(database.commit_workload(mod), 1000)}
            if str(sch.trace) in known:
                continue
        pending.append((name, mod, sch))
    if not pending:
        return
    built = builder.build([BuilderInput(sch.mod, target) for _, _, sch in pending])
    device = "cuda" if target.kind.name == "cuda" else "cpu"
    for (name, mod, sch), b in zip(pending, built):
        if b.error_msg is not None:
            continue
        args_info = ArgInfo.from_prim_func(mod["main"])
        [future] = runner.run([RunnerInput(b.artifact_path, device, args_info)])
        result = future.result()
        # tune_tasks removes its own artifacts; this one was built outside it.
        shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        if result.error_msg is not None or not result.run_secs:
            continue
        database.commit_tuning_record(TuningRecord(sch.trace, database.commit_workload(mod),
                                                   result.run_secs, target, args_info))
        secs = sum(float(s) for s in result.run_secs) / len(result.run_secs)
        report.best_seconds[name] = min(secs, report.best_seconds.get(name, math.inf))


def tune(
    workloads: Workload | Sequence[Workload] | Mapping[str, Workload],
    *,
    target: TargetLike = "llvm",
    trials: int = 64,
    logs: str | Path | None = None,
    work_dir: str | Path | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    build_only: bool = False,
    trials_per_iter: int = 32,
    build_timeout: float = 60.0,
    run_timeout: float = 30.0,
    seed: int | None = None,
    progress: bool | Any = True,
) -> tuple[Any, TuningReport]:
    """Tune one workload, or a suite sharing one trial budget, and return the database.

    Records are appended to ``<logs>/<target key>/`` (MetaSchedule's JSON database,
    kept whole so a later run starts warm); each record is written as soon as it is
    measured, so an interrupted run keeps everything it measured, and running again
    continues from the database. A first SIGINT (Ctrl-C) ends the run after the
    current round, whose records are kept (``report.interrupted``); a second one
    stops at once (the progress stream says when this is in place: :data:`INTERRUPT_HINT`). MetaSchedule's own logs go to ``work_dir``
    (default: ``<logs>/<target key>/work``), not to the terminal.

    ``rpc_tracker="HOST:PORT"`` and ``rpc_key`` measure candidates on devices
    registered with TVM's RPC tracker. ``build_only`` builds ``trials`` random
    candidates without measuring (no device needed; nothing is recorded) and
    reports how many compiled. ``progress`` is True (stderr), False, or a stream.

    Before the search, each workload's default schedule is measured and recorded
    (once per database), so the search starts from it and a tuned schedule is
    never slower than the default one.

    Returns ``(database, report)``.
    """
    from tvm.s_tir.meta_schedule import tune_tasks
    from tvm.s_tir.meta_schedule.builder import LocalBuilder
    from tvm.s_tir.meta_schedule.database import MemoryDatabase
    from tvm.s_tir.meta_schedule.measure_callback import MeasureCallback

    named = _named_workloads(workloads)
    _check_tune_arguments(trials, trials_per_iter, build_timeout, run_timeout, rpc_tracker, rpc_key)
    if rpc_tracker is not None and not build_only:
        check_tracker(rpc_tracker, rpc_key)
    tgt = resolve_target(target)
    key = target_key(tgt)
    for w in named.values():
        check_dtype_for_target(w.dtype, tgt.kind.name)
    if tgt.kind.name == "cuda" and not build_only and rpc_tracker is None and not tvm.cuda(0).exist:
        raise ValueError(f"{OP}: tuning target {key} needs a GPU to measure on: run on a GPU machine, "
                         "measure over RPC (rpc_tracker, rpc_key), or pass build_only=True")
    # The CPU that runs the candidates: the target's, or a GPU target's host's.
    cpu = tgt if tgt.kind.name == "llvm" else tgt.host
    arch = target_arch(cpu) if cpu is not None and cpu.kind.name == "llvm" else host_arch()
    if arch != host_arch() and not build_only and rpc_tracker is None:
        raise ValueError(f"{OP}: tuning target {key} needs an {arch} CPU to measure on: measure on one "
                         "over RPC (rpc_tracker, rpc_key; a bundle for it runs the server), or pass build_only=True")
    linker = linker_for(tgt)
    logs_root = Path(logs) if logs is not None else default_logs_dir()
    db_dir = logs_root / key
    work = Path(work_dir) if work_dir is not None else db_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    # Opened (and repaired, or refused) before the slow setup, so a broken database fails fast.
    database = MemoryDatabase() if build_only else open_database(db_dir, create=True)

    _tvmscript_patch.install()
    _quiet_meta_schedule_console()
    names = sorted(named)
    mods = {name: tuned_module(named[name], tgt) for name in names}
    tasks = _tune_contexts(mods, tgt, work, seed, build_only)
    builder = LocalBuilder(timeout_sec=build_timeout, initializer=_tvmscript_patch.install,
                           f_export=None if rpc_tracker is None else functools.partial(export_shared, linker))
    runner = _runner(build_only, rpc_tracker, rpc_key, run_timeout)
    if not build_only:
        write_index(db_dir, list(named.values()))

    report = TuningReport(target_key=key, logs=db_dir,
                          flops={n: named[n].flops for n in names})
    stream = sys.stderr if progress is True else (progress or None)
    live = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
    bar = _Progress(report, names, trials, stream, live, build_only)
    if not build_only:
        _seed_default_schedules(named, mods, tgt, builder, runner, database, report)
    stop = threading.Event()
    callbacks = MeasureCallback.create("default") + [_measure_callback(bar, stop)]
    try:
        with _graceful_interrupt(stop, stream):
            tune_tasks(
                tasks=tasks, task_weights=[1.0] * len(tasks), work_dir=str(work),
                max_trials_global=trials, num_trials_per_iter=min(trials_per_iter, trials),
                builder=builder, runner=runner, database=database, cost_model="xgb",
                measure_callbacks=callbacks,
                task_scheduler="gradient" if len(tasks) > 1 else "round-robin",
            )
    except Exception:  # noqa: BLE001 - _StopTuning arrives wrapped by TVM's FFI
        if not stop.is_set():
            raise
        report.interrupted = True
    finally:
        report.elapsed = time.monotonic() - bar.start
        bar.show(final=True)
    return database, report


def _named_workloads(workloads: Any) -> dict[str, Workload]:
    """``tune``'s workloads argument as a dict of task name to Workload."""
    if isinstance(workloads, Workload):
        named = {"main": workloads}
    elif isinstance(workloads, Mapping):
        named = dict(workloads)
    else:
        named = {f"w{i}": w for i, w in enumerate(workloads)}
    if not named or not all(isinstance(w, Workload) for w in named.values()):
        raise TypeError(f"{OP}: tune needs one or more Workload objects, got {workloads!r}")
    return named


def _check_tune_arguments(trials: Any, trials_per_iter: Any, build_timeout: Any, run_timeout: Any,
                          rpc_tracker: Any, rpc_key: Any) -> None:
    for name, value in (("trials", trials), ("trials_per_iter", trials_per_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{OP}: {name} must be a positive int, got {name}={value!r}")
    for name, value in (("build_timeout", build_timeout), ("run_timeout", run_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{OP}: {name} must be a positive number of seconds, got {name}={value!r}")
    if (rpc_tracker is None) != (rpc_key is None):
        raise ValueError(f"{OP}: rpc_tracker and rpc_key go together, got rpc_tracker={rpc_tracker!r}, "
                         f"rpc_key={rpc_key!r}")


def _quiet_meta_schedule_console() -> None:
    """MetaSchedule logs its tables at INFO to a console handler whose level it copies
    from its logger: silence the console, keep everything in work_dir's files.

    Handlers of an earlier run point at its work dir (and MetaSchedule fails on a
    second configuration that keeps them), so they are closed first.
    """
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.CRITICAL)
    for handler in list(ms_logger.handlers):
        ms_logger.removeHandler(handler)
        handler.close()


def _tune_contexts(mods: dict[str, tvm.IRModule], target, work: Path, seed: int | None,
                   build_only: bool) -> list[Any]:
    """One MetaSchedule task per workload module, in ``mods``' order, each with its own
    log file in ``work`` and a seed forked from ``seed``."""
    from tvm.s_tir.meta_schedule import TuneContext
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    names = list(mods)
    return [
        TuneContext(mod=mods[name], target=target,
                    space_generator="post-order-apply",
                    search_strategy=_search_strategy(build_only),
                    task_name=name, rand_state=rand_state, num_threads="physical",
                    logger=logger).clone()
        for name, logger, rand_state in zip(names, get_loggers_from_work_dir(str(work), names),
                                            fork_seed(seed, n=len(names)))
    ]


def export_shared(linker: Linker, mod: Any) -> str:
    """A candidate as a shared library linked here (MetaSchedule's default is a tar of objects, which
    the measuring machine links, so it would need a compiler; a board's runtime-only server has none)."""
    path = os.path.join(tempfile.mkdtemp(prefix="tvm_convt-candidate-"), "candidate.so")
    mod.export_library(path, **linker.export_options())
    return path


def alloc_random(session: Any, device: Any, args_info: list[Any], alloc_repeat: int) -> list[list[Any]]:
    """A candidate's arguments, random, made here and copied to the measuring device: MetaSchedule's
    default fills them on the device with a function that TVM's runtime-only library lacks."""
    import numpy as np

    rng = np.random.default_rng(0)

    def tensor(kind: str, dtype: str, shape: list[int]) -> Any:
        assert kind == "TENSOR", kind  # the operator's arguments are all tensors
        array = tvm.runtime.empty(shape, dtype, device)
        array.copyfrom(rng.uniform(-1.0, 1.0, shape).astype(numpy_dtype(dtype)))
        return array

    return [[tensor(*info) for info in args_info] for _ in range(alloc_repeat)]


def _runner(build_only: bool, rpc_tracker: str | None, rpc_key: str | None, run_timeout: float) -> Any:
    """Where candidates are measured: nowhere (build only), over RPC, or on this machine."""
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, LocalRunner, RPCConfig, RPCRunner

    if build_only:
        return _build_only_runner()
    evaluator = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if rpc_tracker is not None:
        host, port = parse_tracker(rpc_tracker)
        return RPCRunner(RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc_key,
                                   session_timeout_sec=int(run_timeout)),
                         evaluator_config=evaluator, f_alloc_argument=alloc_random)
    return LocalRunner(timeout_sec=run_timeout, evaluator_config=evaluator)


def _copy_best(source, dest, workloads: list[Workload], keep: int, kind: str) -> None:
    """Commit the ``keep`` fastest records of each workload in ``source`` to ``dest``."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    for workload in workloads:
        for mod in workload_modules(workload, kind):
            if not source.has_workload(mod):
                continue
            entry = dest.commit_workload(mod)
            for record in source.get_top_k(source.commit_workload(mod), keep):
                dest.commit_tuning_record(TuningRecord(record.trace, entry, record.run_secs,
                                                       record.target, record.args_info))


def _copy_confirmed(source, dest, workloads: list[Workload], keep: int, target,
                    report: dict[str, list[Any]] | None) -> None:
    """Commit to ``dest`` the records of each workload in ``source`` that beat its default
    schedule when re-measured here (:func:`tvm_convt.remeasure.rank_candidates`), ``keep`` at most."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord

    from .remeasure import rank_candidates

    for workload in workloads:
        # Records of the formulation this machine runs: the others are never used here.
        mod = tuned_module(workload, target)
        if not source.has_workload(mod):
            continue
        ranked = rank_candidates(source, workload, target, candidates=max(4, keep))
        # Only records that beat the default schedule: one that is the default would
        # keep this version's default even after a later version improves it.
        default_rank = next(i for i, c in enumerate(ranked) if c.source == "default")
        better = ranked[:min(default_rank, keep)]
        if better:
            entry = dest.commit_workload(mod)
            args_info = ArgInfo.from_prim_func(mod["main"])
            for candidate in better:
                dest.commit_tuning_record(TuningRecord(candidate.trace, entry, [candidate.seconds],
                                                       target, args_info))
        if report is not None:
            report[json.dumps(workload.to_dict(), sort_keys=True)] = ranked


def prune(logs: str | Path, out: str | Path, *, target_key_name: str | None = None,
          keep: int = 1, confirm_on: TargetLike | None = None,
          confirmed: dict[str, list[Any]] | None = None) -> list[Path]:
    """Write the ``keep`` best records per workload of each ``<logs>/<key>/`` database to
    ``<out>/<key>/``.

    This is how ``schedules/`` (shipped in the wheel, ``keep=1``) is made from a full
    tuning database, and how ``tuning_logs/`` keeps a warm start small (a few records
    per workload). The workload index goes along, less the workloads the current
    compute no longer produces (records tuned before a change to it). Returns the
    directories written; a class left with no record gets no files.

    Args:
        logs: the folder holding one database folder per hardware class.
        out: where the pruned folders go, one per hardware class.
        target_key_name: prune only this hardware class.
        keep: records kept per workload.
        confirm_on: a target this machine runs (the one tuned for): each workload's
            best records and its default schedule are built and timed against each
            other here, and only records faster than the default schedule (by
            :data:`tvm_convt.remeasure.DEFAULT_MARGIN`) are kept; a workload whose
            default schedule wins gets no record, so it keeps getting the default
            schedule of whichever version compiles it. Only that target's hardware
            class is pruned.
        confirmed: filled, when given, with each workload's ranked candidates
            (keyed by the workload's JSON).
    """
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"{OP}: prune keeps at least one record per workload, got keep={keep!r}")
    target = resolve_target(confirm_on) if confirm_on is not None else None
    if target is not None:
        if target_key_name not in (None, target_key(target)):
            raise ValueError(f"{OP}: prune confirms on the target's own hardware class, got "
                             f"target_key_name={target_key_name!r} for a {target_key(target)} target")
        target_key_name = target_key(target)
    written = []
    for directory in sorted(Path(logs).iterdir()):
        if target_key_name is not None and directory.name != target_key_name:
            continue
        db = open_database(directory)
        if db is None:
            continue
        dest = Path(out) / directory.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in (WORKLOAD_FILE, RECORD_FILE, INDEX_FILE):
            (dest / name).unlink(missing_ok=True)
        pruned = JSONDatabase(str(dest / WORKLOAD_FILE), str(dest / RECORD_FILE), allow_missing=True)
        if target is not None:
            _copy_confirmed(db, pruned, read_index(directory), keep, target, confirmed)
        elif keep == 1:
            db.dump_pruned(pruned)
        else:
            _copy_best(db, pruned, read_index(directory), keep, directory_kind(directory))
        kept = [w for w in read_index(directory)
                if any(pruned.has_workload(mod) for mod in workload_modules(w, directory_kind(directory)))]
        if not kept:  # every default schedule won: nothing to ship for this class
            for name in (WORKLOAD_FILE, RECORD_FILE):
                (dest / name).unlink(missing_ok=True)
            continue
        write_index(dest, kept)
        written.append(dest)
    return written
