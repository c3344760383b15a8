"""``tvm-convt bench``: the call a user makes, tvm_convt against PyTorch, ONNX Runtime and OpenVINO,
each library alone in its own worker process (:mod:`tvm_convt.peer_worker`), taking turns.

For each layer the inputs and the float64 reference are written once to a temporary folder; each
worker loads them, makes its library's calls (:mod:`tvm_convt.peers`: each peer in its faster form
and its best CPU settings) and checks them against the reference before anything is timed. Then
rounds: in each, every call in turn runs in its own process (untimed for 20 ms, then ``number``
times) while the other workers wait on their input, so no library's threads compete with
another's. Medians of the rounds are reported; a call whose median is more than
:data:`~tvm_convt.benchmark.SPREAD_LIMIT` times its fastest round is timed again once, then
reported with a warning. tvm_convt's column is its layer (NumPy in, a new NumPy array out), the
ratios' numerator; its module on tensors made once is reported beside it.
"""

from __future__ import annotations

import json
import math
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .benchmark import as_ms, machine_info, steady_medians
from .params import OP, Workload
from .peers import LABELS, PEERS
from .reference import conv_transpose1d_reference
from .target import TargetLike, host_cores
from .timing import layer_inputs

# Seconds each call runs untimed before its timed calls in a round, and calls timed per round.
SETTLE_S = 0.02
NUMBER = 5
# A worker that has not answered a request in this long (a compile, the reference, a timing round) is stuck.
REPLY_TIMEOUT_S = 900.0
# The tvm_convt worker's calls: the user's call (the ratios use it) and the module on prepared tensors.
TVM_CALLS = ("layer", "module")


class WorkerError(RuntimeError):
    """A benchmark worker process died or answered what it should not; the message holds its last words."""


