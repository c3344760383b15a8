"""The custom op ``tvm_convt::conv_transpose1d``: the compiled module as a PyTorch operator.

Registered with ``torch.library``: the implementation runs the compiled module on the
tensors through DLPack, the fake implementation gives the output's shape and dtype to
``torch.compile`` and ``torch.export``, and the autograd formula uses PyTorch's own
convolution kernels (``aten.convolution_backward``) for the gradients.

Schema: ``conv_transpose1d(Tensor input, Tensor weight, Tensor? bias, int[] conv,
str padding_mode, str backend)``, where ``conv`` is [stride, padding, output_padding, groups,
dilation] and ``backend`` the target (``"llvm"``, ``"cuda"`` or TVM's JSON), or, when tuning
logs are named or the weight is packed once (``prepack_weight``), JSON ``{"target": ...,
"logs": ..., "prepack_weight": true}`` with the keys that apply. Few arguments because PyTorch's
custom-op autograd costs time per call that grows with the square of their number.
"""

# No ``from __future__ import annotations``: torch.library reads the schema from these annotations.

import functools
import json
import threading
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
import tvm

from ..params import OP, ConvTranspose1dParams, Workload, check_dtype
from ..runtime.module import _MODULES, CompiledConvTranspose1d, module_workload
from ..target import resolve_target, target_json
from ._tensors import PackedWeights, ParameterCopies, aligned_empty, to_tvm

__all__ = ["backend_arg", "conv_transpose1d"]

_COPIES = ParameterCopies()
_PACKED = PackedWeights()

# The device type torch names for each TVM target kind.
_TORCH_DEVICE = {"llvm": "cpu", "cuda": "cuda"}


def _target_text(target: Any) -> str:
    """The target as a string: names as they are, dicts and Targets as JSON."""
    if isinstance(target, str):
        return target
    if isinstance(target, dict):
        return json.dumps(target, sort_keys=True)
    if isinstance(target, tvm.target.Target):
        return target_json(target)
    raise TypeError(f"{OP}: target must be a str, dict or tvm.target.Target, got target={target!r} "
                    f"({type(target).__name__})")


def backend_arg(target: Any, logs: Any = None, prepack_weight: bool = False) -> str:
    """The op's ``backend`` argument for a target, a tuning-logs folder (None: the default) and
    whether CPU modules read the weight packed once per change of it."""
    text = _target_text(target)
    if logs is None and not prepack_weight:
        return text
    config = {"target": json.loads(text) if text.lstrip().startswith("{") else text}
    if logs is not None:
        config["logs"] = str(logs)
    if prepack_weight:
        config["prepack_weight"] = True
    return json.dumps(config, sort_keys=True)


_BACKEND_KEYS = ({"target", "logs"}, {"target", "prepack_weight"}, {"target", "logs", "prepack_weight"})


def _parse_backend(backend: str) -> tuple[Any, Optional[str], bool]:
    """``(target, logs, prepack_weight)`` from the ``backend`` argument; a TVM target JSON has
    neither of the other keys."""
    if backend.lstrip().startswith("{"):
        try:
            config = json.loads(backend)
        except json.JSONDecodeError:
            return backend, None, False  # resolve_target reports it
        if isinstance(config, dict) and set(config) in _BACKEND_KEYS:
            return config["target"], config.get("logs"), config.get("prepack_weight") is True
    return backend, None, False


def _single(name: str, value: Any) -> int:
    """An int, or the int inside a 1-tuple, as PyTorch's ``_single``."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{OP}: {name} must be an int or a 1-tuple of one, got {name}={value!r}")
    return value


def conv_transpose1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    padding_mode: str = "zeros",
    *,
    target: Any = "llvm",
    logs: Any = None,
) -> torch.Tensor:
    """``torch.nn.functional.conv_transpose1d`` run by a compiled TVM module, with autograd.

    ``input`` is (batch, in_channels, length) or unbatched (in_channels, length);
    ``weight`` is (in_channels, out_channels / groups, kernel_size); ``bias`` is
    (out_channels,) or None. Returns (batch, out_channels, output length), unbatched
    when the input was; ``padding_mode`` may also be reflect, replicate or circular
    (see :class:`tvm_convt.ConvTranspose1dParams`). float32 and float64; the tensors
    must be on the target's device (CPU for ``"llvm"``).
    """
    conv = [_single("stride", stride), _single("padding", padding),
            _single("output_padding", output_padding), _single("groups", groups), _single("dilation", dilation)]
    return call(input, weight, bias, conv, padding_mode, backend_arg(target, logs))


def refuse_torchscript(what: str) -> TypeError:
    """The one sentence for TorchScript, which cannot compile or trace the op's Python side."""
    return TypeError(f"{OP}: tvm_convt.torch does not support TorchScript (torch.jit.trace or script), got {what}; "
                     "use torch.compile or torch.export, or tvm_convt.torch.revert(model) first")


