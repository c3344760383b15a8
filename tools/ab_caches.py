"""A/B of compiled modules: the same workloads from two or more build caches, timed
interleaved in one process (medians), to compare schedule changes without PyTorch's noise.

    TVM_CONVT_CACHE=/tmp/a tvm-convt bench ...   # with schedule A
    TVM_CONVT_CACHE=/tmp/b tvm-convt bench ...   # with schedule B
    python tools/ab_caches.py /tmp/a /tmp/b [--rounds 15]

Prints, per workload found in every cache, each cache's median ms and the ratio to the first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvm_convt.benchmark import module_call
from tvm_convt.timing import interleaved_medians, layer_inputs
from tvm_convt.params import Workload
from tvm_convt.runtime import CompiledConvTranspose1d
from tvm_convt.suite import default_suite
from tvm_convt.target import host_cores, set_cpu_threads


def modules(cache: Path) -> dict[Workload, Path]:
    found = {}
    for meta in cache.glob("*/*.json"):
        workload = Workload.from_dict(json.loads(meta.read_text())["workload"])
        found[workload] = meta.with_suffix(".so")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    set_cpu_threads(host_cores())
    names = {w: name for name, w in default_suite().items()}
    found = [modules(c) for c in args.caches]
    common = [w for w in found[0] if all(w in f for f in found[1:])]
    for w in common:
        x, weight, bias = layer_inputs(w)
        calls = {}
        for i, f in enumerate(found):
            compiled = CompiledConvTranspose1d.load(f[w])
            calls[i] = module_call(compiled, x, weight, bias)
        times = interleaved_medians(calls, rounds=args.rounds)
        cols = "  ".join(f"{times[i] * 1e3:8.3f} ({times[i] / times[0]:4.2f})" for i in times)
        print(f"{names.get(w, str(w.params))[:24]:24s} {cols}  {w.flops / min(times.values()) / 1e9:6.1f} GFLOP/s best",
              flush=True)


if __name__ == "__main__":
    main()
