"""An ONNX vocoder upsampler with a dynamic length axis, run through TVM Relax with tvm_convt.

Builds an ONNX graph with the ``onnx`` helper API: HiFi-GAN V1's four upsampling layers
(512 -> 256 -> 128 -> 64 -> 32 channels; kernels 16, 16, 4, 4; strides 8, 8, 2, 2) with a
LeakyReLU(0.1) before each, random weights as initializers, and the input ``[1, 512, "frames"]``.
It imports the file with ``tvm.relax.frontend.onnx.from_onnx``, lets ``tvm_convt.relax.use_tvm_convt``
compute every ConvTranspose (one function for every length), compiles the module once with
``tvm_convt.relax.cpu_pipeline`` and runs it at several lengths, checking each output against the
float64 NumPy reference and, when installed, against ONNX Runtime and PyTorch, whose times it
prints beside tvm_convt's.

    .venv/bin/python examples/onnx_vocoder.py                       # 50, 97 and 173 frames
    .venv/bin/python examples/onnx_vocoder.py --frames 7,31 --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

LAYERS = ((512, 256, 16, 8, 4), (256, 128, 16, 8, 4), (128, 64, 4, 2, 1), (64, 32, 4, 2, 1))
SLOPE = 0.1


def build_onnx(path: Path, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Write the model to ``path``; return its (weight, bias) per layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, params, name = [], [], [], "mel"
    for i, (cin, cout, k, s, p) in enumerate(LAYERS):
        bound = 1 / np.sqrt(cout * k)
        w = rng.uniform(-bound, bound, (cin, cout, k)).astype("float32")
        b = rng.uniform(-bound, bound, cout).astype("float32")
        params.append((w, b))
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("LeakyRelu", [name], [f"a{i}"], alpha=SLOPE))
        nodes.append(helper.make_node("ConvTranspose", [f"a{i}", f"w{i}", f"b{i}"], [f"y{i}"],
                                      kernel_shape=[k], strides=[s], pads=[p, p]))
        name = f"y{i}"
    graph = helper.make_graph(
        nodes, "upsampler", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 512, "frames"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 32, "samples"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # opset 17's; onnx writes its newest by default, which ONNX Runtime may not read yet
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return params


def reference(x: np.ndarray, params) -> np.ndarray:
    from tvm_convt.params import ConvTranspose1dParams
    from tvm_convt.reference import conv_transpose1d_reference

    y = x.astype(np.float64)
    for (cin, cout, k, s, p), (w, b) in zip(LAYERS, params):
        y = np.where(y > 0, y, SLOPE * y)
        y = conv_transpose1d_reference(y, w, b, ConvTranspose1dParams(cin, cout, k, stride=s, padding=p))
    return y


def rivals(path: Path, params, threads: int) -> dict:
    """ONNX Runtime's and PyTorch's calls on a NumPy input, where installed."""
    found = {}
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        found["ONNX Runtime"] = lambda x: session.run(None, {"mel": x})[0]
    except ImportError:
        pass
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        tensors = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in params]

        def eager(x):
            y = torch.from_numpy(x)
            with torch.no_grad():
                for (_, _, _, s, p), (w, b) in zip(LAYERS, tensors):
                    y = F.conv_transpose1d(F.leaky_relu(y, SLOPE), w, b, stride=s, padding=p)
            return y.numpy()

        found["PyTorch eager"] = eager
    except ImportError:
        pass
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="50,97,173", help="comma-separated input lengths (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    frames = [int(f) for f in args.frames.split(",")]

    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_convt.relax as tr
    from tvm_convt.target import host_cores, resolve_target
    from tvm_convt.timing import interleaved_medians

    target = resolve_target("llvm")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upsampler.onnx"
        params = build_onnx(path, args.seed)
        mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
        converted = tr.use_tvm_convt(mod, target)
        left = [v for v in relax.analysis.get_var2val(converted["main"]).values()
                if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.nn.conv1d_transpose"]
        ours = [gv.name_hint for gv, _ in converted.functions_items() if gv.name_hint.startswith("tvm_convt")]
        print(f"{len(ours)} ConvTranspose calls computed by tvm_convt, {len(left)} left to TVM: {sorted(ours)}")
        vm = relax.VirtualMachine(tvm.compile(converted, target=target, relax_pipeline=tr.cpu_pipeline(target)),
                                  tvm.cpu())
        others = rivals(path, params, host_cores())
        worst = 0.0
        for n in frames:
            x = np.random.default_rng(n).standard_normal((1, 512, n)).astype("float32")

            def ours_call(x=x):
                return vm["main"](tvm.runtime.tensor(x)).numpy()

            expected = reference(x, params)
            calls = {"tvm_convt (Relax)": ours_call, **{k: (lambda f=f, x=x: f(x)) for k, f in others.items()}}
            errors = {k: float(np.abs(f() - expected).max() / max(1.0, np.abs(expected).max())) for k, f in calls.items()}
            worst = max(worst, errors["tvm_convt (Relax)"])
            times = interleaved_medians(calls, rounds=args.rounds, number=3)
            print(f"{n} frames -> {expected.shape[-1]} samples:")
            for k, t in times.items():
                print(f"  {k:18s} {t * 1e3:9.3f} ms   max rel. error vs float64 {errors[k]:.1e}")
    ok = worst <= 1e-5 and not left
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
