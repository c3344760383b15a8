"""HiFi-GAN V1 compiled whole by TVM Relax: TVM's own transposed convolutions against tvm_convt's.

The generator of examples/hifigan_generator.py (random weights, the real layer shapes) is
exported with ``torch.export``, imported with ``from_exported_program`` and compiled twice with
``tvm.compile``: as it is (TVM's default legalization of ``conv1d_transpose``, which dilates
the input with zeros first) and after ``tvm_convt.relax.use_tvm_convt(mod, target)``. Both are
compared with PyTorch, then timed interleaved with PyTorch's eager run on the same threads.
``--layers`` also times each upsampling layer alone, three ways: TVM's legalization, the layer
in a Relax module after ``use_tvm_convt``, and ``tvm_convt.compile`` called directly.
TVM 0.27 leaves the generator's 38 Conv1d unscheduled on CPU (single-threaded loops), so
the whole model is also built with ``use_tvm_convt(mod, target, conv1d=True)``, which
computes those (all stride 1) as the transposed convolutions they equal, and that build once
more with ``relax_pipeline=tvm_convt.relax.cpu_pipeline(target)``: TVM's CPU pipeline with fusion,
plus a parallel, vectorised schedule for the element-wise functions (LeakyReLU, adds, tanh).
``--cuda-arch sm_90`` also compiles the model for that GPU (no GPU needed) and names its kernels.
``--dynamic 50,97,173`` also exports it with a dynamic number of frames (``torch.export.Dim``), converts
every convolution, compiles once and runs it at those lengths against PyTorch eager.
``--frames 8 --rounds 1`` is a quick run.
"""

from __future__ import annotations

import argparse
import os
import re
import time

import torch
import tvm
from hifigan_generator import HOP, MELS, SAMPLE_RATE, V1, Generator, max_rel_diff, upsampling_inputs
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

import tvm_convt
from tvm_convt.relax import cpu_pipeline, use_tvm_convt
from tvm_convt.target import host_cores, resolve_target, set_cpu_threads
from tvm_convt.timing import interleaved_medians


def import_model(model: torch.nn.Module, example: torch.Tensor) -> tvm.IRModule:
    """``model`` as a Relax module, through torch.export (its weights become constants)."""
    return from_exported_program(torch.export.export(model.eval(), (example,)))


def vm_runner(mod: tvm.IRModule, target: tvm.target.Target, x, pipeline="default"):
    """Compile ``mod`` for ``target`` (with ``pipeline``, tvm.compile's ``relax_pipeline``); return
    a call that runs it on ``x`` and the compile seconds."""
    start = time.perf_counter()
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=pipeline), tvm.cpu())
    seconds = time.perf_counter() - start
    main, x_tvm = vm["main"], tvm.runtime.tensor(x)
    return (lambda: main(x_tvm)[0]), seconds


def direct_runner(up: torch.nn.ConvTranspose1d, x: torch.Tensor, target: tvm.target.Target,
                  fresh_output: bool = False):
    """The layer compiled by ``tvm_convt.compile``, called on device tensors made once (with
    ``fresh_output``, a new output tensor each call, as any call that returns one makes)."""
    params = tvm_convt.ConvTranspose1dParams(up.in_channels, up.out_channels, up.kernel_size[0],
                                             up.stride[0], up.padding[0], up.output_padding[0],
                                             up.groups, up.bias is not None, up.dilation[0])
    compiled = tvm_convt.compile(params, batch=x.shape[0], length=x.shape[-1], target=target)
    tensors = [tvm.runtime.tensor(t.detach().numpy()) for t in (x, up.weight, up.bias) if t is not None]
    shape, func = compiled.workload.output_shape, compiled.func
    if fresh_output:
        return lambda: func(*tensors, tvm.runtime.empty(shape, "float32"))
    y = tvm.runtime.empty(shape, "float32")
    return lambda: func(*tensors, y)


def cuda_kernels(mod: tvm.IRModule, arch: str) -> list[str]:
    """Compile ``mod`` for CUDA ``arch`` and return its kernel names (from the generated source)."""
    ex = tvm.compile(mod, target=resolve_target({"kind": "cuda", "arch": arch}))
    pending, source = [ex.mod], []
    while pending:
        m = pending.pop()
        source += [m.inspect_source("cuda")] if m.kind == "cuda" else []
        pending += list(m.imports)
    # Each kernel appears twice: declared first, then defined.
    names = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", "\n".join(source))
    return list(dict.fromkeys(names))


def compare_whole(model: Generator, mel: torch.Tensor, target, rounds: int) -> None:
    mod = import_model(model, mel)
    both = use_tvm_convt(mod, target, conv1d=True)
    builds = {"TVM default legalization": (mod, "default"), "TVM with tvm_convt": (use_tvm_convt(mod, target), "default"),
              "TVM with tvm_convt, conv1d too": (both, "default"),
              "conv1d too + cpu_pipeline": (both, cpu_pipeline(target))}
    runners = {}
    for name, (built, pipeline) in builds.items():
        runners[name], seconds = vm_runner(built, target, mel.numpy(), pipeline)
        print(f"compile, {name}: {seconds:.1f} s")
    with torch.no_grad():
        y_ref = model(mel)
        for name, run in runners.items():
            print(f"max relative difference to PyTorch, {name}: "
                  f"{max_rel_diff(torch.from_numpy(run().numpy()), y_ref):.2e}")
        times = interleaved_medians({**runners, "PyTorch eager": lambda: model(mel)},
                                    rounds=rounds, number=1, warmup=1)
    print("whole generator: " + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in times.items()))
    ours = times["TVM with tvm_convt"]
    print(f"  TVM with tvm_convt: {times['TVM default legalization'] / ours:.2f}x TVM default, "
          f"{times['PyTorch eager'] / ours:.2f}x PyTorch; with conv1d too: "
          f"{times['PyTorch eager'] / times['TVM with tvm_convt, conv1d too']:.2f}x PyTorch, "
          f"and with cpu_pipeline: {times['PyTorch eager'] / times['conv1d too + cpu_pipeline']:.2f}x PyTorch")


