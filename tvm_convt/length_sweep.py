"""``tvm-convt bench --lengths``: one symbolic module per layer against the static module compiled
for each length and against PyTorch, at a set of lengths, in one process, interleaved.

Each point is checked (the symbolic module against PyTorch, or the float64 reference) before it
is timed. Both modules read the weight packed once, as the layer does, and use the default rules
(the symbolic module has no tuned records), so the ratio isolates what serving every length costs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .benchmark import (as_ms, check_against_reference, check_plotting, machine_info, module_call,
                        torch_call)
from .params import Workload
from .reference import conv_transpose1d_reference
from .runtime import CompiledConvTranspose1d
from .runtime import compile as compile_module
from .target import TargetLike, host_cores, resolve_target, set_cpu_threads
from .timing import interleaved_medians, layer_inputs


def default_lengths(workload: Workload) -> list[int]:
    """1, 7, 97, the layer's length, one less and one more, and 3x it (from the layer's shortest input)."""
    own = workload.length
    wanted = {1, 7, 97, own - 1, own, own + 1, 3 * own}
    return sorted(n for n in wanted if n >= workload.params.min_length)


@dataclass(frozen=True)
class LengthPoint:
    """One layer at one length: medians (s) of the symbolic module, the static one and PyTorch; and of
    the symbolic module tuned by the layer's record (:mod:`tvm_convt.layer_records`) where it has one."""

    name: str
    workload: Workload
    symbolic_s: float
    static_s: float
    torch_s: float | None
    max_error: float
    tuned_s: float | None = None

    @property
    def vs_static(self) -> float:
        """Speed of the symbolic module relative to the static one (above 1: faster)."""
        return self.static_s / self.symbolic_s

    @property
    def vs_torch(self) -> float | None:
        return self.torch_s / self.symbolic_s if self.torch_s else None

    @property
    def tuned_vs_default(self) -> float | None:
        """Speed of the tuned symbolic module relative to the default one (above 1: faster)."""
        return self.symbolic_s / self.tuned_s if self.tuned_s else None

    def to_dict(self) -> dict[str, Any]:
        ms = as_ms
        return {"name": self.name, "batch": self.workload.batch, "length": self.workload.length,
                "symbolic_ms": ms(self.symbolic_s), "static_ms": ms(self.static_s), "torch_ms": ms(self.torch_s),
                "symbolic_vs_static": round(self.vs_static, 3),
                "symbolic_vs_torch": None if self.vs_torch is None else round(self.vs_torch, 3),
                "tuned_ms": ms(self.tuned_s),
                "tuned_vs_default": None if self.tuned_vs_default is None else round(self.tuned_vs_default, 3),
                "gflops": round(self.workload.flops / self.symbolic_s / 1e9, 2), "max_error": self.max_error}


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


@dataclass
class LengthReport:
    """Every layer's points, and each layer's length in the suite (its own length)."""

    machine: dict[str, Any]
    points: list[LengthPoint] = field(default_factory=list)
    own_lengths: dict[str, int] = field(default_factory=dict)

    def own(self) -> list[LengthPoint]:
        return [p for p in self.points if p.workload.length == self.own_lengths.get(p.name)]

    def summary(self) -> dict[str, float | None]:
        return {"symbolic_vs_static_own_geomean": _geomean([p.vs_static for p in self.own()]),
                "symbolic_vs_static_own_min": min((p.vs_static for p in self.own()), default=None),
                "symbolic_vs_torch_geomean": _geomean([p.vs_torch for p in self.points if p.vs_torch]),
                "symbolic_vs_torch_min_from_8": min((p.vs_torch for p in self.points
                                                     if p.vs_torch and p.workload.length >= 8), default=None),
                "symbolic_vs_torch_min_below_8": min((p.vs_torch for p in self.points
                                                      if p.vs_torch and p.workload.length < 8), default=None)}

    def to_dict(self) -> dict[str, Any]:
        summary = {k: None if v is None else round(v, 3) for k, v in self.summary().items()}
        return {"machine": self.machine, "points": [p.to_dict() for p in self.points], **summary}

    def table(self) -> str:
        head = (f"{'layer':18s} {'batch':>5s} {'L_in':>6s} {'symbolic ms':>11s} {'static ms':>10s} "
                f"{'torch ms':>9s} {'vs static':>9s} {'vs torch':>9s}")
        lines = [head, "-" * len(head)]
        for p in self.points:
            torch_ms = f"{p.torch_s * 1e3:9.3f}" if p.torch_s else f"{'-':>9s}"
            vs_torch = f"{p.vs_torch:8.2f}x" if p.vs_torch else f"{'-':>9s}"
            tuned = f" tuned {p.tuned_s * 1e3:.3f} ms ({p.tuned_vs_default:.2f}x)" if p.tuned_s else ""
            lines.append(f"{p.name:18s} {p.workload.batch:5d} {p.workload.length:6d} {p.symbolic_s * 1e3:11.3f} "
                         f"{p.static_s * 1e3:10.3f} {torch_ms} {p.vs_static:8.2f}x {vs_torch}{tuned}")
        labels = {"symbolic_vs_static_own_geomean": "symbolic / static at each layer's own length, geomean",
                  "symbolic_vs_static_own_min": "symbolic / static at each layer's own length, lowest",
                  "symbolic_vs_torch_geomean": "symbolic over PyTorch, geomean of every point",
                  "symbolic_vs_torch_min_from_8": "symbolic over PyTorch, lowest at lengths of 8 and more",
                  "symbolic_vs_torch_min_below_8": "symbolic over PyTorch, lowest below length 8"}
        for key, value in self.summary().items():
            if value is not None:
                lines.append(f"{labels[key]}: {value:.2f}x")
        return "\n".join(lines)