class Worker:
    """One library's worker process (``python -m tvm_convt.peer_worker SIDE``)."""

    def __init__(self, side: str) -> None:
        self.side = side
        self._log = tempfile.TemporaryFile("w+")
        self._proc = subprocess.Popen([sys.executable, "-m", "tvm_convt.peer_worker", side], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, text=True)

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            self._proc.stdin.write(json.dumps(msg) + "\n")
            self._proc.stdin.flush()
            # One reply line per request, so nothing is left buffered between them and select sees it.
            if not select.select([self._proc.stdout], [], [], REPLY_TIMEOUT_S)[0]:
                self._proc.kill()
                raise WorkerError(f"{OP}: the {self.side} worker process did not answer {msg['op']!r} within "
                                  f"{REPLY_TIMEOUT_S:g} s: {self._last_words()}")
            line = self._proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self._proc.wait(timeout=30)
            raise WorkerError(f"{OP}: the {self.side} worker process exited (status {self._proc.returncode}): "
                              f"{self._last_words()}")
        return json.loads(line)

    def _last_words(self) -> str:
        self._log.seek(0)
        lines = [line for line in self._log.read().splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "it printed nothing"

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._log.close()


@dataclass(frozen=True)
class PeerComparison:
    """One layer: medians in seconds by library (None where it did not run), tvm_convt's
    schedule and each library's relative error to the float64 reference, form and label."""

    name: str
    workload: Workload
    schedule: str
    layer_s: float
    module_s: float
    peers_s: dict[str, float | None]
    errors: dict[str, float]
    forms: dict[str, str]
    labels: dict[str, str]
    notes: dict[str, str]  # peer -> why it has no time
    weight_packed: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def best_peer(self) -> str | None:
        timed = {p: s for p, s in self.peers_s.items() if s}
        return min(timed, key=timed.__getitem__) if timed else None

    def speedup(self, peer: str | None) -> float | None:
        """The peer's time over tvm_convt's layer call (above 1: tvm_convt is faster)."""
        s = self.peers_s.get(peer) if peer else None
        return s / self.layer_s if s else None

    def gflops(self, seconds: float | None) -> float | None:
        return self.workload.flops / seconds / 1e9 if seconds else None

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        best = self.best_peer
        return {"name": self.name, "workload": self.workload.to_dict(), "schedule": self.schedule,
                "tvm_convt_ms": as_ms(self.layer_s), "module_ms": as_ms(self.module_s),
                "torch_ms": as_ms(self.peers_s.get("torch")), "ort_ms": as_ms(self.peers_s.get("onnxruntime")),
                "openvino_ms": as_ms(self.peers_s.get("openvino")),
                "best_peer": best, "speedup_vs_best_peer": r(self.speedup(best)),
                "speedup": r(self.speedup("torch")), "gflops": r(self.gflops(self.layer_s)),
                "module_gflops": r(self.gflops(self.module_s)), "max_error": self.errors.get("layer"),
                "errors": self.errors, "forms": self.forms, "labels": self.labels, "peer_notes": self.notes,
                "weight_packed": self.weight_packed, "warnings": list(self.warnings)}


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


@dataclass
class PeerReport:
    """A suite's comparisons with every peer, and the machine they ran on."""

    machine: dict[str, Any]
    records: list[PeerComparison] = field(default_factory=list)

    def geomean(self, peer: str | None = None) -> float | None:
        """Geometric mean speed-up of tvm_convt's layer over ``peer`` (None: each layer's best peer)."""
        return _geomean([v for c in self.records if (v := c.speedup(peer if peer else c.best_peer))])

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {"machine": self.machine, "isolation": "one worker process per library, taking turns",
                "records": [c.to_dict() for c in self.records], "geomean_speedup": r(self.geomean("torch")),
                "geomean_speedup_vs_best_peer": r(self.geomean()),
                "geomean_speedup_by_peer": {p: r(self.geomean(p)) for p in PEERS}}

    def table(self) -> str:
        """Milliseconds per library (``-``: did not run), tvm_convt's layer against the best peer."""
        head = (f"{'layer':18s} {'tvm_convt':>9s} {'module':>8s} {'GFLOP/s':>7s} {'PyTorch':>8s} {'ORT':>8s} "
                f"{'OpenVINO':>8s}  {'best peer':>12s} {'vs best':>7s}")
        lines = [head, "-" * len(head)]

        def ms(s: float | None) -> str:
            return f"{s * 1e3:8.3f}" if s else f"{'-':>8s}"

        for c in self.records:
            best = c.best_peer
            ratio = c.speedup(best)
            lines.append(f"{c.name:18s} {c.layer_s * 1e3:9.3f} {ms(c.module_s)} {c.gflops(c.layer_s):7.1f} "
                         f"{ms(c.peers_s.get('torch'))} {ms(c.peers_s.get('onnxruntime'))} "
                         f"{ms(c.peers_s.get('openvino'))}  {LABELS.get(best, '-'):>12s} "
                         + (f"{ratio:6.2f}x" if ratio else f"{'-':>7s}"))
        lines.append("tvm_convt: the layer's call (NumPy in, a new array out); module: the compiled module on "
                     "tensors made once; each library alone in its own process, taking turns")
        for peer in PEERS:
            geo = self.geomean(peer)
            if geo is not None:
                lines.append(f"geometric mean speed-up over {LABELS[peer]}: {geo:.2f}x")
        geo = self.geomean()
        if geo is not None:
            lines.append(f"geometric mean speed-up over the best peer of each layer: {geo:.2f}x")
        forms = sorted({f"{LABELS[p]} {f}" for c in self.records for p, f in c.forms.items() if p in LABELS})
        if forms:
            lines.append("peer forms used: " + ", ".join(forms))
        for c in self.records:
            lines += [f"{c.name}: no {LABELS[p]} time: {why}" for p, why in c.notes.items()]
            lines += [f"warning: {c.name}: {note}" for note in c.warnings]
        return "\n".join(lines)


def _write_inputs(folder: Path, workload: Workload) -> None:
    x, weight, bias = layer_inputs(workload)
    np.save(folder / "x.npy", x)
    np.save(folder / "weight.npy", weight)
    if bias is not None:
        np.save(folder / "bias.npy", bias)
    np.save(folder / "expected.npy", conv_transpose1d_reference(x, weight, bias, workload.params))


def _samples(workers: dict[str, Worker], calls: list[tuple[str, str]], rounds: int) -> dict[tuple[str, str], list[float]]:
    samples: dict[tuple[str, str], list[float]] = {c: [] for c in calls}
    for _ in range(rounds):
        for side, call in calls:
            reply = workers[side].ask({"op": "time", "call": call, "number": NUMBER, "settle": SETTLE_S})
            if "s" not in reply:
                raise WorkerError(f"{OP}: the {side} worker could not time {call}: {reply.get('why')}")
            samples[(side, call)].append(reply["s"])
    return samples


def compare_layer(name: str, workload: Workload, workers: dict[str, Worker], setup: dict[str, Any],
                  rounds: int) -> PeerComparison:
    """Set every worker up on the layer (each checks its output), then time them in turns."""
    from .benchmark import ResultMismatch

    with tempfile.TemporaryDirectory(prefix="tvm_convt_bench_") as folder:
        _write_inputs(Path(folder), workload)
        msg = dict(setup, op="setup", workload=workload.to_dict(), inputs=folder)
        answers = {side: worker.ask(msg) for side, worker in workers.items()}
    ours = answers["tvm_convt"]
    if not ours.get("ok"):
        raise ResultMismatch(f"{OP}: {name}: {ours.get('why')}")
    ready = [p for p in PEERS if p in answers and answers[p].get("ok")]
    calls = [("tvm_convt", c) for c in TVM_CALLS] + [(p, "call") for p in ready]
    medians, notes = steady_medians(lambda: _samples(workers, calls, rounds), rounds, " ".join)
    return PeerComparison(
        name, workload, ours["schedule"], medians[("tvm_convt", "layer")], medians[("tvm_convt", "module")],
        {p: medians.get((p, "call")) for p in PEERS},
        {"layer": ours["errors"]["layer"], "module": ours["errors"]["module"],
         **{p: answers[p]["errors"]["call"] for p in ready}},
        {p: answers[p]["form"] for p in ready}, {p: answers[p]["label"] for p in ready},
        {p: answers[p].get("why", "refused") if p in answers else "not asked for (--peers)" for p in PEERS if p not in ready}, ours.get("weight_packed", False),
        tuple(notes))


def run_peer_bench(
    suite: dict[str, Workload], *, target: TargetLike = "llvm", threads: int | None = None, rounds: int = 15,
    logs: str | Path | None = None, tuned: bool = True, peers: tuple[str, ...] = PEERS,
    progress: Callable[[PeerComparison], None] | None = None,
) -> PeerReport:
    """tvm_convt's layer call against each of ``peers`` on every layer of ``suite``, each library in
    its own worker process.

    Args:
        suite: ``{name: workload}``, e.g. :func:`tvm_convt.suite.default_suite`.
        target: a CPU target for tvm_convt; the peers run on this CPU.
        threads: CPU threads for every library (default: the physical cores).
        rounds: timing rounds per layer (each call once a round); medians are reported.
        logs: the user's tuning logs, looked up before the shipped records.
        tuned: False to time tvm_convt's default schedules, what a layer nobody tuned gets.
        peers: which of :data:`~tvm_convt.peers.PEERS` to run (those not installed are reported as such).
        progress: called with each comparison as soon as it is measured.
    """
    threads = host_cores() if threads is None else threads
    if threads < 1:
        raise ValueError(f"{OP}: threads must be positive, got threads={threads}")
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"{OP}: peers must be among {', '.join(PEERS)}, got {', '.join(map(repr, unknown))}")
    report = PeerReport(dict(machine_info(target, threads), peers=list(peers)))
    workers = {side: Worker(side) for side in ("tvm_convt", *peers)}
    setup = {"threads": threads, "target": target, "logs": None if logs is None else str(logs), "tuned": tuned}
    try:
        for name, workload in suite.items():
            comparison = compare_layer(name, workload, workers, setup, rounds)
            report.records.append(comparison)
            if progress is not None:
                progress(comparison)
    finally:
        for worker in workers.values():
            worker.close()
    return report


