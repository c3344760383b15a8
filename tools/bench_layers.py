"""Quick same-run comparison with PyTorch on a few vocoder-style layers (CPU, float32).

Usage: .venv/bin/python tools/bench_layers.py
Each layer is compiled (a tuned record if there is one, else the default schedule) and timed
against torch.nn.functional.conv_transpose1d in interleaved rounds after warm-up, with the same
thread count. A probe whose numbers go to docs/performance.md, not the project's benchmark.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

import tvm_convt  # sets TVM_NUM_THREADS to the physical cores
from tvm_convt.bench import interleaved_medians
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.params import Workload

LAYERS = {
    "hifigan-up1 512->256 K16 S8": (P(512, 256, 16, stride=8, padding=4), 1, 86),
    "hifigan-up2 256->128 K16 S8": (P(256, 128, 16, stride=8, padding=4), 1, 688),
    "grouped g=8 256->256 K8 S4": (P(256, 256, 8, stride=4, padding=2, groups=8), 1, 512),
    "depthwise 256 K16 S8": (P(256, 256, 16, stride=8, padding=4, groups=256), 1, 512),
    "depthwise 128 K7 S1 D3": (P(128, 128, 7, dilation=3, padding=9, groups=128), 1, 2048),
}


def main() -> None:
    threads = int(os.environ["TVM_NUM_THREADS"])
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    ratios = []
    for name, (p, n, length) in LAYERS.items():
        w = Workload(p, n, length)
        c = tvm_convt.compile(p, batch=n, length=length)
        x = rng.standard_normal(w.input_shape).astype("float32")
        wt = rng.standard_normal(p.weight_shape).astype("float32")
        b = rng.standard_normal(p.out_channels).astype("float32")
        xd, wd = c.to_device(x), [c.to_device(wt), c.to_device(b)]
        xt, wtt, bt = map(torch.from_numpy, (x, wt, b))
        with torch.no_grad():
            t = interleaved_medians({
                "tvm": lambda: c.run(xd, wd),
                "torch": lambda: F.conv_transpose1d(xt, wtt, bt, p.stride, p.padding, p.output_padding,
                                                    p.groups, p.dilation),
            }, rounds=15, number=5)
        ratios.append(t["torch"] / t["tvm"])
        print(f"{name:30s} {c.metadata.schedule.split('/')[0]:17s} "
              f"tvm {t['tvm'] * 1e3:7.3f} ms {w.flops / t['tvm'] / 1e9:6.1f} GFLOP/s | "
              f"torch {t['torch'] * 1e3:7.3f} ms {w.flops / t['torch'] / 1e9:6.1f} GFLOP/s | "
              f"speed-up {ratios[-1]:.2f}x")
    print(f"geometric mean speed-up over PyTorch ({threads} threads each): "
          f"{float(np.exp(np.mean(np.log(ratios)))):.2f}x")


if __name__ == "__main__":
    main()
