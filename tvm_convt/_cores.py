"""The cores TVM's thread pool should use, found without importing TVM (the package's import runs
:func:`use_all_cores`)."""

from __future__ import annotations

import os


def host_cores() -> int:
    """Physical cores this process may run on: the threads a compute-bound kernel wants."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    import psutil

    physical = psutil.cpu_count(logical=False) or usable
    return max(1, min(usable, physical))


def use_all_cores() -> None:
    """Give TVM's CPU thread pool one thread per physical core, unless the user chose.

    On x86 TVM's runtime starts half as many threads as logical CPUs, assuming
    hyper-threading; on a machine without it (a 2-vCPU VM, say) that is half the
    cores: measured here, 88 GFLOP/s with 1 thread against 166 with 2 on the same
    GEMM. TVM reads ``TVM_NUM_THREADS`` when its pool first starts, so this must
    run before any TVM CPU kernel does; child processes (MetaSchedule's
    measuring workers) inherit it.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))
