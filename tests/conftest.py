"""Shared test helpers: tolerances, the torch oracle, and a private module cache."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tvm_convt.benchmark import CHECK_TOLERANCE
from tvm_convt.params import ConvTranspose1dParams, numpy_dtype

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the core package must work without torch
    torch = None

# Largest |actual - expected| allowed, relative to max(1, max|expected|). float32 results
# are accumulated in float32 over in_channels/groups * ceil(K/stride) products (at most a
# few thousand here), so about 1e-6 relative error is expected; 1e-5 leaves headroom for
# accumulation order. float64 is held to near its own rounding. The half dtypes accumulate in
# float32 and round once at the output: at most 2**-11 (float16) and 2**-8 (bfloat16) of a
# value; float16 is held to issue #7's 1e-2, bfloat16 to 2e-2, room for two roundings (torch's).
# The library's own checks (bench, run.py --check, the demo) hold results to the same values.
TOLERANCES = CHECK_TOLERANCE


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale if expected.size else 0.0
    assert err <= TOLERANCES[dtype], f"relative error {err:.3e} > {TOLERANCES[dtype]:.0e} ({dtype})"


def torch_conv_transpose1d(x, weight, bias, p: ConvTranspose1dParams) -> np.ndarray:
    """PyTorch's answer in float64: F.conv_transpose1d for zeros, otherwise the gradient
    with respect to z of F.conv1d(F.pad(z, (padding, padding), mode), weight, ...)."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    unbatched = xt.ndim == 2
    if unbatched:
        xt = xt[None]
    wt = torch.from_numpy(np.asarray(weight, dtype=np.float64))
    bt = None if bias is None else torch.from_numpy(np.asarray(bias, dtype=np.float64))
    if p.padding_mode == "zeros":
        y = F.conv_transpose1d(xt, wt, bt, p.stride, p.padding, p.output_padding, p.groups, p.dilation)
    else:
        l_out = p.output_length(xt.shape[-1])
        z = torch.zeros(xt.shape[0], p.out_channels, l_out, dtype=torch.float64, requires_grad=True)
        fwd = F.conv1d(F.pad(z, (p.padding, p.padding), mode=p.padding_mode), wt,
                       stride=p.stride, dilation=p.dilation, groups=p.groups)
        assert fwd.shape == xt.shape, (fwd.shape, xt.shape)
        (y,) = torch.autograd.grad(fwd, z, xt)
        if bt is not None:
            y = y + bt[None, :, None]
    y = y.detach().numpy()
    return y[0] if unbatched else y


needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test session compiles into its own cache and reads its own (empty) tuning
    logs, never the user's."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TVM_CONVT_CACHE", str(path))
    mp.setenv("TVM_CONVT_TUNING_LOGS", str(tmp_path_factory.mktemp("tuning_logs")))
    yield path
    mp.undo()


def random_inputs(p: ConvTranspose1dParams, batch: int | None, length: int, dtype: str, seed: int = 0):
    """x (unbatched when batch is None), weight and bias (None without bias)."""
    rng = np.random.default_rng(seed)
    dtype = numpy_dtype(dtype)  # "bfloat16" is ml_dtypes.bfloat16
    shape = (p.in_channels, length) if batch is None else (batch, p.in_channels, length)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(p.weight_shape).astype(dtype)
    b = rng.standard_normal(p.out_channels).astype(dtype) if p.bias else None
    return x, w, b


def random_layer(rng: np.random.Generator, modes=("zeros", "zeros", "reflect", "replicate", "circular"),
                 max_length: int = 25) -> tuple[ConvTranspose1dParams, int]:
    """A random valid small layer (every padding mode in ``modes``, groups, stride, dilation, output
    padding; circular without padding) and an input length it takes."""
    while True:
        g = int(rng.choice([1, 1, 2, 4]))
        mode = str(rng.choice(list(modes)))
        stride, dilation = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        try:
            p = ConvTranspose1dParams(g * int(rng.integers(1, 6)), g * int(rng.integers(1, 5)), int(rng.integers(1, 9)),
                                      stride, 0 if mode == "circular" else int(rng.integers(0, 8)),
                                      int(rng.integers(0, max(stride, dilation))), g, bool(rng.integers(0, 2)),
                                      dilation, mode)
            length = int(rng.integers(p.min_length, p.min_length + max_length))
            p.output_length(length)
        except ValueError:
            continue
        return p, length


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def rpc_device(server: list[str], key: str, *, env: dict[str, str] | None = None, cwd: str | None = None,
               timeout: float = 120) -> Iterator[str]:
    """A real TVM RPC tracker on 127.0.0.1 (free ports) and a server registered with it under ``key``,
    started by the interpreter command ``server`` (this Python, or an emulated one); yields the tracker's
    HOST:PORT and stops both afterwards."""
    import tvm

    tracker_port, server_port = free_port(), free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(tracker_port), "--port-end", str(tracker_port + 1)], **quiet)]
    tracker = f"127.0.0.1:{tracker_port}"

    def queue() -> dict:
        return tvm.rpc.connect_tracker("127.0.0.1", tracker_port).summary()["queue_info"]

    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                queue()
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "the RPC tracker did not start"
                time.sleep(0.5)
        procs.append(subprocess.Popen(
            [*server, "-m", "tvm.exec.rpc_server", "--tracker", tracker, "--key", key, "--host", "127.0.0.1",
             "--port", str(server_port), "--port-end", str(server_port + 1)], env=env, cwd=cwd, **quiet))
        while key not in queue():
            assert procs[-1].poll() is None, "the RPC server exited"
            assert time.monotonic() < deadline, "the RPC server did not register"
            time.sleep(0.5)
        yield tracker
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
