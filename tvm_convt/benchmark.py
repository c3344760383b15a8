"""Benchmarks: tvm_convt against PyTorch in one process, on the same inputs and threads.

``tvm-convt bench`` runs a suite through :func:`run_bench`; ``tvm-convt demo``
times one layer with the same pieces (:func:`layer_inputs`, :func:`torch_call`,
:func:`interleaved_medians`). Each workload is checked against PyTorch (or,
without it, the float64 NumPy reference) before anything is timed.
"""

from __future__ import annotations

import math
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .params import OP, Workload
from .reference import CHECK_TOLERANCE, conv_transpose1d_reference, relative_error
from .runtime import CompiledConvTranspose1d
from .runtime import compile as compile_module
from .target import TargetLike, host_cores, resolve_target, set_cpu_threads, target_key
from .timing import interleaved_medians, interleaved_samples, layer_inputs

# A side whose median round is more than this many times its fastest was disturbed (another
# process, frequency changes, a thread pool asleep): the layer is timed again, once, and a side
# still that spread is reported with a warning (issue #26, 5: a 14 us call read 14.4 ms once).
SPREAD_LIMIT = 3.0
# Fewer rounds than this make a median that one disturbed round can move: reported with a warning.
MIN_ROUNDS = 5


def timed_medians(fns: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, float], list[str]]:
    """Interleaved medians of ``fns`` and warnings about them (:func:`steady_medians`)."""
    return steady_medians(lambda: interleaved_samples(fns, rounds=rounds), rounds)


def steady_medians(sample: Callable[[], dict[Any, list[float]]], rounds: int,
                   label: Callable[[Any], str] = str) -> tuple[dict[Any, float], list[str]]:
    """Medians of ``sample()``'s rounds by side, and warnings about them: too few rounds, or a side's
    median past :data:`SPREAD_LIMIT` times its fastest round after sampling a second time. ``label``
    names a side in the warnings."""
    samples = sample()
    if any(statistics.median(s) > SPREAD_LIMIT * min(s) for s in samples.values()):
        samples = sample()
    medians = {side: statistics.median(s) for side, s in samples.items()}
    notes = [f"{label(side)}: its median round, {medians[side] * 1e3:.3f} ms, is {medians[side] / min(s):.1f}x its "
             f"fastest ({min(s) * 1e3:.3f} ms) twice: disturbed" for side, s in samples.items()
             if medians[side] > SPREAD_LIMIT * min(s)]
    if rounds < MIN_ROUNDS:
        notes.append(f"medians of {rounds} round(s): fewer than {MIN_ROUNDS} are not reliable")
    return medians, notes


class ResultMismatch(RuntimeError):
    """tvm_convt's output differs from PyTorch's (or the reference's) beyond tolerance."""


def torch_call(workload: Workload, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
               threads: int) -> tuple[Callable[[], np.ndarray] | None, str]:
    """PyTorch's call on these arrays and its label, or ``(None, why not)``."""
    try:
        from . import torch as tt
    except ImportError:
        return None, "PyTorch is not installed (pip install torch)"
    try:
        call = tt.functional_call(workload, x, weight, bias)
    except ValueError as err:
        return None, str(err)
    tt.set_threads(threads)
    return call, f"PyTorch {tt.version()}"


def check_against_reference(name: str, actual: np.ndarray, expected: np.ndarray, dtype: str,
                            what: str = "tvm_convt's output") -> float:
    """``actual``'s relative error to the float64 reference ``expected``; :class:`ResultMismatch`
    naming the layer when it is past :data:`CHECK_TOLERANCE`."""
    error = relative_error(actual, expected)
    if not error <= CHECK_TOLERANCE[dtype]:
        raise ResultMismatch(f"{OP}: {name}: {what} differs from the float64 NumPy reference by a relative "
                             f"{error:.2e}, more than {CHECK_TOLERANCE[dtype]:.0e}; not timed")
    return error


PACKED_MARK = "(packed w)"


def as_ms(s: float | None) -> float | None:
    """Seconds as milliseconds for a report, rounded to 0.1 us (None stays None)."""
    return None if s is None else round(s * 1e3, 4)


