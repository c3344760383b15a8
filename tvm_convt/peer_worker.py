"""A worker process of ``tvm-convt bench``: one library (tvm_convt or one peer) alone in a process.

The benchmark starts one worker per library (``python -m tvm_convt.peer_worker SIDE``) and talks to
it in JSON lines: the worker's standard input takes commands, and its replies go to the standard
output it was started with (the libraries' own prints are sent to standard error instead). The
benchmark asks one worker at a time, so the other libraries' thread pools are idle while one is
timed: in one process, another library's spinning threads took the cores (ONNX Runtime's call took
3.4x its time alone).

Commands:
- ``{"op": "setup", "workload": ..., "inputs": FOLDER, "threads": N, "target": ..., "logs": ..., "tuned": ...}``:
  load the layer's inputs and its float64 reference from FOLDER (``x.npy``, ``weight.npy``,
  ``bias.npy`` when it has one, ``expected.npy``), make this library's calls, check each against the
  reference; reply ``{"ok": true, "label", "form", "schedule", "errors": {call: error}}`` or
  ``{"ok": false, "why": ...}``.
- ``{"op": "time", "call": NAME, "number": N, "settle": S}``: run the call untimed for S seconds,
  then N times; reply ``{"s": mean seconds per call}``.
- ``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .timing import settled_mean

SIDES = ("tvm_convt", "torch", "onnxruntime", "openvino")


class SetupRefused(Exception):
    """This library cannot run the layer, or its output differs from the reference: the reason."""


def _inputs(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    bias = folder / "bias.npy"
    return (np.load(folder / "x.npy"), np.load(folder / "weight.npy"),
            np.load(bias) if bias.exists() else None, np.load(folder / "expected.npy"))


def _tvm_convt_calls(workload: Any, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                     msg: dict[str, Any]) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """tvm_convt's two calls: ``layer`` (what a user calls: the layer, NumPy in, a new NumPy
    array out) and ``module`` (the compiled module on tensors made once: the kernel's own cost)."""
    from .runtime import ConvTranspose1d
    from .runtime import compile as compile_module
    from .runtime.module import _MODULES
    from .target import set_cpu_threads

    set_cpu_threads(msg["threads"])
    p, target, logs = workload.params, msg["target"], msg.get("logs")
    compiled = compile_module(p, batch=workload.batch, length=workload.length, dtype=workload.dtype, target=target,
                              logs=logs, tuned=msg.get("tuned", True), prepack_weight=True)
    layer = ConvTranspose1d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding, p.output_padding,
                            p.groups, p.bias, p.dilation, p.padding_mode, target=target, dtype=workload.dtype,
                            logs=logs, lengths="exact")
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    # The layer runs the module timed beside it (the same schedule, tuned or not).
    _MODULES.adopt(compiled, target, layer.logs, prepack_weight=True)
    xd, weights = compiled.to_device(x), compiled.prepare_weights(weight, bias)
    calls = {"layer": lambda: layer(x), "module": lambda: compiled.run(xd, weights)}
    return calls, {"label": "tvm_convt", "form": "1-D", "schedule": compiled.metadata.schedule,
                   "weight_packed": compiled.weight_packed}


def _peer_calls(side: str, workload: Any, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                msg: dict[str, Any]) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    from .peers import PeerUnavailable, peer_call

    try:
        found = peer_call(side, workload, x, weight, bias, msg["threads"])
    except PeerUnavailable as err:
        raise SetupRefused(str(err)) from None
    return {"call": found.call}, {"label": found.label, "form": found.form}


def setup(side: str, msg: dict[str, Any]) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """This library's calls on the layer of ``msg``, each checked against the float64 reference."""
    from .reference import CHECK_TOLERANCE, relative_error
    from .params import workload_from_dict

    workload = workload_from_dict(msg["workload"])
    x, weight, bias, expected = _inputs(Path(msg["inputs"]))
    if side == "tvm_convt":
        calls, info = _tvm_convt_calls(workload, x, weight, bias, msg)
    else:
        calls, info = _peer_calls(side, workload, x, weight, bias, msg)
    errors = {}
    for name, call in calls.items():
        y = np.asarray(call())
        errors[name] = relative_error(y, expected) if y.shape == expected.shape else float("inf")
        if not errors[name] <= CHECK_TOLERANCE[workload.dtype]:
            shape = "" if y.shape == expected.shape else f" (its output has shape {y.shape}, not {expected.shape})"
            raise SetupRefused(f"{info['label']}'s output differs from the float64 NumPy reference by a relative "
                               f"{errors[name]:.2e}, more than {CHECK_TOLERANCE[workload.dtype]:.0e}{shape}; not timed")
    return calls, dict(info, errors=errors)


def serve(side: str, commands: Any, replies: Any) -> None:
    """Answer ``commands`` (JSON lines) on ``replies`` until ``quit`` or the end of the input."""
    calls: dict[str, Callable[[], Any]] = {}
    for line in commands:
        msg = json.loads(line)
        if msg["op"] == "quit":
            return
        try:
            if msg["op"] == "setup":
                calls = {}
                calls, info = setup(side, msg)
                reply = {"ok": True, **info}
            elif msg["op"] == "time":
                reply = {"s": settled_mean(calls[msg["call"]], msg["number"], msg["settle"])}
            else:
                reply = {"ok": False, "why": f"unknown command {msg['op']!r}"}
        except (SetupRefused, ValueError, TypeError, RuntimeError, MemoryError) as err:
            reply = {"ok": False, "why": str(err) or type(err).__name__}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in SIDES:
        print(f"usage: python -m tvm_convt.peer_worker {{{','.join(SIDES)}}}", file=sys.stderr)
        return 2
    # Replies go to the standard output this process was given; what the libraries print goes to
    # standard error, so that it cannot be read as a reply.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(argv[0], sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
