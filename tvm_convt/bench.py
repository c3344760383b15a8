"""Timing helpers: interleaved medians, so that rivals share the machine's state."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    fns: dict[str, Callable[[], object]], *, rounds: int = 15, number: int = 5, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin after a warm-up.

    Each round runs every function untimed for at least 20 ms, then ``number``
    times back to back, and records the mean; rounds alternate between functions so that frequency scaling, cache
    state and background load affect all of them alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            # Untimed calls first (one, and at least 20 ms' worth): after a rival's
            # turn, thread pools may be asleep, another library's OpenMP threads may
            # still be spinning, and caches hold the rival's data (measured: 3.5 ms
            # instead of 2.0 ms for the call right after 47 ms of NumPy).
            settle = time.perf_counter() + 0.02
            fn()
            while time.perf_counter() < settle:
                fn()
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)
    return {name: statistics.median(values) for name, values in samples.items()}
