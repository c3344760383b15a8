#!/usr/bin/env python3
"""A fuzzer for tvm_convt's public API and command line (issue #9: never crash, never hang,
never silently wrong).

    python tools/fuzz.py --cases 10000 --seed 1 --jobs 2
    python tools/fuzz.py --seed 1 --replay 4711      # one case, in this process, with its traceback

Each case is generated from ``(seed, index)`` alone and runs in a worker process under a
time limit, so that a segfault, abort or hang of one case is reported as such, with the
call it was making and the command that replays it. A case passes when the call succeeds
with the right answer (compared with the float64 NumPy reference; inputs unchanged, the
output not aliasing them) or raises a documented error: ValueError, TypeError or
FileNotFoundError reading ``conv_transpose1d: ...`` (ModuleFileError is a ValueError), or
RuntimeError for a module that needs a device or CPU this machine lacks. Anything else
is a bad outcome: another exception, one raised inside TVM, a wrong, aliased or
non-array result, a modified input, a parameter set the rules allow but the library
refuses (or the reverse), a CLI exit status outside {0, 1, 2}, an internal error, or an
error that is not one line.

Most cases are rejected by validation before anything is compiled; the valid ones use a
small pool of tiny layers, so a run compiles a few hundred tiny modules at most, into a
private module cache in a temporary folder shared by the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

PREFIX = "conv_transpose1d: "
TVM_MODULES = ("tvm", "tvm_ffi")
# Outcomes that pass; "failed" is a CLI exit status 1 from a check that is allowed to fail
# (tune --build-only with no candidate built), "known" a bad outcome listed in KNOWN_ISSUES.
GOOD = ("ok", "rejected", "failed", "known")
# As the tests' conftest: the inputs here are tiny, so float32 accumulates little error.
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
SUBPROCESS_TIMEOUT = 90

# Bad outcomes already reported to the owner of the code at fault: (kind, detail regex, owner).
# They are counted as "known" (and fail the run with --strict) until the fix lands.
KNOWN_ISSUES: list[tuple[str, str, str]] = []


class Bad(Exception):
    """A bad outcome found inside a case: its kind and what happened."""

    def __init__(self, kind: str, detail: str, tb: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.tb = kind, detail, tb


# -- describing values, for the report ------------------------------------------------------------

def short(value: Any, limit: int = 70) -> str:
    """A one-line description of an argument: arrays by dtype, shape and layout."""
    if isinstance(value, np.ndarray):
        flags = "".join([" C" if value.flags.c_contiguous else " strided",
                         "" if value.flags.writeable else " read-only",
                         "" if value.ctypes.data % 64 == 0 else f" at {value.ctypes.data % 64} mod 64"])
        return f"ndarray[{value.dtype}]{tuple(value.shape)}{flags}"
    if type(value).__module__.startswith("torch"):
        shape = tuple(getattr(value, "shape", ()))
        return f"torch[{getattr(value, 'dtype', '?')}]{shape}"
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"{type(value).__name__}(len={len(value)})"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_call(name: str, args: tuple, kwargs: dict) -> str:
    parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


# -- classifying what a call did ------------------------------------------------------------------

def _raised_in_tvm(err: BaseException) -> bool:
    """Whether the frames after the last tvm_convt frame are TVM's (or C++ frames without a module)."""
    modules = []
    tb = err.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__"))
        tb = tb.tb_next
    ours = [i for i, name in enumerate(modules) if name and name.split(".")[0] == "tvm_convt"]
    after = modules[ours[-1] + 1:] if ours else modules
    return any(name is None or name.split(".")[0] in TVM_MODULES for name in after)


NEEDS_DEVICE = re.compile(r"needs an? .+ to run")


def check_error(err: BaseException) -> str:
    """``"rejected"`` for a documented error; raise :class:`Bad` for anything else."""
    from tvm_convt.benchmark import ResultMismatch

    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    what = f"{type(err).__module__}.{type(err).__qualname__}: {str(err)[:300]}"
    if type(err).__module__.split(".")[0] in TVM_MODULES:
        raise Bad("tvm-error", what, tb)
    if isinstance(err, ResultMismatch):
        raise Bad("wrong-result", what, tb)
    documented_runtime = isinstance(err, RuntimeError) and NEEDS_DEVICE.search(str(err))
    # Other OSErrors only for what the file system refused, in the operator's words (a name too long).
    file_system = isinstance(err, OSError) and err.errno is not None
    if not (isinstance(err, (ValueError, TypeError, FileNotFoundError)) or documented_runtime or file_system):
        raise Bad("unexpected-error", what, tb)
    if _raised_in_tvm(err):
        raise Bad("tvm-error", what, tb)
    message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    if not message.startswith(PREFIX):
        raise Bad("unprefixed-error", what, tb)
    return "rejected"


# -- generating values ----------------------------------------------------------------------------

class Gen:
    """The case's random source: everything a case does follows from ``(seed, index)``."""

    def __init__(self, seed: int, index: int) -> None:
        self.r = random.Random(f"{seed}:{index}")
        self.np = np.random.default_rng(self.r.getrandbits(64))

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def pick(self, options):
        options = list(options)
        return options[self.r.randrange(len(options))]

    def int(self, low: int, high: int) -> int:
        return self.r.randint(low, high)


# Values that no size accepts (or that a size must refuse for its range).
JUNK_SIZES = [0, -1, -7, 2**31, 2**63 - 1, 2**63, 2**64 + 3, -(2**70), 2**100, 1.0, 2.5,
              float("nan"), float("inf"), "3", "", None, True, False, (2,), (2, 3), (), [1], [],
              np.int64(3), np.int32(-2), np.uint64(2**64 - 1), np.float32(2), 3 + 0j, b"3",
              object(), {"a": 1}, np.array(3), np.array([2]), [[2]], range(2)]

# Tiny layers the valid cases use, so that each is compiled once per run.
POOL = [
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=2),
    dict(in_channels=4, out_channels=4, kernel_size=5, stride=3, padding=2, groups=2, dilation=2,
         padding_mode="reflect"),
    dict(in_channels=1, out_channels=2, kernel_size=20),  # more than 16 live taps: a reduction loop
    dict(in_channels=3, out_channels=6, kernel_size=4, stride=2, padding=1, output_padding=1, groups=3,
         bias=False, padding_mode="circular"),
    dict(in_channels=16, out_channels=16, kernel_size=4, stride=2, padding=1),  # the cpu-gemm rule
    dict(in_channels=2, out_channels=2, kernel_size=7, padding=2, padding_mode="replicate"),
]
LENGTHS = (1, 2, 5)
BATCHES = (None, 1, 2)
FLOATS = ("float32", "float64")
ODD_DTYPES = ("float16", "int32", "int64", "uint8", "bool", "complex64", "complex128", "object",
              ">f4", ">f8", "<U3", "datetime64[s]", "longdouble")
DEFAULTS = dict(stride=1, padding=0, output_padding=0, groups=1, bias=True, dilation=1,
                padding_mode="zeros")
SIZE_FIELDS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding",
               "groups", "dilation")
POSITIVE = ("in_channels", "out_channels", "kernel_size", "stride", "groups", "dilation")
MODES = ("zeros", "reflect", "replicate", "circular")


def junk_size(g: Gen) -> Any:
    return g.pick(JUNK_SIZES)


def layer_kwargs(g: Gen, junk: float) -> dict[str, Any]:
    """A pool layer's parameters, each replaced by a junk value with probability ``junk``."""
    kwargs = {**DEFAULTS, **g.pick(POOL)}
    for name in SIZE_FIELDS:
        if g.chance(junk):
            kwargs[name] = junk_size(g) if g.chance(0.8) else g.int(0, 6)
        elif g.chance(0.05):
            kwargs[name] = (kwargs[name],) if g.chance(0.5) else [kwargs[name]]
    if g.chance(junk):
        kwargs["bias"] = g.pick([None, 0, 1, 2, "yes", 1.0, np.bool_(True), [True]])
    if g.chance(junk):
        kwargs["padding_mode"] = g.pick(["mirror", "", "ZEROS", "zeros ", None, 0, ["zeros"], "reflect"])
    return kwargs


