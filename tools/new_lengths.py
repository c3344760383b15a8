"""The converted HiFi-GAN generator at many distinct lengths in one fresh process: how many modules
compile, and what the first call at each new length costs against the steady call there: in all, and in
tvm_convt's own planning of the new shapes (the rest is the model's other layers and the noise of a
single call, which the steady calls' spread around their median shows).

    .venv/bin/python tools/new_lengths.py                  # 50 lengths from 40 to 250 frames
    .venv/bin/python tools/new_lengths.py --lengths 20 --json out.json

Run it with an empty cache (``TVM_CONVT_CACHE=$(mktemp -d)``) to count compiles; the first length
compiles the four upsampling layers' symbolic modules, every later one should compile nothing. Beside
the whole call it times the four tvm_convt layers alone (forward hooks), and the same generator in PyTorch
eager at lengths one frame longer (new to the process too), whose own first calls at a new shape are the
reference for the rest of the converted model's.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from hifigan_generator import V1, Generator  # noqa: E402

import tvm_convt.torch as tt  # noqa: E402
from tvm_convt.torch import op  # noqa: E402
from tvm_convt import build  # noqa: E402
from tvm_convt.runtime.module import _MODULES  # noqa: E402
from tvm_convt.torch.module import ConvTranspose1d as TvmConvTranspose1d  # noqa: E402


class _LayerTimer:
    """Forward hooks on ``model``'s layers of type ``kind``: the seconds of each call since :meth:`clear`
    (``spent``, one entry a call)."""

    def __init__(self, model: torch.nn.Module, kind: type) -> None:
        self.spent: list[float] = []
        self._started: list[float] = []
        for layer in model.modules():
            if type(layer) is kind:
                layer.register_forward_pre_hook(lambda *_: self._started.append(time.perf_counter()))
                layer.register_forward_hook(lambda *_: self.spent.append(time.perf_counter() - self._started.pop()))

    def clear(self) -> None:
        self.spent.clear()
        self._started.clear()


def _timed(model: torch.nn.Module, mel: torch.Tensor) -> float:
    start = time.perf_counter()
    model(mel)
    return time.perf_counter() - start


def _ratios(values: list[float]) -> dict:
    return {"median": statistics.median(values) if values else None, "max": max(values) if values else None,
            "above_1.1": sum(v > 1.1 for v in values), "of": len(values)}


MS = 1e3  # seconds to milliseconds


def _converted_at(model, mel, steady: int, planning: list[float], layers: _LayerTimer) -> dict:
    """The converted model's first call at this length and ``steady`` more, whole and in its tvm_convt
    layers alone: milliseconds."""
    planning.clear()
    layers.clear()
    first = _timed(model, mel)
    first_layers = sum(layers.spent)
    calls, layer_calls = [], []
    for _ in range(steady):
        layers.clear()
        calls.append(_timed(model, mel))
        layer_calls.append(sum(layers.spent))
    return {"first_ms": first * MS, "steady_ms": statistics.median(calls) * MS,
            "steady_calls_ms": [t * MS for t in calls], "planning_ms": sum(planning) * MS,
            "layers_first_ms": first_layers * MS, "layers_steady_ms": statistics.median(layer_calls) * MS}


def _eager_at(eager, frames: int, steady: int, transposed: _LayerTimer) -> dict:
    """PyTorch eager's first call and ``steady`` more at ``frames``, a length the converted model never
    runs (PyTorch's shape caches are the process's: at the converted model's own length, its Conv1d
    layers would have met the shape already): milliseconds, and its ConvTranspose1d calls."""
    mel = torch.randn(1, 80, frames)
    transposed.clear()
    first = _timed(eager, mel)
    calls = [_timed(eager, mel) for _ in range(steady)]
    return {"eager_frames": frames, "eager_first_ms": first * MS, "eager_steady_ms": statistics.median(calls) * MS,
            "eager_transposed_calls": len(transposed.spent)}


def _summary(rows: list[dict], compiled: list[str]) -> dict:
    later = rows[1:]
    # The noise a single call carries here: each steady call against its own length's median, the
    # same statistic as the first call's, for a call that compiles and plans nothing.
    single = [t / r["steady_ms"] for r in later for t in r["steady_calls_ms"]]
    return {"modules_compiled": len(compiled), "modules_in_process": len(_MODULES._modules),
            "first_over_steady_after_the_first_length": _ratios([r["first_ms"] / r["steady_ms"] for r in later]),
            "tvm_convt_layers_first_over_steady": _ratios([r["layers_first_ms"] / r["layers_steady_ms"]
                                                           for r in later]),
            "eager_first_over_steady": _ratios([r["eager_first_ms"] / r["eager_steady_ms"] for r in later]),
            "planning_at_a_new_length_ms": {"max": max(r["planning_ms"] for r in later) if later else None,
                                             "share_of_the_call_max": max(r["planning_ms"] / r["steady_ms"]
                                                                          for r in later) if later else None},
            "a_steady_call_over_its_median": _ratios(single)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, default=50, help="distinct lengths (default: %(default)s)")
    parser.add_argument("--steady", type=int, default=5, help="calls after the first, median (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    eager = Generator(**V1).eval()
    model = tt.convert(copy.deepcopy(eager))
    layers = _LayerTimer(model, TvmConvTranspose1d)
    eager_transposed = _LayerTimer(eager, torch.nn.ConvTranspose1d)
    compiled: list[str] = []
    original = build._compile_into

    def counting(mod, tgt, metadata, library, *rest, **options):
        compiled.append(library.name)
        return original(mod, tgt, metadata, library, *rest, **options)

    build._compile_into = counting
    planning: list[float] = []  # seconds in the op's plan for a new shape (lookup, checks, compile)
    make_plan = op._make_plan

    def timed_plan(*args, **options):
        start = time.perf_counter()
        try:
            return make_plan(*args, **options)
        finally:
            planning.append(time.perf_counter() - start)

    op._make_plan = timed_plan
    # Even steps: the eager generator's lengths (one frame longer) are never the converted model's.
    step = max(2, 210 // args.lengths)
    rows = []
    with torch.no_grad():
        for i in range(args.lengths):
            frames = 40 + i * step
            row = {"frames": frames, **_converted_at(model, torch.randn(1, 80, frames), args.steady, planning, layers),
                   **_eager_at(eager, frames + 1, args.steady, eager_transposed), "compiled_so_far": len(compiled)}
            rows.append(row)
            print(f"{frames:4d} frames: first {row['first_ms']:8.1f} ms, steady {row['steady_ms']:8.1f} ms, "
                  f"ratio {row['first_ms'] / row['steady_ms']:5.2f} (tvm_convt's layers "
                  f"{row['layers_first_ms'] / row['layers_steady_ms']:5.2f}, PyTorch eager "
                  f"{row['eager_first_ms'] / row['eager_steady_ms']:5.2f}), tvm_convt planning "
                  f"{row['planning_ms']:7.2f} ms, modules compiled so far {len(compiled)}", flush=True)
    summary = _summary(rows, compiled)
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
