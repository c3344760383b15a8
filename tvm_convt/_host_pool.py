"""Host memory for large outputs, used again once the arrays made on it are gone.

glibc maps every allocation over 32 MiB afresh and unmaps it when freed, so each call that
returns such an output has the kernel zero its pages on first touch: 7.5 % of hifigan_v1_up1's
call at 16x its length (a 45 MB output; docs/performance.md). Below that size glibc keeps freed
memory itself. :func:`pooled_empty` hands out windows of buffers it keeps while idle, up to
:data:`IDLE_BYTES` in all; a buffer goes back to the pool when the last array on it goes away.
"""

from __future__ import annotations

import math
import threading

import numpy as np

# Outputs of at least this many bytes come from the pool (glibc's largest mmap threshold).
POOLED_BYTES = 32 << 20
# At most this many bytes of idle buffers are kept; a buffer freed beyond it is unmapped.
IDLE_BYTES = 256 << 20


class _Pool:
    """Idle buffers by size, each a uint8 array ``alignment`` bytes longer than its windows."""

    def __init__(self) -> None:
        self._idle: dict[int, list[np.ndarray]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            buffers = self._idle.get(nbytes)
            if buffers:
                self._idle_bytes -= nbytes
                return buffers.pop()
        return np.empty(nbytes, np.uint8)

    def give(self, raw: np.ndarray) -> None:
        with self._lock:
            if self._idle_bytes + raw.nbytes <= IDLE_BYTES:
                self._idle.setdefault(raw.nbytes, []).append(raw)
                self._idle_bytes += raw.nbytes

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes


POOL = _Pool()


class _Lease:
    """The exporter of one window of a pooled buffer: NumPy keeps it as the base of the arrays
    made on the window, and it gives the buffer back when the last of them goes."""

    def __init__(self, raw: np.ndarray, start: int, nbytes: int, pool: _Pool) -> None:
        self._raw, self._pool = raw, pool
        self.__array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "version": 3,
                                    "data": (raw.ctypes.data + start, False)}

    def __del__(self) -> None:
        self._pool.give(self._raw)


def pooled_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int) -> np.ndarray | None:
    """An uninitialised C-contiguous array of ``shape`` whose data starts on an ``alignment``
    boundary, on a pooled buffer; None when it is smaller than :data:`POOLED_BYTES`."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < POOLED_BYTES:
        return None
    raw = POOL.take(nbytes + alignment)
    start = -raw.ctypes.data % alignment
    window = np.asarray(_Lease(raw, start, nbytes, POOL))
    return window.view(dtype).reshape(shape)