@dataclass(frozen=True)
class Comparison:
    """One workload's medians; the PyTorch fields are None when it could not run."""

    name: str
    workload: Workload
    schedule: str
    tvm_convt_s: float
    torch_s: float | None
    max_error: float
    checked_against: str
    weight_packed: bool = False  # the module read the weight packed once, outside the timed call
    torch_error: float | None = None  # PyTorch's own relative error to the reference, beside ours
    warnings: tuple[str, ...] = ()  # about the timing (timed_medians)

    @property
    def label(self) -> str:
        """The schedule, marked when the weight was packed once rather than in each call."""
        return f"{self.schedule} {PACKED_MARK}" if self.weight_packed else self.schedule

    @property
    def gflops(self) -> float:
        return self.workload.flops / self.tvm_convt_s / 1e9

    @property
    def torch_gflops(self) -> float | None:
        return self.workload.flops / self.torch_s / 1e9 if self.torch_s else None

    @property
    def speedup(self) -> float | None:
        return self.torch_s / self.tvm_convt_s if self.torch_s else None

    def to_dict(self) -> dict[str, Any]:
        ms = as_ms

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {"name": self.name, "workload": self.workload.to_dict(), "schedule": self.schedule,
                "tvm_convt_ms": ms(self.tvm_convt_s), "torch_ms": ms(self.torch_s),
                "speedup": r(self.speedup), "gflops": r(self.gflops), "torch_gflops": r(self.torch_gflops),
                "max_error": self.max_error, "checked_against": self.checked_against,
                "torch_error": self.torch_error, "warnings": list(self.warnings),
                "weight_packed": self.weight_packed}


@dataclass
class BenchReport:
    """A suite's comparisons, the machine they ran on, and why PyTorch is missing if it is."""

    machine: dict[str, Any]
    records: list[Comparison] = field(default_factory=list)
    torch_notes: dict[str, str] = field(default_factory=dict)  # workload name -> why no PyTorch time

    @property
    def geomean_speedup(self) -> float | None:
        ratios = [c.speedup for c in self.records if c.speedup]
        return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None

    def to_dict(self) -> dict[str, Any]:
        geo = self.geomean_speedup
        return {"machine": self.machine, "records": [c.to_dict() for c in self.records],
                "geomean_speedup": None if geo is None else round(geo, 3),
                "torch_notes": self.torch_notes}

    def table(self) -> str:
        """The report as a fixed-width text table, one workload a line."""
        head = (f"{'layer':20s} {'schedule':28s} {'tvm_convt ms':>12s} {'GFLOP/s':>8s} "
                f"{'torch ms':>9s} {'GFLOP/s':>8s} {'speed-up':>8s}")
        lines = [head, "-" * len(head)]
        for c in self.records:
            torch_cols = (f"{c.torch_s * 1e3:9.3f} {c.torch_gflops:8.1f} {c.speedup:7.2f}x" if c.torch_s
                          else f"{'-':>9s} {'-':>8s} {'-':>8s}")
            lines.append(f"{c.name:20s} {c.label[:28]:28s} {c.tvm_convt_s * 1e3:12.3f} "
                         f"{c.gflops:8.1f} {torch_cols}")
        if any(c.weight_packed for c in self.records):
            lines.append(f"{PACKED_MARK}: the weight packed once (prepare_weights), as the layer does, not in each call")
        geo = self.geomean_speedup
        if geo is not None:
            lines.append(f"geometric mean speed-up over PyTorch: {geo:.2f}x")
        for name, why in self.torch_notes.items():
            lines.append(f"{name}: no PyTorch time: {why}")
        for c in self.records:
            lines += [f"warning: {c.name}: {note}" for note in c.warnings]
        return "\n".join(lines)


def machine_info(target: TargetLike, threads: int) -> dict[str, Any]:
    """What the numbers were measured on: CPU, target and class, threads, versions."""
    import tvm

    tgt = resolve_target(target)
    info: dict[str, Any] = {
        "cpu": _cpu_name(), "physical_cores": host_cores(), "threads": threads,
        "target": str(tgt.attrs.get("mcpu", tgt.attrs.get("arch", ""))) or tgt.kind.name,
        "target_key": target_key(tgt), "python": platform.python_version(),
        "numpy": np.__version__, "tvm": tvm.__version__,
    }
    try:
        from . import torch as tt

        info["torch"] = tt.version()
    except ImportError:
        info["torch"] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compare_workload(name: str, workload: Workload, *, target: TargetLike, threads: int,
                     rounds: int, logs: str | Path | None = None,
                     tuned: bool = True) -> tuple[Comparison, str | None]:
    """Compile (best schedule available; the default rule when not ``tuned``), check
    against PyTorch, then time both.

    Returns the comparison and, when PyTorch could not run it, why not. Raises
    :class:`ResultMismatch` when the outputs disagree, before timing anything.
    """
    # As the layer runs it: the weight prepared (packed, where the schedule reads it packed)
    # once, not in every call.
    compiled = compile_module(workload.params, batch=workload.batch, length=workload.length,
                              dtype=workload.dtype, target=target, logs=logs, tuned=tuned,
                              prepack_weight=True)
    x, weight, bias = layer_inputs(workload)
    rival, label = torch_call(workload, x, weight, bias, threads)
    expected = conv_transpose1d_reference(x, weight, bias, workload.params)
    against = "the float64 NumPy reference"
    error = check_against_reference(name, compiled(x, weight, bias), expected, workload.dtype)
    torch_error = relative_error(rival(), expected) if rival is not None else None
    fns = {"tvm_convt": module_call(compiled, x, weight, bias)}
    if rival is not None:
        fns["torch"] = rival
    times, notes = timed_medians(fns, rounds)
    comparison = Comparison(name, workload, compiled.metadata.schedule, times["tvm_convt"],
                            times.get("torch"), error, against, compiled.weight_packed, torch_error, tuple(notes))
    return comparison, None if rival is not None else label


