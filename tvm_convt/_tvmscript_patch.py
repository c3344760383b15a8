"""Make TVMScript parsing fast enough for MetaSchedule on a small machine.

MetaSchedule's ``TuneContext`` and every ``LocalBuilder`` worker run
``import tvm.s_tir.tensor_intrin``, which parses ~500 intrinsic functions with
TVMScript. The parser calls ``inspect.stack()`` once per function, and
``inspect.stack`` resolves the source file of every frame on the stack;
frames of frozen importlib modules make ``inspect.getmodule`` scan all of
``sys.modules`` each time. Measured here: 36 s (76 s with torch installed) for
the import, longer than LocalBuilder's 30 s build timeout, so every candidate
failed. The parser only needs frames, line numbers and the source line of its
callers, so this module gives the parser modules an ``inspect`` whose
``stack`` walks frames and reads lines through ``linecache`` (each file once).
Nothing outside those TVM modules sees the change.
"""

from __future__ import annotations

import importlib
import inspect
import linecache
import sys
import types

_PARSER_MODULES = (
    "tvm.tirx.script.parser.entry",
    "tvm.tirx.script.builder.ir",
    "tvm.script.parser.ir.entry",
    "tvm.relax.script.parser.entry",
)


def fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` without module resolution: the caller's frames, outermost last."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        lineno = frame.f_lineno or 0
        line = linecache.getline(filename, lineno, frame.f_globals) if context > 0 else ""
        code_context = [line] if line else None
        frames.append(inspect.FrameInfo(frame, filename, lineno, frame.f_code.co_name, code_context,
                                        0 if code_context else None))
        frame = frame.f_back
    return frames


class _FastInspect(types.ModuleType):
    """``inspect`` with ``stack`` replaced; every other attribute is the real one's."""

    def __init__(self) -> None:
        super().__init__("inspect")
        self.stack = fast_stack

    def __getattr__(self, name: str):
        return getattr(inspect, name)


_SHIM = _FastInspect()


def install() -> None:
    """Give TVM's TVMScript parser modules the fast ``inspect``; idempotent.

    Also the initializer of MetaSchedule's builder worker processes, so it must
    stay a module-level function that imports nothing heavy by itself.
    """
    for name in _PARSER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # relax is optional for us
            continue
        if getattr(module, "inspect", None) is inspect:
            module.inspect = _SHIM
