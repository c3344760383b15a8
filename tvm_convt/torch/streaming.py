"""``tvm_convt.torch.StreamingConvTranspose1d``: PyTorch's layer fed chunk by chunk (issue #23)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..params import OP, ConvTranspose1dParams
from ..runtime.streams import ConvTranspose1dStream, StreamGeometry, check_stream_target, open_stream
from ..target import TargetLike
from .module import layer_params
from .op import refuse_torchscript, weights_for

__all__ = ["StreamingConvTranspose1d"]


class StreamingConvTranspose1d(torch.nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` (same constructor, parameters and ``state_dict``) that computes a
    stream: ``forward`` (or :meth:`push`) takes chunks of (batch, in_channels, T), any T >= 1, and
    returns the output samples no later chunk can change; :meth:`flush` returns the rest;
    :meth:`reset` starts again. Every push and the flush, concatenated, equal the layer's output on
    the whole signal, or with ``causal`` Moshi's and EnCodec's causal convention (no padding; of the
    ``dilation*(kernel_size-1)+1-stride`` samples the chunks overlap by, ``ceil(overlap *
    trim_right_ratio)`` trimmed from the end and the rest from the start: with ratio 1 every push
    returns ``stride`` samples per input sample, as Moshi's ``StreamingConvTranspose1d`` does).

    Inference only: the output carries no gradient. CPU targets. The stream's position and partial
    sums are the module's extra state, so ``state_dict``, ``load_state_dict`` and ``copy.deepcopy``
    carry a stream mid-way. Padding modes: zeros, reflect and replicate (circular wraps the end onto
    the start, so it cannot stream).
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
        causal: bool = False,
        trim_right_ratio: float = 1.0,
        target: TargetLike = "llvm",
        logs: str | Path | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                         groups, bias, dilation, "zeros", device, dtype)
        self.padding_mode = padding_mode
        if not isinstance(causal, bool):
            raise TypeError(f"{OP}: causal must be a bool, got causal={causal!r}")
        check_stream_target(target)
        StreamGeometry.of(self._params(), causal, trim_right_ratio)  # refused now, not at the first push
        self.causal, self.trim_right_ratio, self.target = causal, trim_right_ratio, target
        self.logs = None if logs is None else str(logs)
        self._stream: ConvTranspose1dStream | None = None

    def _params(self) -> ConvTranspose1dParams:
        return layer_params(self)

    def _engine(self, batch: int) -> ConvTranspose1dStream:
        """The stream of ``batch`` rows (made at the first push after a reset; its kernel is cached)."""
        if self._stream is None:
            dtype = str(self.weight.dtype).removeprefix("torch.")
            self._stream = open_stream(self._params(), dtype, self.target, self._weight_source, batch=batch,
                                       causal=self.causal, trim_right_ratio=self.trim_right_ratio, logs=self.logs)
        return self._stream

    def _weight_source(self, kernel: Any) -> Any:
        """The parameters as the kernel reads them, from the op's caches: prepared again when one of them
        changes (version counter, data pointer or an optimizer step), as the converted layer's are."""
        in_kernel = kernel.params.bias

        def source() -> tuple[list[Any], np.ndarray | None]:
            weight, bias = self.weight, self.bias
            prepared = weights_for(kernel, kernel.weight_packed, weight, bias if in_kernel else None)
            return prepared, None if bias is None else bias.detach().numpy()

        return source

    def push(self, input: torch.Tensor) -> torch.Tensor:
        """The output samples that this chunk makes final."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{OP}: input must be a torch.Tensor, got {type(input).__name__}")
        batch = input.shape[0] if input.dim() == 3 else 1
        with torch.no_grad():
            return self._engine(batch).push(input.detach())

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        return self.push(input)

    def flush(self) -> torch.Tensor:
        """The rest of the output; the stream then ends until :meth:`reset`."""
        if self._stream is None:
            raise ValueError(f"{OP}: nothing was pushed: push at least {self._params().min_length} input samples first")
        return self._stream.flush()

    def reset(self, rows: Any = None) -> None:
        """Start again (every row: the next push may have another batch), or only ``rows``."""
        if rows is None:
            self._stream = None
        elif self._stream is not None:
            self._stream.reset(rows)

    def __deepcopy__(self, memo: dict) -> StreamingConvTranspose1d:
        """A copy with its own parameters and a stream at the same point that reads them (not ours)."""
        twin = self.__class__.__new__(self.__class__)
        memo[id(self)] = twin
        for name, value in self.__dict__.items():
            twin.__dict__[name] = None if name == "_stream" else copy.deepcopy(value, memo)
        if self._stream is not None:
            twin.set_extra_state(self.get_extra_state())
        return twin

    def get_extra_state(self) -> dict[str, Any]:
        if self._stream is None:
            return {}
        state = self._stream.state()
        # As tensors: torch.load's weights_only mode reads tensors and plain values, not NumPy arrays.
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            self._stream = None
            return
        self._stream = None
        self._engine(int(state["batch"])).load_state(
            {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()})

    def __prepare_scriptable__(self) -> None:
        raise refuse_torchscript("torch.jit.script of a model with a tvm_convt stream")

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return f"{text}, causal=True, trim_right_ratio={self.trim_right_ratio}" if self.causal else text
