"""The converted HiFi-GAN generator at many distinct lengths in one fresh process: how many modules
compile, and what the first call at each new length costs against the steady call there.

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

    def counting(mod, tgt, metadata, library):
        compiled.append(library.name)
        return original(mod, tgt, metadata, library)

    build._compile_into = counting
    step = max(1, 210 // args.lengths)
    rows = []
    with torch.no_grad():
        for i in range(args.lengths):
            frames = 40 + i * step
            mel = torch.randn(1, 80, frames)
            start = time.perf_counter()
            model(mel)
            first = time.perf_counter() - start
            steady = []
            for _ in range(args.steady):
                start = time.perf_counter()
                model(mel)
                steady.append(time.perf_counter() - start)
            rows.append({"frames": frames, "first_ms": first * 1e3, "steady_ms": statistics.median(steady) * 1e3,
                         "compiled_so_far": len(compiled)})
            print(f"{frames:4d} frames: first {first * 1e3:8.1f} ms, steady {rows[-1]['steady_ms']:8.1f} ms, "
                  f"ratio {first / statistics.median(steady):5.2f}, modules compiled so far {len(compiled)}",
                  flush=True)
    later = [r["first_ms"] / r["steady_ms"] for r in rows[1:]]
    summary = {"modules_compiled": len(compiled), "modules_in_process": len(_MODULES._modules),
               "first_over_steady_after_the_first_length": {"median": statistics.median(later) if later else None,
                                                            "max": max(later) if later else None}}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
