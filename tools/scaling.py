"""How time grows with the input length (or batch): one layer at 1x and Nx, interleaved medians.

    python tools/scaling.py                      # hifigan_v1_up1, 16x the length
    python tools/scaling.py --layer hifigan_v1_up2 --factor 4 --axis batch

Prints the time of each size and the ratio; linear growth is a ratio of ``factor``. The modules
are the layer's (the weight prepared once, packed where the schedule reads it packed).
"""

from __future__ import annotations

import argparse
import dataclasses

from tvm_convt.benchmark import module_call
from tvm_convt.timing import interleaved_medians, layer_inputs
from tvm_convt.runtime import compile as compile_module
from tvm_convt.suite import default_suite
from tvm_convt.target import host_cores, set_cpu_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="hifigan_v1_up1", help="a layer of the default suite")
    parser.add_argument("--factor", type=int, default=16)
    parser.add_argument("--axis", choices=("length", "batch"), default="length")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--default-schedule", action="store_true", help="ignore tuning records")
    parser.add_argument("--rule", help="a default rule by name, e.g. cpu-direct (implies --default-schedule)")
    args = parser.parse_args()
    set_cpu_threads(host_cores())
    base = default_suite()[args.layer]
    big = dataclasses.replace(base, **{args.axis: getattr(base, args.axis) * args.factor})
    calls, schedules = {}, {}
    for label, w in (("1x", base), (f"{args.factor}x", big)):
        compiled = compile_module(w.params, batch=w.batch, length=w.length, dtype=w.dtype,
                                  tuned=not args.default_schedule, rule=args.rule, prepack_weight=True)
        calls[label] = module_call(compiled, *layer_inputs(w))
        schedules[label] = (w, compiled.metadata.schedule)
    times = interleaved_medians(calls, rounds=args.rounds)
    for label, seconds in times.items():
        w, schedule = schedules[label]
        print(f"{args.layer} {args.axis} {getattr(w, args.axis):6d}: {seconds * 1e3:9.3f} ms "
              f"{w.flops / seconds / 1e9:6.1f} GFLOP/s ({schedule})")
    ratio = times[f"{args.factor}x"] / times["1x"]
    print(f"{args.factor}x the {args.axis} costs {ratio:.2f}x the time")


if __name__ == "__main__":
    main()
