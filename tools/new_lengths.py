"""The converted HiFi-GAN generator at many distinct lengths in one fresh process: how many modules
compile, and what the first call at each new length costs against the steady call there: in all, and in
tvm_convt's own planning of the new shapes (the rest is the model's other layers and the noise of a
single call, which the steady calls' spread around their median shows).

    .venv/bin/python tools/new_lengths.py                  # 50 lengths from 40 to 250 frames
    .venv/bin/python tools/new_lengths.py --lengths 20 --json out.json

Run it with an empty cache (``TVM_CONVT_CACHE=$(mktemp -d)``) to count compiles; the first length
compiles the four upsampling layers' symbolic modules, every later one should compile nothing.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, default=50, help="distinct lengths (default: %(default)s)")
    parser.add_argument("--steady", type=int, default=5, help="calls after the first, median (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = tt.convert(copy.deepcopy(Generator(**V1).eval()))
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
    step = max(1, 210 // args.lengths)
    rows = []
    with torch.no_grad():
        for i in range(args.lengths):
            frames = 40 + i * step
            mel = torch.randn(1, 80, frames)
            planning.clear()
            start = time.perf_counter()
            model(mel)
            first = time.perf_counter() - start
            steady = []
            for _ in range(args.steady):
                start = time.perf_counter()
                model(mel)
                steady.append(time.perf_counter() - start)
            rows.append({"frames": frames, "first_ms": first * 1e3, "steady_ms": statistics.median(steady) * 1e3,
                         "steady_calls_ms": [t * 1e3 for t in steady], "planning_ms": sum(planning) * 1e3,
                         "compiled_so_far": len(compiled)})
            print(f"{frames:4d} frames: first {first * 1e3:8.1f} ms, steady {rows[-1]['steady_ms']:8.1f} ms, "
                  f"ratio {first / statistics.median(steady):5.2f}, tvm_convt planning {sum(planning) * 1e3:7.2f} ms, "
                  f"modules compiled so far {len(compiled)}",
                  flush=True)
    later = [r["first_ms"] / r["steady_ms"] for r in rows[1:]]
    # The noise a single call carries here: each steady call against its own length's median, the
    # same statistic as the first call's, for a call that compiles and plans nothing.
    single = [t / r["steady_ms"] for r in rows[1:] for t in r["steady_calls_ms"]]
    summary = {"modules_compiled": len(compiled), "modules_in_process": len(_MODULES._modules),
               "first_over_steady_after_the_first_length": {
                   "median": statistics.median(later) if later else None, "max": max(later) if later else None,
                   "above_1.1": sum(r > 1.1 for r in later), "of": len(later)},
               "planning_at_a_new_length_ms": {"max": max(r["planning_ms"] for r in rows[1:]) if later else None,
                                                "share_of_the_call_max": max(r["planning_ms"] / r["steady_ms"]
                                                                             for r in rows[1:]) if later else None},
               "a_steady_call_over_its_median": {
                   "median": statistics.median(single) if single else None, "max": max(single) if single else None,
                   "above_1.1": sum(r > 1.1 for r in single), "of": len(single)}}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
