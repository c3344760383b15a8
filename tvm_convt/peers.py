"""The libraries ``tvm-convt bench`` measures tvm_convt against: PyTorch, ONNX Runtime and OpenVINO.

Each peer gets the layer in the form and with the settings it runs fastest with, and is called as a
user calls it: an array in, a new array out.

- PyTorch: ``torch.nn.functional.conv_transpose1d`` on tensors made once, ``torch.set_num_threads``.
- ONNX Runtime and OpenVINO: the layer as a one-node ONNX model built in memory with the ``onnx``
  helper API (opset 17, weight and bias as initializers), in the 1-D form and in the 2-D form that
  reads the signal as (N, C, 1, L) with a (1, K) kernel. Both forms are built and checked, then timed
  briefly, and the faster one is kept (:func:`faster_form`): OpenVINO ran the 2-D form 3x faster on a
  HiFi-GAN layer, ONNX Runtime 3-25 % faster. Settings: ONNX Runtime with ``intra_op_num_threads`` =
  threads, one inter-op thread, sequential execution and every graph optimisation; OpenVINO's CPU
  plugin with ``INFERENCE_NUM_THREADS`` = threads, the ``LATENCY`` hint and float32 precision (its
  default on some CPUs is bfloat16, which would not match the reference).

ONNX's ConvTranspose pads with zeros only: a layer with another padding mode is refused with the
reason (:class:`PeerUnavailable`), as is a dtype the peer does not run. Nothing here is imported by
the operator; the libraries are the ``peers`` extra (``pip install 'tvm_convt[peers]'``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .params import Workload

PEERS = ("torch", "onnxruntime", "openvino")
LABELS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
FORMS = ("1-D", "2-D")
ONNX_OPSET = 17
# The IR version of opset 17; newer onnx packages write a newer one by default, which older runtimes refuse.
ONNX_IR_VERSION = 8


class PeerUnavailable(Exception):
    """A peer cannot run a layer here: not installed, or refusing the layer; the message says why."""


@dataclass(frozen=True)
class PeerCall:
    """A peer's call on one layer's inputs: ``call()`` returns a new array; ``label`` names the
    library and its version, ``form`` the form it runs the layer in."""

    call: Callable[[], np.ndarray]
    label: str
    form: str


def peer_call(peer: str, workload: Workload, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
              threads: int) -> PeerCall:
    """``peer``'s call (one of :data:`PEERS`) on these arrays; :class:`PeerUnavailable` says why not."""
    if peer not in PEERS:
        raise ValueError(f"conv_transpose1d: peer must be one of {', '.join(PEERS)}, got peer={peer!r}")
    return {"torch": _torch_call, "onnxruntime": _ort_call, "openvino": _openvino_call}[peer](
        workload, x, weight, bias, threads)


def _torch_call(workload: Workload, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                threads: int) -> PeerCall:
    try:
        from . import torch as tt
    except ImportError:
        raise PeerUnavailable("PyTorch is not installed (pip install torch)") from None
    try:
        call = tt.functional_call(workload, x, weight, bias)
    except ValueError as err:
        raise PeerUnavailable(str(err)) from None
    tt.set_threads(threads)
    return PeerCall(call, f"PyTorch {tt.version()}", "1-D")


def _onnx_only_zeros(workload: Workload, library: str) -> None:
    p = workload.params
    if p.padding_mode != "zeros":
        raise PeerUnavailable(f"ONNX's ConvTranspose pads with zeros only, and this layer's padding_mode is "
                              f"{p.padding_mode!r}: {library} cannot run it")
    if workload.dtype != "float32":
        raise PeerUnavailable(f"{library} is timed in float32 only, and this layer is {workload.dtype}")


def onnx_model(workload: Workload, weight: np.ndarray, bias: np.ndarray | None, form: str) -> bytes:
    """The layer as a serialised one-node ONNX model: input ``x``, output ``y``, in ``form``
    (``"1-D"``: (N, C, L); ``"2-D"``: (N, C, 1, L) with a (1, K) kernel)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = workload.params
    two_d = form == "2-D"
    lead = [1] if two_d else []
    w = weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2]) if two_d else weight
    attrs = dict(kernel_shape=lead + [p.kernel_size], strides=lead + [p.stride],
                 pads=[0, p.padding, 0, p.padding] if two_d else [p.padding, p.padding],
                 output_padding=[0] * len(lead) + [p.output_padding], dilations=lead + [p.dilation], group=p.groups)
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    node = helper.make_node("ConvTranspose", inputs, ["y"], **attrs)
    n, c, length = workload.input_shape
    in_shape = [n, c, 1, length] if two_d else [n, c, length]
    out_shape = [n, p.out_channels, 1, workload.out_length] if two_d else list(workload.output_shape)
    inits = [numpy_helper.from_array(np.ascontiguousarray(w), "w")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "b"))
    graph = helper.make_graph([node], "conv_transpose1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="tvm_convt")
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _onnx_input(x: np.ndarray, form: str) -> np.ndarray:
    return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if form == "2-D" else x


def _ort_call(workload: Workload, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
              threads: int) -> PeerCall:
    try:
        import onnxruntime as ort
    except ImportError:
        raise PeerUnavailable("ONNX Runtime is not installed (pip install 'tvm_convt[peers]')") from None
    _onnx_only_zeros(workload, "ONNX Runtime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3

    def make(form: str) -> Callable[[], np.ndarray]:
        session = ort.InferenceSession(onnx_model(workload, weight, bias, form), opts,
                                       providers=["CPUExecutionProvider"])
        shape = workload.output_shape
        return lambda: session.run(None, {"x": _onnx_input(x, form)})[0].reshape(shape)

    form, call = faster_form(make)
    return PeerCall(call, f"ONNX Runtime {ort.__version__}", form)


def _openvino_call(workload: Workload, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   threads: int) -> PeerCall:
    try:
        import openvino as ov
    except ImportError:
        raise PeerUnavailable("OpenVINO is not installed (pip install 'tvm_convt[peers]')") from None
    _onnx_only_zeros(workload, "OpenVINO")
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}

    def make(form: str) -> Callable[[], np.ndarray]:
        model = core.read_model(onnx_model(workload, weight, bias, form), b"")
        request = core.compile_model(model, "CPU", config).create_infer_request()
        shape = workload.output_shape
        # share_outputs=False: a new array per call, as the other libraries return.
        return lambda: request.infer({0: _onnx_input(x, form)}, share_outputs=False)[0].reshape(shape)

    form, call = faster_form(make)
    return PeerCall(call, f"OpenVINO {ov.__version__.split('-')[0]}", form)


def faster_form(make: Callable[[str], Callable[[], np.ndarray]], seconds: float = 0.2) -> tuple[str, Callable[[], np.ndarray]]:
    """The faster of :data:`FORMS` for a peer: each form's call made, then run in turns for about
    ``seconds`` in all, the one with the lower median kept. Correctness is checked by the caller."""
    calls = {form: make(form) for form in FORMS}
    times: dict[str, list[float]] = {form: [] for form in FORMS}
    for call in calls.values():
        call()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or min(len(t) for t in times.values()) < 3:
        for form, call in calls.items():
            start = time.perf_counter()
            call()
            times[form].append(time.perf_counter() - start)
    best = min(FORMS, key=lambda form: float(np.median(times[form])))
    return best, calls[best]


__all__ = ["FORMS", "LABELS", "PEERS", "PeerCall", "PeerUnavailable", "onnx_model", "peer_call"]
