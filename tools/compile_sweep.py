"""Compile time over the parameter space: the extremes, then a seeded random sample.

Each layer is compiled with the default schedule into a fresh folder (no cache), timed, and
checked against the float64 NumPy reference; the worst times are printed. Issue #9 asks for
every valid layer to compile in under 10 s on a 2-core machine.

    .venv/bin/python tools/compile_sweep.py --cases 200 --seed 0 [--json out.json] [--target T]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

import tvm_convt
from tvm_convt import ConvTranspose1dParams, Workload
from tvm_convt.reference import conv_transpose1d_reference

EXTREMES = [
    # (params, batch, length): long kernels, huge strides and dilations, wide layers.
    (ConvTranspose1dParams(4, 3, 4096), 1, 10),
    (ConvTranspose1dParams(4, 3, 4096), 1, 5000),
    (ConvTranspose1dParams(64, 64, 1024, stride=2, padding=100), 1, 64),
    (ConvTranspose1dParams(1, 1, 3, stride=100000), 1, 8),
    (ConvTranspose1dParams(2, 2, 9, dilation=4096, padding=7), 1, 16),
    (ConvTranspose1dParams(1024, 1024, 16, stride=8, padding=4), 1, 86),
    (ConvTranspose1dParams(512, 512, 16, stride=8, groups=512), 4, 256),
    (ConvTranspose1dParams(8, 8, 2048, stride=3, dilation=5, groups=4, padding=40,
                           padding_mode="reflect"), 2, 50),
    (ConvTranspose1dParams(16, 16, 33, stride=7, dilation=14, output_padding=6), 3, 1),
]


def random_layer(rng: random.Random) -> tuple[ConvTranspose1dParams, int, int]:
    """A random valid layer, sizes drawn log-uniformly so both ends of each range are met."""
    def log_int(hi: int) -> int:
        return int(round(2 ** rng.uniform(0, np.log2(hi))))

    while True:
        groups = rng.choice([1, 1, 2, 4, 8])
        cin, cout = groups * log_int(256 // groups or 1), groups * log_int(256 // groups or 1)
        kernel, stride, dilation = log_int(4096), log_int(64), rng.choice([1, 1, 2, 3, 7])
        mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
        padding = rng.randrange(0, max(1, dilation * (kernel - 1) // 2 + 1))
        out_pad = rng.randrange(0, max(stride, dilation if mode == "zeros" else 1))
        if mode != "zeros" and out_pad >= stride:
            out_pad = 0
        try:
            params = ConvTranspose1dParams(cin, cout, kernel, stride, padding, out_pad, groups,
                                           rng.random() < 0.7, dilation, mode)
            batch, length = rng.choice([1, 1, 2, 3]), log_int(2048)
            w = Workload(params, batch, length)
            if w.working_set_bytes > 512 * 2**20:  # a compile-time sweep, not a memory test
                continue
            return params, batch, length
        except ValueError:
            continue


def compile_and_check(params: ConvTranspose1dParams, batch: int, length: int, target) -> dict:
    start = time.perf_counter()
    compiled = tvm_convt.compile(params, batch=batch, length=length, use_cache=False, tuned=False,
                                 target=target)
    seconds = time.perf_counter() - start
    result = {"params": params.to_dict(), "batch": batch, "length": length, "seconds": seconds,
              "schedule": compiled.metadata.schedule, "error": 0.0}
    if not compiled.device.exist:  # a GPU target on a machine without one: compile time only
        return result
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, params.in_channels, length)).astype("float32")
    w = rng.standard_normal(params.weight_shape).astype("float32")
    b = rng.standard_normal(params.out_channels).astype("float32") if params.bias else None
    ref = conv_transpose1d_reference(x, w, b, params)
    result["error"] = float(np.max(np.abs(compiled(x, w, b) - ref)) / max(1.0, float(np.max(np.abs(ref)))))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="random layers after the extremes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument("--target", default="llvm",
                        help='a target (JSON); a CUDA one without a GPU is compiled, not run')
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    layers = EXTREMES + [random_layer(rng) for _ in range(args.cases)]
    results = []
    for number, (params, batch, length) in enumerate(layers, 1):
        result = compile_and_check(params, batch, length, args.target)
        results.append(result)
        print(f"{number:4d} {result['seconds']:6.2f} s err {result['error']:.1e} {result['schedule']:22s} "
              f"batch={batch} L_in={length} {params}", flush=True)
    worst = sorted(results, key=lambda r: -r["seconds"])[:5]
    bad = [r for r in results if r["error"] > 1e-4]
    print(f"\n{len(results)} layers; worst compile times:")
    for r in worst:
        print(f"  {r['seconds']:.2f} s  batch={r['batch']} L_in={r['length']} {r['params']}")
    print(f"{sum(r['seconds'] > 10 for r in results)} over 10 s, {len(bad)} with relative error > 1e-4")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if bad or worst[0]["seconds"] > 10 else 0


if __name__ == "__main__":
    sys.exit(main())
