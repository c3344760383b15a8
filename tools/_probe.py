"""What the probe tools share: build each variant of every layer, time them interleaved in one
process, print a row per layer (median ms, ratio to the first variant, best GFLOP/s)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from tvm.target import Target

from tvm_convt.benchmark import module_call
from tvm_convt.params import Workload
from tvm_convt.runtime import CompiledConvTranspose1d
from tvm_convt.suite import default_suite, load_suite
from tvm_convt.target import host_cores, resolve_target, set_cpu_threads
from tvm_convt.timing import interleaved_medians, layer_inputs

# Builds one variant of a layer; returns the library, or None where the variant does not apply.
Build = Callable[[Workload, Target, str], Path | None]


def probe(description: str, variants_help: str, build: Build) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("variants", nargs="+", help=variants_help)
    parser.add_argument("--suite", help="JSON suite (default: the shipped one)")
    parser.add_argument("--layers", nargs="*", help="layers of the suite (default: all)")
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    set_cpu_threads(host_cores())
    target = resolve_target(args.target)
    suite = load_suite(args.suite) if args.suite else default_suite()
    for name in args.layers or list(suite):
        w = suite[name]
        x, weight, bias = layer_inputs(w)
        calls = {}
        for variant in args.variants:
            library = build(w, target, variant)
            if library is not None:
                calls[variant] = module_call(CompiledConvTranspose1d.load(library), x, weight, bias)
        times = interleaved_medians(calls, rounds=args.rounds)
        first = times.get(args.variants[0])
        cols = "  ".join(f"{v} {t * 1e3:7.3f}" + (f" ({t / first:4.2f})" if first else "")
                         for v, t in times.items())
        print(f"{name:18s} {cols}  best {w.flops / min(times.values()) / 1e9:6.1f} GFLOP/s", flush=True)
