"""Time default CPU rules against each other on the same layers, interleaved in one process.

    python tools/probe_rules.py cpu-direct cpu-gemm
    python tools/probe_rules.py cpu-direct cpu-gemm --suite my_layers.json --layers up2 up3
    python tools/probe_rules.py cpu-direct cpu-gemm --target '{"kind": "llvm", "mcpu": "znver3"}'

The first rule is the baseline of the ratios; a rule that does not apply to a layer is left out
of its row. Prints median ms per layer and rule.
"""

from __future__ import annotations

import argparse

from tvm_convt.benchmark import module_call
from tvm_convt.build import build_library
from tvm_convt.runtime import CompiledConvTranspose1d
from tvm_convt.suite import default_suite, load_suite
from tvm_convt.target import host_cores, resolve_target, set_cpu_threads
from tvm_convt.timing import interleaved_medians, layer_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rules", nargs="+", help="rule names, e.g. cpu-direct cpu-gemm")
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
        for rule in args.rules:
            try:
                library, _ = build_library(w, target=target, rule=rule, use_cache=False, tuned=False)
            except ValueError:
                continue  # the rule does not apply to this layer
            calls[rule] = module_call(CompiledConvTranspose1d.load(library), x, weight, bias)
        times = interleaved_medians(calls, rounds=args.rounds)
        first = times.get(args.rules[0])
        cols = "  ".join(f"{r} {t * 1e3:7.3f}" + (f" ({t / first:4.2f})" if first else "")
                         for r, t in times.items())
        print(f"{name:18s} {cols}  best {w.flops / min(times.values()) / 1e9:6.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
