"""aarch64 under emulation, the dynamic-length modules and the board workflow: modules of every length in an
aarch64 bundle at many batches and lengths, and tuning through a real RPC tracker on 127.0.0.1 with the RPC
server of an aarch64 bundle running under qemu (tools/aarch64_env.py). Skipped, with the reason, where the
emulator cannot be made."""

from __future__ import annotations

import json
import os

import pytest

import tvm_convt
from tvm_convt import cli
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.params import Workload
from tvm_convt.suite import default_suite

from conftest import rpc_device
from emulation import (ELF_MACHINE_AARCH64, REPO, SWEEP, aarch64, bundle_for, check_lines,  # noqa: F401
                       emulated, emulated_python, needs_cross_linker)


# Run by the emulated Python in an any-length bundle: each module at many batches and lengths, batched
# and unbatched, against the reference; prints the largest error per module.
EVERY_LENGTH = r"""
import json, sys
import numpy as np
from tvm_convt import CompiledConvTranspose1d
from tvm_convt.reference import conv_transpose1d_reference
manifest = json.load(open("manifest.json"))
rng = np.random.default_rng(0)
errors = {}
for entry in manifest["workloads"]:
    m = CompiledConvTranspose1d.load(entry["library"])
    p, worst = m.params, 0.0
    for batch, length in ((None, 1), (1, 2), (2, 7), (1, 31), (3, 64), (None, 97), (1, 250)):
        if length < p.min_length:
            continue
        shape = (p.in_channels, length) if batch is None else (batch, p.in_channels, length)
        x = rng.standard_normal(shape).astype(m.workload.dtype)
        w = rng.standard_normal(p.weight_shape).astype(m.workload.dtype)
        b = rng.standard_normal(p.out_channels).astype(m.workload.dtype) if p.bias else None
        y = m(x, w, b)
        ref = conv_transpose1d_reference(x[None] if batch is None else x, w, b, p)
        ref = ref[0] if batch is None else ref
        assert y.shape == ref.shape, (entry["name"], y.shape, ref.shape)
        worst = max(worst, float(np.max(np.abs(y - ref))) / max(1.0, float(np.max(np.abs(ref)))))
    errors[entry["name"]] = worst
    try:  # a module refuses a batch of 0 in one sentence (the layer answers it without one)
        m(np.zeros((0, p.in_channels, 9), m.workload.dtype), w, b)
        errors[entry["name"]] = "batch 0 ran"
    except ValueError as err:
        assert "needs a batch of at least 1" in str(err), err
print(json.dumps(errors))
"""


@needs_cross_linker
@pytest.mark.slow
def test_modules_of_every_length_run_on_aarch64(emulated_python, tmp_path):
    """The symbolic modules (one function per length range), on Graviton2's core: lengths 1 to 250 across
    the ranges, batches 1-3 and unbatched (batch 0 refused in a sentence), every kind of layer of the sweep and two default-suite ones."""
    default = default_suite()
    suite = {**SWEEP, "hifigan_v1_up0": default["hifigan_v1_up0"], "encodec_up3": default["encodec_up3"]}
    bundle = bundle_for(tmp_path, suite, "--any-length", target=aarch64("neoverse-n1"))
    (bundle / "every_length.py").write_text(EVERY_LENGTH)
    done = emulated(emulated_python, ["every_length.py"], bundle)
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout.splitlines()[-1])
    tolerance = json.loads((bundle / "manifest.json").read_text())["tolerance"]
    assert set(errors) == set(suite)
    for name, error in errors.items():
        assert error <= tolerance[suite[name].dtype], (name, error)


@needs_cross_linker
@pytest.mark.slow
def test_tuning_on_an_emulated_board_over_rpc(emulated_python, tmp_path):
    """The board workflow: a tracker here, the RPC server of an aarch64 bundle under emulation, `tvm-convt
    tune --rpc-tracker`, the records applied by compile, and a bundle of the tuned module checked there."""
    target = json.dumps(aarch64("neoverse-n1"))
    workload = Workload(P(32, 16, 4, stride=2, padding=1), 1, 24)
    server_bundle = bundle_for(tmp_path / "server", {"layer": workload})
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(server_bundle), "HOME": str(server_bundle)}
    logs = tmp_path / "logs"
    with rpc_device([str(emulated_python), "-s"], "pi", env=env, cwd=str(server_bundle), timeout=300) as tracker:
        code = cli.main(["tune", "--in-channels", "32", "--out-channels", "16", "--kernel-size", "4", "--stride", "2",
                         "--padding", "1", "--length", "24", "--target", target, "--rpc-tracker", tracker,
                         "--rpc-key", "pi", "--trials", "2", "--logs", str(logs)])
    assert code == 0
    compiled = tvm_convt.compile(workload.params, batch=1, length=24, target=target, logs=logs)
    assert compiled.metadata.schedule == f"tuned:{logs / 'llvm-aarch64-neon'}"
    bundle = bundle_for(tmp_path / "tuned", {"layer": workload}, "--logs", str(logs), target=aarch64("neoverse-n1"))
    assert json.loads((bundle / "manifest.json").read_text())["workloads"][0]["schedule"].startswith("tuned:")
    check_lines(emulated(emulated_python, [str(bundle / "run.py"), "--check"], bundle), ["layer"])
