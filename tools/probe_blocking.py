"""Time the default CPU GEMM rule under other register blockings, interleaved in one process.

    python tools/probe_blocking.py 1x12 2x12 2x8 --layers hifigan_v1_up0 hifigan_v1_up1
    python tools/probe_blocking.py 2x6 1x12 --target '{"kind": "llvm", "mcpu": "znver3"}'
    python tools/probe_blocking.py 4x6 4x6,cb=128 4x6,gt=16384     # channel block, gather tile

Each variant is ``VECTORSxROWS``, replacing the target's ``CpuArch.gemm_blockings``; the first
one is the baseline of the ratios. Prints median ms per layer and variant.
"""

from __future__ import annotations

import argparse
import dataclasses

from tvm_convt.benchmark import module_call
from tvm_convt.timing import interleaved_medians, layer_inputs
from tvm_convt.runtime import CompiledConvTranspose1d
from tvm_convt.build import build_library
from tvm_convt.schedule import cpu
from tvm_convt.suite import default_suite
from tvm_convt.target import host_cores, resolve_target, set_cpu_threads


FIELDS = {"cb": "gemm_channel_block", "gt": "gather_tile_bytes"}


def variant_arch(base: cpu.CpuArch, variant: str) -> cpu.CpuArch:
    """``VxR[,cb=N][,gt=N]``: the blocking, a channel block, a gather tile (0: none)."""
    blocking, *options = variant.split(",")
    changes = {}
    if blocking:
        vectors, rows = map(int, blocking.split("x"))
        changes["gemm_blockings"] = ((vectors, rows),)
    for option in options:
        key, value = option.split("=")
        changes[FIELDS[key]] = int(value) or None
    return dataclasses.replace(base, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="VECTORSxROWS[,cb=N][,gt=N], e.g. 2x12,cb=128")
    parser.add_argument("--layers", nargs="*", help="default-suite layers (default: all)")
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    set_cpu_threads(host_cores())
    target = resolve_target(args.target)
    base = cpu.cpu_arch(target)
    suite = default_suite()
    names = args.layers or list(suite)
    for name in names:
        w = suite[name]
        x, weight, bias = layer_inputs(w)
        calls = {}
        for variant in args.variants:
            arch = variant_arch(base, variant)
            cpu.cpu_arch = lambda _target, arch=arch: arch
            library, _ = build_library(w, target=target, use_cache=False, tuned=False)
            calls[variant] = module_call(CompiledConvTranspose1d.load(library), x, weight, bias)
        times = interleaved_medians(calls, rounds=args.rounds)
        first = times[args.variants[0]]
        cols = "  ".join(f"{v} {t * 1e3:7.3f} ({t / first:4.2f})" for v, t in times.items())
        print(f"{name:18s} {cols}  best {w.flops / min(times.values()) / 1e9:6.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