def module_call(compiled: CompiledConvTranspose1d, x: np.ndarray, weight: np.ndarray,
                bias: np.ndarray | None) -> Callable[[], object]:
    """The compiled module on device tensors made once (the weight prepared once, as the layer
    does): what the kernel itself costs."""
    xd = compiled.to_device(x)
    weights = compiled.prepare_weights(weight, bias)
    return lambda: compiled.run(xd, weights)


def run_bench(
    suite: dict[str, Workload], *, target: TargetLike = "llvm", threads: int | None = None,
    rounds: int = 15, logs: str | Path | None = None, tuned: bool = True,
    progress: Callable[[Comparison], None] | None = None,
) -> BenchReport:
    """Compare tvm_convt with PyTorch on every workload of ``suite``.

    Args:
        suite: ``{name: workload}``, e.g. :func:`tvm_convt.suite.default_suite`.
        target: where tvm_convt runs; PyTorch runs on the CPU.
        threads: CPU threads for both sides (default: the physical cores).
        rounds: interleaved timing rounds per workload; medians are reported.
        logs: the user's tuning logs, looked up before the shipped records.
        tuned: False to skip every tuning record and time the default schedules,
            what a layer nobody tuned gets.
        progress: called with each comparison as soon as it is measured.
    """
    threads = host_cores() if threads is None else threads
    if threads < 1:
        raise ValueError(f"{OP}: threads must be positive, got threads={threads}")
    set_cpu_threads(threads)
    report = BenchReport(machine_info(target, threads))
    for name, workload in suite.items():
        comparison, why = compare_workload(name, workload, target=target, threads=threads,
                                           rounds=rounds, logs=logs, tuned=tuned)
        report.records.append(comparison)
        if why is not None:
            report.torch_notes[name] = why
        if progress is not None:
            progress(comparison)
    return report


def check_plotting() -> None:
    """Raise ImportError with the fix when matplotlib (the ``bench`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"{OP}: --plot needs matplotlib: pip install 'tvm_convt[bench]'") from None


def plot(report: BenchReport, path: str | Path) -> Path:
    """Save a bar chart of the speed-up over PyTorch per layer, with the 1.0x line."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in report.records if c.speedup]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4.5), layout="constrained")
    colours = ["tab:green" if c.speedup >= 1 else "tab:red" for c in rows]
    bars = ax.bar([c.name for c in rows], [c.speedup for c in rows], color=colours)
    ax.bar_label(bars, labels=[f"{c.speedup:.2f}x" for c in rows], fontsize=8)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="PyTorch (1.0x)")
    ax.set_yscale("log")
    # Plain factors on the log axis ("2x", not "2 x 10^0").
    from matplotlib.ticker import FuncFormatter

    factor = FuncFormatter(lambda v, _: f"{v:g}x")
    ax.yaxis.set_major_formatter(factor)
    ax.yaxis.set_minor_formatter(factor)
    ax.set_ylabel("speed-up over PyTorch (higher is faster)")
    m = report.machine
    geo = report.geomean_speedup
    ax.set_title(f"tvm_convt vs PyTorch {m.get('torch')}: {m['cpu']}, {m['target_key']}, "
                 f"{m['threads']} threads" + (f"; geomean {geo:.2f}x" if geo else ""), fontsize=9)
    ax.tick_params(axis="x", labelrotation=35)
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def stream_progress(comparison: Comparison, stream=None) -> None:
    """One line per measured workload, for the CLI."""
    stream = stream or sys.stderr
    rival = f", PyTorch {comparison.torch_s * 1e3:.3f} ms" if comparison.torch_s else ""
    print(f"  {comparison.name}: {comparison.tvm_convt_s * 1e3:.3f} ms{rival} ({comparison.schedule})",
          file=stream, flush=True)


__all__ = ["BenchReport", "CHECK_TOLERANCE", "Comparison", "ResultMismatch", "compare_workload",
           "interleaved_medians", "layer_inputs", "machine_info", "plot", "run_bench", "torch_call"]
