"""Streams (issue #23): chunks pushed one after another, then the flush, against the whole signal's
output (the layer's, the float64 reference and torch), over random chunkings and every parameter."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from conftest import assert_close, needs_torch, random_inputs, random_layer, torch, torch_conv_transpose1d

import tvm_convt
from tvm_convt.params import ConvTranspose1dParams
from tvm_convt.reference import conv_transpose1d_reference, relative_error
from tvm_convt.runtime.streams import StreamGeometry

# The stream against the layer's own whole-signal call (issue #23's goal: 1e-6 relative in float32).
STREAM_TOLERANCE = {"float32": 1e-6, "float64": 1e-12}

LAYERS = [
    # (name, params): every padding mode a stream computes, groups, dilation, output padding,
    # overlaps positive, zero and negative, the three CPU forms.
    ("hifigan_like", dict(in_channels=16, out_channels=8, kernel_size=16, stride=8, padding=4)),
    ("grouped_op", dict(in_channels=16, out_channels=8, kernel_size=4, stride=2, padding=1, groups=2,
                        output_padding=1)),
    ("depthwise", dict(in_channels=8, out_channels=8, kernel_size=4, stride=2, groups=8)),
    ("dilated_s1", dict(in_channels=8, out_channels=4, kernel_size=3, dilation=3, padding=3)),
    ("gaps", dict(in_channels=8, out_channels=4, kernel_size=2, stride=5, padding=3, output_padding=2)),
    ("no_overlap", dict(in_channels=8, out_channels=4, kernel_size=3, stride=3, bias=False)),
    ("wide_padding", dict(in_channels=8, out_channels=6, kernel_size=4, stride=2, padding=7, dilation=2, groups=2)),
    ("reflect_s1", dict(in_channels=8, out_channels=4, kernel_size=7, padding=3, padding_mode="reflect")),
    ("reflect_wide", dict(in_channels=8, out_channels=4, kernel_size=4, stride=2, padding=5, padding_mode="reflect")),
    ("replicate", dict(in_channels=8, out_channels=4, kernel_size=4, stride=3, padding=2,
                       padding_mode="replicate", bias=False)),
    ("replicate_op", dict(in_channels=8, out_channels=4, kernel_size=5, stride=2, padding=6,
                          padding_mode="replicate", output_padding=1)),
    ("gemm_wide", dict(in_channels=32, out_channels=32, kernel_size=8, stride=4, padding=2)),
]


def chunkings(length: int, seed: int) -> list[list[int]]:
    """Chunks of 1, 2, 3 and 64 samples, one push, and two random mixtures, each covering ``length``."""
    rng = np.random.default_rng(seed)

    def cover(sizes):
        out, left = [], length
        for s in sizes:
            if left == 0:
                break
            out.append(min(int(s), left))
            left -= out[-1]
        return out + ([left] if left else [])

    fixed = [cover([n] * length) for n in (1, 2, 3, 64)] + [[length]]
    return fixed + [cover(rng.integers(1, 9, length)) for _ in range(2)]


def streamed(st, x: np.ndarray, chunks: list[int]) -> np.ndarray:
    outs, pos = [], 0
    for n in chunks:
        outs.append(st.push(x[:, :, pos:pos + n]))
        pos += n
    outs.append(st.flush())
    return np.concatenate(outs, axis=2)


@pytest.mark.parametrize("name,kw", LAYERS, ids=[n for n, _ in LAYERS])
def test_stream_equals_the_whole_signal(name, kw):
    layer = tvm_convt.ConvTranspose1d(**kw, seed=1)
    p = layer.params
    x, _, _ = random_inputs(p, 2, 29, "float32", seed=2)
    whole = layer(x)
    reference = conv_transpose1d_reference(x, layer.weight, layer.bias, p)
    st = layer.stream(batch=2)
    for chunks in chunkings(29, seed=len(name)):
        st.reset()
        got = streamed(st, x, chunks)
        assert got.shape == whole.shape, chunks
        assert relative_error(got, whole.astype(np.float64)) <= STREAM_TOLERANCE["float32"], chunks
        assert_close(got, reference, "float32")


@pytest.mark.parametrize("name,kw", [LAYERS[0], LAYERS[4], LAYERS[8]], ids=["hifigan_like", "gaps", "reflect_wide"])
def test_stream_in_float64(name, kw):
    layer = tvm_convt.ConvTranspose1d(**kw, seed=3, dtype="float64")
    x, _, _ = random_inputs(layer.params, 1, 17, "float64", seed=4)
    whole = layer(x)
    st = layer.stream()
    for chunks in chunkings(17, seed=5):
        st.reset()
        assert relative_error(streamed(st, x, chunks), whole) <= STREAM_TOLERANCE["float64"], chunks


@needs_torch
@pytest.mark.parametrize("name,kw", [c for c in LAYERS if c[1].get("padding_mode", "zeros") == "zeros"],
                         ids=[n for n, kw in LAYERS if kw.get("padding_mode", "zeros") == "zeros"])
def test_stream_against_torch(name, kw):
    p = ConvTranspose1dParams(**kw)
    x, w, b = random_inputs(p, 3, 21, "float32", seed=6)
    st = tvm_convt.stream(w, b, p.stride, p.padding, p.output_padding, p.groups, p.dilation, batch=3)
    got = streamed(st, x, [4, 1, 7, 2, 7])
    assert_close(got, torch_conv_transpose1d(x, w, b, p), "float32")


@needs_torch
def test_stream_takes_and_gives_torch_tensors():
    layer = tvm_convt.ConvTranspose1d(8, 4, 4, stride=2, padding=1, seed=0)
    x = torch.randn(1, 8, 9)
    st = layer.stream()
    parts = [st.push(x[:, :, :4]), st.push(x[:, :, 4:]), st.flush()]
    assert all(isinstance(t, torch.Tensor) for t in parts)
    assert_close(torch.cat(parts, dim=2).numpy(), layer(x.numpy()).astype(np.float64), "float32")


def test_pushes_return_only_final_samples():
    """A causal layer without padding returns stride samples a frame; the flush gives the overlap."""
    layer = tvm_convt.ConvTranspose1d(4, 2, 6, stride=2, seed=0)  # overlap 4
    st = layer.stream()
    x, _, _ = random_inputs(layer.params, 1, 5, "float32")
    sizes = [st.push(x[:, :, i:i + 1]).shape[2] for i in range(5)]
    assert sizes == [2] * 5
    assert st.flush().shape[2] == 4


def test_unbatched_chunks_and_out_buffer():
    layer = tvm_convt.ConvTranspose1d(4, 3, 4, stride=2, seed=0)
    x, _, _ = random_inputs(layer.params, None, 6, "float32")
    st = layer.stream()
    out = tvm_convt.runtime.aligned_empty((1, 3, 6), "float32")
    first = st.push(x[:, :3], out=out)
    assert first.shape == (3, 6) and np.shares_memory(first, out)
    got = np.concatenate([first.copy(), st.push(x[:, 3:]), st.flush()], axis=1)
    assert_close(got, layer(x).astype(np.float64), "float32")
    for wrong in (np.empty((1, 3, 5), "float32"), tvm_convt.runtime.aligned_empty((1, 3, 6), "float64")):
        with pytest.raises(ValueError, match="out must be a writable C-contiguous float32 array of shape"):
            layer.stream().push(x[:, :3], out=wrong)


def test_moshi_causal_convention():
    """Moshi's StreamingConvTranspose1d, written here from its description: each chunk's padding-free
    output gets the partial sum of the last kernel_size - stride samples added, which it replaces."""
    k, s = 8, 4
    layer = tvm_convt.ConvTranspose1d(6, 5, k, stride=s, seed=7)
    w, b = layer.weight.astype(np.float64), layer.bias.astype(np.float64)
    p0 = layer.params
    x, _, _ = random_inputs(p0, 2, 13, "float32", seed=8)
    partial, expected = np.zeros((2, 5, k - s)), []
    for i in range(0, 13, 3):
        y = conv_transpose1d_reference(x[:, :, i:i + 3], w, b, p0)
        y[:, :, :k - s] += partial
        partial = y[:, :, -(k - s):] - b[None, :, None]
        expected.append(y[:, :, :-(k - s)])
    st = layer.stream(batch=2, causal=True)
    got = [st.push(x[:, :, i:i + 3]) for i in range(0, 13, 3)]
    assert [g.shape[2] for g in got] == [e.shape[2] for e in expected]
    assert_close(np.concatenate(got, axis=2), np.concatenate(expected, axis=2), "float32")
    assert st.flush().shape == (2, 5, 0)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_causal_trim_right_ratio(ratio):
    """The whole signal in the causal convention: ceil(overlap * ratio) trimmed from the end, the rest
    of the overlap from the start (EnCodec's SConvTranspose1d)."""
    layer = tvm_convt.ConvTranspose1d(4, 3, 7, stride=2, seed=9)
    x, _, _ = random_inputs(layer.params, 1, 11, "float32", seed=10)
    overlap = layer.params.overlap
    right = math.ceil(overlap * ratio)
    full = layer(x)
    expected = full[:, :, overlap - right:full.shape[2] - right]
    st = layer.stream(causal=True, trim_right_ratio=ratio)
    for chunks in chunkings(11, seed=11):
        st.reset()
        assert relative_error(streamed(st, x, chunks), expected.astype(np.float64)) <= STREAM_TOLERANCE["float32"]


def test_reset_rows_one_by_one():
    layer = tvm_convt.ConvTranspose1d(4, 3, 6, stride=2, seed=0)
    x, _, _ = random_inputs(layer.params, 2, 8, "float32", seed=1)
    st = layer.stream(batch=2)
    st.push(x[:, :, :5])
    st.reset(rows=[1])  # row 1 starts a new signal; row 0 goes on
    rest = np.concatenate([st.push(x[:, :, 5:]), st.flush()], axis=2)
    assert_close(rest[0], layer(x[:1])[0, :, 10:].astype(np.float64), "float32")
    assert_close(rest[1], layer(x[1:, :, 5:])[0].astype(np.float64), "float32")
    padded = tvm_convt.ConvTranspose1d(4, 3, 6, stride=2, padding=1, seed=0).stream(batch=2)
    with pytest.raises(ValueError, match="cannot restart one by one"):
        padded.reset(rows=[0])
    with pytest.raises(ValueError, match="rows must be batch rows"):
        st.reset(rows=[2])


def test_stream_reads_the_layers_new_weights():
    layer = tvm_convt.ConvTranspose1d(4, 3, 4, stride=2, seed=0)
    x, w, b = random_inputs(layer.params, 1, 6, "float32", seed=2)
    st = layer.stream()
    layer.weight, layer.bias = w, b
    got = streamed(st, x, [2, 4])
    assert_close(got, conv_transpose1d_reference(x, w, b, layer.params), "float32")


def test_compiled_module_opens_a_stream():
    p = ConvTranspose1dParams(4, 3, 5, stride=2, padding=2)
    x, w, b = random_inputs(p, 1, 9, "float32", seed=3)
    st = tvm_convt.compile(p).stream(w, b)
    assert_close(streamed(st, x, [1, 3, 5]), conv_transpose1d_reference(x, w, b, p), "float32")


def test_stream_state_survives_deepcopy():
    layer = tvm_convt.ConvTranspose1d(4, 3, 6, stride=2, seed=0)
    x, _, _ = random_inputs(layer.params, 1, 7, "float32", seed=4)
    st = layer.stream()
    head = st.push(x[:, :, :3])
    twin = copy.deepcopy(st)
    tails = [np.concatenate([s.push(x[:, :, 3:]), s.flush()], axis=2) for s in (st, twin)]
    np.testing.assert_array_equal(tails[0], tails[1])
    assert_close(np.concatenate([head, tails[0]], axis=2), layer(x).astype(np.float64), "float32")


def test_circular_is_refused_where_it_wraps():
    with pytest.raises(ValueError, match="cannot compute padding_mode='circular'.*padding=2"):
        tvm_convt.ConvTranspose1d(4, 3, 4, stride=2, padding=2, padding_mode="circular").stream()
    # Without padding nothing wraps: every mode is zeros mode (and the bias is still added).
    for mode in ("circular", "reflect", "replicate"):
        layer = tvm_convt.ConvTranspose1d(4, 3, 4, stride=2, padding_mode=mode, seed=0)
        x, _, _ = random_inputs(layer.params, 1, 7, "float32")
        assert_close(streamed(layer.stream(), x, [2, 5]), layer(x).astype(np.float64), "float32")


def random_case(rng: np.random.Generator) -> tuple[ConvTranspose1dParams, int, bool, float]:
    """A random valid layer and input length (conftest.random_layer), and whether to stream it in the
    causal convention, with which trim_right_ratio."""
    p, length = random_layer(rng)
    causal = not p.padding and not p.output_padding and p.overlap >= 0 and rng.random() < 0.3
    return p, length, causal, float(rng.choice([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("case", range(12))
def test_random_layers_stream_like_the_reference(case):
    """A seeded sample of the 210 random layers checked by hand at this stop (0 off the reference)."""
    rng = np.random.default_rng(2300 + case)
    p, length, causal, ratio = random_case(rng)
    layer = tvm_convt.ConvTranspose1d(**p.to_dict(), seed=case)
    x, _, _ = random_inputs(p, int(rng.integers(1, 3)), length, "float32", seed=case)
    expected = conv_transpose1d_reference(x, layer.weight, layer.bias, p)
    if causal:
        right = math.ceil(p.overlap * ratio)
        expected = expected[:, :, p.overlap - right:expected.shape[2] - right]
    st = layer.stream(batch=x.shape[0], causal=causal, trim_right_ratio=ratio)
    chunks, left = [], length
    while left:
        chunks.append(int(min(left, rng.choice([1, 2, 3, 5, 64]))))
        left -= chunks[-1]
    assert_close(streamed(st, x, chunks), expected, "float32")


@pytest.mark.parametrize("call,match", [
    (lambda st: st.push(np.zeros((2, 4, 3), "float32")), r"chunks of shape \(1, 4, T\)"),
    (lambda st: st.push(np.zeros((1, 4, 0), "float32")), "T >= 1"),
    (lambda st: st.push(np.zeros((1, 4, 3), "float64")), "dtype"),
    (lambda st: st.flush(), "nothing was pushed"),
])
def test_bad_pushes(call, match):
    st = tvm_convt.ConvTranspose1d(4, 3, 4, stride=2).stream()
    with pytest.raises((ValueError, TypeError), match=match):
        call(st)


def test_push_after_flush_and_too_short_a_signal():
    st = tvm_convt.ConvTranspose1d(4, 3, 4, stride=2).stream()
    st.push(np.zeros((1, 4, 2), "float32"))
    st.flush()
    with pytest.raises(ValueError, match="was flushed"):
        st.push(np.zeros((1, 4, 2), "float32"))
    st.reset()
    st.push(np.zeros((1, 4, 2), "float32"))  # started again
    reflect = tvm_convt.ConvTranspose1d(4, 3, 4, stride=2, padding=5, padding_mode="reflect").stream()
    reflect.push(np.zeros((1, 4, 1), "float32"))
    with pytest.raises(ValueError, match="L_out=-6"):  # the layer's own refusal of the whole signal
        reflect.flush()


@pytest.mark.parametrize("kw,match", [
    (dict(causal=True, trim_right_ratio=1.5), "trim_right_ratio"),
    (dict(causal="yes"), "causal must be a bool"),
    (dict(batch=0), "batch must be a positive int"),
])
def test_bad_stream_options(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tvm_convt.ConvTranspose1d(4, 3, 4, stride=2).stream(**kw)


def test_causal_needs_no_padding():
    with pytest.raises(ValueError, match="causal stream"):
        tvm_convt.ConvTranspose1d(4, 3, 4, stride=2, padding=1).stream(causal=True)


def test_geometry_holds_back_what_the_end_may_change():
    """hold: zeros mode holds the samples the right crop may drop; reflect those the fold reaches."""
    zeros = StreamGeometry.of(ConvTranspose1dParams(4, 4, 4, stride=2, padding=3))  # overlap 2
    assert (zeros.left, zeros.end_offset, zeros.hold) == (3, -1, 1)
    reflect = StreamGeometry.of(ConvTranspose1dParams(4, 4, 4, stride=2, padding=1, padding_mode="reflect"))
    assert reflect.hold == 1 + 1 - (2 - 1)
    assert StreamGeometry.of(ConvTranspose1dParams(4, 4, 16, stride=8, padding=4)).per_row is False
    assert StreamGeometry.of(ConvTranspose1dParams(4, 4, 16, stride=8)).per_row is True



@needs_torch
def test_torch_streaming_layer_matches_torch_and_keeps_its_state():
    import io

    from tvm_convt.torch import StreamingConvTranspose1d

    torch.manual_seed(0)
    layer = StreamingConvTranspose1d(8, 4, 8, stride=4, padding=2)
    x = torch.randn(2, 8, 15)
    expected = torch.nn.functional.conv_transpose1d(x.double(), layer.weight.double(), layer.bias.double(),
                                                    stride=4, padding=2).detach().numpy()
    head = layer(x[:, :, :6])
    saved = io.BytesIO()
    torch.save(layer.state_dict(), saved)
    twin = copy.deepcopy(layer)
    tail = torch.cat([layer(x[:, :, 6:]), layer.flush()], dim=2)
    assert_close(torch.cat([head, tail], dim=2).numpy(), expected, "float32")
    torch.testing.assert_close(torch.cat([twin(x[:, :, 6:]), twin.flush()], dim=2), tail, rtol=0, atol=0)
    restored = StreamingConvTranspose1d(8, 4, 8, stride=4, padding=2)
    saved.seek(0)
    restored.load_state_dict(torch.load(saved))  # weights_only: the state is tensors and plain values
    torch.testing.assert_close(torch.cat([restored(x[:, :, 6:]), restored.flush()], dim=2), tail, rtol=0, atol=0)
    with torch.no_grad():  # the twin reads its own parameters, not the original's
        layer.weight.zero_()
    twin.reset()
    assert twin(x).abs().max() > 0


@needs_torch
def test_torch_streaming_layer_moshi_convention_and_weight_norm():
    from tvm_convt.torch import StreamingConvTranspose1d

    torch.manual_seed(1)
    layer = StreamingConvTranspose1d(6, 4, 8, stride=4, causal=True)
    torch.nn.utils.parametrizations.weight_norm(layer)  # how Moshi's and EnCodec's layers ship
    x = torch.randn(1, 6, 9)
    full = torch.nn.functional.conv_transpose1d(x, layer.weight, layer.bias, stride=4)
    got = torch.cat([layer(x[:, :, i:i + 1]) for i in range(9)], dim=2)
    assert got.shape[2] == 9 * 4
    assert_close(got.numpy(), full[:, :, :36].detach().double().numpy(), "float32")
    with pytest.raises(ValueError, match="circular"):
        StreamingConvTranspose1d(4, 4, 4, stride=2, padding=1, padding_mode="circular")


def test_streaming_decoder_example_matches_the_whole_signal():
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "streaming_decoder.py"
    out = subprocess.run([sys.executable, str(script), "--frames", "12"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    diff = float(re.search(r"max \|streamed - whole\| / max\(1, max\|whole\|\): ([0-9.e+-]+)", out.stdout).group(1))
    assert diff <= STREAM_TOLERANCE["float32"], out.stdout
    assert re.search(r"output samples: (\d+) \(whole signal: \1\)", out.stdout), out.stdout
    assert "per-push latency: p50" in out.stdout and "real-time factor" in out.stdout


def test_a_stream_longer_than_one_call_can_hold():
    """A stream's whole signal may pass the index limits of one call (hours of audio): only the layer's
    own refusals of its length apply at the flush."""
    from tvm_convt.params import INDEX_LIMIT

    layer = tvm_convt.ConvTranspose1d(2, 3, 4, stride=2, seed=0)
    st = layer.stream()
    x = np.ones((1, 2, 5), "float32")
    st.push(x)
    st._frames = INDEX_LIMIT  # as after hours of pushes
    assert st.flush().shape == (1, 3, 2)


def test_streams_refuse_gpu_targets():
    """Streams run on CPU targets: the layer's, the function's and the PyTorch layer's say so in one line."""
    cuda = {"kind": "cuda", "arch": "sm_80"}
    layer = tvm_convt.ConvTranspose1d(4, 3, 4, stride=2, target=cuda)
    with pytest.raises(ValueError, match="conv_transpose1d: streams run on CPU targets, got target kind 'cuda'"):
        layer.stream()
    with pytest.raises(ValueError, match="streams run on CPU targets, got target kind 'cuda'"):
        tvm_convt.stream(np.zeros((4, 3, 4), "float32"), stride=2, target=cuda)
    if torch is not None:
        from tvm_convt.torch import StreamingConvTranspose1d

        with pytest.raises(ValueError, match="streams run on CPU targets, got target kind 'cuda'"):
            StreamingConvTranspose1d(4, 3, 4, stride=2, target=cuda)