def call(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], conv: list[int],
         padding_mode: str, backend: str) -> torch.Tensor:
    """The op on a batched or unbatched input, with its arguments already in the op's form."""
    if torch.jit.is_tracing():
        # Tracing turns the weight's sizes into tensors, which the layer's parameters cannot be.
        raise refuse_torchscript("a call while tracing")
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) and (t is not None or name != "bias"):
            # NumPy arrays and the like: the package's own conv_transpose1d takes those.
            raise TypeError(f"{OP}: tvm_convt.torch takes torch tensors, got {name} of type {type(t).__name__}; "
                            "tvm_convt.conv_transpose1d takes NumPy arrays")
    if input.dim() not in (2, 3):
        raise ValueError(f"{OP}: expected a 2-D (unbatched) or 3-D (batched) input, "
                         f"got input.shape={tuple(input.shape)}")
    if forward_ad._current_level >= 0 and not torch.compiler.is_compiling():
        return _with_tangent(input, weight, bias, conv, padding_mode, backend)
    return _dispatch(input, weight, bias, conv, padding_mode, backend)


def _dispatch(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], conv: list[int],
              padding_mode: str, backend: str) -> torch.Tensor:
    """The op (or its eager shortcuts) on a batched or unbatched input."""
    op = _OP if torch.compiler.is_compiling() else _eager_route(input, weight, bias)
    if input.dim() == 2:
        return op(input.unsqueeze(0), weight, bias, conv, padding_mode, backend).squeeze(0)
    return op(input, weight, bias, conv, padding_mode, backend)


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _with_tangent(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], conv: list[int],
                  padding_mode: str, backend: str) -> torch.Tensor:
    """Forward-mode AD (``torch.autograd.forward_ad``): the op is linear in the input and in the weight
    (the folds of every padding mode are linear), so the output's tangent is the op on the input's
    tangent plus the op on the weight's, plus the bias's, each computed by the op itself."""
    (x, dx), (w, dw) = forward_ad.unpack_dual(input), forward_ad.unpack_dual(weight)
    b, db = forward_ad.unpack_dual(bias) if bias is not None else (None, None)
    y = _dispatch(x, w, b, conv, padding_mode, backend)
    tangents = [_dispatch(dx, w, None, conv, padding_mode, backend) if dx is not None else None,
                _dispatch(x, dw, None, conv, padding_mode, backend) if dw is not None else None,
                db.reshape(-1, 1).expand_as(y) if db is not None else None]  # (C, 1): batched or not
    found = [t for t in tangents if t is not None]
    if not found:
        return y
    return forward_ad.make_dual(y, functools.reduce(torch.add, found))


def _eager_route(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Any:
    """The cheapest correct way to run an eager call: the implementation itself when there is
    nothing to record, :class:`_EagerAutograd` when only autograd must record, else the op.

    The shortcuts apply only to plain tensors (no FakeTensor or other subclass) without a
    dispatch or torch-function mode (FX tracing, ``torch.device`` contexts, FakeTensorMode),
    a ``torch.func`` transform or the profiler, which need the registered op. The
    dispatcher's Python layers cost 30-170 us a call, its autograd wrapper about 90 us more.
    """
    if type(input) not in _PLAIN_TYPES or type(weight) not in _PLAIN_TYPES or (
            bias is not None and type(bias) not in _PLAIN_TYPES):
        return _OP
    if (torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None
            or torch.autograd._profiler_enabled()):
        return _OP
    if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad or (
            bias is not None and bias.requires_grad)):
        return _EagerAutograd.apply
    return _implementation


# -- checks shared by the implementation and the fake ------------------------------------------


