"""The peers of `tvm-convt bench` (issue #24): the one-node ONNX models in both forms against the float64
reference, the check before timing, a peer missing or refusing a layer, and the worker processes end to
end on a tiny suite. No assertion on any time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tvm_convt import peer_worker, peers
from tvm_convt.reference import CHECK_TOLERANCE, relative_error
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.params import Workload
from tvm_convt.peer_bench import PeerComparison, PeerReport, Worker, WorkerError
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.suite import write_suite
from tvm_convt.timing import layer_inputs

from conftest import needs_torch

ort = pytest.importorskip("onnxruntime")

LAYERS = {
    "dense": Workload(P(8, 4, 4, stride=2, padding=1), 2, 12),
    "output_padding": Workload(P(6, 4, 3, stride=3, padding=2, output_padding=2), 1, 7),
    "dilated_grouped": Workload(P(6, 6, 3, stride=2, groups=3, dilation=2, bias=False), 1, 9),
    "depthwise": Workload(P(8, 8, 4, stride=2, groups=8), 3, 5),
    "one_tap": Workload(P(4, 2, 1, stride=5), 1, 4),
}


@pytest.mark.parametrize("form", peers.FORMS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_the_onnx_model_matches_the_reference_in_both_forms(name, form):
    w = LAYERS[name]
    x, weight, bias = layer_inputs(w)
    session = ort.InferenceSession(peers.onnx_model(w, weight, bias, form), providers=["CPUExecutionProvider"])
    feed = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if form == "2-D" else x
    y = session.run(None, {"x": feed})[0].reshape(w.output_shape)
    assert relative_error(y, conv_transpose1d_reference(x, weight, bias, w.params)) <= CHECK_TOLERANCE["float32"]


@pytest.mark.parametrize("peer", ["onnxruntime", "openvino"])
def test_each_onnx_peer_runs_a_layer_checked_and_says_which_form(peer):
    pytest.importorskip(peer)
    w = LAYERS["dilated_grouped"]
    x, weight, bias = layer_inputs(w)
    found = peers.peer_call(peer, w, x, weight, bias, threads=1)
    assert found.form in peers.FORMS and found.label.startswith(peers.LABELS[peer])
    y = found.call()
    assert y.shape == w.output_shape and y is not found.call()  # a new array each call
    assert relative_error(y, conv_transpose1d_reference(x, weight, bias, w.params)) <= CHECK_TOLERANCE["float32"]


@pytest.mark.parametrize("peer", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("workload, why", [
    (Workload(P(4, 4, 3, stride=2, padding=1, padding_mode="reflect"), 1, 8), "zeros only"),
    (Workload(P(4, 4, 3, stride=2), 1, 8, "float64"), "float32 only"),
])
def test_a_layer_onnx_cannot_express_is_refused_with_the_reason(peer, workload, why):
    pytest.importorskip(peer)
    x, weight, bias = layer_inputs(workload)
    with pytest.raises(peers.PeerUnavailable, match=why):
        peers.peer_call(peer, workload, x, weight, bias, threads=1)


def _inputs_folder(tmp_path: Path, w: Workload) -> Path:
    x, weight, bias = layer_inputs(w)
    for name, arr in (("x", x), ("weight", weight), ("bias", bias),
                      ("expected", conv_transpose1d_reference(x, weight, bias, w.params))):
        if arr is not None:
            np.save(tmp_path / f"{name}.npy", arr)
    return tmp_path


def test_a_peer_whose_output_is_wrong_is_refused_before_timing(tmp_path, monkeypatch):
    w = LAYERS["dense"]
    folder = _inputs_folder(tmp_path, w)
    real = peers.peer_call

    def off(*args, **kwargs):
        found = real(*args, **kwargs)
        return peers.PeerCall(lambda: found.call() * np.float32(1.001), found.label, found.form)

    monkeypatch.setattr(peers, "peer_call", off)
    msg = {"workload": w.to_dict(), "inputs": str(folder), "threads": 1}
    with pytest.raises(peer_worker.SetupRefused, match=r"ONNX Runtime .*differs from the float64 NumPy reference "
                                                       r"by a relative \d\.\d+e-0[34], more than 1e-05; not timed"):
        peer_worker.setup("onnxruntime", msg)


def test_a_worker_that_dies_is_reported_with_its_last_words():
    worker = Worker("onnxruntime")
    try:
        with pytest.raises(WorkerError, match=r"the onnxruntime worker process exited \(status 1\): .*KeyError"):
            worker.ask({"op": "setup"})  # no workload: the worker's own code fails
    finally:
        worker.close()


def test_a_worker_answers_setup_then_time(tmp_path):
    w = LAYERS["output_padding"]
    folder = _inputs_folder(tmp_path, w)
    worker = Worker("tvm_convt")
    try:
        ready = worker.ask({"op": "setup", "workload": w.to_dict(), "inputs": str(folder), "threads": 1,
                            "target": "llvm", "logs": None, "tuned": False})
        assert ready["ok"] and ready["schedule"].startswith("default:")
        assert set(ready["errors"]) == {"layer", "module"} and max(ready["errors"].values()) <= 1e-5
        assert worker.ask({"op": "time", "call": "layer", "number": 2, "settle": 0.0})["s"] > 0
        assert "unknown command" in worker.ask({"op": "nap"})["why"]
    finally:
        worker.close()


def _run_bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvm_convt", "bench", *args], capture_output=True, text=True,
                          timeout=900, env=env)


TINY = {
    "dense": LAYERS["dense"],
    "grouped": LAYERS["dilated_grouped"],
    "reflect": Workload(P(4, 4, 4, stride=2, padding=1, padding_mode="reflect"), 1, 10),
}
RECORD_KEYS = {"name", "workload", "schedule", "tvm_convt_ms", "module_ms", "torch_ms", "ort_ms", "openvino_ms",
               "best_peer", "speedup_vs_best_peer", "speedup", "gflops", "module_gflops", "max_error", "errors",
               "forms", "labels", "peer_notes", "weight_packed", "warnings"}


@needs_torch
def test_bench_times_every_peer_in_its_own_process(tmp_path):
    pytest.importorskip("openvino")
    suite, out = write_suite(tmp_path / "tiny.json", TINY), tmp_path / "out.json"
    result = _run_bench("--suite", str(suite), "--rounds", "2", "--threads", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "isolation", "records", "geomean_speedup", "geomean_speedup_vs_best_peer",
                           "geomean_speedup_by_peer"}
    assert report["machine"]["peers"] == list(peers.PEERS)
    by_name = {r["name"]: r for r in report["records"]}
    assert list(by_name) == list(TINY)
    for record in report["records"]:
        assert set(record) == RECORD_KEYS
        assert record["tvm_convt_ms"] > 0 and record["module_ms"] > 0
        assert max(record["errors"].values()) <= CHECK_TOLERANCE["float32"]
    for name in ("dense", "grouped"):
        r = by_name[name]
        times = {"torch": r["torch_ms"], "onnxruntime": r["ort_ms"], "openvino": r["openvino_ms"]}
        assert all(t > 0 for t in times.values()) and set(r["forms"]) == set(peers.PEERS)
        assert r["best_peer"] == min(times, key=times.get)
        assert r["speedup_vs_best_peer"] == pytest.approx(times[r["best_peer"]] / r["tvm_convt_ms"], rel=0.01)
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["tvm_convt_ms"], rel=0.01)
    reflect = by_name["reflect"]
    assert reflect["best_peer"] is None and reflect["ort_ms"] is None and reflect["torch_ms"] is None
    assert "zeros only" in reflect["peer_notes"]["openvino"] and "reflect" in reflect["peer_notes"]["torch"]
    assert "geometric mean speed-up over the best peer" in result.stdout
    assert "reflect: no ONNX Runtime time: ONNX's ConvTranspose pads with zeros only" in result.stdout


def test_a_peer_that_is_not_installed_gets_an_empty_column_and_the_reason(tmp_path):
    # A package of that name earlier on the path that fails to import, in the workers too.
    blocker = tmp_path / "blocked" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")])))
    suite, out = write_suite(tmp_path / "tiny.json", {"dense": TINY["dense"]}), tmp_path / "out.json"
    result = _run_bench("--suite", str(suite), "--rounds", "1", "--threads", "1", "--peers", "onnxruntime,openvino",
                        "--json", str(out), env=env)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(out.read_text())["records"]
    assert record["openvino_ms"] is None and record["torch_ms"] is None and record["ort_ms"] > 0
    assert record["best_peer"] == "onnxruntime"
    assert "OpenVINO is not installed" in record["peer_notes"]["openvino"]
    assert record["peer_notes"]["torch"] == "not asked for (--peers)"


@pytest.mark.parametrize("value", ["tensorflow", "", "torch,,openvino"])
def test_bench_refuses_an_unknown_peer(value):
    result = _run_bench("--peers", value)
    assert result.returncode == 2 and "argument --peers: must be comma-separated names among" in result.stderr


def test_the_report_picks_the_fastest_peer_and_its_ratio():
    w = LAYERS["dense"]
    c = PeerComparison("a", w, "default:x", 1e-3, 0.9e-3, {"torch": 3e-3, "onnxruntime": 2e-3, "openvino": None},
                       {"layer": 0.0}, {}, {}, {"openvino": "not installed"})
    assert c.best_peer == "onnxruntime" and c.speedup(c.best_peer) == pytest.approx(2.0)
    report = PeerReport({"cpu": "x", "target_key": "k", "threads": 1}, [c])
    assert report.geomean() == pytest.approx(2.0) and report.geomean("torch") == pytest.approx(3.0)
    assert report.geomean("openvino") is None
    assert "a: no OpenVINO time: not installed" in report.table()


def test_a_worker_that_does_not_answer_is_stopped(tmp_path, monkeypatch):
    from tvm_convt import peer_bench

    w = LAYERS["dense"]
    folder = _inputs_folder(tmp_path, w)
    worker = Worker("onnxruntime")
    try:
        assert worker.ask({"op": "setup", "workload": w.to_dict(), "inputs": str(folder), "threads": 1})["ok"]
        monkeypatch.setattr(peer_bench, "REPLY_TIMEOUT_S", 0.5)
        with pytest.raises(WorkerError, match=r"the onnxruntime worker process did not answer 'time' within 0.5 s"):
            worker.ask({"op": "time", "call": "call", "number": 1, "settle": 30.0})
    finally:
        worker.close()
