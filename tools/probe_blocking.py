"""Time the default CPU GEMM rule under other register blockings, interleaved in one process.

    python tools/probe_blocking.py 1x12 2x12 2x8 --layers hifigan_v1_up0 hifigan_v1_up1
    python tools/probe_blocking.py 2x6 1x12 --target '{"kind": "llvm", "mcpu": "znver3"}'
    python tools/probe_blocking.py 4x6 4x6,cb=128 4x6,gt=16384     # channel block, gather tile
    python tools/probe_blocking.py 4x6 4x6,ib=1048576 --suite long.json   # input block (samples outer)
    python tools/probe_blocking.py 4x6 4x6,pw=1 4x6,pw=1,cb=128     # the weight packed once (prepack_weight)
    python tools/probe_blocking.py ,d=4x6 ,d=6x4 --layers hifigan_v1_up3  # the direct rule's ROWSxVECTORS
    python tools/probe_blocking.py ,pw=1,bc=0 ,pw=1,bc=1 --suite long.json  # GEMM form, blocked form

Each variant is ``VECTORSxROWS``, replacing the target's ``CpuArch.gemm_blockings``; the first
one is the baseline of the ratios. Prints median ms per layer and variant (``--suite`` for
other layers than the shipped suite's).
"""

from __future__ import annotations

import dataclasses

from _probe import probe

from tvm_convt.build import build_library
from tvm_convt.schedule import cpu, cpu_blocked, cpu_direct


FIELDS = {"cb": "gemm_channel_block", "gt": "gather_tile_bytes", "ib": "gemm_input_block_bytes",
          "bc": "blocked_col_bytes"}


def variant_arch(base: cpu.CpuArch, variant: str) -> cpu.CpuArch:
    """``VxR[,cb=N][,gt=N][,ib=N][,bc=N][,d=RxV][,pw=1]``: the blocking, a channel block, a gather
    tile (0: none), the input block of the samples-outer order, the ``col`` size from which the
    blocked form serves (0: never), the direct rule's blocking (``pw`` is the build's, see
    :func:`_build`)."""
    blocking, *options = variant.split(",")
    options = [o for o in options if o and not o.startswith("pw=")]
    changes = {}
    if blocking:
        vectors, rows = map(int, blocking.split("x"))
        changes["gemm_blockings"] = ((vectors, rows),)
    for option in options:
        key, value = option.split("=")
        if key == "d":
            changes["direct_blocking"] = tuple(map(int, value.split("x")))
        else:
            changes[FIELDS[key]] = int(value) or None
    return dataclasses.replace(base, **changes)


# The rule's own choice, before any variant replaces cpu.cpu_arch.
_TARGET_ARCH = cpu.cpu_arch


def _build(w, target, variant: str):
    arch = variant_arch(_TARGET_ARCH(target), variant)
    # Each rule module holds its own name for it.
    cpu.cpu_arch = cpu_direct.cpu_arch = cpu_blocked.cpu_arch = lambda _target: arch
    prepack = "pw=1" in variant.split(",")
    return build_library(w, target=target, use_cache=False, tuned=False, prepack_weight=prepack)[0]


def main() -> None:
    probe(__doc__.splitlines()[0], "VECTORSxROWS[,cb=N][,gt=N][,ib=N][,bc=N][,d=RxV][,pw=1], e.g. 2x12,cb=128", _build)


if __name__ == "__main__":
    main()