def stream_peer_progress(c: PeerComparison, stream: Any = None) -> None:
    """One line per measured layer, for the CLI."""
    stream = stream or sys.stderr
    peers = ", ".join(f"{LABELS[p]} {s * 1e3:.3f} ms" for p, s in c.peers_s.items() if s)
    print(f"  {c.name}: layer {c.layer_s * 1e3:.3f} ms, module {c.module_s * 1e3:.3f} ms"
          + (f"; {peers}" if peers else ""), file=stream, flush=True)


def plot_peers(report: PeerReport, path: str | Path) -> Path:
    """Bars of tvm_convt's speed-up over each peer per layer (log scale), with the 1.0x line."""
    from .benchmark import check_plotting

    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = [c.name for c in report.records]
    width = 0.8 / len(PEERS)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(names) + 2), 4.8), layout="constrained")
    for i, peer in enumerate(PEERS):
        values = [c.speedup(peer) or 0.0 for c in report.records]
        xs = [k + (i - (len(PEERS) - 1) / 2) * width for k in range(len(names))]
        bars = ax.bar(xs, [v or float("nan") for v in values], width, label=f"over {LABELS[peer]}")
        ax.bar_label(bars, labels=[f"{v:.2f}" if v else "" for v in values], fontsize=6)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_yscale("log")
    factor = FuncFormatter(lambda v, _: f"{v:g}x")
    ax.yaxis.set_major_formatter(factor)
    ax.yaxis.set_minor_formatter(factor)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("tvm_convt's layer call: speed-up (higher is faster)")
    m = report.machine
    geo = report.geomean()
    ax.set_title(f"tvm_convt vs each peer, each alone in its process: {m['cpu']}, {m['target_key']}, "
                 f"{m['threads']} threads" + (f"; geomean over the best peer {geo:.2f}x" if geo else ""), fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["PeerComparison", "PeerReport", "Worker", "WorkerError", "plot_peers", "run_peer_bench"]
