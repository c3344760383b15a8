"""Tuning with MetaSchedule: tiny trial counts, real builder workers, a real RPC tracker and server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import tvm

import tvm_convt
from tvm_convt.params import ConvTranspose1dParams, Workload
from tvm_convt.records import (INDEX_FILE, RECORD_FILE, WORKLOAD_FILE, TuningLogWarning, find_tuned_schedule,
                               open_database, read_index, sanitize_logs, shipped_schedules_dir,
                               stale_workloads, workload_module, write_index)
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.target import resolve_target, target_key
from tvm_convt.suite import load_suite
from tvm_convt.tuning import prune, tune

from conftest import assert_close, random_inputs

P = ConvTranspose1dParams
SUITE = {
    "up": Workload(P(16, 16, 4, stride=2, padding=1), 1, 16),
    "dw": Workload(P(8, 8, 3, stride=2, groups=8, padding_mode="reflect", padding=1), 2, 12),
}
HOST_KEY = target_key(resolve_target("llvm"))


def _records(directory: Path) -> int:
    path = directory / RECORD_FILE
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


@pytest.fixture(scope="module")
def tuned_logs(tmp_path_factory):
    """One real tuning run of a two-layer suite, shared by the tests that read its records."""
    logs = tmp_path_factory.mktemp("logs")
    _, report = tune(SUITE, trials=8, trials_per_iter=4, logs=logs, seed=0, progress=False)
    return logs, report


def test_tune_suite_writes_records_and_reports(tuned_logs):
    logs, report = tuned_logs
    assert report.target_key == HOST_KEY and report.logs == logs / HOST_KEY
    assert report.trials == 8
    assert report.build_errors == 0, "a builder worker failed (timeout?)"
    assert report.built == 8 and report.run_errors == 0
    assert set(report.best_seconds) <= set(SUITE) and report.best_seconds
    assert (logs / HOST_KEY / WORKLOAD_FILE).exists()
    # One record per trial, plus each layer's default schedule, measured first as the seed.
    assert _records(logs / HOST_KEY) == 8 + len(SUITE)
    assert (logs / HOST_KEY / "work" / "logs").is_dir()  # MetaSchedule's tables went to files


def test_compile_uses_tuned_record_and_stays_exact(tuned_logs):
    logs, report = tuned_logs
    for name in report.best_seconds:
        w = SUITE[name]
        compiled = tvm_convt.compile(w.params, batch=w.batch, length=w.length, logs=logs)
        assert compiled.metadata.schedule == f"tuned:{logs / HOST_KEY}"
        x, wt, b = random_inputs(w.params, w.batch, w.length, "float32")
        assert_close(compiled(x, wt, b), conv_transpose1d_reference(x, wt, b, w.params), "float32")
    other = SUITE["up"]
    assert tvm_convt.compile(other.params, batch=1, length=other.length + 1, logs=logs).metadata.schedule \
        .startswith("default:"), "a record must only serve its own shape"


def test_a_changed_default_schedule_is_measured_again(tuned_logs, tmp_path, monkeypatch):
    """A better default in a later version joins the records; an unchanged one is not re-measured."""
    from tvm_convt import schedule
    from tvm_convt.schedule.cpu import CpuFallbackRule

    logs = tmp_path / "logs"
    shutil.copytree(tuned_logs[0], logs)
    before = _records(logs / HOST_KEY)
    monkeypatch.setitem(schedule.RULES, "llvm", (CpuFallbackRule(),))
    tune(SUITE, trials=2, trials_per_iter=2, logs=logs, seed=0, progress=False)
    # "up" had the GEMM rule's schedule and gets the fallback's; "dw" had the fallback's already.
    assert _records(logs / HOST_KEY) == before + 2 + 1
    tune(SUITE, trials=2, trials_per_iter=2, logs=logs, seed=1, progress=False)
    assert _records(logs / HOST_KEY) == before + 4 + 1


def test_records_are_kept_per_hardware_class(tuned_logs):
    logs, _ = tuned_logs
    w = SUITE["up"]
    other_cpu = "znver3" if HOST_KEY.endswith("avx512") else "znver4"
    other = resolve_target({"kind": "llvm", "mcpu": other_cpu})
    assert target_key(other) != HOST_KEY
    assert find_tuned_schedule(w, resolve_target("llvm"), logs=logs) is not None
    assert find_tuned_schedule(w, other, logs=logs) is None


def test_bench_default_schedule_skips_the_records(tuned_logs):
    from tvm_convt.benchmark import run_bench

    logs, report = tuned_logs
    suite = {name: SUITE[name] for name in report.best_seconds}
    tuned = run_bench(suite, logs=logs, rounds=1, threads=1)
    default = run_bench(suite, logs=logs, rounds=1, threads=1, tuned=False)
    assert [c.schedule for c in tuned.records] == [f"tuned:{logs / HOST_KEY}"] * len(suite)
    assert all(c.schedule.startswith("default:") for c in default.records)


def test_prune_keeps_best_record_per_workload(tuned_logs, tmp_path):
    logs, report = tuned_logs
    assert sorted(read_index(logs / HOST_KEY), key=str) == sorted(SUITE.values(), key=str)
    [out] = prune(logs, tmp_path)
    assert out == tmp_path / HOST_KEY
    assert _records(out) == len(report.best_seconds)
    assert sorted(read_index(out), key=str) == sorted((SUITE[n] for n in report.best_seconds), key=str)
    assert stale_workloads(out) == []
    w = SUITE[next(iter(report.best_seconds))]
    assert find_tuned_schedule(w, resolve_target("llvm"), logs=tmp_path) is not None


def test_prune_can_keep_several_records_per_workload(tuned_logs, tmp_path):
    logs, report = tuned_logs
    [out] = prune(logs, tmp_path, keep=3)
    db = open_database(out)
    best = open_database(logs / HOST_KEY)
    for name in report.best_seconds:
        mod = workload_module(SUITE[name])
        kept = db.get_top_k(db.commit_workload(mod), 10)
        assert 1 <= len(kept) <= 3
        top = best.get_top_k(best.commit_workload(mod), 1)[0]
        assert [float(s) for s in kept[0].run_secs] == [float(s) for s in top.run_secs]
    with pytest.raises(ValueError, match=r"prune keeps at least one record per workload, got keep=0"):
        prune(logs, tmp_path, keep=0)


def test_prune_confirms_by_measuring_the_default_against_the_records(tuned_logs, tmp_path):
    from tvm_convt.remeasure import DEFAULT_MARGIN

    logs, report = tuned_logs
    confirmed = {}
    written = prune(logs, tmp_path, confirm_on="llvm", confirmed=confirmed)
    out = tmp_path / HOST_KEY
    db = open_database(out)
    winners = [ranked[0].source for ranked in confirmed.values()]
    # A class where every default schedule won gets no files at all.
    assert (written == [out]) == any(w != "default" for w in winners) == (db is not None)
    names = {json.dumps(SUITE[n].to_dict(), sort_keys=True): n for n in SUITE}
    assert set(confirmed) == {k for k, n in names.items() if n in report.best_seconds}
    for key, ranked in confirmed.items():
        w = SUITE[names[key]]
        sources = [c.source for c in ranked]
        assert "default" in sources and len(set(sources)) == len(sources) >= 2
        assert all(c.seconds > 0 for c in ranked)
        default = next(c for c in ranked if c.source == "default")
        found = find_tuned_schedule(w, resolve_target("llvm"), logs=tmp_path)
        if ranked[0].source == "default":
            # The default schedule won: no record, so compiling takes the default rule.
            assert found is None and w not in read_index(out)
            assert db is None or not db.has_workload(workload_module(w))
        else:
            assert ranked[0].seconds < default.seconds * (1 - DEFAULT_MARGIN)
            [kept] = db.get_top_k(db.commit_workload(workload_module(w)), 10)
            assert str(kept.trace) == str(ranked[0].trace)
            assert float(kept.run_secs[0]) == pytest.approx(ranked[0].seconds)
            assert found is not None and w in read_index(out)
    with pytest.raises(ValueError, match="confirms on the target's own hardware class"):
        prune(logs, tmp_path, confirm_on="llvm", target_key_name="llvm-x86_64-sse4")


def test_shipped_schedules_come_after_user_logs(tuned_logs, tmp_path, monkeypatch):
    logs, report = tuned_logs
    shipped = tmp_path / "shipped"
    prune(logs, shipped)
    monkeypatch.setattr("tvm_convt.records.shipped_schedules_dir", lambda: shipped)
    name = next(iter(report.best_seconds))
    w = SUITE[name]
    empty = tmp_path / "empty"
    assert find_tuned_schedule(w, resolve_target("llvm"), logs=empty).source == f"tuned:{shipped / HOST_KEY}"
    assert find_tuned_schedule(w, resolve_target("llvm"), logs=logs).source == f"tuned:{logs / HOST_KEY}"
    compiled = tvm_convt.compile(w.params, batch=w.batch, length=w.length, logs=empty)
    assert compiled.metadata.schedule == f"tuned:{shipped / HOST_KEY}"


def test_stale_records_are_detected(tuned_logs, tmp_path):
    """A record tuned before a change to the compute matches no current workload."""
    logs, _ = tuned_logs
    copy = tmp_path / HOST_KEY
    shutil.copytree(logs / HOST_KEY, copy, ignore=shutil.ignore_patterns("work"))
    untuned = Workload(P(16, 16, 4, stride=2, padding=1), 1, 17)
    write_index(copy, [untuned])
    assert stale_workloads(copy) == [untuned]


def test_shipped_schedules_match_the_current_compute():
    """Every shipped record must still be found: a change to compute.py that alters the
    TensorIR makes them unreachable, and then they must be re-tuned (docs/performance.md)."""
    folders = [d for d in shipped_schedules_dir().iterdir() if (d / WORKLOAD_FILE).exists()]
    for folder in folders:
        assert read_index(folder), f"{folder} has no {INDEX_FILE}"
        assert stale_workloads(folder) == [], f"{folder} holds records of an older compute: re-tune them"


def test_corrupted_lines_are_reported_and_skipped(tuned_logs, tmp_path):
    logs, report = tuned_logs
    copy = tmp_path / HOST_KEY
    shutil.copytree(logs / HOST_KEY, copy, ignore=shutil.ignore_patterns("work"))
    n = _records(copy)
    with (copy / RECORD_FILE).open("a") as f:
        f.write('[0, [["not a", "record"]]]\n')  # valid JSON, but TVM cannot read it: left to TVM
        f.write("[1, [[[\"tr")  # a line cut off by a kill
    lines = (copy / RECORD_FILE).read_text().splitlines()
    with pytest.warns(TuningLogWarning, match=rf"unreadable record at .*{RECORD_FILE}:{len(lines)} "):
        sanitize_logs(copy)
    assert _records(copy) == n + 1
    assert (copy / RECORD_FILE).read_text().endswith("\n")
    # A workload line lost in the middle: the records behind it are renumbered, not misapplied.
    wl_lines = (copy / WORKLOAD_FILE).read_text().splitlines()
    (copy / WORKLOAD_FILE).write_text("\n".join(["{broken"] + wl_lines) + "\n")
    recs = [json.loads(line) for line in (copy / RECORD_FILE).read_text().splitlines()]
    (copy / RECORD_FILE).write_text("".join(json.dumps([i + 1, r]) + "\n" for i, r in recs))
    before = {name: (copy / name).read_bytes() for name in (WORKLOAD_FILE, RECORD_FILE)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        db = open_database(copy)
    assert any(f"{WORKLOAD_FILE}:1" in str(w.message) for w in caught)
    # A reader repairs a copy: a tuner may be appending to these files.
    assert before == {name: (copy / name).read_bytes() for name in (WORKLOAD_FILE, RECORD_FILE)}
    # Either the database opened without the bad entries, or TVM rejected the odd record
    # and it was set aside with a warning: never a crash.
    if db is not None:
        name = next(iter(report.best_seconds))
        assert find_tuned_schedule(SUITE[name], resolve_target("llvm"), logs=tmp_path) is not None


def _cli_tune(logs: Path, trials: int, *extra: str) -> subprocess.Popen:
    w = SUITE["up"].params
    return subprocess.Popen(
        [sys.executable, "-m", "tvm_convt", "tune", "--in-channels", str(w.in_channels),
         "--out-channels", str(w.out_channels), "--kernel-size", str(w.kernel_size), "--stride",
         str(w.stride), "--padding", str(w.padding), "--length", "16", "--trials", str(trials),
         "--trials-per-iter", "2", "--logs", str(logs), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_records(directory: Path, at_least: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _records(directory) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no record was committed in time"
        time.sleep(0.2)


def test_interrupted_runs_keep_records_and_resume(tmp_path):
    """SIGINT and SIGKILL mid-run leave a loadable database; a rerun continues from it."""
    directory = tmp_path / HOST_KEY
    proc = _cli_tune(tmp_path, 64)
    _wait_for_records(directory, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted after" in err and "run the same command again" in err
    after_int = _records(directory)
    assert after_int >= 1 and open_database(directory) is not None

    proc = _cli_tune(tmp_path, 64)
    _wait_for_records(directory, after_int + 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: builder and runner workers too
    proc.communicate(timeout=60)
    after_kill = _records(directory)
    assert after_kill > after_int and open_database(directory) is not None

    proc = _cli_tune(tmp_path, 2, "--seed", "1")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert _records(directory) == after_kill + 2  # the default schedule was recorded once, not again
    w = SUITE["up"]
    assert tvm_convt.compile(w.params, batch=1, length=16, logs=tmp_path).metadata.schedule.startswith("tuned:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_device():
    """A real TVM RPC tracker and server on 127.0.0.1, with free ports; stopped afterwards."""
    tracker_port, server_port = _free_port(), _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(tracker_port), "--port-end", str(tracker_port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    tracker = f"127.0.0.1:{tracker_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                tvm.rpc.connect_tracker("127.0.0.1", tracker_port).summary()
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "the RPC tracker did not start"
                time.sleep(0.5)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", tracker, "--key", "test-cpu",
             "--host", "127.0.0.1", "--port", str(server_port), "--port-end", str(server_port + 1)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        while "test-cpu" not in tvm.rpc.connect_tracker("127.0.0.1", tracker_port).summary()["queue_info"]:
            assert time.monotonic() < deadline, "the RPC server did not register"
            time.sleep(0.5)
        yield tracker
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_tune_over_rpc(rpc_device, tmp_path):
    _, report = tune(SUITE["up"], trials=2, trials_per_iter=2, logs=tmp_path, rpc_tracker=rpc_device,
                     rpc_key="test-cpu", seed=0, progress=False)
    assert report.trials == 2 and report.run_errors == 0 and report.build_errors == 0
    assert report.best_seconds["main"] > 0
    with pytest.raises(ValueError, match="has no device with rpc_key='gpu'; it knows \\['test-cpu'\\]"):
        tune(SUITE["up"], trials=2, logs=tmp_path, rpc_tracker=rpc_device, rpc_key="gpu")


def test_rpc_errors_before_tuning(tmp_path):
    with pytest.raises(ValueError, match="cannot reach the RPC tracker at 127.0.0.1:"):
        tune(SUITE["up"], trials=2, logs=tmp_path, rpc_tracker=f"127.0.0.1:{_free_port()}", rpc_key="x")
    with pytest.raises(ValueError, match="rpc_tracker must be HOST:PORT, got rpc_tracker='nohost'"):
        tune(SUITE["up"], trials=2, logs=tmp_path, rpc_tracker="nohost", rpc_key="x")
    with pytest.raises(ValueError, match="rpc_tracker and rpc_key go together"):
        tune(SUITE["up"], trials=2, logs=tmp_path, rpc_tracker="127.0.0.1:9190")


def test_cuda_build_only_without_gpu(tmp_path):
    target = {"kind": "cuda", "arch": "sm_90"}
    _, report = tune(SUITE["up"], target=target, trials=4, trials_per_iter=4, logs=tmp_path,
                     build_only=True, seed=0, progress=False)
    assert report.target_key == "cuda-sm_90"
    assert report.trials == 4 and report.built == 4 and report.build_errors == 0
    assert not (tmp_path / "cuda-sm_90" / RECORD_FILE).exists(), "a dry run records nothing"
    if not tvm.cuda(0).exist:
        with pytest.raises(ValueError, match="needs a GPU to measure on"):
            tune(SUITE["up"], target=target, trials=4, logs=tmp_path)


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("[", "is not valid JSON"),
        ("{}", "must hold a non-empty JSON list"),
        ('[{"name": "a"}]', r"entry 0: missing keys \['batch', 'in_channels', 'kernel_size', 'length', 'out_channels'\]"),
        ('[{"name": "a", "batch": 1, "in_channels": 4, "out_channels": 4, "length": 8, "kernel_size": 3, '
         '"stride": 2, "padding": 0, "output_padding": 2, "groups": 1, "dilation": 1}]',
         r"^conv_transpose1d: suite file .*, entry 0 \(a\): output_padding must be smaller than stride or dilation"),
        ('[{"name": "a", "batch": 1, "in_channels": 4, "out_channels": 4, "length": 8, "kernel_size": 3, '
         '"stride": 2, "padding": 0, "output_padding": 0, "groups": 1, "dilation": 1, "colour": 1}]',
         r"unknown keys \['colour'\]"),
    ],
)
def test_suite_file_errors(tmp_path, content, pattern):
    path = tmp_path / "suite.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        load_suite(path)


def test_suite_file(tmp_path):
    entry = {"batch": 1, "in_channels": 8, "out_channels": 4, "length": 10, "kernel_size": 4, "stride": 2,
             "padding": 1, "output_padding": 0, "groups": 2, "dilation": 1}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps([{"name": "a", **entry}, {"name": "b", **entry, "padding_mode": "circular",
                                                         "bias": False, "dtype": "float64"}]))
    suite = load_suite(path)
    assert suite["a"] == Workload(P(8, 4, 4, stride=2, padding=1, groups=2), 1, 10)
    assert suite["b"].params.padding_mode == "circular" and suite["b"].dtype == "float64"
    with pytest.raises(ValueError, match="unique non-empty string"):
        path.write_text(json.dumps([{"name": "a", **entry}] * 2))
        load_suite(path)


def test_tensor_intrin_import_is_fast_with_the_patch():
    """Pitfall 1: unpatched, this import took 36-76 s here, past the builder's timeout."""
    code = ("import time, tvm; from tvm_convt import _tvmscript_patch; _tvmscript_patch.install(); "
            "t = time.time(); import tvm.s_tir.tensor_intrin; print(time.time() - t); "
            "from tvm.s_tir import TensorIntrin; print(TensorIntrin.get('dot_4x4_i8i8s32_neon') is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    seconds, registered = out.stdout.split()
    assert float(seconds) < 15 and registered == "True"


def test_fast_stack_matches_inspect_stack():
    import inspect

    from tvm_convt._tvmscript_patch import fast_stack

    def inner():
        return fast_stack(), inspect.stack()

    fast, slow = inner()
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert (a.filename, a.lineno, a.function) == (b.filename, b.lineno, b.function)
        assert a.frame is b.frame
        if b.code_context and b.code_context[0].strip():
            assert a.code_context == b.code_context
