"""``convert`` and ``revert``: a model's ``torch.nn.ConvTranspose1d`` layers to and from
:class:`tvm_convt.torch.ConvTranspose1d`, in place."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.nn.utils.parametrize import is_parametrized

from ..params import OP
from ..target import TargetLike
from .module import ConvTranspose1d, backend_attributes

__all__ = ["convert", "revert"]


logger = logging.getLogger("tvm_convt.torch")


def _base_class(m: torch.nn.Module) -> type:
    """The class ``m`` had before ``torch.nn.utils.parametrize`` gave it a subclass of its own (whose
    properties compute the parametrized tensors), or its class."""
    return type(m).__bases__[0] if is_parametrized(m) else type(m)


def _named_layers(model: torch.nn.Module, kind: type) -> list[tuple[str, torch.nn.Module]]:
    """Every submodule (the model included) whose class, before any parametrization, is exactly
    ``kind``, once each."""
    return [(name or "<model>", m) for name, m in model.named_modules() if _base_class(m) is kind]


def _set_base(layer: torch.nn.Module, base: type) -> None:
    """Give ``layer`` the class ``base``; a parametrized layer keeps its parametrized tensors' properties
    in a subclass of ``base`` made as torch's own (what it removes when the parametrization goes)."""
    if not is_parametrized(layer):
        layer.__class__ = base
        return
    own = type(layer)
    namespace = {k: v for k, v in own.__dict__.items() if k not in ("__dict__", "__weakref__")}
    layer.__class__ = type(f"Parametrized{base.__name__}", (base,), namespace)


def _report_left(model: torch.nn.Module) -> None:
    """One warning per transposed layer that stays PyTorch's, and why."""
    for name, m in model.named_modules():
        base = _base_class(m)
        if isinstance(m, torch.nn.ConvTranspose1d) and base not in (torch.nn.ConvTranspose1d, ConvTranspose1d):
            logger.warning("%s: %s (%s) is left to PyTorch: a subclass of torch.nn.ConvTranspose1d, whose forward "
                           "may differ", OP, name or "<model>", base.__name__)


def convert(model: torch.nn.Module, *, target: TargetLike = "llvm",
            logs: str | Path | None = None, prepack_weight: bool = False) -> torch.nn.Module:
    """Make every ``torch.nn.ConvTranspose1d`` of ``model`` a :class:`ConvTranspose1d`; return ``model``.

    In place: each layer keeps its identity and so its parameters (the same Parameter
    objects), buffers, hooks (its own and its parents'), train/eval mode, device and dtype;
    only its class changes. A parametrized layer (``torch.nn.utils.parametrizations.weight_norm``,
    as vocoders ship) is converted and keeps its parametrizations: the forward reads the weight they
    compute. Other subclasses of ``torch.nn.ConvTranspose1d`` are left as they are, since their own
    forward may differ, each with a warning on the ``tvm_convt.torch`` logger. Every layer is
    checked (parameters, target) before any is changed. ``copy.deepcopy`` the model first
    to keep the original. ``prepack_weight`` is :class:`ConvTranspose1d`'s (for inference:
    in-place edits through ``.data`` are then not seen).
    """
    # Layers converted before take this call's options (a second convert does not keep the first's).
    layers = _named_layers(model, torch.nn.ConvTranspose1d) + _named_layers(model, ConvTranspose1d)
    # Raises before any change.
    added = [backend_attributes(layer, target, logs, prepack_weight) for _, layer in layers]
    for (_, layer), attributes in zip(layers, added):
        if _base_class(layer) is not ConvTranspose1d:
            _set_base(layer, ConvTranspose1d)
        layer.__dict__.update(attributes)
    _report_left(model)
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
        _set_base(layer, torch.nn.ConvTranspose1d)
    return model
