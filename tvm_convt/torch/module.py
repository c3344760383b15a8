"""``tvm_convt.torch.ConvTranspose1d``: PyTorch's layer, computed by the compiled module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..params import OP, ConvTranspose1dParams
from ..target import TargetLike, resolve_target
from . import op

__all__ = ["ConvTranspose1d", "backend_attributes"]


def layer_params(layer: torch.nn.ConvTranspose1d) -> ConvTranspose1dParams:
    """A torch layer's parameters, checked (a bad layer raises here)."""
    return ConvTranspose1dParams(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                 layer.padding, layer.output_padding, layer.groups, layer.bias is not None,
                                 layer.dilation, layer.padding_mode)


def backend_attributes(layer: torch.nn.ConvTranspose1d, target: TargetLike,
                       logs: str | Path | None, prepack_weight: bool = False) -> dict[str, Any]:
    """The attributes a converted layer adds, after checking its parameters and the target
    (so that a bad layer fails when built or converted, not at its first call)."""
    if not isinstance(prepack_weight, bool):
        raise TypeError(f"{OP}: prepack_weight must be a bool, got prepack_weight={prepack_weight!r}")
    layer_params(layer)
    resolve_target(target)
    # _backend: the op's string form of target and logs, made once rather than per call.
    return {"_target": target, "_logs": None if logs is None else str(logs),
            "_prepack_weight": prepack_weight, "_backend": op.backend_arg(target, logs, prepack_weight)}


class ConvTranspose1d(torch.nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` with the same constructor, parameters and ``state_dict``,
    whose forward runs a compiled TVM module (on CPUs one for every batch and length; on CUDA one
    per input shape; cached).

    The input is (batch, in_channels, length) or (in_channels, length), the output
    (batch, out_channels, output length) or (out_channels, output length); the weight is
    (in_channels, out_channels / groups, kernel_size) and the bias (out_channels,).
    ``padding_mode`` may be ``reflect``, ``replicate`` or ``circular`` too, which PyTorch's
    transposed layers refuse: see :class:`tvm_convt.ConvTranspose1dParams` for their
    definition. ``target`` is ``"llvm"`` (this CPU), ``"cuda"`` or a JSON dict, and the
    parameters must live on its device; ``logs`` is where to look for tuning records.
    Gradients flow to input, weight and bias (computed by PyTorch's convolution kernels).

    ``prepack_weight=True`` (for inference) lets a CPU module read the weight packed once per
    change of it (``cpu-gemm`` layers; 15-18 % on HiFi-GAN's first layer) instead of in every
    call. A change is seen through the parameter's version counter and data pointer, which
    in-place ops, optimizer steps, ``load_state_dict`` and assignment move but an in-place edit
    through ``.data`` does not: such an edit is missed.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: int | tuple[int] = 0,
        output_padding: int | tuple[int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int] = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        target: TargetLike = "llvm",
        logs: str | Path | None = None,
        prepack_weight: bool = False,
    ) -> None:
        # PyTorch's constructor refuses every padding mode but zeros for transposed layers,
        # so the layer is built with zeros and given its mode once the parameters are checked.
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                         groups, bias, dilation, "zeros", device, dtype)
        self.padding_mode = padding_mode
        self.__dict__.update(backend_attributes(self, target, logs, prepack_weight))

    @property
    def target(self) -> TargetLike:
        """Where the layer runs (assigning one checks it and takes effect at the next call)."""
        return self._target

    @target.setter
    def target(self, value: TargetLike) -> None:
        self.__dict__.update(backend_attributes(self, value, self._logs, self._prepack_weight))

    @property
    def logs(self) -> str | None:
        """The tuning-logs folder looked up first when compiling (None: the default)."""
        return self._logs

    @logs.setter
    def logs(self, value: str | Path | None) -> None:
        self.__dict__.update(backend_attributes(self, self._target, value, self._prepack_weight))

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 1, self.dilation)
        conv = [self.stride[0], self.padding[0], output_padding[0], self.groups, self.dilation[0]]
        return op.call(input, self.weight, self.bias, conv, self.padding_mode, self._backend)

    def __prepare_scriptable__(self) -> None:
        # torch.jit.script asks every module of a model this before compiling it.
        raise op.refuse_torchscript("torch.jit.script of a model with a tvm_convt layer")

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.target == "llvm" else f"{text}, target={self.target!r}"