def _check_tensors(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   params: ConvTranspose1dParams) -> str:
    """Check ranks, channels, dtypes and devices in PyTorch's words; return the dtype name."""
    if input.dim() != 3:
        raise ValueError(f"{OP}: the op takes a 3-D (batched) input, got input.shape={tuple(input.shape)}")
    if input.shape[1] != params.in_channels:
        raise ValueError(
            f"{OP}: given transposed=1, weight of size {list(weight.shape)}, expected "
            f"input{list(input.shape)} to have {params.in_channels} channels, but got "
            f"{input.shape[1]} channels instead")
    dtype = check_dtype(input.dtype)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != input.dtype:
            raise TypeError(f"{OP}: {name} must have the input's dtype {dtype}, got {name}.dtype={t.dtype}")
        if t.device != input.device:
            raise ValueError(f"{OP}: {name} must be on the input's device {input.device}, "
                             f"got {name}.device={t.device}")
    if bias is not None and tuple(bias.shape) != (params.out_channels,):
        raise ValueError(f"{OP}: bias must have shape ({params.out_channels},), "
                         f"got bias.shape={tuple(bias.shape)}")
    return dtype


def _params(weight: torch.Tensor, has_bias: bool, conv: list[int], padding_mode: str) -> ConvTranspose1dParams:
    if len(conv) != 5:
        raise ValueError(f"{OP}: conv must be [stride, padding, output_padding, groups, dilation], got conv={conv}")
    if weight.dim() != 3:
        raise ValueError(f"{OP}: weight must be 3-D (in_channels, out_channels/groups, kernel_size), "
                         f"got weight.shape={tuple(weight.shape)}")
    stride, padding, output_padding, groups, dilation = conv
    groups = ConvTranspose1dParams.check_positive_size("groups", groups)
    return ConvTranspose1dParams(weight.shape[0], weight.shape[1] * groups, weight.shape[2], stride,
                                 padding, output_padding, groups, has_bias, dilation, padding_mode)


def _workload(input, weight, bias, conv, padding_mode) -> Workload:
    """The call's workload (a batch of 0 is checked as a batch of 1); raises on any bad argument."""
    params = _params(weight, bias is not None, conv, padding_mode)
    dtype = _check_tensors(input, weight, bias, params)
    return Workload(params, max(1, input.shape[0]), input.shape[2], dtype)


