"""Large outputs come from host buffers the pool keeps between calls (tvm_convt._host_pool): a
buffer is used again only once every array on it is gone, and the idle ones stay bounded."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import tvm_convt
from tvm_convt import _host_pool
from tvm_convt.params import ConvTranspose1dParams
from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, random_inputs

P = ConvTranspose1dParams
LAYER = P(16, 8, 16, stride=8, padding=4)
LENGTH = 40  # output (2, 8, 320) float32: 20 KiB


@pytest.fixture
def pool(monkeypatch):
    """A fresh pool that takes outputs from 4 KiB on."""
    fresh = _host_pool._Pool()
    monkeypatch.setattr(_host_pool, "POOL", fresh)
    monkeypatch.setattr(_host_pool, "POOLED_BYTES", 4096)
    return fresh


@pytest.fixture(scope="module")
def compiled():
    return tvm_convt.compile(LAYER, batch=2, length=LENGTH, tuned=False)


def _inputs(seed):
    x, w, b = random_inputs(LAYER, 2, LENGTH, "float32", seed=seed)
    return x, w, b, conv_transpose1d_reference(x, w, b, LAYER)


def test_a_freed_output_is_used_again_and_a_live_one_is_not(pool, compiled):
    x1, w, b, ref1 = _inputs(1)
    x2, _, _, _ = _inputs(2)
    first = compiled(x1, w, b)
    assert first.ctypes.data % 64 == 0 and first.flags.writeable and first.flags.c_contiguous
    address = first.ctypes.data
    del first
    gc.collect()
    assert pool.idle_bytes > 0
    again = compiled(x1, w, b)
    assert again.ctypes.data == address and pool.idle_bytes == 0
    assert_close(again, ref1, "float32")
    kept = again[1]  # a view keeps the buffer leased
    del again
    other = compiled(x2, w, b)
    assert other.ctypes.data != address
    assert_close(kept, ref1[1], "float32")  # not overwritten by the call made meanwhile


def test_small_outputs_are_not_pooled(monkeypatch, pool, compiled):
    monkeypatch.setattr(_host_pool, "POOLED_BYTES", 1 << 30)
    x, w, b, _ = _inputs(1)
    y = compiled(x, w, b)
    del y
    gc.collect()
    assert pool.idle_bytes == 0


def test_idle_buffers_stay_within_the_bound(monkeypatch, pool, compiled):
    monkeypatch.setattr(_host_pool, "IDLE_BYTES", 30000)  # one output's buffer, not two
    x, w, b, _ = _inputs(1)
    outputs = [compiled(x, w, b) for _ in range(3)]
    del outputs
    gc.collect()
    assert 0 < pool.idle_bytes <= 30000


def test_the_oldest_idle_buffers_go_first(monkeypatch, pool, compiled):
    longer = tvm_convt.compile(LAYER, batch=2, length=2 * LENGTH, tuned=False)
    monkeypatch.setattr(_host_pool, "IDLE_BYTES", 45000)  # the longer output's buffer (41 KiB) only
    x, w, b, _ = _inputs(1)
    xl, _, _ = random_inputs(LAYER, 2, 2 * LENGTH, "float32", seed=1)
    compiled(x, w, b)  # dropped at once
    gc.collect()
    short_idle = pool.idle_bytes
    y = longer(xl, w, b)
    address = y.ctypes.data
    del y
    gc.collect()
    assert short_idle < pool.idle_bytes <= 45000  # the newer, longer buffer displaced the older
    assert longer(xl, w, b).ctypes.data == address


def test_an_output_freed_under_the_pools_lock_does_not_deadlock(pool, compiled):
    """A collection can run a lease's finalizer while the same thread holds the pool's lock."""
    x, w, b, _ = _inputs(1)
    y = compiled(x, w, b)

    def drop_while_locked():
        nonlocal y
        with pool._lock:
            del y  # the finalizer runs here, in the thread holding the lock
            gc.collect()

    t = threading.Thread(target=drop_while_locked, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive()
    assert pool.idle_bytes > 0  # settled by the next look at the pool


def test_threads_get_their_own_outputs(pool, compiled):
    cases = [_inputs(seed) for seed in range(4)]
    errors: list[str] = []

    def work(x, w, b, ref):
        for _ in range(20):
            y = compiled(x, w, b)
            if np.max(np.abs(y - ref)) > 1e-4:
                errors.append("wrong output")

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
