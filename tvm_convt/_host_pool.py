"""Host memory for large outputs, used again once the arrays made on it are gone.

glibc maps every allocation over 32 MiB afresh and unmaps it when freed, so each call that
returns such an output has the kernel zero its pages on first touch: 7.5 % of hifigan_v1_up1's
call at 16x its length (a 45 MB output; docs/performance.md). Below that size glibc keeps freed
memory itself. :func:`pooled_empty` hands out windows of buffers it keeps while idle, up to
:data:`IDLE_BYTES` in all (the oldest go first); a buffer goes back to the pool when the last
array on it goes away.
"""

from __future__ import annotations

import collections
import math
import os
import threading

import numpy as np

# Outputs of at least this many bytes come from the pool (glibc's largest mmap threshold).
POOLED_BYTES = 32 << 20
# At most this many bytes of idle buffers are kept; beyond it the oldest are unmapped.
IDLE_BYTES = 256 << 20


class _Pool:
    """Idle buffers, oldest first. A finalizer only appends to ``_returned`` (a deque, safe
    without the lock, so a collection inside a locked section cannot deadlock); the buffers
    returned are moved to the idle list under the lock, by ``take`` or by the finalizer when
    the lock is free, and the oldest idle ones are dropped beyond :data:`IDLE_BYTES`."""

    def __init__(self) -> None:
        self._idle: list[np.ndarray] = []
        self._idle_bytes = 0
        self._returned: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            self._settle()
            for i in range(len(self._idle) - 1, -1, -1):  # the most recently returned first
                if self._idle[i].nbytes == nbytes:
                    self._idle_bytes -= nbytes
                    return self._idle.pop(i)
        return np.empty(nbytes, np.uint8)

    def give(self, raw: np.ndarray) -> None:
        self._returned.append(raw)
        if self._lock.acquire(blocking=False):
            try:
                self._settle()
            finally:
                self._lock.release()

    def _settle(self) -> None:
        """Move the returned buffers to the idle list and drop the oldest beyond the bound."""
        while self._returned:
            raw = self._returned.popleft()
            self._idle.append(raw)
            self._idle_bytes += raw.nbytes
        while self._idle_bytes > IDLE_BYTES:
            self._idle_bytes -= self._idle.pop(0).nbytes

    @property
    def idle_bytes(self) -> int:
        with self._lock:
            self._settle()
            return self._idle_bytes


POOL = _Pool()


def _reset_after_fork() -> None:
    # A child must not inherit the lock held, nor the parent's idle buffers' bookkeeping.
    global POOL
    POOL = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class _Lease:
    """The exporter of one window of a pooled buffer: NumPy keeps it as the base of the arrays
    made on the window, and it gives the buffer back when the last of them goes."""

    def __init__(self, raw: np.ndarray, start: int, nbytes: int, pool: _Pool) -> None:
        self._raw, self._pool = raw, pool
        self.__array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "version": 3,
                                    "data": (raw.ctypes.data + start, False)}

    def __del__(self) -> None:
        try:
            self._pool.give(self._raw)
        except Exception:  # noqa: BLE001 - at interpreter shutdown the module may be half gone
            pass


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
