"""Tuning a layer once for every length: a search over the CPU rules' plan, measured, not modelled.

MetaSchedule tunes static shapes only (:mod:`tvm_convt.schedule.cpu_space` says why), so the
module that serves every length is tuned in the fields its rules plan with. The search is a
coordinate descent from the target's own arch: for each tunable field in turn, every value of
:func:`~tvm_convt.schedule.cpu_space.tuning_space` that changes the program at the tuning lengths
is compiled (only the functions serving those lengths) and timed interleaved with the best so far
(medians, in this process), and the fastest is kept when it beats the best by :data:`STEP_MARGIN`
(geometric mean over the lengths) without losing more than that at any of them. The space has a
few tens of candidates, most scheduling a program already seen, so every one is measured and no
cost model is needed. Finally the tuned
fields are timed against the default, interleaved, and stored (:mod:`tvm_convt.layer_records`)
only when they beat it by :data:`~tvm_convt.remeasure.DEFAULT_MARGIN` and lose at no length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import tvm
import tvm_ffi

from .compute import weight_pack_func
from .layer_records import LayerRecord
from .params import OP, PACK_WEIGHT, ConvTranspose1dParams, SymbolicWorkload, Workload
from .lowering import compile_module
from .remeasure import DEFAULT_MARGIN
from .schedule.cpu import base_cpu_arch, schedule_weight_pack, tuned_fields
from .schedule.cpu_space import TUNABLE, as_json, tuning_space
from .schedule.lengths import functions_at
from .target import TargetLike, device_of, resolve_target
from .timing import interleaved_medians, layer_inputs

# A step of the search keeps a value that beats the best so far by this fraction (below it, the
# spread of interleaved medians on a shared 2-core VM).
STEP_MARGIN = 0.03


def tuning_lengths(params: ConvTranspose1dParams, length: int) -> tuple[int, ...]:
    """The input lengths a layer is tuned at around its typical ``length``: a quarter of it, itself
    and four times it (each at least the layer's shortest input), without repeats."""
    picks = (max(1, length // 4), length, 4 * length)
    return tuple(sorted({max(params.min_length, n) for n in picks}))


@dataclass(frozen=True)
class LayerTuning:
    """What :func:`tune_layer` found: the fields (those differing from the target's arch; empty when
    the default won), the lengths, the default's and the tuned module's median milliseconds at each,
    and each step of the search for people."""

    params: ConvTranspose1dParams
    dtype: str
    lengths: tuple[int, ...]
    fields: dict[str, Any]
    default_ms: tuple[float, ...]
    tuned_ms: tuple[float, ...]
    candidates: int
    steps: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Geometric mean of default over tuned time at the tuning lengths."""
        return _geomean_ratio(self.default_ms, self.tuned_ms)

    def record(self, target: str) -> LayerRecord:
        return LayerRecord(self.params, self.dtype, as_json(self.fields), self.lengths, self.default_ms,
                           self.tuned_ms, {"target": target, "candidates": self.candidates})


def _geomean_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    return math.exp(sum(math.log(a / b) for a, b in zip(slow, fast)) / len(slow))


class _Candidate:
    """One set of fields: its program at the tuning lengths, compiled and called on first use."""

    def __init__(self, fields: dict[str, Any], workload: SymbolicWorkload, target: Any,
                 lengths: Sequence[int]) -> None:
        self.fields = fields
        with tuned_fields(fields):
            found, block = functions_at(workload.params, workload.dtype, target, list(lengths), prepack_weight=True)
        distinct: dict[str, Any] = {}
        self.functions: dict[int, str] = {}
        for n, func in found.items():  # lengths of one range share its function
            name = next((k for k, f in distinct.items() if tvm_ffi.structural_equal(f, func)), f"main_{n}")
            distinct[name] = func
            self.functions[n] = name
        functions = {name: func.with_attr("global_symbol", name) for name, func in distinct.items()}
        if block is not None:
            pack = weight_pack_func(workload.params, workload.dtype, block)
            functions[PACK_WEIGHT] = schedule_weight_pack(pack).mod["main"]
        self.program = tvm.IRModule(functions)
        self._block = block
        self._lib: Any = None
        self._weight: Any = None

    def same_program(self, other: _Candidate) -> bool:
        return tvm_ffi.structural_equal(self.program, other.program)

    def call(self, length: int, inputs: _Inputs) -> Callable[[], None]:
        """The call at ``length`` on ``inputs`` (the weight packed once, before, as the layer runs it)."""
        if self._lib is None:
            self._lib = compile_module(self.program, inputs.target)
            self._weight = inputs.weight
            if self._block is not None:
                self._weight = tvm.runtime.empty(inputs.params.packed_weight_shape(self._block), inputs.dtype,
                                                 inputs.device)
                self._lib[PACK_WEIGHT](inputs.weight, self._weight)
        main, weight = self._lib[self.functions[length]], self._weight
        x, out = inputs.x[length], inputs.out[length]
        return lambda: main(x, weight, *inputs.bias, out)


@dataclass
class _Inputs:
    """A layer's arrays on the device: one input and output per tuning length, one weight and bias."""

    params: ConvTranspose1dParams
    dtype: str
    target: Any
    lengths: tuple[int, ...]
    batch: int = 1

    def __post_init__(self) -> None:
        self.device = device_of(self.target)
        x, weight, bias = {}, None, ()
        self.out: dict[int, Any] = {}
        for n in self.lengths:
            w = Workload(self.params, self.batch, n, self.dtype)
            xs, ws, bs = layer_inputs(w)
            x[n] = tvm.runtime.tensor(xs, self.device)
            self.out[n] = tvm.runtime.empty(w.output_shape, self.dtype, self.device)
            weight = tvm.runtime.tensor(ws, self.device)
            bias = () if bs is None else (tvm.runtime.tensor(bs, self.device),)
        self.x, self.weight, self.bias = x, weight, bias


def _geomeans(times: dict[tuple[int, int], float], count: int, lengths: Sequence[int]) -> list[float]:
    """Per candidate, the geometric mean of its times over the lengths."""
    return [math.exp(sum(math.log(times[(i, n)]) for n in lengths) / len(lengths)) for i in range(count)]


def _slower_somewhere(times: dict[tuple[int, int], float], i: int, than: int, lengths: Sequence[int]) -> bool:
    """Whether candidate ``i`` is slower than candidate ``than`` by more than :data:`STEP_MARGIN` at a length."""
    return any(times[(i, n)] > times[(than, n)] * (1 + STEP_MARGIN) for n in lengths)


def _measure(candidates: list[_Candidate], inputs: _Inputs, rounds: int) -> dict[tuple[int, int], float]:
    """Median seconds of each candidate (by index) at each tuning length, interleaved per length."""
    times: dict[tuple[int, int], float] = {}
    for n in inputs.lengths:
        calls = {i: c.call(n, inputs) for i, c in enumerate(candidates)}
        times.update({(i, n): t for i, t in interleaved_medians(calls, rounds=rounds).items()})
    return times


def _variants(name: str, values: list[Any], best: _Candidate, base: Any, workload: SymbolicWorkload,
              target: Any, lengths: Sequence[int]) -> list[_Candidate]:
    """The candidates that set field ``name`` to each of ``values`` on top of ``best``'s fields, one per
    distinct program at the tuning lengths and none that schedules ``best``'s."""
    found: list[_Candidate] = []
    for value in values:
        fields = {k: v for k, v in best.fields.items() if k != name}
        if value != getattr(base, name):
            fields[name] = value
        if fields == best.fields:
            continue
        cand = _Candidate(fields, workload, target, lengths)
        if not cand.same_program(best) and not any(cand.same_program(f) for f in found):
            found.append(cand)
    return found


def tune_layer(params: ConvTranspose1dParams, lengths: Sequence[int], *, dtype: str = "float32",
               target: TargetLike = "llvm", rounds: int = 9,
               log: Callable[[str], None] | None = None) -> LayerTuning:
    """Search the CPU rules' fields for the module of ``params`` that serves every length, timed at
    ``lengths`` (batch 1); see the module's docstring.

    Args:
        params: the layer.
        lengths: the input lengths to time at (:func:`tuning_lengths` picks three around a typical one).
        dtype: its dtype.
        target: an LLVM target of this machine (the search times calls here).
        rounds: interleaved rounds per measurement (medians).
        log: called with a line per step.
    """
    tgt = resolve_target(target)
    if tgt.kind.name != "llvm":
        raise ValueError(f"{OP}: tuning a layer for every length needs an LLVM CPU target, got "
                         f"target kind {tgt.kind.name!r}")
    lengths = tuple(sorted(set(lengths)))
    workload = SymbolicWorkload(params, dtype)
    inputs = _Inputs(params, workload.dtype, tgt, lengths)
    base = base_cpu_arch(tgt)
    space = tuning_space(base)
    default = best = _Candidate({}, workload, tgt, lengths)
    steps, measured = [], 1
    for name in TUNABLE:
        variants = _variants(name, space[name], best, base, workload, tgt, lengths)
        if not variants:
            continue
        measured += len(variants)
        pool = [best] + variants
        times = _measure(pool, inputs, rounds)
        means = _geomeans(times, len(pool), lengths)
        # A threshold moved (of the blocked form, of the operand outside) can win at one length and lose
        # at another: a candidate must be no slower than the best so far at any tuning length.
        eligible = [i for i in range(len(pool)) if not _slower_somewhere(times, i, 0, lengths)]
        winner = min(eligible, key=means.__getitem__)
        kept = winner != 0 and means[winner] < means[0] * (1 - STEP_MARGIN)
        if kept:
            best = pool[winner]
        line = (f"{name}: {len(variants)} programs, best {means[winner] * 1e3:.3f} ms against "
                f"{means[0] * 1e3:.3f} ms{'; kept ' + repr(best.fields[name]) if kept else '; unchanged'}")
        steps.append(line)
        if log is not None:
            log(line)
    final = _measure([default, best], inputs, 2 * rounds) if best is not default else None
    default_ms = tuple((final or _measure([default], inputs, rounds))[(0, n)] * 1e3 for n in lengths)
    tuned_ms = tuple(final[(1, n)] * 1e3 for n in lengths) if final else default_ms
    fields = best.fields
    if _geomean_ratio(default_ms, tuned_ms) < 1 / (1 - DEFAULT_MARGIN) or any(t > d * (1 + STEP_MARGIN) for d, t in zip(default_ms, tuned_ms)):
        fields, tuned_ms = {}, default_ms  # the default kept its place
    return LayerTuning(params, workload.dtype, lengths, fields, default_ms, tuned_ms, measured, steps)


__all__ = ["LayerTuning", "STEP_MARGIN", "tune_layer", "tuning_lengths"]