def _tuned_module(workload: Workload, target: TargetLike, logs: str | Path | None) -> CompiledConvTranspose1d | None:
    """The layer's symbolic module tuned by its record in ``logs``; None without one."""
    from .layer_records import find_layer_record

    if logs is None or find_layer_record(workload.params, workload.dtype, resolve_target(target), logs=logs) is None:
        return None
    return compile_module(workload.params, dtype=workload.dtype, target=target, logs=logs, prepack_weight=True)


def sweep_layer(name: str, workload: Workload, lengths: list[int], *, target: TargetLike, threads: int,
                rounds: int, logs: str | Path | None = None) -> list[LengthPoint]:
    """One layer's symbolic module (compiled once) against the static one and PyTorch at each length; and
    the symbolic module tuned by the layer's record in ``logs``, where there is one."""
    symbolic = compile_module(workload.params, dtype=workload.dtype, target=target, tuned=False, prepack_weight=True)
    tuned = _tuned_module(workload, target, logs)
    points = []
    for length in lengths:
        w = Workload(workload.params, workload.batch, length, workload.dtype)
        static = compile_module(w.params, batch=w.batch, length=length, dtype=w.dtype, target=target,
                                tuned=False, prepack_weight=True)
        x, weight, bias = layer_inputs(w)
        rival, _ = torch_call(w, x, weight, bias, threads)
        expected = conv_transpose1d_reference(x, weight, bias, w.params)
        modules = {"symbolic": symbolic, "static": static, **({"tuned": tuned} if tuned is not None else {})}
        error = max(check_against_reference(f"{name} at L_in={length}", modules[kind](x, weight, bias), expected,
                                            w.dtype, f"the {kind} module")
                    for kind in ("symbolic", "tuned") if kind in modules)
        fns: dict[str, Callable[[], object]] = {k: module_call(m, x, weight, bias) for k, m in modules.items()}
        if rival is not None:
            fns["torch"] = rival
        times = interleaved_medians(fns, rounds=rounds)
        points.append(LengthPoint(name, w, times["symbolic"], times["static"], times.get("torch"), error,
                                  times.get("tuned")))
    return points


def run_length_sweep(suite: dict[str, Workload], *, target: TargetLike = "llvm", threads: int | None = None,
                     rounds: int = 7, lengths: list[int] | None = None, logs: str | Path | None = None,
                     progress: Callable[[LengthPoint], None] | None = None) -> LengthReport:
    """:func:`sweep_layer` for every layer of ``suite``, at ``lengths`` or each layer's :func:`default_lengths`
    (with ``logs``, also the layers' tuned symbolic modules)."""
    threads = host_cores() if threads is None else threads
    set_cpu_threads(threads)
    report = LengthReport(machine_info(target, threads))
    for name, workload in suite.items():
        report.own_lengths[name] = workload.length
        chosen = lengths if lengths is not None else default_lengths(workload)
        for point in sweep_layer(name, workload, [n for n in chosen if n >= workload.params.min_length],
                                 target=target, threads=threads, rounds=rounds, logs=logs):
            report.points.append(point)
            if progress is not None:
                progress(point)
    return report


def stream_point(point: LengthPoint, stream=None) -> None:
    rival = f", PyTorch {point.torch_s * 1e3:.3f} ms" if point.torch_s else ""
    tuned = f", tuned {point.tuned_s * 1e3:.3f} ms" if point.tuned_s else ""
    print(f"  {point.name} L_in={point.workload.length}: symbolic {point.symbolic_s * 1e3:.3f} ms, "
          f"static {point.static_s * 1e3:.3f} ms{rival}{tuned}", file=stream or sys.stderr, flush=True)


def plot_lengths(report: LengthReport, path: str | Path) -> Path:
    """Speed-up of the symbolic module over PyTorch against the input length, one line per layer."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for name in report.own_lengths:
        pts = [p for p in report.points if p.name == name and p.vs_torch]
        ax.plot([p.workload.length for p in pts], [p.vs_torch for p in pts], marker="o", label=name)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input length L_in")
    ax.set_ylabel("symbolic module's speed-up over PyTorch")
    m = report.machine
    ax.set_title(f"one module per layer at every length: {m['cpu']}, {m['target_key']}, {m['threads']} threads",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
