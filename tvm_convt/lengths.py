"""Length ranges of a symbolic module: which of its functions serves an input length, and whether
a call's tensors stay within 32-bit indices. Needs no TVM compiler (a runtime-only install reads it).

A module symbolic in batch and length holds one function per range of input lengths
(:class:`LengthRange`); the function of the range that holds a call's length runs it. Each
range also carries the sizes of its function's intermediates (padded to whole tiles, so a little
larger than a static module's) as arithmetic in the batch ``n`` and the length ``l``, written by
the compiler and evaluated here per call: TVM indexes buffers with 32-bit integers, and a call
whose tensors would reach 2**31 elements is refused before anything runs.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any, Callable

from .params import INDEX_LIMIT, OP

_BINARY: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_CALLS: dict[str, Callable[[int, int], int]] = {"min": min, "max": max}
_COMPARE: dict[type, Callable[[int, int], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}


def _size_function(text: str) -> Callable[[int, int], int]:
    """``text`` (integer arithmetic in ``n`` and ``l``: + - * // %, min, max, comparisons, and, or,
    not, ``select(condition, a, b)``) as a function of (n, l); anything else is refused, so a sidecar
    can never run code."""
    tree = ast.parse(text, mode="eval").body

    def build(node: ast.AST) -> Callable[[int, int], int]:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            value = node.value
            return lambda n, l: value
        if isinstance(node, ast.Name) and node.id in ("n", "l"):
            return (lambda n, l: n) if node.id == "n" else (lambda n, l: l)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = build(node.operand)
            return lambda n, l: -inner(n, l)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op, left, right = _BINARY[type(node.op)], build(node.left), build(node.right)
            return lambda n, l: op(left(n, l), right(n, l))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS
                and len(node.args) == 2 and not node.keywords):
            op, a, b = _CALLS[node.func.id], build(node.args[0]), build(node.args[1])
            return lambda n, l: op(a(n, l), b(n, l))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "select"
                and len(node.args) == 3 and not node.keywords):
            cond, a, b = (build(arg) for arg in node.args)
            return lambda n, l: a(n, l) if cond(n, l) else b(n, l)
        if (isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE):
            op, a, b = _COMPARE[type(node.ops[0])], build(node.left), build(node.comparators[0])
            return lambda n, l: op(a(n, l), b(n, l))
        if isinstance(node, ast.BoolOp) and len(node.values) == 2:
            a, b = build(node.values[0]), build(node.values[1])
            if isinstance(node.op, ast.And):
                return lambda n, l: a(n, l) and b(n, l)
            return lambda n, l: a(n, l) or b(n, l)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = build(node.operand)
            return lambda n, l: not inner(n, l)
        raise ValueError(f"{OP}: a size in a module's length ranges must be integer arithmetic in n and l, "
                         f"got {text!r}")

    return build(tree)


@dataclass(frozen=True)
class LengthRange:
    """Input lengths ``first`` to ``last`` (None: no end) run by the module's function ``function``,
    whose intermediates have the element counts ``sizes`` (expressions in ``n`` and ``l``)."""

    first: int
    last: int | None
    function: str
    sizes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "_size_functions", tuple(_size_function(s) for s in self.sizes))

    def holds(self, length: int) -> bool:
        return self.first <= length and (self.last is None or length <= self.last)

    def largest_size(self, batch: int, length: int) -> int:
        """The most elements any intermediate of the function has at this batch and length."""
        return max((f(batch, length) for f in self._size_functions), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "function": self.function, "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LengthRange:
        first, last, function = d["first"], d["last"], d["function"]
        if type(first) is not int or not (last is None or type(last) is int) or not isinstance(function, str):
            raise ValueError(f"{OP}: a length range must have an int first, an int or null last and a "
                             f"function name, got {d!r}")
        return cls(first, last, function, tuple(str(s) for s in d.get("sizes", ())))


def check_ranges(ranges: tuple[LengthRange, ...]) -> None:
    """Ranges must follow each other without gap or overlap, the last one open-ended."""
    if not ranges:
        raise ValueError(f"{OP}: a symbolic module must have at least one length range, got none")
    for before, after in zip(ranges, ranges[1:]):
        if before.last is None or after.first != before.last + 1:
            raise ValueError(f"{OP}: length ranges must follow each other, got {before} then {after}")
    if ranges[-1].last is not None:
        raise ValueError(f"{OP}: the last length range must have no end, got last={ranges[-1].last}")


def range_for(ranges: tuple[LengthRange, ...], length: int) -> LengthRange:
    """The range that holds ``length`` (at least the first range's start)."""
    for r in ranges:
        if r.holds(length):
            return r
    raise ValueError(f"{OP}: input length must be at least {ranges[0].first} for this layer, got L_in={length}")


# A CUDA symbolic module's functions run the batch on blockIdx.y, whose grid extent CUDA limits to this.
CUDA_MAX_BATCH = 65535


def check_batch(cuda: bool, batch: int) -> None:
    """Refuse a batch a symbolic module (a CUDA one when ``cuda``) cannot launch."""
    if cuda and batch > CUDA_MAX_BATCH:
        raise ValueError(f"{OP}: a CUDA module for every length runs at most {CUDA_MAX_BATCH} batch rows a call "
                         f"(its grid's y extent), got batch={batch}; split the batch into smaller calls")


def check_sizes(r: LengthRange, batch: int, length: int) -> None:
    """Refuse a call whose padded intermediates would reach 2**31 elements, naming the longest
    length this batch can take."""
    if r.largest_size(batch, length) < INDEX_LIMIT:
        return
    lo, hi = 0, length  # the longest length that fits, by bisection (only on this error path)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if r.largest_size(batch, mid) < INDEX_LIMIT:
            lo = mid
        else:
            hi = mid
    limit = f"at most {lo}" if lo >= r.first else "none"
    raise ValueError(f"{OP}: the symbolic module's intermediates must have fewer than 2**31 elements for "
                     f"TVM's 32-bit indices, got batch={batch}, L_in={length} ({r.largest_size(batch, length)} "
                     f"elements); at batch {batch} its length range from {r.first} takes L_in {limit}; "
                     "split the batch or the input's length into smaller calls")
