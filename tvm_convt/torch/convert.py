"""``convert`` and ``revert``: a model's ``torch.nn.ConvTranspose1d`` layers to and from
:class:`tvm_convt.torch.ConvTranspose1d`, in place."""

from __future__ import annotations

from pathlib import Path

import torch

from ..params import OP
from ..target import TargetLike
from .module import ConvTranspose1d, backend_attributes

__all__ = ["convert", "revert"]


def _named_layers(model: torch.nn.Module, kind: type) -> list[tuple[str, torch.nn.Module]]:
    """Every submodule (the model included) whose class is exactly ``kind``, once each."""
    return [(name or "<model>", m) for name, m in model.named_modules() if type(m) is kind]


def convert(model: torch.nn.Module, *, target: TargetLike = "llvm",
            logs: str | Path | None = None, prepack_weight: bool = False) -> torch.nn.Module:
    """Make every ``torch.nn.ConvTranspose1d`` of ``model`` a :class:`ConvTranspose1d`; return ``model``.

    In place: each layer keeps its identity and so its parameters (the same Parameter
    objects), buffers, hooks (its own and its parents'), train/eval mode, device and dtype;
    only its class changes. Subclasses of ``torch.nn.ConvTranspose1d`` (a parametrized
    layer, say) are left as they are, since their own forward may differ. Every layer is
    checked (parameters, target) before any is changed. ``copy.deepcopy`` the model first
    to keep the original. ``prepack_weight`` is :class:`ConvTranspose1d`'s (for inference:
    in-place edits through ``.data`` are then not seen).
    """
    layers = _named_layers(model, torch.nn.ConvTranspose1d)
    # Raises before any change.
    added = [backend_attributes(layer, target, logs, prepack_weight) for _, layer in layers]
    for (_, layer), attributes in zip(layers, added):
        layer.__class__ = ConvTranspose1d
        layer.__dict__.update(attributes)
    return model


def revert(model: torch.nn.Module) -> torch.nn.Module:
    """Make every :class:`ConvTranspose1d` of ``model`` a plain ``torch.nn.ConvTranspose1d``
    again, in place, as :func:`convert` made them; return ``model``.

    Only zero padding exists in PyTorch's layer: a layer with another ``padding_mode``
    raises ValueError, before any layer is changed.
    """
    layers = _named_layers(model, ConvTranspose1d)
    for name, layer in layers:
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"{OP}: revert needs padding_mode='zeros', the only mode torch.nn.ConvTranspose1d "
                f"has, got padding_mode={layer.padding_mode!r} in {name}")
    for _, layer in layers:
        for attr in backend_attributes(layer, "llvm", None):
            layer.__dict__.pop(attr, None)
        layer.__class__ = torch.nn.ConvTranspose1d
    return model
