"""What a layer's tuning may change in the CPU rules' plan, and the values it tries.

MetaSchedule cannot tune a function symbolic in length (its LLVM post-processing starts by refusing
dynamic loops), so a module for every length is tuned in the terms its rules plan in: the fields of
:class:`~tvm_convt.schedule.cpu.CpuArch` (register tiles, cache tiles, which form and which
operand outside). A layer's record holds the fields that differ from the target's own arch; the
rules read them through :func:`~tvm_convt.schedule.cpu.tuned_fields`. The space is small (tens of
candidates a layer, most of which schedule the same program), so the search measures every
candidate it makes rather than predicting them with a cost model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..params import OP
from .cpu import CpuArch

KIB = 1024
# Values tried for the cache-sized fields, around the defaults (docs/performance.md).
_BYTES = {
    "gather_tile_bytes": (None, 4 * KIB, 8 * KIB, 16 * KIB, 32 * KIB, 64 * KIB),
    "direct_resident_input_bytes": (128 * KIB, 256 * KIB, 1024 * KIB, 4096 * KIB, 1 << 30),
    "blocked_col_bytes": (None, 1 << 20, 2 << 20, 8 << 20, 32 << 20),
}
_CHANNEL_BLOCKS = (None, 32, 64, 128, 256)
# strided_direct_channels: 0 keeps strided layers in the GEMM form, this many sends every group there.
ANY_CHANNELS = 1 << 20


def _gemm_blockings(arch: CpuArch) -> list[tuple[tuple[int, int], ...]]:
    """Register tiles (vectors, rows) that fit the registers, each first in front of the arch's own
    (a layer whose width the first does not divide takes the next, as by default)."""
    tiles = [(v, r) for v in (1, 2, 3, 4) for r in (4, 6, 8, 12, 14)
             if v * r + v + 1 <= arch.registers and v * r >= 8]
    return [((tile,) + tuple(b for b in arch.gemm_blockings if b != tile)) for tile in tiles]


def _direct_blockings(arch: CpuArch) -> list[tuple[int, int]]:
    return [(r, v) for r in (2, 3, 4, 6, 8) for v in (1, 2, 3, 4, 6)
            if r * v + v + 1 <= arch.registers and r * v >= 6]


def tuning_space(arch: CpuArch) -> dict[str, list[Any]]:
    """Each tunable field of ``arch`` with the values a search tries, the arch's own among them."""
    space: dict[str, list[Any]] = {
        "gemm_blockings": _gemm_blockings(arch),
        "direct_blocking": _direct_blockings(arch),
        "gemm_channel_block": list(_CHANNEL_BLOCKS),
        "strided_direct_channels": [0, ANY_CHANNELS],
        "direct_output_order": [True, False],
        **{name: list(values) for name, values in _BYTES.items()},
    }
    for name, values in space.items():
        own = getattr(arch, name)
        if own not in values:
            values.insert(0, own)
    return space


TUNABLE = ("gemm_blockings", "direct_blocking", "gemm_channel_block", "strided_direct_channels",
           "direct_output_order", *_BYTES)


def _as_value(name: str, value: Any) -> Any:
    """A field's value from JSON (lists for tuples), checked for its type."""
    def pair(v: Any) -> tuple[int, int]:
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(type(i) is int and i > 0 for i in v)):
            raise ValueError(f"{OP}: tuned field {name} must hold pairs of positive integers, got {value!r}")
        return (v[0], v[1])

    if name == "gemm_blockings":
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{OP}: tuned field gemm_blockings must be a non-empty list of pairs, got {value!r}")
        return tuple(pair(v) for v in value)
    if name == "direct_blocking":
        return pair(value)
    if name == "direct_output_order":
        if type(value) is not bool:
            raise ValueError(f"{OP}: tuned field direct_output_order must be true or false, got {value!r}")
        return value
    optional = name in ("gemm_channel_block", "gather_tile_bytes", "blocked_col_bytes")
    if (value is None and optional) or (type(value) is int and value >= (0 if name == "strided_direct_channels" else 1)):
        return value
    raise ValueError(f"{OP}: tuned field {name} must be a positive integer{' or null' if optional else ''}, "
                     f"got {value!r}")


def checked_fields(arch: CpuArch, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` (a record's, from JSON) as values of ``arch``'s fields (tuples for lists), for
    :func:`~tvm_convt.schedule.cpu.tuned_fields`; ValueError naming the field when one is unknown, of
    the wrong type, or a register tile that does not fit the registers."""
    unknown = sorted(set(fields) - set(TUNABLE))
    if unknown:
        raise ValueError(f"{OP}: tuned fields must be among {', '.join(TUNABLE)}, got {', '.join(unknown)}")
    values = {name: _as_value(name, value) for name, value in fields.items()}
    for vectors, rows in values.get("gemm_blockings", ()):
        if vectors * rows + vectors + 1 > arch.registers:
            raise ValueError(f"{OP}: a GEMM register tile must fit {arch.registers} registers, got "
                             f"vectors={vectors}, rows={rows}")
    rows, vectors = values.get("direct_blocking", arch.direct_blocking)
    if rows * vectors + vectors + 1 > arch.registers:
        raise ValueError(f"{OP}: a direct register tile must fit {arch.registers} registers, got "
                         f"rows={rows}, vectors={vectors}")
    return values


def as_json(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` as JSON values (tuples as lists)."""
    def plain(v: Any) -> Any:
        return [plain(i) for i in v] if isinstance(v, tuple) else v

    return {name: plain(value) for name, value in fields.items()}
