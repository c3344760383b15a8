"""HiFi-GAN V1's upsampling stack streamed one mel frame at a time, against the whole signal.

The four transposed convolutions of HiFi-GAN V1 (512 -> 256 -> 128 -> 64 -> 32 channels; kernels
16, 16, 4, 4; strides 8, 8, 2, 2; padding (kernel - stride) / 2) with a LeakyReLU before each, as
in examples/hifigan_generator.py (the residual blocks between them are left out: they are
convolutions, not transposed ones). Each layer is a ``tvm_convt`` stream: a frame pushed into the
first gives the samples it makes final, which go through the activation into the next, and so on;
at the end each stream is flushed into the next. Random weights, a random "mel" input.

Prints the largest difference to the whole signal computed by the same layers in one call each
(and to PyTorch's ``conv_transpose1d`` when PyTorch is installed), the real-time factor (time spent
over the audio's duration at 22,050 Hz, hop 256) and the per-push latency percentiles.
``--frames 20`` is a quick run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tvm_convt

SAMPLE_RATE, HOP = 22050, 256
SLOPE = 0.1
# (in_channels, out_channels, kernel_size, stride) of HiFi-GAN V1's upsampling layers.
STACK = ((512, 256, 16, 8), (256, 128, 16, 8), (128, 64, 4, 2), (64, 32, 4, 2))


def leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, x * np.float32(SLOPE))


def build_layers(seed: int) -> list[tvm_convt.ConvTranspose1d]:
    return [tvm_convt.ConvTranspose1d(c_in, c_out, k, stride=s, padding=(k - s) // 2, seed=seed + i)
            for i, (c_in, c_out, k, s) in enumerate(STACK)]


def whole_signal(layers, mel: np.ndarray) -> np.ndarray:
    x = mel
    for layer in layers:
        x = layer(leaky_relu(x))
    return x


def stream_frames(layers, mel: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Push the frames one at a time through the stack; returns the output and each push's seconds."""
    streams = [layer.stream() for layer in layers]
    outputs, latencies = [], []

    def through(chunk: np.ndarray, first: int) -> None:
        for st in streams[first:]:
            if chunk.shape[-1] == 0:  # the first pushes of a padded layer may make nothing final yet
                return
            chunk = st.push(leaky_relu(chunk))
        outputs.append(chunk)

    for t in range(mel.shape[-1]):
        start = time.perf_counter()
        through(mel[:, :, t:t + 1], 0)
        latencies.append(time.perf_counter() - start)
    for i, st in enumerate(streams):  # the end: each layer's rest goes through the layers after it
        rest = st.flush()
        if i + 1 < len(streams):
            through(rest, i + 1)
        else:
            outputs.append(rest)
    return np.concatenate(outputs, axis=-1), latencies


def torch_whole_signal(layers, mel: np.ndarray) -> np.ndarray | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    x = torch.from_numpy(mel).double()
    for layer in layers:
        p = layer.params
        x = F.conv_transpose1d(F.leaky_relu(x, SLOPE), torch.from_numpy(np.array(layer.weight)).double(),
                               torch.from_numpy(np.array(layer.bias)).double(), p.stride, p.padding)
    return x.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=173, help="mel frames (173: 2 s of audio)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layers = build_layers(args.seed)
    mel = np.random.default_rng(args.seed).standard_normal((1, 512, args.frames)).astype("float32")
    whole = whole_signal(layers, mel)  # compiles the layers' modules
    stream_frames(layers, mel[:, :, :4])  # compiles the streams' kernels; warms up
    streamed, latencies = stream_frames(layers, mel)
    scale = max(1.0, float(np.abs(whole).max()))
    print(f"frames: {args.frames}, output samples: {streamed.shape[-1]} (whole signal: {whole.shape[-1]})")
    print(f"max |streamed - whole| / max(1, max|whole|): {np.abs(streamed - whole).max() / scale:.2e}")
    reference = torch_whole_signal(layers, mel)
    if reference is not None:
        print(f"max |streamed - PyTorch float64| / scale: {np.abs(streamed - reference).max() / scale:.2e}")
    audio_s = args.frames * HOP / SAMPLE_RATE
    spent = sum(latencies)
    ms = np.array(latencies) * 1e3
    print(f"real-time factor: {spent / audio_s:.3f} ({spent * 1e3:.1f} ms for {audio_s * 1e3:.0f} ms of audio; "
          f"below 1 is faster than real time)")
    print(f"per-push latency: p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms, "
          f"max {ms.max():.3f} ms (one frame = {HOP / SAMPLE_RATE * 1e3:.1f} ms of audio)")


if __name__ == "__main__":
    main()
