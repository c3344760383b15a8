"""Timing that several modules share: interleaved medians, and a layer's inputs.

Used by the benchmark (tvm_convt against PyTorch) and by tuning, which re-measures
its best records against each other before keeping one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from .params import Workload


def interleaved_medians(
    fns: dict[str, Callable[[], object]], *, rounds: int = 15, number: int = 5, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin after a warm-up
    (:func:`interleaved_samples`)."""
    samples = interleaved_samples(fns, rounds=rounds, number=number, warmup=warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


def interleaved_samples(
    fns: dict[str, Callable[[], object]], *, rounds: int = 15, number: int = 5, warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each function in each round, measured round-robin after a warm-up.

    Each round runs every function untimed for at least 20 ms, then ``number``
    times back to back, and records the mean; rounds alternate between functions
    so that frequency scaling, cache state and background load affect all alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(settled_mean(fn, number))
    return samples


def settled_mean(fn: Callable[[], object], number: int, settle: float = 0.02) -> float:
    """Mean seconds of ``number`` calls of ``fn``, after running it untimed for ``settle`` seconds:
    after a rival's turn, thread pools may be asleep, another library's threads may still spin,
    and caches hold the rival's data."""
    end = time.perf_counter() + settle
    fn()
    while time.perf_counter() < end:
        fn()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def layer_inputs(workload: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """x (batch, in_channels, L_in) from N(0, 1); weight and bias from PyTorch's default
    initialisation bound, so that outputs are of order one whatever the layer."""
    p = workload.params
    rng = np.random.default_rng(seed)
    bound = math.sqrt(p.groups / (p.out_channels * p.kernel_size))
    x = rng.standard_normal(workload.input_shape).astype(workload.dtype)
    weight = rng.uniform(-bound, bound, p.weight_shape).astype(workload.dtype)
    bias = rng.uniform(-bound, bound, p.out_channels).astype(workload.dtype) if p.bias else None
    return x, weight, bias
