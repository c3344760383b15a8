"""HiFi-GAN V1's generator with tvm_convt's transposed convolutions, against plain PyTorch.

The generator of Kong et al., "HiFi-GAN" (2020), configuration V1 as in the original code
(github.com/jik876/hifi-gan, ``config_v1.json``): upsample rates 8, 8, 2, 2 with kernels 16,
16, 4, 4 from 512 channels, and after each upsampling a multi-receptive-field fusion of three
ResBlock1 (kernels 3, 7, 11; dilations 1, 3, 5). Random weights (weight norm left out: it is a
training-time reparametrisation). A copy is converted with ``tvm_convt.torch.convert`` and
both run on a random mel spectrogram (80 mels; 173 frames = 2 s of 22050 Hz audio at hop 256).

Prints the maximum relative differences (output, input gradient, gradients of the upsampling
weights), then medians, interleaved on the same threads, of the whole generator and of the
four upsampling layers alone. ``--frames 3 --rounds 1`` is a quick run. In the converted model
TVM's thread pool and PyTorch's OpenMP threads take turns on the same cores, and each pool's
idle spinning slows the other: see examples/README.md for the environment variables.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

import tvm_convt.torch as tt
from tvm_convt.target import host_cores, set_cpu_threads
from tvm_convt.timing import interleaved_medians

LRELU_SLOPE = 0.1
SAMPLE_RATE, HOP, MELS = 22050, 256, 80
V1 = dict(upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4), upsample_initial_channel=512,
          resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=((1, 3, 5),) * 3)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Three dilated Conv1d, each followed by an undilated one, with residual connections."""

    def __init__(self, channels: int, kernel_size: int, dilation: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                              padding=get_padding(kernel_size, d)) for d in dilation)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                              padding=get_padding(kernel_size)) for _ in dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE)) + x
        return x


class Generator(nn.Module):
    """Mel spectrogram (batch, 80, frames) -> waveform (batch, 1, frames * 256)."""

    def __init__(self, upsample_rates, upsample_kernel_sizes, upsample_initial_channel,
                 resblock_kernel_sizes, resblock_dilation_sizes) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(MELS, upsample_initial_channel, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(upsample_initial_channel // 2**i, upsample_initial_channel // 2**(i + 1),
                               k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            ResBlock1(upsample_initial_channel // 2**(i + 1), k, d)
            for i in range(len(self.ups)) for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(upsample_initial_channel // 2**len(self.ups), 1, 7, 1, padding=3)
        for m in (*self.ups, self.conv_post):  # the original's init_weights
            nn.init.normal_(m.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def max_rel_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return float((actual - expected).abs().max() / expected.abs().max())


def _worst(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(max_rel_diff(a.double(), e.double()) for a, e in zip(actual, expected))


def gradients(model: nn.Module, mel: torch.Tensor, grad_out: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of <model(mel), grad_out> with respect to the input and the upsampling weights."""
    x = mel.clone().requires_grad_(True)
    return list(torch.autograd.grad(model(x), [x, *(up.weight for up in model.ups)], grad_out))


def upsampling_inputs(model: Generator, mel: torch.Tensor) -> list[torch.Tensor]:
    """The tensors each upsampling layer receives in a forward pass."""
    seen: list[torch.Tensor] = []
    handles = [up.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for up in model.ups]
    with torch.no_grad():
        model(mel)
    for handle in handles:
        handle.remove()
    return seen


def layer_name(i: int, up: nn.ConvTranspose1d, x: torch.Tensor) -> str:
    return (f"ups.{i} {up.in_channels}->{up.out_channels} K{up.kernel_size[0]} S{up.stride[0]} "
            f"L{x.shape[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=173, help="mel frames (default 173: 2 s of audio)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timing rounds of the whole generator (the layers alone get 3x; default 5)")
    parser.add_argument("--threads", type=int, default=host_cores(),
                        help="threads for PyTorch and TVM alike (default: the physical cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_cpu_threads(args.threads)
    torch.manual_seed(args.seed)

    reference = Generator(**V1).eval()
    converted = tt.convert(copy.deepcopy(reference))
    mel = torch.randn(1, MELS, args.frames)
    print(f"HiFi-GAN V1 generator, {args.frames} mel frames ({args.frames * HOP / SAMPLE_RATE:.2f} s of "
          f"audio at {SAMPLE_RATE} Hz), {args.threads} threads, PyTorch {torch.__version__}")
    # Both thread pools' idle policies decide how much they slow each other in the converted model.
    print("pools: " + ", ".join(f"{name}={os.environ.get(name, '(default)')}"
                                for name in ("TVM_THREAD_POOL_SPIN_COUNT", "OMP_WAIT_POLICY")))

    # float32 rounding can move a LeakyReLU input across 0 and change a gradient there, in
    # either model: the float64 model tells which of the two is off.
    exact = copy.deepcopy(reference).double()
    with torch.no_grad():
        y_ref, y, y_exact = reference(mel), converted(mel), exact(mel.double())
    grad_out = torch.randn(y.shape)
    grads_ref, grads = gradients(reference, mel, grad_out), gradients(converted, mel, grad_out)
    grads_exact = gradients(exact, mel.double(), grad_out.double())
    print("max relative difference (tvm_convt vs PyTorch; each against the float64 model):")
    for name, ours, theirs, truth in (("output", [y], [y_ref], [y_exact]),
                                      ("input gradient", grads[:1], grads_ref[:1], grads_exact[:1]),
                                      ("upsampling weight gradients", grads[1:], grads_ref[1:], grads_exact[1:])):
        print(f"  {name}: {_worst(ours, theirs):.2e} (tvm_convt {_worst(ours, truth):.2e}, "
              f"PyTorch {_worst(theirs, truth):.2e})")

    with torch.no_grad():
        times = interleaved_medians({"torch": lambda: reference(mel), "tvm": lambda: converted(mel)},
                                    rounds=args.rounds, number=1, warmup=1)
        print(f"whole generator: PyTorch {times['torch'] * 1e3:.1f} ms, tvm_convt {times['tvm'] * 1e3:.1f} ms "
              f"({times['torch'] / times['tvm']:.2f}x)")
        inputs = upsampling_inputs(reference, mel)
        fns = {}
        for i, x in enumerate(inputs):
            fns[("torch", i)] = lambda i=i, x=x: reference.ups[i](x)
            fns[("tvm", i)] = lambda i=i, x=x: converted.ups[i](x)
        layer_times = interleaved_medians(fns, rounds=3 * args.rounds)
    total = {side: sum(layer_times[(side, i)] for i in range(len(inputs))) for side in ("torch", "tvm")}
    print(f"upsampling layers: PyTorch {total['torch'] * 1e3:.2f} ms, tvm_convt {total['tvm'] * 1e3:.2f} ms "
          f"({total['torch'] / total['tvm']:.2f}x)")
    for i, x in enumerate(inputs):
        t_ref, t = layer_times[("torch", i)], layer_times[("tvm", i)]
        print(f"  {layer_name(i, reference.ups[i], x)}: PyTorch {t_ref * 1e3:.3f} ms, "
              f"tvm_convt {t * 1e3:.3f} ms ({t_ref / t:.2f}x)")


if __name__ == "__main__":
    main()