def rules_allow(kw: dict[str, Any]) -> bool | None:
    """PyTorch's rules for the parameters, written again here: whether plain values are valid
    (None when some value is not a plain int, bool or str, which the rules do not decide)."""
    s = {}
    for name in SIZE_FIELDS:
        v = kw.get(name, DEFAULTS.get(name))
        if isinstance(v, (tuple, list)) and len(v) == 1:
            v = v[0]
        if type(v) is not int:
            return None
        s[name] = v
    if type(kw.get("bias", True)) is not bool or not isinstance(kw.get("padding_mode", "zeros"), str):
        return None
    mode = kw.get("padding_mode", "zeros")
    if any(abs(v) >= 2**63 for v in s.values()) or mode not in MODES:
        return False
    if min(s[n] for n in POSITIVE) <= 0 or s["padding"] < 0 or s["output_padding"] < 0:
        return False
    if s["in_channels"] % s["groups"] or s["out_channels"] % s["groups"]:
        return False
    limit = max(s["stride"], s["dilation"]) if mode == "zeros" else s["stride"]
    if s["output_padding"] >= limit:
        return False
    weight = s["in_channels"] * (s["out_channels"] // s["groups"]) * s["kernel_size"]
    return weight < 2**31 and s["dilation"] * (s["kernel_size"] - 1) + 1 < 2**31


def expected_length(p, length: int) -> int:
    """L_out from the formula, independently of the library."""
    return ((length - 1) * p.stride - 2 * p.padding + p.dilation * (p.kernel_size - 1)
            + p.output_padding + 1)


def length_allowed(p, length: int) -> bool:
    out = expected_length(p, length)
    if out < 1:
        return False
    if p.padding_mode == "reflect":
        return p.padding < out
    if p.padding_mode == "circular":
        return p.padding <= out
    return True


# -- arrays -------------------------------------------------------------------------------------------

def values(g: Gen, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random values of ``dtype``: normal, zeros, with NaN/Inf, large, tiny or small integers."""
    a = g.np.standard_normal(shape)
    kind = g.pick(["normal"] * 5 + ["zeros", "special", "large", "tiny", "integers"])
    if kind == "zeros":
        a[...] = 0
    elif kind == "special" and a.size:
        flat = a.reshape(-1)
        for _ in range(g.int(1, 3)):
            flat[g.int(0, a.size - 1)] = g.pick([np.nan, np.inf, -np.inf])
    elif kind == "large":
        a *= 1e15  # products stay far below float32's largest value
    elif kind == "tiny":
        a *= 1e-30
    elif kind == "integers":
        a = np.round(a * 4)
    if dtype == "object":
        return a.astype(object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN into int: the array is junk anyway
        try:
            return a.astype(dtype)
        except (TypeError, ValueError):  # no cast from float (datetime64)
            return np.zeros(shape, dtype)


def unaligned_copy(a: np.ndarray, offset: int) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data % 64) + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    np.copyto(out, a)
    return out


NUMERIC_LAYOUTS = ("strided", "reversed", "fortran", "unaligned", "offset", "readonly", "broadcast",
                   "torch", "torch-strided", "torch-grad", "torch-odd")
LAYOUTS = ("c",) * 6 + NUMERIC_LAYOUTS + ("list", "tuple", "ragged", "scalar", "memoryview")


def layout(g: Gen, a: np.ndarray) -> Any:
    """``a`` in a random memory layout or container (the values may change: the reference is
    computed from what was passed)."""
    kind = g.pick(LAYOUTS)
    numeric = a.dtype.kind in "biufc" and a.dtype.isnative
    if kind in ("list", "tuple") and max(a.shape, default=0) > 10**4:  # (2**40, 0): 2**40 empty lists
        return a
    if kind in NUMERIC_LAYOUTS and not numeric:
        return a
    if kind == "strided" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == "reversed" and a.ndim:
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind in ("unaligned", "offset"):
        return unaligned_copy(a, 1 if kind == "unaligned" else a.dtype.itemsize)
    if kind == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if kind == "broadcast" and a.ndim and a.shape[-1]:
        return np.broadcast_to(a[..., :1], a.shape)
    if kind.startswith("torch"):
        return to_torch(g, a, kind)
    if kind == "list":
        return a.tolist()
    if kind == "tuple":
        return tuple(a.tolist()) if a.ndim else a.tolist()
    if kind == "ragged":
        return [[1.0, 2.0], [3.0]]
    if kind == "scalar":
        return g.pick([1.0, 3, "x", None, np.float32(1)])
    if kind == "memoryview" and numeric:
        return memoryview(np.ascontiguousarray(a))
    return a


def to_torch(g: Gen, a: np.ndarray, kind: str) -> Any:
    import torch

    try:
        t = torch.from_numpy(np.ascontiguousarray(a))
    except TypeError:  # a dtype torch lacks
        return a
    if kind == "torch-strided" and t.ndim:
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if kind == "torch-grad" and t.is_floating_point():
        return t.clone().requires_grad_(True)
    if kind == "torch-odd":
        return g.pick([lambda: t.to(torch.bfloat16), lambda: torch.empty(t.shape, device="meta"),
                       lambda: t.to_sparse() if t.ndim else t, lambda: t.transpose(0, -1) if t.ndim > 1 else t,
                       lambda: t.expand(*t.shape) if t.ndim else t])()
    return t


def to_numpy(v: Any) -> np.ndarray:
    """The values a successful call must have used."""
    if type(v).__module__.startswith("torch"):
        return v.detach().numpy()
    return np.asarray(v)


def snapshot(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.copy()
    if type(v).__module__.startswith("torch"):
        import torch

        return v.detach().clone() if v.layout == torch.strided and v.device.type == "cpu" else None
    return copy.deepcopy(v) if isinstance(v, (list, tuple)) else None


def unchanged(before: Any, after: Any) -> bool:
    if before is None:
        return True
    if isinstance(before, (list, tuple)):
        return before == after or repr(before) == repr(after)
    if type(before).__module__.startswith("torch"):  # bfloat16 has no NumPy dtype
        same = before == after
        if before.is_floating_point() or before.is_complex():
            same |= before.isnan() & after.isnan()
        return before.shape == after.shape and bool(same.all())
    a, b = to_numpy(before), to_numpy(after)
    if a.dtype.kind == "O":  # NaN != NaN: compare what each element prints as
        return a.shape == b.shape and [repr(v) for v in a.flat] == [repr(v) for v in b.flat]
    # Bit for bit: NaN and NaT equal themselves, -0.0 differs from 0.0.
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def check_unchanged(before: dict[str, Any], objects: dict[str, Any]) -> None:
    for name, old in before.items():
        if not unchanged(old, objects[name]):
            raise Bad("input-modified", f"the call changed its argument {name}")


def check_values(y: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    """``y`` against the reference: the same NaN and Inf, and finite values within tolerance."""
    if y.shape != ref.shape:
        raise Bad("wrong-result", f"output shape {y.shape}, the reference's {ref.shape}")
    y64 = y.astype(np.float64)
    if not np.array_equal(np.isnan(y64), np.isnan(ref)):
        raise Bad("wrong-result", f"NaN at {int((np.isnan(y64) != np.isnan(ref)).sum())} positions "
                                  "where the reference differs")
    inf = np.isinf(ref)
    if not np.array_equal(inf, np.isinf(y64)) or np.any(y64[inf] != ref[inf]):
        raise Bad("wrong-result", "infinities differ from the reference's")
    finite = np.isfinite(ref)
    if finite.any():
        scale = max(1.0, float(np.abs(ref[finite]).max()))
        err = float(np.abs(y64[finite] - ref[finite]).max()) / scale
        if not err <= TOLERANCE[dtype]:
            raise Bad("wrong-result", f"relative error {err:.3e} > {TOLERANCE[dtype]:.0e} ({dtype})")


def check_output(y: Any, inputs: dict[str, Any], params, dtype: str) -> None:
    """A successful call's output: a fresh array of the caller's kind (torch for a torch input, else
    NumPy) and of the dtype, equal to the reference."""
    from tvm_convt.reference import conv_transpose1d_reference

    if type(inputs.get("x")).__module__.startswith("torch") and type(y).__module__.startswith("torch"):
        y = y.numpy()  # torch in, torch out
    if not isinstance(y, np.ndarray):
        raise Bad("wrong-result", f"returned {type(y).__name__}, not the caller's kind of array")
    if y.dtype != np.dtype(dtype):
        raise Bad("wrong-result", f"output dtype {y.dtype}, expected {dtype}")
    arrays = {k: to_numpy(v) for k, v in inputs.items() if v is not None}
    for name, a in arrays.items():
        if np.shares_memory(y, a):
            raise Bad("wrong-result", f"the output shares memory with {name}")
    ref = conv_transpose1d_reference(arrays["x"], arrays["weight"], arrays.get("bias"), params)
    check_values(y, ref, dtype)


# -- one case: context, calls ---------------------------------------------------------------------

@dataclass
class Context:
    """What a worker keeps between cases: its folder, exported modules, a pipe to the parent."""

    root: Path
    send: Callable[[Any], None] = lambda message: None
    case_dir: Path = Path()
    index: int = 0
    compile_seconds: float = 0.0
    modules: dict[str, Path] = field(default_factory=dict)
    last_call: str = ""
    reasons: list[str] = field(default_factory=list)

    def call(self, name: str, fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
        """``(result, None)``, or ``(None, outcome)`` for a documented error; raises Bad otherwise.
        The parent is told the call first, so that a crash or hang inside it is reported with it."""
        self.last_call = describe_call(name, args, kwargs)
        self.send(("call", self.last_call))
        try:
            return fn(*args, **kwargs), None
        except Bad:
            raise
        except (Exception, SystemExit) as err:  # noqa: BLE001 - classified, never hidden
            outcome = check_error(err)
            self.reasons.append(f"{type(err).__name__}: {reason(str(err))}")
            return None, outcome

    def good_module(self, name: str) -> Path:
        """A module exported once per worker (with its sidecar), for the damaged-file cases."""
        if name not in self.modules:
            import tvm_convt

            p = tvm_convt.ConvTranspose1dParams(**(POOL[0] if name == "a" else POOL[3]))
            path = self.root / f"good-{name}.so"
            tvm_convt.compile(p, batch=1, length=5).export(path)
            self.modules[name] = path
        return self.modules[name]


def make_inputs(g: Gen, p, batch: int | None, length: int, dtype: str):
    shape = (p.in_channels, length) if batch is None else (batch, p.in_channels, length)
    x = values(g, shape, dtype)
    w = values(g, p.weight_shape, dtype)
    b = values(g, (p.out_channels,), dtype) if p.bias else None
    return x, w, b


def mutate_array(g: Gen, a: np.ndarray | None, dtype: str, *, p_dtype: float, p_shape: float,
                 p_layout: float) -> Any:
    """``a`` with its dtype, shape or layout perhaps changed."""
    if a is None:
        return None
    if g.chance(p_dtype):
        a = values(g, a.shape, g.pick(ODD_DTYPES + FLOATS))
    if g.chance(p_shape):
        a = odd_shape(g, a, dtype)
    if g.chance(p_layout):
        return layout(g, a)
    return a


def odd_shape(g: Gen, a: np.ndarray, dtype: str) -> np.ndarray:
    """Another rank, a changed or zero dimension, or a zero-size array with a giant dimension."""
    kind = g.pick(["rank0", "rank1", "rank4", "grow", "shrink", "zero", "giant"])
    if kind == "rank0":
        return np.array(1.0, dtype)
    if kind == "rank1":
        return values(g, (a.shape[-1] if a.ndim else 3,), dtype)
    if kind == "rank4":
        return values(g, (1,) + a.shape, dtype)
    if not a.ndim or (kind == "giant" and a.ndim < 2):
        return a
    axis = g.int(0, a.ndim - 1)
    shape = list(a.shape)
    if kind == "grow":
        shape[axis] += g.int(1, 3)
    elif kind == "shrink":
        shape[axis] = max(0, shape[axis] - 1)
    elif kind == "zero":
        shape[axis] = 0
    else:  # zero elements, so no memory, whatever the other dimension
        shape[axis], shape[(axis + 1) % len(shape)] = 0, g.pick([2**31, 2**40])
        return np.empty(shape, dtype)
    return values(g, tuple(shape), dtype)


def junk_target(g: Gen) -> Any:
    return g.pick(["", "llvm -mcpu=skylake", "c", "opencl", "{", "{}", "[]", "null", '{"kind": 1}',
                   '{"kind": "llvm", "mcpu": "nope"}', "LLVM", None, 3, ["llvm"], b"llvm",
                   {"kind": "llvm", "mtriple": "foo"}, {"kind": "cuda", "arch": "sm_1"},
                   {"kind": "vulkan"}, {"mcpu": "znver3"}])


def junk_path(g: Gen, ctx: Context, suffix: str = ".so") -> Any:
    """A path argument that is wrong in some way (or, sometimes, right)."""
    d = ctx.case_dir
    (d / "afile").write_text("x")
    (d / f"adir{suffix}").mkdir(exist_ok=True)
    return g.pick([d / f"ok{suffix}", str(d / f"ok{suffix}"), d / "nosuffix", d / "missing" / f"x{suffix}",
                   d / f"adir{suffix}", d / "afile" / f"x{suffix}", "", f"x{suffix}\0y", "a" * 300 + suffix,
                   str(d / ("b" * 5000 + suffix)), None, 3, b"x.so", ["x.so"], d / f"ok{suffix.upper()}",
                   d / f"{suffix}"])


def junk_logs(g: Gen, ctx: Context) -> Any:
    d = ctx.case_dir
    (d / "logfile").write_text("not a folder")
    return g.pick([d / "logs", d / "logfile", "", 3, None, "\0", d / "logfile" / "x", b"logs"])


# -- categories ---------------------------------------------------------------------------------------

def case_params(g: Gen, ctx: Context) -> str:
    """ConvTranspose1dParams and Workload with random values where sizes go."""
    from tvm_convt import ConvTranspose1dParams, Workload

    kwargs = layer_kwargs(g, junk=0.12)
    if g.chance(0.15):  # sizes near the 32-bit and 64-bit limits
        kwargs[g.pick(SIZE_FIELDS)] = g.pick([2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**16, 3 * 2**20])
    allowed = rules_allow(kwargs)
    p, outcome = ctx.call("ConvTranspose1dParams", ConvTranspose1dParams, **kwargs)
    if allowed is not None and (p is not None) != allowed:
        raise Bad("wrong-rejection" if allowed else "wrong-acceptance",
                  f"the rules {'allow' if allowed else 'refuse'} {kwargs}, the library "
                  f"{'refused' if allowed else 'accepted'} them")
    if p is None:
        return outcome
    if ConvTranspose1dParams.from_dict(p.to_dict()) != p:
        raise Bad("wrong-result", "to_dict/from_dict does not round-trip")
    batch = g.pick(BATCHES[1:]) if g.chance(0.7) else junk_size(g)
    length = g.pick(LENGTHS + (2**20, 2**31, 2**40)) if g.chance(0.7) else junk_size(g)
    dtype = g.pick(FLOATS) if g.chance(0.8) else g.pick(ODD_DTYPES + (None, np.float32, float, "float"))
    w, outcome = ctx.call("Workload", Workload, p, batch, length, dtype)
    # Only where no 32-bit index limit can apply does the rule reduce to L_out and the padding limits.
    small = (type(batch) is int and type(length) is int and 0 < batch * length * p.macs_per_sample < 2**24
             and max(p.stride, p.dilation, p.padding, p.kernel_size, p.out_channels, length) < 2**12)
    if small and dtype in FLOATS and (w is not None) != length_allowed(p, length):
        raise Bad("wrong-rejection" if w is None else "wrong-acceptance",
                  f"input length {length} for {p}: L_out={expected_length(p, length)}")
    if w is None:
        return outcome
    if w.out_length != expected_length(p, w.length) or Workload.from_dict(w.to_dict()) != w:
        raise Bad("wrong-result", f"{w}: out_length {w.out_length} or its round trip is wrong")
    _ = (w.working_set_bytes, w.flops, w.output_shape)
    size = g.pick([expected_length(p, w.length), expected_length(p, w.length) - p.output_padding
                   + g.int(-2, p.stride + 1)]) if g.chance(0.8) else junk_size(g)
    op, outcome = ctx.call("output_padding_for", p.output_padding_for, w.length, size)
    if op is not None and not 0 <= op < p.stride:
        raise Bad("wrong-result", f"output_padding_for({w.length}, {size}) = {op}, outside [0, stride)")
    return "ok"


def pool_case(g: Gen):
    """A valid pool layer, input shape and dtype."""
    from tvm_convt import ConvTranspose1dParams

    p = ConvTranspose1dParams(**g.pick(POOL))
    return p, g.pick(BATCHES), g.pick(LENGTHS), g.pick(FLOATS)


def case_function(g: Gen, ctx: Context) -> str:
    """conv_transpose1d with random arrays, layouts and arguments around a valid call."""
    import tvm_convt

    p, batch, length, dtype = pool_case(g)
    x, w, b = make_inputs(g, p, batch, length, dtype)
    if g.chance(0.05):
        x = np.empty((0,) + x.shape[-2:], dtype)  # batch 0
    inputs = {"x": mutate_array(g, x, dtype, p_dtype=0.08, p_shape=0.1, p_layout=0.35),
              "weight": mutate_array(g, w, dtype, p_dtype=0.05, p_shape=0.08, p_layout=0.2),
              "bias": mutate_array(g, b, dtype, p_dtype=0.05, p_shape=0.05, p_layout=0.1)}
    if g.chance(0.08):
        inputs["bias"] = None if inputs["bias"] is not None else values(g, (p.out_channels,), dtype)
    kwargs = {k: odd_argument(g, k, getattr(p, k)) for k in FUNCTION_ARGS}
    if g.chance(0.04):
        kwargs["target"] = junk_target(g)
    if g.chance(0.02):
        kwargs["logs"] = junk_logs(g, ctx)
    before = {k: snapshot(v) for k, v in inputs.items()}
    y, outcome = ctx.call("conv_transpose1d", tvm_convt.conv_transpose1d,
                          inputs["x"], inputs["weight"], inputs["bias"], **kwargs)
    check_unchanged(before, inputs)
    if y is None:
        return outcome
    weight = to_numpy(inputs["weight"])
    params = tvm_convt.ConvTranspose1dParams(
        weight.shape[0], weight.shape[1] * int(np.squeeze(kwargs["groups"])), weight.shape[2],
        kwargs["stride"], kwargs["padding"], kwargs["output_padding"], kwargs["groups"],
        inputs["bias"] is not None, kwargs["dilation"], kwargs["padding_mode"])
    check_output(y, inputs, params, str(to_numpy(inputs["x"]).dtype))
    return "ok"


FUNCTION_ARGS = ("stride", "padding", "output_padding", "groups", "dilation", "padding_mode")


def odd_argument(g: Gen, name: str, value: Any) -> Any:
    """``value``, or now and then junk, another small int (a new layer: rare, it compiles) or a 1-tuple."""
    if g.chance(0.04):
        return junk_size(g) if name != "padding_mode" else g.pick(["mirror", "", None, 1, "Zeros"])
    if g.chance(0.01) and name != "padding_mode":
        return g.int(0, 4)
    if g.chance(0.03):
        return (value,)
    return value


def junk_seed(g: Gen) -> Any:
    return g.pick([None, 0, 7, 2**70, -1, 1.5, "x", np.int64(3), [1, 2], True])


def case_layer(g: Gen, ctx: Context) -> str:
    """ConvTranspose1d: construction, weight and bias assignment, in-place edits, calls."""
    import tvm_convt

    kwargs = layer_kwargs(g, junk=0.05)
    extra: dict[str, Any] = {"dtype": g.pick(FLOATS) if g.chance(0.95) else g.pick(ODD_DTYPES + (None,))}
    if g.chance(0.15):
        extra["seed"] = junk_seed(g)
    if g.chance(0.04):
        extra["target"] = junk_target(g)
    if g.chance(0.02):
        extra["logs"] = junk_logs(g, ctx)
    layer, outcome = ctx.call("ConvTranspose1d", tvm_convt.ConvTranspose1d, **kwargs, **extra)
    if layer is None:
        return outcome
    repr(layer)
    for _ in range(g.int(1, 4)):
        step = g.pick(["call", "call", "call", "weight", "bias", "inplace"])
        outcome = LAYER_STEPS[step](g, ctx, layer)
    return outcome


def layer_call(g: Gen, ctx: Context, layer) -> str:
    p, dtype = layer.params, layer.dtype
    batch, length = g.pick(BATCHES + (0,)), g.pick(LENGTHS)
    shape = (p.in_channels, length) if batch is None else (batch, p.in_channels, length)
    x = mutate_array(g, values(g, shape, dtype), dtype, p_dtype=0.05, p_shape=0.08, p_layout=0.3)
    output_size, requested = None, None
    if g.chance(0.3):
        minimum = expected_length(p, length) - p.output_padding
        size = minimum + g.int(-1, p.stride) if g.chance(0.85) else junk_size(g)
        output_size = g.pick([size, [size], (1, p.out_channels, size), [1, 2, 3, 4][:g.int(0, 4)]])
        requested = output_size[-1] if isinstance(output_size, (list, tuple)) and output_size else output_size
    before = {"x": snapshot(x)}
    y, outcome = ctx.call("layer", layer, x, output_size=output_size)
    check_unchanged(before, {"x": x})
    if y is None:
        return outcome
    params = p
    if output_size is not None:  # from the length of what was passed, which a mutation may have changed
        op = int(y.shape[-1]) - (expected_length(p, to_numpy(x).shape[-1]) - p.output_padding)
        if y.shape[-1] != requested or not 0 <= op < p.stride:
            raise Bad("wrong-result", f"output_size={output_size!r} gave L_out={y.shape[-1]}")
        params = p.with_output_padding(op)
    check_output(y, {"x": x, "weight": layer.weight, "bias": layer.bias}, params, dtype)
    if g.chance(0.2):  # a second call must give a fresh array with the same values
        y2 = layer(x, output_size=output_size)
        if np.shares_memory(y, y2) or not np.array_equal(y, y2, equal_nan=True):
            raise Bad("wrong-result", "a second call returned a different or the same array")
    return "ok"


def layer_assign(g: Gen, ctx: Context, layer, name: str) -> str:
    p, dtype = layer.params, layer.dtype
    shape = p.weight_shape if name == "weight" else (p.out_channels,)
    new = mutate_array(g, values(g, shape, dtype), dtype, p_dtype=0.1, p_shape=0.1, p_layout=0.3)
    if name == "bias" and g.chance(0.2):
        new = None
    kept = snapshot(new)
    _, outcome = ctx.call(f"layer.{name} =", setattr, layer, name, new)
    if outcome is not None:
        return outcome
    current = getattr(layer, name)
    if new is None:
        if current is not None:
            raise Bad("wrong-result", f"assigning None left a {name}")
        return "ok"
    if isinstance(new, np.ndarray) and new.flags.writeable and new.size and new.dtype.kind == "f":
        new[...] = 12345.0  # the layer copied on assignment: this must not reach it
    if current is None or not np.array_equal(to_numpy(current), to_numpy(kept), equal_nan=True):
        raise Bad("wrong-result", f"layer.{name} does not hold the values assigned (or aliases them)")
    return "ok"


def layer_inplace(g: Gen, ctx: Context, layer) -> str:
    """An in-place edit must be refused: the layer's modules read copies prepared on assignment."""
    flat = layer.weight.reshape(-1)
    try:
        flat[g.int(0, flat.size - 1)] = g.pick([0.0, 1e3, -2.5, np.nan])
    except ValueError:  # read-only, on every target
        return layer_call(g, ctx, layer)
    raise Bad("wrong-result", "layer.weight took an in-place edit its prepared copies would miss")


LAYER_STEPS = {"call": layer_call, "weight": lambda g, c, l: layer_assign(g, c, l, "weight"),
               "bias": lambda g, c, l: layer_assign(g, c, l, "bias"), "inplace": layer_inplace}


VALID_TARGETS = ["llvm", "cpu", {"kind": "llvm"}, '{"kind": "llvm", "mcpu": "znver3"}',
                 {"kind": "llvm", "mcpu": "haswell"}, {"kind": "cuda", "arch": "sm_80"}]


def case_compile(g: Gen, ctx: Context) -> str:
    """compile(): random arguments; a module that compiles is called, exported and loaded."""
    import tvm_convt

    p, batch, length, dtype = pool_case(g)
    batch = batch or 1
    if g.chance(0.1):
        p, _ = ctx.call("ConvTranspose1dParams", tvm_convt.ConvTranspose1dParams, **layer_kwargs(g, junk=0.2))
        p = p if p is not None else g.pick([None, "layer", {"in_channels": 2}])
    kwargs: dict[str, Any] = {
        "batch": batch if g.chance(0.9) else junk_size(g),
        "length": length if g.chance(0.9) else junk_size(g),
        "dtype": dtype if g.chance(0.92) else g.pick(ODD_DTYPES + (None, np.float64)),
        "target": g.pick(VALID_TARGETS) if g.chance(0.9) else junk_target(g)}
    if g.chance(0.05):
        kwargs["rule"] = g.pick(["cpu-gemm", "cpu-fallback", "gpu-gemm", "", None, 3, "nope"])
    if g.chance(0.05):
        kwargs["tuned"] = g.pick([True, False, None, "no", 0])
    if g.chance(0.05):
        kwargs["use_cache"] = g.pick([False, False, None, "yes", 1])
    if g.chance(0.03):
        kwargs["logs"] = junk_logs(g, ctx)
    compiled, outcome = ctx.call("compile", tvm_convt.compile, p, **kwargs)
    if compiled is None:
        return outcome
    repr(compiled)
    outcome = call_compiled(g, ctx, compiled)
    if g.chance(0.3):
        outcome = export_and_load(g, ctx, compiled)
    return outcome


def call_compiled(g: Gen, ctx: Context, compiled) -> str:
    """Call a compiled module with inputs near its workload's, and check the answer."""
    w = compiled.workload
    batch = None if w.batch == 1 and g.chance(0.3) else w.batch
    x, weight, bias = make_inputs(g, w.params, batch, w.length, w.dtype)
    if g.chance(0.05):
        bias = None if bias is not None else values(g, (w.params.out_channels,), w.dtype)
    inputs = {"x": mutate_array(g, x, w.dtype, p_dtype=0.05, p_shape=0.08, p_layout=0.3),
              "weight": mutate_array(g, weight, w.dtype, p_dtype=0.03, p_shape=0.05, p_layout=0.2),
              "bias": mutate_array(g, bias, w.dtype, p_dtype=0.03, p_shape=0.03, p_layout=0.1)}
    before = {k: snapshot(v) for k, v in inputs.items()}
    y, outcome = ctx.call("compiled", compiled, inputs["x"], inputs["weight"], inputs["bias"])
    check_unchanged(before, inputs)
    if y is None:
        return outcome
    check_output(y, inputs, w.params, w.dtype)
    return "ok"


def export_and_load(g: Gen, ctx: Context, compiled) -> str:
    from tvm_convt import CompiledConvTranspose1d

    path = ctx.case_dir / "exported.so" if g.chance(0.7) else junk_path(g, ctx)
    written, outcome = ctx.call("export", compiled.export, path)
    if written is None:
        return outcome
    loaded, outcome = ctx.call("CompiledConvTranspose1d.load", CompiledConvTranspose1d.load, written)
    if loaded is None:
        raise Bad("unexpected-error", f"a module just exported to {written} does not load: {outcome}")
    if loaded.workload != compiled.workload:
        raise Bad("wrong-result", "the loaded module describes another workload")
    return call_compiled(g, ctx, loaded)


# Attributes a target dict may carry, with odd values for each.
TARGET_ATTRS = {
    "mcpu": ["znver3", "haswell", "skylake-avx512", "sapphirerapids", "diamondrapids", "graniterapids",
             "x86-64", "x86-64-v2", "x86-64-v4", "generic", "knl", "i386", "pentium", "k6", "lakemont",
             "cortex-a72", "apple-m1", "native", "", "zen9", 3, None, ["znver3"]],
    "mtriple": ["x86_64-linux-gnu", "x86_64-pc-linux-gnu", "x86_64-unknown-linux-musl", "aarch64-linux-gnu",
                "riscv64-unknown-linux-gnu", "i386-pc-linux-gnu", "i686-linux-gnu", "x86_64-pc-windows-msvc",
                "x86_64-apple-darwin", "nvptx64-nvidia-cuda", "amdgcn-amd-amdhsa", "wasm32-unknown-unknown",
                "spirv64", "bpfel", "armv7a-linux-gnueabihf", "thumbv7em-none-eabi", "x86_64-linux-gnux32",
                "x86_64-unknown-none-elf", "", "-", "x86_64", "foo-bar", 7, None, "x86_64-linux-gnu\0"],
    "mattr": [["+avx2"], ["-avx512f"], ["-avx512f", "-avx2"], ["+egpr", "+ndd"], ["+avx10.2"], ["avx2"],
              "+avx2", [1], [], ["+nosuchfeature"], ["-sse2"], ["+amx-tile"]],
    "num-cores": [1, 2, 0, -1, 2**31, 2**63, "2", 1.5, None, True],
    "vector-width": [64, 128, 256, 512, 1024, 3, 0, -1],
    "opt-level": [0, 1, 3, 4, -1, 100],
    "mabi": ["lp64d", "junk"],
    "mfloat-abi": ["hard", "junk"],
    "fast-math": [True, False, 3],
    "keys": [["cpu"], ["gpu"], "cpu"],
    "tag": ["x"],
    "foo": [1],
    "libs": [["cudnn"], "x"],
    "host": [{"kind": "llvm"}, {"kind": "llvm", "mcpu": "bogus"}, {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
             "llvm", 3],
}
CUDA_ATTRS = {
    "arch": ["sm_80", "sm_90a", "sm_100", "sm_49", "sm_5", "compute_80", 80, None, "sm_80\n", "sm_999"],
    "max_threads_per_block": [0, -1, 2**40, "x", 32],
    "thread_warp_size": [0, 7, 64],
    "max_shared_memory_per_block": [0, -1, 1024],
}


def random_target(g: Gen) -> Any:
    if g.chance(0.15):
        return junk_target(g)
    kind = g.pick(["llvm"] * 6 + ["cuda"] * 2 + ["c", "opencl", "rocm", "hexagon", None, 1, ["llvm"]])
    config: dict[str, Any] = {"kind": kind}
    attrs = {**TARGET_ATTRS, **(CUDA_ATTRS if kind == "cuda" else {})}
    for name in g.r.sample(sorted(attrs), g.int(0, 3)):
        config[name] = g.pick(attrs[name])
    if kind == "cuda" and "arch" not in config and g.chance(0.8):
        config["arch"] = "sm_80"
    if g.chance(0.2):
        return json.dumps(config, default=str)
    return config


def case_target(g: Gen, ctx: Context) -> str:
    """A layer for a random target; sometimes called, which compiles for that target."""
    import tvm_convt

    target = random_target(g)
    shape = g.pick([(2, 3, 3), (2, 3, 3), (16, 16, 4)])  # the last one takes the cpu-gemm rule
    layer, outcome = ctx.call("ConvTranspose1d", tvm_convt.ConvTranspose1d, *shape, stride=2, target=target)
    if layer is None or not g.chance(0.15):
        return outcome or "ok"
    return layer_call(g, ctx, layer)


# -- damaged files ------------------------------------------------------------------------------------

def forge(side: Path, edit: Callable[[dict], None]) -> None:
    """Edit the sidecar and recompute its checksum, as a consistent forgery would."""
    from tvm_convt.build import _checksum

    data = json.loads(side.read_text())
    data.pop("checksum", None)
    edit(data)
    data["checksum"] = _checksum(data)
    side.write_text(json.dumps(data))


def forge_edit(g: Gen) -> Callable[[dict], None]:
    """One edit of a sidecar's fields."""
    def field_edit(section: str, key: str, value: Any):
        def edit(d: dict) -> None:
            target = d
            for part in section.split(".") if section else []:
                target = target[part]
            target[key] = value
        return edit

    return g.pick([
        field_edit("workload", "length", g.pick([4, 6, 0, -1, "5", 2**40, None])),
        field_edit("workload", "batch", g.pick([2, 0, 2**63, 1.0])),
        field_edit("workload", "dtype", g.pick(["float64", "float16", None])),
        field_edit("workload.params", "kernel_size", g.pick([4, 2, 0])),
        field_edit("workload.params", "stride", g.pick([1, 3])),
        field_edit("workload.params", "padding_mode", g.pick(["reflect", "nope"])),
        field_edit("workload.params", "bias", g.pick([False, "no"])),
        field_edit("workload.params", "extra", 1),
        field_edit("", "target", g.pick([{"kind": "cuda", "arch": "sm_80"}, {"kind": "llvm", "mcpu": "diamondrapids"},
                                          {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, {"kind": "nope"},
                                          "llvm", None, 3])),
        field_edit("", "target_key", "cuda-sm_80"),
        field_edit("", "schedule", None),
        field_edit("", "format", g.pick([1, 3, "2", None])),
        field_edit("library", "bytes", g.pick(["x", None, -1, 10**30])),
        field_edit("library", "sha256", g.pick([None, 3, ""])),
        field_edit("", "workload", g.pick([[], None, "x", {}])),
        field_edit("", "library", g.pick([[], None, "x", {}])),
        lambda d: d.pop(g.pick(sorted(d))),
    ])


def damage(g: Gen, so: Path, side: Path, other: Path) -> str:
    """Damage the library or its sidecar in one way; returns which."""
    kind = g.pick(["none", "truncate", "empty", "random", "flip", "append", "other-so", "so-dir", "no-so",
                   "text", "symlink-loop", "j-truncate", "j-empty", "j-random", "j-not-json", "j-wrong-type",
                   "j-edit", "j-forge", "j-forge", "j-forge", "j-other", "j-dir", "j-missing", "j-non-utf8",
                   "j-nan", "j-deep"])
    data = so.read_bytes()
    if kind == "truncate":
        so.write_bytes(data[:g.int(0, len(data) - 1)])
    elif kind == "empty":
        so.write_bytes(b"")
    elif kind == "random":
        so.write_bytes(g.np.bytes(g.int(1, 20000)))
    elif kind == "flip":
        i = g.int(0, len(data) - 1)
        so.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif kind == "append":
        so.write_bytes(data + g.np.bytes(g.int(1, 100)))
    elif kind == "other-so":
        shutil.copyfile(other, so)
    elif kind == "so-dir":
        so.unlink()
        so.mkdir()
    elif kind == "no-so":
        so.unlink()
    elif kind == "text":
        so.write_text("not a library\n")
    elif kind == "symlink-loop":
        so.unlink()
        so.symlink_to(so.name)
    else:
        damage_sidecar(g, kind, side, other)
    return kind


def damage_sidecar(g: Gen, kind: str, side: Path, other: Path) -> None:
    text = side.read_text()
    if kind == "j-truncate":
        side.write_text(text[:g.int(0, len(text) - 1)])
    elif kind == "j-empty":
        side.write_text("")
    elif kind == "j-random":
        side.write_bytes(g.np.bytes(g.int(1, 500)))
    elif kind == "j-not-json":
        side.write_text(g.pick(["{'a': 1}", "nope", "{", "[1,", "\0"]))
    elif kind == "j-wrong-type":
        side.write_text(g.pick(["[]", "1", '"x"', "null", "true", "[{}]"]))
    elif kind == "j-edit":
        data = json.loads(text)
        data["workload"]["length"] = data["workload"]["length"] + 1
        side.write_text(json.dumps(data))
    elif kind == "j-forge":
        forge(side, forge_edit(g))
    elif kind == "j-other":
        shutil.copyfile(other.with_suffix(".json"), side)
    elif kind == "j-dir":
        side.unlink()
        side.mkdir()
    elif kind == "j-missing":
        side.unlink()
    elif kind == "j-non-utf8":
        side.write_bytes(text.encode()[:10] + b"\xff\xfe\x80" + text.encode()[10:])
    elif kind == "j-nan":
        forge(side, lambda d: d["workload"].update(length=float("nan")))
    elif kind == "j-deep":
        side.write_text("[" * 100000 + "]" * 100000)


def case_files(g: Gen, ctx: Context) -> str:
    """load() of a damaged library or sidecar, and calls of what loads."""
    from tvm_convt import CompiledConvTranspose1d

    good, other = ctx.good_module("a"), ctx.good_module("b")
    so, side = ctx.case_dir / "m.so", ctx.case_dir / "m.json"
    shutil.copyfile(good, so)
    shutil.copyfile(good.with_suffix(".json"), side)
    kind = damage(g, so, side, other)
    path = so if g.chance(0.85) else g.pick([str(so), side, ctx.case_dir, junk_path(g, ctx)])
    loaded, outcome = ctx.call(f"CompiledConvTranspose1d.load[{kind}]", CompiledConvTranspose1d.load, path)
    if loaded is None:
        if kind == "none" and path in (so, str(so)):
            raise Bad("wrong-rejection", f"an undamaged module was refused: {outcome}")
        return outcome
    outcome = call_compiled(g, ctx, loaded)
    if g.chance(0.2):
        outcome = export_and_load(g, ctx, loaded)
    return outcome


# -- the command line ---------------------------------------------------------------------------------

JUNK_INT_TEXT = ["0", "-1", "abc", "", "1.5", "1e3", "2**63", "9223372036854775808", "9" * 30, "0x10",
                 " 3", "+4", "\u0663", "3_0", "nan", "--", "-0", "4294967297", "\x00"]
LAYER_OPTIONS = {"in_channels": "--in-channels", "out_channels": "--out-channels",
                 "kernel_size": "--kernel-size", "stride": "--stride", "padding": "--padding",
                 "output_padding": "--output-padding", "groups": "--groups", "dilation": "--dilation"}
JUNK_TARGET_TEXT = ["", "nope", "{", '{"kind": "llvm", "mcpu": "zen9"}', '{"kind": "cuda", "arch": "sm_80"}',
                    '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}', '{"kind": "llvm", "mcpu": "diamondrapids"}',
                    '{"kind": "llvm", "num-cores": -1}', "cuda", "[1]"]


def layer_argv(g: Gen, junk: float) -> list[str]:
    """A pool layer's options, some replaced by junk text, dropped or repeated."""
    base = {**DEFAULTS, **g.pick(POOL)}
    argv: list[str] = []
    for name, flag in LAYER_OPTIONS.items():
        value = str(base[name]) if not g.chance(junk) else g.pick(JUNK_INT_TEXT)
        if g.chance(0.03):
            continue
        argv += [flag, value] * (2 if g.chance(0.02) else 1)
    argv += ["--length", str(g.pick(LENGTHS)) if not g.chance(junk) else g.pick(JUNK_INT_TEXT)]
    if g.chance(0.4):
        argv += ["--batch", str(g.int(1, 2)) if not g.chance(junk) else g.pick(JUNK_INT_TEXT)]
    mode = base["padding_mode"] if not g.chance(junk) else g.pick(["mirror", "", "ZEROS"])
    argv += ["--padding-mode", mode]
    if not base["bias"]:
        argv.append("--no-bias")
    if g.chance(0.5):
        argv += ["--dtype", g.pick(FLOATS) if not g.chance(junk) else g.pick(["float16", "", "f4"])]
    if g.chance(0.2):
        argv += ["--target", g.pick(["llvm", '{"kind": "llvm", "mcpu": "haswell"}'])
                 if not g.chance(0.5) else g.pick(JUNK_TARGET_TEXT)]
    return argv


def cli_path(g: Gen, ctx: Context, suffix: str) -> str:
    d = ctx.case_dir
    (d / "afile").write_text("x")
    (d / f"adir{suffix}").mkdir(exist_ok=True)
    return g.pick([str(d / f"out{suffix}")] * 6 + [str(d / "nosuffix"), str(d / "missing" / f"x{suffix}"),
                                                   str(d / f"adir{suffix}"), str(d / "afile" / f"x{suffix}"),
                                                   "", "-", str(d / ("c" * 300 + suffix))])


def suite_file(g: Gen, ctx: Context) -> str:
    """A suite file: valid tiny layers, or one with a flaw."""
    entries = []
    for i in range(g.int(1, 2)):
        kwargs = {**DEFAULTS, **g.pick(POOL)}
        entries.append({"name": f"l{i}", "batch": 1, "length": g.pick(LENGTHS), **kwargs})
    flaw = g.pick(["none"] * 3 + ["missing", "unknown", "type", "dup", "empty", "not-list", "not-json",
                                  "no-file", "dir", "nan", "huge", "dtype", "deep"])
    e = entries[0]
    if flaw == "missing":
        e.pop(g.pick(sorted(e)))
    elif flaw == "unknown":
        e["bogus"] = 1
    elif flaw == "type":
        e[g.pick(["batch", "length", "kernel_size", "name"])] = g.pick(["3", None, 1.5, [], {}])
    elif flaw == "dup":
        entries.append(dict(e))
    elif flaw == "nan":
        e["length"] = float("nan")
    elif flaw == "huge":
        e["length"] = g.pick([2**31, 2**63, 10**30])
    elif flaw == "dtype":
        e["dtype"] = g.pick(["half", None, 3])  # float16 is valid (CUDA only)
    path = ctx.case_dir / "suite.json"
    text = {"empty": "[]", "not-list": '{"a": 1}', "not-json": "[{", "deep": "[" * 10**5 + "]" * 10**5}.get(
        flaw, json.dumps(entries))
    if flaw == "dir":
        path.mkdir()
    elif flaw != "no-file":
        path.write_text(text)
    return str(path)


def compile_argv(g: Gen, ctx: Context) -> list[str]:
    argv = ["compile", *layer_argv(g, junk=0.06)]
    if g.chance(0.97):
        argv += [g.pick(["-o", "--output"]), cli_path(g, ctx, ".so")]
    if g.chance(0.05):
        argv += ["--logs", g.pick([str(ctx.case_dir / "logs"), str(ctx.case_dir / "afile"), ""])]
    return argv


def info_argv(g: Gen, ctx: Context) -> list[str]:
    argv = ["info"] + (["--json"] if g.chance(0.5) else [])
    if g.chance(0.3):
        (ctx.case_dir / "afile").write_text("x")
        argv += ["--logs", g.pick([str(ctx.case_dir), str(ctx.case_dir / "afile"), "", "/nonexistent/x"])]
    return argv


def bench_argv(g: Gen, ctx: Context) -> list[str]:
    if g.chance(0.05):  # without --suite only with a usage error: the default suite takes minutes
        return ["bench", g.pick(["--rounds", "--threads"]), g.pick(["0", "-2", "x"])]
    argv = ["bench", "--suite", suite_file(g, ctx), "--rounds", g.pick(["1", "1", "2"] + JUNK_INT_TEXT[:4])]
    if g.chance(0.5):
        argv += ["--threads", g.pick(["1", "2", "3", "64", "1000000", "9223372036854775807"] + JUNK_INT_TEXT[:3])]
    if g.chance(0.2):
        argv += ["--json", cli_path(g, ctx, ".json")]
    if g.chance(0.03):
        argv += ["--plot", cli_path(g, ctx, ".png")]
    if g.chance(0.2):
        argv += ["--target", g.pick(["llvm", '{"kind": "llvm", "mcpu": "haswell"}'] + JUNK_TARGET_TEXT)]
    if g.chance(0.2):
        argv.append("--default-schedule")
    return argv


TUNE_FLAWS = [["--trials", "0"], ["--trials-per-iter", "-1"], ["--rpc-tracker", "nohost"],
              ["--rpc-tracker", "127.0.0.1:1", "--rpc-key", "k"], ["--rpc-tracker", "127.0.0.1:99999"],
              ["--seed", "-5"], ["--target", "nope"], ["--bogus"], ["--padding-mode", "x"],
              ["--groups", "7"], ["--suite"], ["--length", "0"], ["--in-channels", "abc"]]


def tune_argv(g: Gen, ctx: Context) -> list[str]:
    """Tuning takes tens of seconds: 99 % of argvs have a flaw; the rest build 1-2 candidates."""
    argv = ["tune"]
    if g.chance(0.3):
        argv += ["--suite", suite_file(g, ctx)]
    else:
        argv += layer_argv(g, junk=0.05)
    argv += ["--trials", g.pick(["1", "2"]), "--trials-per-iter", g.pick(["1", "2"]), "--build-only"]
    if g.chance(0.99):
        flaw = list(g.pick(TUNE_FLAWS))
        if flaw == ["--suite"]:
            flaw.append(g.pick([str(ctx.case_dir / "none.json"), str(ctx.case_dir)]))
        if flaw[0] == "--rpc-tracker":  # --build-only measures nothing, so it never asks the tracker
            argv.remove("--build-only")
        argv += flaw
    if g.chance(0.2):
        argv += ["--work-dir", str(ctx.case_dir / "work")]
    return argv


def junk_argv(g: Gen, ctx: Context) -> list[str]:
    return g.pick([[], ["bogus"], ["--help"], ["compile", "--help"], ["info", "--bogus"], ["demo", "--rounds", "0"],
                   ["compile"], ["-x"], ["tune", "--help"], ["bench", "--help"], ["\x00"], ["info", "extra"]])


def cli_argv(g: Gen, ctx: Context) -> list[str]:
    make = g.pick([compile_argv] * 4 + [info_argv] * 2 + [bench_argv] * 2 + [tune_argv] * 2 + [junk_argv])
    return make(g, ctx)


CLI_ERROR = re.compile(r"^tvm-convt( [a-z]+)?: (internal )?error: ")
PROGRESS = re.compile(r"^(benchmarking \d+ layer|  \S+: [0-9.]+ ms|tuning |Ctrl-C|\[\d\d:\d\d:\d\d\] )")


def check_cli(rc: Any, stderr: str, argv: list[str]) -> str:
    """The CLI's promise: exit 0, 1 or 2; a failure is one line, never a traceback or an internal error."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not isinstance(rc, int) or rc not in (0, 1, 2):
        raise Bad("cli-status", f"exit status {rc!r}; stderr: {' | '.join(lines)[-300:]}")
    if "Traceback (most recent call last)" in stderr:
        raise Bad("cli-stderr", f"a traceback on stderr: {lines[-1][:300] if lines else ''}")
    if rc == 0:
        return "ok"
    errors = [line for line in lines if CLI_ERROR.match(line)]
    if any(": internal error: " in line for line in errors):
        raise Bad("cli-internal-error", errors[-1][:400])
    others = [line for line in lines if not CLI_ERROR.match(line) and not PROGRESS.match(line)]
    if len(errors) != 1 or lines[-1] != errors[0] or others:
        raise Bad("cli-stderr", f"exit {rc} without exactly one error line: {' | '.join(lines)[-400:]}")
    if rc == 1 and "differs from" in errors[0]:
        raise Bad("wrong-result", errors[0][:400])
    return "rejected" if rc == 2 else "failed"


def check_cli_module(g: Gen, ctx: Context, argv: list[str]) -> None:
    """After a successful ``compile``: the module written loads and computes the right thing."""
    from tvm_convt import CompiledConvTranspose1d

    out = argv[argv.index("-o") + 1] if "-o" in argv else argv[argv.index("--output") + 1]
    loaded, outcome = ctx.call("CompiledConvTranspose1d.load", CompiledConvTranspose1d.load, out)
    if loaded is None:
        raise Bad("unexpected-error", f"tvm-convt compile wrote {out}, which does not load: {outcome}")
    call_compiled(g, ctx, loaded)


def case_cli(g: Gen, ctx: Context) -> str:
    """tvm-convt in this process, through main(argv), with its output captured."""
    from tvm_convt.cli import main

    argv = cli_argv(g, ctx)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc, outcome = ctx.call("tvm-convt " + " ".join(map(repr, argv)), main, argv)
    if outcome is not None:  # main() itself raised
        raise Bad("unexpected-error", f"main() raised: {outcome}")
    outcome = check_cli(rc, err.getvalue(), argv)
    if rc == 0 and argv and argv[0] == "compile" and not {"-h", "--help"} & set(argv):
        check_cli_module(g, ctx, argv)
    return outcome


def case_cli_subprocess(g: Gen, ctx: Context) -> str:
    """tvm-convt as a real process: crashes show as signals, TVM's own logging reaches stderr."""
    argv = g.pick([compile_argv, info_argv, junk_argv])(g, ctx)
    ctx.last_call = "subprocess tvm-convt " + " ".join(map(repr, argv))
    ctx.send(("call", ctx.last_call))
    if any("\x00" in a for a in argv):
        return "rejected"  # a NUL cannot be passed in argv at all
    try:
        r = subprocess.run([sys.executable, "-m", "tvm_convt", *argv], capture_output=True, text=True,
                           timeout=SUBPROCESS_TIMEOUT, cwd=ctx.case_dir, errors="replace")
    except subprocess.TimeoutExpired:
        raise Bad("hang", f"tvm-convt ran past {SUBPROCESS_TIMEOUT} s") from None
    if r.returncode < 0:
        raise Bad("crash", f"tvm-convt died of signal {-r.returncode}: {r.stderr[-300:]}")
    return check_cli(r.returncode, r.stderr, argv)


def case_selftest(g: Gen, ctx: Context) -> str:
    """The harness's own check (only with --only selftest): by index, pass, die of SIGSEGV,
    hang, or return a wrong result."""
    import signal

    kind = ctx.index % 4
    ctx.last_call = f"selftest #{kind}"
    ctx.send(("call", ctx.last_call))
    if kind == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == 2:
        time.sleep(3600)
    if kind == 3:
        check_values(np.ones(3), np.zeros(3), "float64")
    return "ok"


# Weights: cheap validation cases dominate; compiling ones (compile, files, cli) are rarer.
CATEGORIES: dict[str, tuple[float, Callable[[Gen, Context], str]]] = {
    "params": (20, case_params),
    "function": (25, case_function),
    "layer": (15, case_layer),
    "compile": (8, case_compile),
    "target": (8, case_target),
    "files": (10, case_files),
    "cli": (12, case_cli),
    "cli-subprocess": (0.4, case_cli_subprocess),
    "selftest": (0, case_selftest),
}


def category_of(seed: int, index: int, only: list[str] | None = None) -> str:
    """The category of case ``index`` (the parent knows it without generating the case)."""
    names = only or list(CATEGORIES)
    weights = [CATEGORIES[n][0] for n in names]
    return random.Random(f"category:{seed}:{index}").choices(names, weights if any(weights) else None)[0]


def known_issue(bad: Bad) -> str | None:
    for kind, pattern, owner in KNOWN_ISSUES:
        if re.fullmatch(kind, bad.kind) and (re.search(pattern, bad.detail) or re.search(pattern, bad.tb)):
            return owner
    return None


def reason(message: str) -> str:
    """A rejection's message with its values taken out, to count rejections by rule."""
    text = message.removeprefix(PREFIX)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\S*/\S*|-?\d[\d.e+]*", "_", text)
    return text[:90]


def run_case(seed: int, index: int, category: str, ctx: Context, strict: bool = False) -> dict[str, Any]:
    """Generate and run one case; the result says its outcome and, when bad, why."""
    g = Gen(seed, index)
    ctx.index, ctx.case_dir = index, ctx.root / f"case-{index}"
    ctx.case_dir.mkdir(parents=True, exist_ok=True)
    ctx.compile_seconds, ctx.last_call, ctx.reasons = 0.0, "", []
    start = time.perf_counter()
    result: dict[str, Any] = {"index": index, "category": category, "detail": "", "tb": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CacheWarning and friends are expected here
            result["outcome"] = CATEGORIES[category][1](g, ctx)
    except Bad as bad:
        owner = None if strict else known_issue(bad)
        result.update(outcome="known" if owner else bad.kind, detail=bad.detail, tb=bad.tb, owner=owner)
    except Exception as err:  # noqa: BLE001 - a fuzzer's own failure is reported, not raised
        result.update(outcome="fuzzer-error", detail=f"{type(err).__name__}: {err}",
                      tb="".join(traceback.format_exception(type(err), err, err.__traceback__)))
    finally:
        shutil.rmtree(ctx.case_dir, ignore_errors=True)
    result.update(seconds=time.perf_counter() - start, compile_seconds=ctx.compile_seconds, call=ctx.last_call,
                  reasons=ctx.reasons)
    return result


# -- workers ------------------------------------------------------------------------------------------

def _time_compiles(ctx: Context) -> None:
    """Count the seconds spent in TVM compiles (the build module's one compile function)."""
    from tvm_convt import build

    compile_into = build._compile_into

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return compile_into(*args, **kwargs)
        finally:
            ctx.compile_seconds += time.perf_counter() - start

    build._compile_into = timed


# Issue #26, 1: the fuzzer's self-test breaks the operator on purpose in its workers; each mutant must
# make the run fail. "refuse": every call of the function and the layer raises a documented error;
# "off": their outputs are off by 5e-5 relative (five times the float32 tolerance).
MUTANTS = ("refuse", "off")


def install_mutant(kind: str) -> None:
    """Replace tvm_convt.conv_transpose1d and ConvTranspose1d.__call__ by ``kind``'s broken versions."""
    import tvm_convt
    import tvm_convt.runtime as runtime

    real_function, real_call = runtime.conv_transpose1d, runtime.ConvTranspose1d.__call__

    def broken(real):
        def call(*args, **kwargs):
            if kind == "refuse":
                raise ValueError("conv_transpose1d: refused (the fuzzer's mutant)")
            y = real(*args, **kwargs)
            return y + np.asarray(5e-5 * max(1.0, float(np.max(np.abs(y)))) if y.size else 0).astype(y.dtype)
        return call

    tvm_convt.conv_transpose1d = runtime.conv_transpose1d = broken(real_function)
    runtime.ConvTranspose1d.__call__ = broken(real_call)


def worker_main(conn, seed: int, root: str, log: str, strict: bool, warm: bool) -> None:
    """A worker: run the cases the parent sends, one at a time, until it sends None."""
    if os.environ.get("TVM_CONVT_FUZZ_MUTANT"):
        install_mutant(os.environ["TVM_CONVT_FUZZ_MUTANT"])
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)  # TVM's C++ logging and anything printed go to the worker's log, not the terminal
    os.dup2(fd, 2)
    os.chdir(root)  # relative paths the cases write (bench --json -) land in the run folder
    ctx = Context(Path(root), send=conn.send)
    if warm:  # imported before "ready", so that start-up is no case's time
        import tvm_convt.cli  # noqa: F401
        import torch  # noqa: F401

        _time_compiles(ctx)
    conn.send(("ready", os.getpid()))
    while True:
        job = conn.recv()
        if job is None:
            return
        index, category = job
        conn.send(("done", run_case(seed, index, category, ctx, strict)))


@dataclass
class Worker:
    process: Any
    conn: Any
    log: Path
    index: int | None = None
    category: str = ""
    deadline: float = 0.0
    started: float = 0.0
    call: str = ""


class Pool:
    """Worker processes, each running one case at a time under a time limit."""

    def __init__(self, jobs: int, seed: int, root: Path, timeout: float, strict: bool, warm: bool = True) -> None:
        self.ctx = mp.get_context("spawn")
        self.seed, self.root, self.timeout, self.strict, self.warm = seed, root, timeout, strict, warm
        self.spawned = 0
        self.workers = [self.spawn() for _ in range(jobs)]

    def spawn(self) -> Worker:
        parent, child = self.ctx.Pipe()
        self.spawned += 1
        log = self.root / f"worker-{self.spawned}.log"
        root = self.root / f"w{self.spawned}"
        root.mkdir(parents=True, exist_ok=True)
        args = (child, self.seed, str(root), str(log), self.strict, self.warm)
        process = self.ctx.Process(target=worker_main, args=args, daemon=True)
        process.start()
        child.close()
        if not parent.poll(300):
            process.kill()
            raise RuntimeError(f"a fuzz worker did not start in 300 s; see {log}")
        parent.recv()
        return Worker(process, parent, log)

    def start(self, w: Worker, index: int, category: str) -> None:
        w.index, w.category, w.call = index, category, ""
        w.started = time.perf_counter()
        w.deadline = w.started + self.timeout
        w.conn.send((index, category))

    def replace(self, w: Worker) -> Worker:
        if w.process.is_alive():
            w.process.kill()
        w.process.join(10)
        return self.spawn()

    def poll(self, w: Worker) -> dict[str, Any] | None:
        """The finished case's result, a crash or hang result, or None while it runs."""
        try:
            while w.conn.poll():
                kind, payload = w.conn.recv()
                if kind == "call":
                    w.call = payload
                elif kind == "done":
                    return payload
        except (EOFError, OSError):
            pass
        if not w.process.is_alive() or w.conn.closed:
            w.process.join(5)
            code = w.process.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            return self.lost(w, "crash", f"the worker died ({how}) during the case")
        if time.perf_counter() > w.deadline:
            return self.lost(w, "hang", f"the case ran past the {self.timeout:.0f} s limit")
        return None

    def lost(self, w: Worker, kind: str, detail: str) -> dict[str, Any]:
        return {"index": w.index, "category": w.category, "outcome": kind, "detail": detail, "tb": "",
                "seconds": time.perf_counter() - w.started, "compile_seconds": 0.0, "call": w.call,
                "log": str(w.log)}

    def run(self, jobs: list[tuple[int, str]], report: Callable[[dict], None]) -> None:
        queue = deque(jobs)
        busy: list[Worker] = []
        while queue or busy:
            for w in [w for w in self.workers if w not in busy]:
                if queue:
                    self.start(w, *queue.popleft())
                    busy.append(w)
            waits = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            mp.connection.wait(waits, timeout=max(0.01, min(w.deadline for w in busy) - time.perf_counter()))
            for w in list(busy):
                result = self.poll(w)
                if result is None:
                    continue
                busy.remove(w)
                report(result)
                if result["outcome"] in ("crash", "hang"):
                    self.workers[self.workers.index(w)] = self.replace(w)

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                w.conn.send(None)
        for w in self.workers:
            w.process.join(10)
            if w.process.is_alive():
                w.process.kill()


# -- the summary --------------------------------------------------------------------------------------

# The least share of a category's cases that must run and match the reference ("ok") in a run of at
# least MIN_CASES of them: an operator that refuses valid calls turns them into "rejected", which
# alone would pass. Measured shares on 250 cases of seed 2026: function 0.41, layer 0.31, compile 0.22.
MIN_OK_SHARE = {"function": 0.2, "layer": 0.15, "compile": 0.1}
MIN_CASES = 20


@dataclass
class Summary:
    seed: int
    only: list[str] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bad(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["outcome"] not in GOOD]

    def too_few_ok(self) -> list[str]:
        """Each category whose share of cases that ran and matched is below :data:`MIN_OK_SHARE`."""
        found = []
        for cat, least in MIN_OK_SHARE.items():
            outcomes = [r["outcome"] for r in self.results if r["category"] == cat]
            if len(outcomes) >= MIN_CASES and outcomes.count("ok") < least * len(outcomes):
                found.append(f"{cat}: {outcomes.count('ok')} of {len(outcomes)} cases ran and matched the "
                             f"reference, fewer than {least:.0%}")
        return found

    def text(self, jobs: int, elapsed: float, reasons: int = 0) -> str:
        by_cat: dict[str, Counter] = {}
        seconds: Counter = Counter()
        for r in self.results:
            by_cat.setdefault(r["category"], Counter())[r["outcome"] if r["outcome"] in GOOD else "bad"] += 1
            seconds[r["category"]] += r["seconds"]
        cols = list(GOOD) + ["bad"]
        lines = [f"tvm_convt fuzz: {len(self.results)} cases, seed {self.seed}, {jobs} job(s), {elapsed:.0f} s",
                 f"{'category':16s} {'cases':>7s} " + " ".join(f"{c:>9s}" for c in cols) + f" {'seconds':>9s}"]
        for cat in CATEGORIES:
            if cat in by_cat:
                c = by_cat[cat]
                lines.append(f"{cat:16s} {sum(c.values()):7d} " + " ".join(f"{c[k]:9d}" for k in cols)
                             + f" {seconds[cat]:9.1f}")
        outcomes = Counter(r["outcome"] for r in self.results)
        lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
        if self.results:
            slow = max(self.results, key=lambda r: r["seconds"])
            lines.append(f"slowest case: #{slow['index']} {slow['category']} {slow['seconds']:.1f} s: "
                         f"{slow['call'][:200]}")
            comp = max(self.results, key=lambda r: r["compile_seconds"])
            total = sum(r["compile_seconds"] for r in self.results)
            lines.append(f"compiling: {total:.0f} s in all; worst {comp['compile_seconds']:.2f} s in case "
                         f"#{comp['index']} {comp['category']}: {comp['call'][:160]}")
        if reasons:
            counts = Counter(x for r in self.results for x in r.get("reasons", ()))
            lines.append(f"rejections by rule ({len(counts)} rules):")
            lines += [f"  {n:6d}  {text}" for text, n in counts.most_common(reasons)]
        known = Counter(r.get("owner") for r in self.results if r["outcome"] == "known")
        for owner, n in known.most_common():
            first = next(r["index"] for r in self.results if r.get("owner") == owner)
            lines.append(f"known issue, {n} case(s), first #{first}: {owner}")
        lines += [f"too few cases ran: {line}" for line in self.too_few_ok()]
        lines.append(f"bad outcomes: {len(self.bad)}")
        for r in self.bad[:50]:
            lines += [f"BAD #{r['index']} {r['category']} {r['outcome']}: {r['detail'][:400]}",
                      f"    call: {r['call'][:400]}",
                      f"    replay: python tools/fuzz.py --seed {self.seed} --replay {r['index']}"
                      + "".join(f" --only {c}" for c in self.only or ())]
            if r.get("log"):
                lines.append(f"    worker log: {r['log']}")
        return "\n".join(lines)


def setup_environment(root: Path, jobs: int) -> None:
    """A private module cache, tuning logs and temporary folder; threads shared out among workers."""
    for name in ("cache", "logs", "tmp"):
        (root / name).mkdir(parents=True, exist_ok=True)
    os.environ["TVM_CONVT_CACHE"] = str(root / "cache")
    os.environ["TVM_CONVT_TUNING_LOGS"] = str(root / "logs")
    os.environ["TMPDIR"] = str(root / "tmp")
    tempfile.tempdir = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("TVM_NUM_THREADS", str(max(1, cores // jobs)))


def replay(seed: int, index: int, only: list[str] | None) -> int:
    """Run one case in this process and print everything about it."""
    category = category_of(seed, index, only)
    ctx = Context(Path(tempfile.mkdtemp(prefix="tvm_convt-replay-")), send=lambda m: print("  ", *m))
    print(f"case #{index} (seed {seed}): {category}")
    result = run_case(seed, index, category, ctx)
    print(f"outcome: {result['outcome']} {result['detail']}")
    if result["tb"]:
        print(result["tb"])
    return 0 if result["outcome"] in GOOD else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="number of cases (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per case (default: %(default)s)")
    parser.add_argument("--start", type=int, default=0, help="index of the first case (default: 0)")
    parser.add_argument("--only", action="append", choices=list(CATEGORIES),
                        help="run only this category (repeatable)")
    parser.add_argument("--replay", type=int, default=None, help="run case INDEX here, with its traceback")
    parser.add_argument("--strict", action="store_true", help="count known issues as bad outcomes")
    parser.add_argument("--keep", action="store_true", help="keep the run's temporary folder")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--mutant", choices=MUTANTS, default=None,
                        help="break the operator on purpose in the workers, to show the run then fails")
    parser.add_argument("--reasons", type=int, default=0, metavar="N",
                        help="also list the N most frequent rejections, by rule (default: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mutant:
        os.environ["TVM_CONVT_FUZZ_MUTANT"] = args.mutant  # read by the spawned workers
    root = Path(tempfile.mkdtemp(prefix="tvm_convt-fuzz-"))
    setup_environment(root, args.jobs)
    if args.replay is not None:
        try:
            return replay(args.seed, args.replay, args.only)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    summary = Summary(args.seed, args.only)
    start = time.perf_counter()

    def report(result: dict[str, Any]) -> None:
        summary.results.append(result)
        if result["outcome"] not in GOOD:
            print(f"BAD #{result['index']} {result['category']} {result['outcome']}: {result['detail'][:200]}",
                  file=sys.stderr, flush=True)
        done = len(summary.results)
        if not args.quiet and (done % 500 == 0 or done == args.cases):
            print(f"{done}/{args.cases} cases, {len(summary.bad)} bad, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)

    jobs = [(i, category_of(args.seed, i, args.only)) for i in range(args.start, args.start + args.cases)]
    pool = Pool(args.jobs, args.seed, root, args.timeout, args.strict, warm=args.only != ["selftest"])
    try:
        pool.run(jobs, report)
    finally:
        pool.close()
    summary.results.sort(key=lambda r: r["index"])
    print(summary.text(args.jobs, time.perf_counter() - start, args.reasons))
    if summary.bad or args.keep:
        print(f"run folder (worker logs, CLI tracebacks): {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if summary.bad or summary.too_few_ok() else 0


if __name__ == "__main__":
    sys.exit(main())
