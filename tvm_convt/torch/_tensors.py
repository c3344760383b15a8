"""Torch tensors handed to compiled modules through DLPack, shared rather than copied.

TVM imports memory through DLPack only when it is contiguous and 64-byte aligned
(its generated code assumes that alignment); torch's allocators give both for fresh
tensors, so copies are made only for strided views or unaligned offsets.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
import tvm

from ..runtime import ALIGNMENT


def aligned_empty(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device,
    whose data starts on a 64-byte boundary."""
    out = like.new_empty(shape)
    if out.data_ptr() % ALIGNMENT == 0:
        return out
    # A custom allocator gave less: over-allocate and start at the first aligned element.
    itemsize = out.element_size()
    count = math.prod(shape)
    raw = like.new_empty(count + ALIGNMENT // itemsize)
    start = (-raw.data_ptr() % ALIGNMENT) // itemsize
    return raw[start:start + count].view(shape)


def shareable(t: torch.Tensor) -> bool:
    """Whether TVM can read ``t``'s memory as it is."""
    return t.is_contiguous() and t.data_ptr() % ALIGNMENT == 0


def aligned_copy(t: torch.Tensor) -> torch.Tensor:
    out = aligned_empty(t, tuple(t.shape))
    out.copy_(t.detach())
    return out


def _import(t: torch.Tensor) -> tvm.runtime.Tensor:
    """A TVM tensor sharing ``t``'s memory (``t`` shareable)."""
    try:  # TVM's FFI takes torch tensors through DLPack's C exchange, requires_grad or not
        return tvm.runtime.from_dlpack(t)
    except (BufferError, RuntimeError):  # Tensor.__dlpack__ refuses tensors that require grad
        return tvm.runtime.from_dlpack(t.detach())


def to_tvm(t: torch.Tensor) -> tvm.runtime.Tensor:
    """``t`` as a TVM tensor on its own device: shared when possible, else an aligned copy."""
    return _import(t if shareable(t) else aligned_copy(t))


# Optimizer steps taken in this process. A fused or foreach optimizer (Adam(fused=True)) writes the
# parameters in its own kernels without moving their version counters: every step counts here.
_OPTIMIZER_STEPS = [0]


def _count_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


def _stamp(t: torch.Tensor) -> tuple[int, int, int] | None:
    """What must stay the same for a value made from ``t`` to stay valid: its version counter, its
    data pointer and the optimizer steps taken; None for an inference tensor, which has no version
    counter (and may change in place inside inference mode): values made from it are never kept."""
    if t.is_inference():
        return None
    return (t._version, t.data_ptr(), _OPTIMIZER_STEPS[0])


class _StampedCache:
    """Values made from torch tensors, kept per key and remade when the tensor's version
    counter or data pointer moves, or an optimizer steps (:func:`_stamp`). An entry holds the
    value, not the tensor, so it goes when the tensor does."""

    def __init__(self) -> None:
        self._entries: dict[object, tuple[weakref.ref, tuple[int, int, int], tvm.runtime.Tensor]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: object, t: torch.Tensor, make) -> tvm.runtime.Tensor:
        """The value kept for ``key`` while ``t`` is unchanged, else ``make()``, kept."""
        stamp = _stamp(t)
        if stamp is None:
            return make()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0]() is t and entry[1] == stamp:
            return entry[2]
        value = make()
        ref = weakref.ref(t, functools.partial(self._drop, key))
        with self._lock:
            self._entries[key] = (ref, stamp, value)
        return value

    def _drop(self, key: object, ref: weakref.ref) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class ParameterCopies(_StampedCache):
    """TVM tensors for weights and biases, made once per change of the tensor.

    A shareable tensor is handed over as it is on every call (the module reads its
    memory, so in-place updates are seen). Any other gets an aligned copy, kept per
    tensor object and remade when the tensor's version counter or data pointer moves
    (in-place ops, ``load_state_dict`` and ``.data =`` all move one of them) or an
    optimizer steps.
    """

    def get(self, t: torch.Tensor) -> tvm.runtime.Tensor:
        if shareable(t):
            return _import(t)
        return self._cached(id(t), t, lambda: _import(aligned_copy(t)))


class PackedWeights(_StampedCache):
    """Packed copies of weights for modules that read the weight packed (``prepack_weight``),
    made once per change of the tensor: kept per (tensor object, block) and remade when its
    version counter or data pointer moves or an optimizer steps, as :class:`ParameterCopies` does
    for its copies.

    An in-place edit through ``.data`` outside an optimizer moves none of them, so it is not seen:
    the reason this is opt-in.
    """

    def get(self, t: torch.Tensor, compiled) -> tvm.runtime.Tensor:
        """``t`` packed for ``compiled`` (a CPU module with ``weight_packed``)."""
        key = (id(t), compiled.metadata.weight_block)
        return self._cached(key, t, lambda: compiled.prepare_weight(t.detach().numpy()))