def compare_dynamic(model: Generator, target, lengths: list[int], rounds: int) -> None:
    """The generator exported once with a dynamic number of frames (``torch.export.Dim``), every
    convolution computed by tvm_convt (``conv1d=True``), compiled once with ``cpu_pipeline`` and run
    at each of ``lengths`` against PyTorch eager."""
    example = torch.randn(1, MELS, lengths[0])
    frames = torch.export.Dim("frames", min=8, max=4096)
    start = time.perf_counter()
    mod = from_exported_program(torch.export.export(model.eval(), (example,), dynamic_shapes={"x": {2: frames}}))
    both = use_tvm_convt(mod, target, conv1d=True)
    calls = [getattr(v.op, "name", "") for v in relax.analysis.get_var2val(both["main"]).values()
             if isinstance(v, relax.Call)]
    ours = [gv.name_hint for gv, _ in both.functions_items() if gv.name_hint.startswith("tvm_convt")]
    main = relax.VirtualMachine(tvm.compile(both, target=target, relax_pipeline=cpu_pipeline(target)), tvm.cpu())["main"]
    print(f"dynamic frames: {len(ours)} convolutions computed by tvm_convt, "
          f"{calls.count('relax.nn.conv1d_transpose')} conv1d_transpose and {calls.count('relax.nn.conv1d')} conv1d "
          f"left to TVM; exported, converted and compiled once in {time.perf_counter() - start:.1f} s")
    for n in lengths:
        mel = torch.randn(1, MELS, n)
        mel_tvm = tvm.runtime.tensor(mel.numpy())
        with torch.no_grad():
            error = max_rel_diff(torch.from_numpy(main(mel_tvm)[0].numpy()), model(mel))
            times = interleaved_medians({"tvm": lambda: main(mel_tvm), "torch": lambda: model(mel)},
                                        rounds=rounds, number=1, warmup=1)
        print(f"  {n} frames: max relative difference to PyTorch {error:.2e}; TVM with tvm_convt "
              f"{times['tvm'] * 1e3:.1f} ms, PyTorch eager {times['torch'] * 1e3:.1f} ms "
              f"({times['torch'] / times['tvm']:.2f}x)")


def compare_layers(model: Generator, mel: torch.Tensor, target, rounds: int) -> None:
    for i, x in enumerate(upsampling_inputs(model, mel)):
        up = model.ups[i]
        mod = import_model(up, x)
        default, _ = vm_runner(mod, target, x.numpy())
        ours, _ = vm_runner(use_tvm_convt(mod, target), target, x.numpy())
        fns = {"default": default, "relax": ours, "direct": direct_runner(up, x, target)}
        times = interleaved_medians(fns, rounds=rounds, number=1, warmup=1)
        print(f"  ups.{i} {up.in_channels}->{up.out_channels} K{up.kernel_size[0]} S{up.stride[0]} "
              f"L{x.shape[-1]}: TVM default {times['default'] * 1e3:.1f} ms, tvm_convt in Relax "
              f"{times['relax'] * 1e3:.3f} ms, tvm_convt direct {times['direct'] * 1e3:.3f} ms "
              f"({times['default'] / times['relax']:.0f}x faster than default; "
              f"Relax/direct {times['relax'] / times['direct']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=173, help="mel frames (default 173: 2 s of audio)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (default 3)")
    parser.add_argument("--threads", type=int, default=host_cores(),
                        help="threads for PyTorch and TVM alike (default: the physical cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", action="store_true", help="also time each upsampling layer alone")
    parser.add_argument("--cuda-arch", help="also compile for this CUDA architecture (sm_90) and list kernels")
    parser.add_argument("--dynamic", metavar="FRAMES",
                        help="also export with a dynamic number of frames, compile once and run at these "
                             "comma-separated lengths (e.g. 50,97,173)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_cpu_threads(args.threads)
    torch.manual_seed(args.seed)
    model = Generator(**V1).eval()
    mel = torch.randn(1, MELS, args.frames)
    target = resolve_target("llvm")
    print(f"HiFi-GAN V1 generator through Relax, {args.frames} mel frames "
          f"({args.frames * HOP / SAMPLE_RATE:.2f} s of audio), {args.threads} threads, "
          f"PyTorch {torch.__version__}, TVM {tvm.__version__}, target mcpu={target.attrs.get('mcpu')}")
    print("pools: " + ", ".join(f"{name}={os.environ.get(name, '(default)')}"
                                for name in ("TVM_THREAD_POOL_SPIN_COUNT", "OMP_WAIT_POLICY")))
    compare_whole(model, mel, target, args.rounds)
    if args.layers:
        print("upsampling layers alone:")
        compare_layers(model, mel, target, args.rounds)
    if args.dynamic:
        compare_dynamic(model, target, [int(n) for n in args.dynamic.split(",")], args.rounds)
    if args.cuda_arch:
        kernels = cuda_kernels(use_tvm_convt(import_model(model, mel), {"kind": "cuda", "arch": args.cuda_arch}),
                               args.cuda_arch)
        ours = [k for k in kernels if k.startswith("tvm_convt_")]
        print(f"CUDA {args.cuda_arch}: {len(kernels)} kernels, {len(ours)} of them tvm_convt's: {', '.join(ours)}")


if __name__ == "__main__":
    main()
