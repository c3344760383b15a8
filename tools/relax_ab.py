"""A/B of the HiFi-GAN V1 generator built through Relax against PyTorch, many rounds, no TVM
default build (which takes seconds a call and would dominate the run).

    python tools/relax_ab.py --frames 32                 # whole generator, both pipelines
    python tools/relax_ab.py --frames 32 --layers        # and each upsampling layer alone

Whole generator: the ``conv1d=True`` build with TVM's default pipeline and with
``cpu_pipeline``, and PyTorch eager, interleaved (15 rounds of 3 calls, two passes).
Layers: the layer in Relax after ``use_tvm_convt``, the module function on preallocated
tensors, the same with a fresh output a call, and the ``CompiledConvTranspose1d`` call
(NumPy in and out), 15 rounds of 5 calls, two passes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import tvm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from hifigan_generator import MELS, V1, Generator, layer_name, upsampling_inputs  # noqa: E402
from relax_vocoder import direct_runner, import_model, vm_runner  # noqa: E402

from tvm_convt.relax import cpu_pipeline, use_tvm_convt  # noqa: E402
from tvm_convt.target import host_cores, resolve_target, set_cpu_threads  # noqa: E402
from tvm_convt.timing import interleaved_medians  # noqa: E402


def _line(label: str, times: dict[str, float]) -> str:
    return f"{label}: " + ", ".join(f"{name} {t * 1e3:.3f} ms" for name, t in times.items())


def whole(model: Generator, mel: torch.Tensor, target) -> None:
    both = use_tvm_convt(import_model(model, mel), target, conv1d=True)
    runners = {"default pipeline": vm_runner(both, target, mel.numpy())[0],
               "cpu_pipeline": vm_runner(both, target, mel.numpy(), cpu_pipeline(target))[0],
               "PyTorch eager": lambda: model(mel)}
    for n in (1, 2):
        times = interleaved_medians(runners, rounds=15, number=3)
        print(_line(f"whole generator, pass {n}", times),
              f"| PyTorch / cpu_pipeline {times['PyTorch eager'] / times['cpu_pipeline']:.2f}x", flush=True)


def layers(model: Generator, mel: torch.Tensor, target) -> None:
    for i, x in enumerate(upsampling_inputs(model, mel)):
        up = model.ups[i]
        fns = {"relax": vm_runner(use_tvm_convt(import_model(up, x), target), target, x.numpy())[0],
               "module, preallocated": direct_runner(up, x, target),
               "module, fresh output": direct_runner(up, x, target, fresh_output=True)}
        for n in (1, 2):
            times = interleaved_medians(fns, rounds=15, number=5)
            ratios = ", ".join(f"relax / {name} {times['relax'] / t:.2f}" for name, t in times.items()
                               if name != "relax")
            print(_line(f"{layer_name(i, up, x)}, pass {n}", times), f"| {ratios}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--layers", action="store_true", help="also each upsampling layer alone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_cpu_threads(host_cores())
    torch.set_num_threads(host_cores())
    torch.manual_seed(args.seed)
    model = Generator(**V1).eval()
    mel = torch.randn(1, MELS, args.frames)
    target = resolve_target("llvm")
    print(f"{args.frames} frames, {host_cores()} threads, PyTorch {torch.__version__}, TVM {tvm.__version__}")
    with torch.no_grad():
        whole(model, mel, target)
        if args.layers:
            layers(model, mel, target)


if __name__ == "__main__":
    main()
