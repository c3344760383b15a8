"""aarch64 under emulation, the dynamic-length modules and the board workflow: modules of every length in an
aarch64 bundle at many batches and lengths, and tuning through a real RPC tracker on 127.0.0.1 with the RPC
server of an aarch64 bundle running under qemu (tools/aarch64_env.py). Skipped, with the reason, where the
emulator cannot be made."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tvm_convt
from tvm_convt import cli
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.params import Workload
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.suite import default_suite

from conftest import assert_close, random_inputs, rpc_device
from emulation import (ELF_MACHINE_AARCH64, REPO, SWEEP, aarch64, bundle_for, check_lines,  # noqa: F401
                       emulated, emulated_python, needs_cross_linker)


# Run by the emulated Python in an any-length bundle: each module on the inputs the test saved (batched and
# unbatched, many lengths), the outputs saved back; and a batch of 0, which a module refuses in a sentence.
EVERY_LENGTH = r"""
import json
import numpy as np
from tvm_convt import CompiledConvTranspose1d
manifest = json.load(open("manifest.json"))
refused = {}
for i, entry in enumerate(manifest["workloads"]):
    m = CompiledConvTranspose1d.load(entry["library"])
    cases = np.load(f"io/in{i}.npz")
    for key in sorted(k for k in cases if k.startswith("x")):
        np.save(f"io/out{i}_{key}.npy", m(cases[key], cases["w"], cases["b"] if "b" in cases else None))
    try:
        m(np.zeros((0, m.params.in_channels, 9), m.workload.dtype), cases["w"], cases["b"] if "b" in cases else None)
        refused[entry["name"]] = "batch 0 ran"
    except ValueError as err:
        refused[entry["name"]] = str(err)
print(json.dumps(refused))
"""
SHAPES = ((None, 1), (1, 2), (2, 7), (1, 31), (3, 64), (None, 97), (1, 250))


@needs_cross_linker
@pytest.mark.slow
@pytest.mark.arm
def test_modules_of_every_length_run_on_aarch64(emulated_python, tmp_path):
    """The symbolic modules (one function per length range), on Graviton2's core: lengths 1 to 250 across
    the ranges, batches 1-3 and unbatched (batch 0 refused in a sentence), every kind of layer of the sweep
    and two default-suite ones, against the float64 reference computed here."""
    default = default_suite()
    suite = {**SWEEP, "hifigan_v1_up0": default["hifigan_v1_up0"], "encodec_up3": default["encodec_up3"]}
    bundle = bundle_for(tmp_path, suite, "--any-length", target=aarch64("neoverse-n1"))
    (bundle / "io").mkdir()
    cases = {}
    for i, w in enumerate(suite.values()):
        p = w.params
        inputs = {f"x{j}": random_inputs(p, batch, length, w.dtype, seed=10 * i + j)[0]
                  for j, (batch, length) in enumerate(SHAPES) if length >= p.min_length}
        _, weight, bias = random_inputs(p, 1, p.min_length, w.dtype, seed=i)
        np.savez(bundle / "io" / f"in{i}.npz", w=weight, **inputs, **({} if bias is None else {"b": bias}))
        cases[i] = (w, inputs, weight, bias)
    (bundle / "every_length.py").write_text(EVERY_LENGTH)
    done = emulated(emulated_python, ["every_length.py"], bundle)
    assert done.returncode == 0, done.stderr
    refused = json.loads(done.stdout.splitlines()[-1])
    assert all("needs a batch of at least 1" in why for why in refused.values()), refused
    for i, (w, inputs, weight, bias) in cases.items():
        for key, x in inputs.items():
            batched = x if x.ndim == 3 else x[None]
            expected = conv_transpose1d_reference(batched, weight, bias, w.params)
            assert_close(np.load(bundle / "io" / f"out{i}_{key}.npy"), expected if x.ndim == 3 else expected[0],
                         w.dtype)


@needs_cross_linker
@pytest.mark.slow
@pytest.mark.arm
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