# -- the implementation ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What a call of one signature needs: the output's shape, the module and its function
    (None for a batch of 0), and whether it runs on CUDA."""

    output_shape: tuple[int, int, int]
    compiled: Optional[CompiledConvTranspose1d] = None
    func: Any = None
    cuda: bool = False
    packed: bool = False  # main reads the weight packed (the module's weight_packed)


_PLANS: dict[tuple, _Plan] = {}
_PLANS_LOCK = threading.Lock()


def _plan(input, weight, bias, conv, padding_mode, backend) -> _Plan:
    """The plan for this signature, checked and compiled on its first call only."""
    key = (input.shape, input.dtype, input.device, weight.shape, weight.dtype, weight.device,
           None if bias is None else (bias.shape, bias.dtype, bias.device),
           tuple(conv), padding_mode, backend)
    found = _PLANS.get(key)
    if found is None:
        found = _make_plan(input, weight, bias, conv, padding_mode, backend)
        with _PLANS_LOCK:
            found = _PLANS.setdefault(key, found)
    return found


def _make_plan(input, weight, bias, conv, padding_mode, backend) -> _Plan:
    workload = _workload(input, weight, bias, conv, padding_mode)
    target, logs, prepack_weight = _parse_backend(backend)
    kind = resolve_target(target).kind.name
    if input.device.type != _TORCH_DEVICE[kind]:
        raise ValueError(f"{OP}: target {kind!r} runs on {_TORCH_DEVICE[kind]} tensors, "
                         f"got input.device={input.device}")
    shape = (input.shape[0], workload.params.out_channels, workload.out_length)
    if input.shape[0] == 0:  # PyTorch's answer to a batch of 0: an empty output, nothing compiled
        return _Plan(shape)
    # One module per layer, for every batch and length (module_workload).
    module = module_workload(workload.params, workload.batch, workload.length, workload.dtype, target)
    compiled = _MODULES.get(module, target, logs, prepack_weight=prepack_weight)
    func, _ = compiled.function_for(workload.batch, workload.length)
    return _Plan(shape, compiled, func, kind == "cuda", compiled.weight_packed)


def weights_for(compiled: Any, packed: bool, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> list[Any]:
    """``[weight(, bias)]`` as ``compiled``'s functions read them (the weight packed when ``packed``),
    made once per change of each tensor (the process's caches, :mod:`._tensors`)."""
    weight_arg = _PACKED.get(weight, compiled) if packed else _COPIES.get(weight)
    return [weight_arg] if bias is None else [weight_arg, _COPIES.get(bias)]


def _run(plan: _Plan, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    y = aligned_empty(input, plan.output_shape)
    args = (to_tvm(input), *weights_for(plan.compiled, plan.packed, weight, bias), to_tvm(y))
    if plan.cuda:  # untested on hardware: run on torch's current stream
        with _tvm_stream(input.device, torch.cuda.current_stream(input.device).cuda_stream):
            plan.func(*args)
    else:
        plan.func(*args)
    return y


def _tvm_stream(device: torch.device, stream: int) -> Any:
    """TVM's current stream for ``device`` set to ``stream`` while the context lasts."""
    import tvm_ffi

    return tvm_ffi.use_raw_stream(tvm.cuda(device.index or 0), stream)


def _implementation(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], conv: list[int],
                    padding_mode: str, backend: str) -> torch.Tensor:
    """The batched op: input (batch, in_channels, length) -> (batch, out_channels, output length)."""
    plan = _plan(input, weight, bias, conv, padding_mode, backend)
    if plan.func is None:
        return input.new_empty(plan.output_shape)
    return _run(plan, input, weight, bias)


@torch.library.custom_op("tvm_convt::conv_transpose1d", mutates_args=())
def _conv_transpose1d_op(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    conv: list[int],
    padding_mode: str,
    backend: str,
) -> torch.Tensor:
    """The batched op: input (batch, in_channels, length) -> (batch, out_channels, output length)."""
    return _implementation(input, weight, bias, conv, padding_mode, backend)


@_conv_transpose1d_op.register_fake
def _conv_transpose1d_fake(input, weight, bias, conv, padding_mode, backend):
    """The output's shape; with static sizes, every check of a real call first."""
    if all(isinstance(s, int) for s in (*input.shape, *weight.shape)):
        _workload(input, weight, bias, conv, padding_mode)
    elif all(isinstance(s, int) for s in weight.shape):
        # A symbolic length: the layer's shortest input as an integer bound, which torch.export turns
        # into a Dim suggestion as for PyTorch's own layer (the output length's own bound is a fraction
        # its solver cannot state).
        shortest = _params(weight, bias is not None, conv, padding_mode).min_length
        torch._check(input.shape[2] >= shortest,
                     lambda: f"{OP}: the input's length must be at least {shortest} for this layer")
    stride, padding, output_padding, groups, dilation = conv
    length = ((input.shape[2] - 1) * stride - 2 * padding + dilation * (weight.shape[2] - 1)
              + output_padding + 1)
    return input.new_empty((input.shape[0], weight.shape[1] * groups, length))


# -- autograd ----------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, conv, padding_mode, _ = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv, ctx.padding_mode, ctx.has_bias = conv, padding_mode, bias is not None


def _backward(ctx, grad: torch.Tensor):
    """Gradients with respect to input, weight and bias, by PyTorch's convolution kernels.

    The forward is the padding-free transposed convolution followed by the adjoint of
    ``F.pad``; so the output gradient is padded in the same mode (the adjoint's adjoint),
    then goes through the transposed convolution's backward with padding 0.
    """
    input, weight = ctx.saved_tensors
    stride, padding, output_padding, groups, dilation = ctx.conv
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    conv_padding = padding
    if ctx.padding_mode != "zeros" and padding:
        grad_u, conv_padding = F.pad(grad, (padding, padding), mode=ctx.padding_mode), 0
    else:  # zeros: the crop's adjoint is zero padding, which the backward itself applies
        grad_u = grad
    grad_input = grad_weight = grad_bias = None
    if need_input or need_weight:
        grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_u, input, weight, None, [stride], [conv_padding], [dilation], True,
            [output_padding], groups, [need_input, need_weight, False])
    if ctx.has_bias and need_bias:
        grad_bias = grad.sum((0, 2))
    return grad_input, grad_weight, grad_bias, None, None, None


_conv_transpose1d_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerAutograd(torch.autograd.Function):
    """The op's forward and autograd formula for eager calls, past the dispatcher.

    ``forward`` takes ``ctx`` itself: with a separate ``setup_context``, ``apply`` binds
    the arguments through ``inspect.signature`` on every call (about 30 us)."""

    @staticmethod
    def forward(ctx, input, weight, bias, conv, padding_mode, backend):
        _setup_context(ctx, (input, weight, bias, conv, padding_mode, backend), None)
        return _implementation(input, weight, bias, conv, padding_mode, backend)

    @staticmethod
    def backward(ctx, grad):
        return _backward(ctx, grad)


# The overload itself: calling it skips the packet's overload lookup on every call.
_OP = torch.ops.tvm_convt.conv_transpose1d.default
