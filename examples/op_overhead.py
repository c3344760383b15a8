"""The custom op's overhead over the bare compiled module, on the HiFi-GAN demo layer.

Times, interleaved (medians after warm-up): the compiled module's function called on TVM
tensors made once (``bare``), the same writing into a fresh torch tensor each call
(``bare+alloc``: what any op returning a new tensor pays), and
``tvm_convt.torch.ConvTranspose1d`` under
``torch.no_grad()`` (``layer``) and with autograd recording (``layer+grad``). PyTorch's own
layer is left out: its OpenMP threads and TVM's pool slow each other down when interleaved.
Usage: ``python examples/op_overhead.py [--rounds N]``.
"""

from __future__ import annotations

import argparse

import torch
import tvm

import tvm_convt
import tvm_convt.torch as tt
from tvm_convt.params import Workload
from tvm_convt.target import host_cores
from tvm_convt.timing import interleaved_medians

# The demo layer: HiFi-GAN V1's first upsampling layer on 1 s of audio.
SHAPE = dict(in_channels=512, out_channels=256, kernel_size=16, stride=8, padding=4)
LENGTH = 86


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31, help="timing rounds (default 31)")
    args = parser.parse_args()
    threads = host_cores()
    torch.manual_seed(0)
    layer = tt.ConvTranspose1d(**SHAPE)
    x = torch.randn(1, SHAPE["in_channels"], LENGTH)
    x_grad = x.clone().requires_grad_(True)

    p = tvm_convt.ConvTranspose1dParams(**SHAPE)
    compiled = tvm_convt.runtime.module._MODULES.get(Workload(p, 1, LENGTH, "float32"), "llvm", None)
    y = torch.empty(1, SHAPE["out_channels"], p.output_length(LENGTH))
    bare_args = [tvm.runtime.from_dlpack(t.detach()) for t in (x, layer.weight, layer.bias, y)]
    func = compiled.func
    with torch.no_grad():
        assert torch.equal(layer(x), (func(*bare_args), y)[1])

    def bare_alloc() -> torch.Tensor:
        out = torch.empty(y.shape)
        func(*bare_args[:3], tvm.runtime.from_dlpack(out))
        return out

    def op_no_grad() -> torch.Tensor:
        with torch.no_grad():
            return layer(x)

    fns = {"bare": lambda: func(*bare_args), "bare+alloc": bare_alloc, "layer": op_no_grad,
           "layer+grad": lambda: layer(x_grad)}
    times = interleaved_medians(fns, rounds=args.rounds)
    print(f"demo layer {SHAPE}, L_in={LENGTH}, batch 1, {threads} threads, {compiled.metadata.schedule}")
    for name, t in times.items():
        print(f"  {name:10s} {t * 1e3:8.4f} ms  {(t - times['bare']) * 1e6:+7.1f} us "
              f"{100 * (t / times['bare'] - 1):+6.2f} % over bare")


if __name__ == "__main__":
    main()
