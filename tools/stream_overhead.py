"""What a stream costs against the calls it replaces (issue #23's goals), interleaved medians.

On the demo layer (HiFi-GAN V1's first upsampling layer: 512 -> 256, K16, S8, padding 4, 86 frames):
- a one-frame push against the layer's module on that one frame (prepared tensors) and against the
  layer call (goal: push <= 1.5 x module + 20 us);
- the 86 frames streamed in chunks of ``--chunk`` (then the flush) against one whole call (goal: <= 1.3x);
- the stream's kernel alone on one chunk, beside the layer's module on a chunk (what the chunking costs
  before Python's part).

``python tools/stream_overhead.py [--chunk 8] [--rounds 15]``; prints microseconds and the two ratios.
"""

from __future__ import annotations

import argparse

import numpy as np

import tvm_convt
from tvm_convt.runtime.arrays import aligned_copy
from tvm_convt.timing import interleaved_medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--frames", type=int, default=86)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    layer = tvm_convt.ConvTranspose1d(512, 256, 16, stride=8, padding=4, seed=0)
    x = aligned_copy(np.random.default_rng(0).standard_normal((1, 512, args.frames)).astype("float32"))
    one, chunk = aligned_copy(x[:, :, :1]), aligned_copy(x[:, :, :args.chunk])
    layer(x), layer(one), layer(chunk)
    module = layer.compiled_for(x.shape)
    weights = module.prepare_weights(layer.weight, layer.bias)
    one_dev, chunk_dev = module.to_device(one), module.to_device(chunk)
    pusher, chunked = layer.stream(), layer.stream()

    def stream_whole() -> None:
        chunked.reset()
        for i in range(0, args.frames, args.chunk):
            chunked.push(x[:, :, i:i + args.chunk])
        chunked.flush()

    us = {name: 1e6 * t for name, t in interleaved_medians({
        "push of 1 frame": lambda: pusher.push(one),
        "module on 1 frame": lambda: module._run_checked(one_dev, weights),
        "layer call on 1 frame": lambda: layer(one),
        f"push of {args.chunk} frames": lambda: pusher.push(chunk),
        f"module on {args.chunk} frames": lambda: module._run_checked(chunk_dev, weights),
        f"{args.frames} frames streamed by {args.chunk}": stream_whole,
        f"one call on {args.frames} frames": lambda: layer(x),
    }, rounds=args.rounds).items()}
    for name, value in us.items():
        print(f"{name:>28}: {value:9.1f} us")
    push, mod = us["push of 1 frame"], us["module on 1 frame"]
    print(f"one-frame push / (1.5 x module + 20 us): {push / (1.5 * mod + 20):.2f} (goal <= 1)")
    whole = us[f"{args.frames} frames streamed by {args.chunk}"] / us[f"one call on {args.frames} frames"]
    print(f"streamed by {args.chunk} / one call: {whole:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
