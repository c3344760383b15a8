"""The compiled operator against the float64 reference and PyTorch, over a table of layers."""

from __future__ import annotations

import numpy as np
import pytest

import tvm_convt
from tvm_convt.params import ConvTranspose1dParams
from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, needs_torch, random_inputs, torch, torch_conv_transpose1d

P = ConvTranspose1dParams

# (id, params, batch (None: unbatched), input length)
CASES = [
    ("basic", P(4, 6, 3), 2, 9),
    ("unet-up", P(8, 4, 4, stride=2, padding=1), 2, 16),
    ("kernel>=input", P(3, 5, 7, stride=2), 1, 3),
    ("stride>kernel", P(3, 4, 2, stride=5, padding=1), 2, 6),
    ("output_padding=stride-1", P(4, 4, 8, stride=4, padding=2, output_padding=3), 1, 7),
    ("stride<=output_padding<dilation", P(2, 6, 3, stride=2, dilation=4, output_padding=3), 2, 5),
    ("padding>dilation*(k-1)", P(3, 3, 3, stride=3, padding=4), 1, 10),
    ("depthwise", P(8, 8, 5, stride=2, padding=2, groups=8), 2, 12),
    ("depthwise-multiplier", P(4, 8, 3, stride=3, groups=4, dilation=2), 1, 9),
    ("groups-dilated", P(6, 4, 4, stride=2, padding=3, groups=2, dilation=3), 2, 8),
    ("l_in=1", P(3, 2, 4, stride=3), 2, 1),
    ("l_in=1-padded", P(2, 3, 5, padding=2), 1, 1),
    ("gcd(stride,dilation)=2", P(4, 4, 5, stride=4, dilation=2, padding=1), 1, 6),
    ("gcd(stride,dilation)=2-odd", P(3, 6, 5, stride=6, dilation=4, output_padding=1), 3, 5),
    ("stride1-dilated", P(8, 8, 7, dilation=3, padding=9), 1, 20),
    ("no-bias", P(5, 7, 3, stride=2, bias=False), 2, 6),
    ("hifigan-small", P(32, 16, 16, stride=8, padding=4), 1, 20),
    ("gemm-vectorised", P(16, 32, 4, stride=2, padding=1), 2, 13),
    ("odd-m", P(6, 3, 3, stride=2), 1, 5),
    # The GEMM rule needs 16 input channels per group: its cases with groups, gcd and output_padding.
    ("gemm-groups-dilated", P(32, 16, 4, stride=2, padding=3, groups=2, dilation=3), 2, 8),
    ("gemm-output_padding", P(16, 16, 8, stride=4, padding=2, output_padding=3), 1, 7),
    ("gemm-gcd", P(16, 8, 5, stride=4, dilation=2, padding=1), 3, 6),
    # More input channels than one channel block (128), in blocks that do not divide them.
    ("gemm-channel-blocks", P(129, 16, 4, stride=2, padding=1), 2, 7),
    ("unbatched", P(4, 6, 4, stride=2, padding=1), None, 7),
]
for mode in ("reflect", "replicate", "circular"):
    CASES += [
        (f"{mode}", P(4, 6, 5, stride=3, padding=3, output_padding=1, groups=2, dilation=2,
                      padding_mode=mode), 2, 7),
        (f"{mode}-no-padding", P(3, 4, 3, stride=2, padding_mode=mode), 1, 5),
        (f"{mode}-depthwise", P(4, 4, 4, stride=2, padding=1, groups=4, padding_mode=mode, bias=False), 2, 6),
        (f"{mode}-vectorised", P(16, 16, 4, stride=2, padding=2, padding_mode=mode), 1, 9),
    ]
# Padding at its limits: reflect padding = L_out - 1, circular padding = L_out,
# replicate padding > L_out (every margin folds onto the edge samples).
CASES += [
    ("reflect-limit", P(2, 3, 7, padding=2, padding_mode="reflect"), 1, 1),
    ("circular-limit", P(2, 3, 9, padding=3, padding_mode="circular"), 2, 1),
    ("replicate-wide", P(2, 3, 9, padding=4, padding_mode="replicate"), 1, 1),
]


def _check(p, batch, length, dtype, **compile_kwargs):
    x, w, b = random_inputs(p, batch, length, dtype)
    ref = conv_transpose1d_reference(x, w, b, p)
    compiled = tvm_convt.compile(p, batch=batch or 1, length=length, dtype=dtype, **compile_kwargs)
    y = compiled(x, w, b)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, ref, dtype)
    if torch is not None:
        assert_close(y, torch_conv_transpose1d(x, w, b, p), dtype)
    return compiled


@pytest.mark.parametrize("p, batch, length", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_float32(p, batch, length):
    _check(p, batch, length, "float32")


FLOAT64 = ["basic", "groups-dilated", "gemm-groups-dilated", "l_in=1", "depthwise", "gemm-vectorised", "reflect",
           "replicate", "circular", "stride<=output_padding<dilation"]


@pytest.mark.parametrize("p, batch, length", [c[1:] for c in CASES if c[0] in FLOAT64], ids=FLOAT64)
def test_float64(p, batch, length):
    _check(p, batch, length, "float64")


@pytest.mark.parametrize("name", ["basic", "gemm-vectorised", "hifigan-small", "circular-vectorised",
                                  "replicate", "depthwise"])
def test_fallback_rule_matches(name):
    """The always-applicable CPU rule is exact wherever the GEMM rule is used too."""
    _, p, batch, length = next(c for c in CASES if c[0] == name)
    compiled = _check(p, batch, length, "float32", rule="cpu-fallback")
    assert compiled.metadata.schedule == "default:cpu-fallback"


def test_default_rule_choice():
    # Stride 1: every tap is live, and the direct form serves it.
    assert tvm_convt.compile(P(16, 32, 4), batch=1, length=8).metadata.schedule == "default:cpu-direct"
    assert tvm_convt.compile(P(16, 32, 4, stride=2), batch=1, length=8).metadata.schedule == "default:cpu-gemm"
    # out_channels/groups * kernel_size = 9 has no vector-lane divisor: the fallback serves it.
    assert tvm_convt.compile(P(6, 3, 3, stride=2), batch=1, length=8).metadata.schedule == "default:cpu-fallback"
    # Fewer than 16 input channels per group: too short a reduction for a register tile.
    assert tvm_convt.compile(P(8, 32, 4, stride=3), batch=1, length=8).metadata.schedule == "default:cpu-fallback"
    # A rule of the GEMM form can still be asked for on a stride-1 layer; the direct one only there.
    assert tvm_convt.compile(P(16, 32, 4), batch=1, length=8, rule="cpu-gemm").metadata.schedule == "default:cpu-gemm"
    with pytest.raises(ValueError, match="schedule rule 'cpu-gemm' does not apply"):
        tvm_convt.compile(P(6, 3, 3, stride=2), batch=1, length=8, rule="cpu-gemm")
    with pytest.raises(ValueError, match="schedule rule 'cpu-direct' does not apply"):
        tvm_convt.compile(P(6, 3, 3, stride=2), batch=1, length=8, rule="cpu-direct")
    with pytest.raises(ValueError, match="must be one of cpu-direct, cpu-gemm-blocked, cpu-gemm, cpu-fallback, got rule='gpu'"):
        tvm_convt.compile(P(6, 3, 3), batch=1, length=8, rule="gpu")


def test_demo_layer():
    """The HiFi-GAN V1 first upsampling layer, the demo's workload."""
    _check(P(512, 256, 16, stride=8, padding=4), 1, 86, "float32")


@needs_torch
def test_functional_matches_torch_functional():
    p = P(6, 4, 5, stride=3, padding=2, output_padding=1, groups=2, dilation=2)
    x, w, b = random_inputs(p, 2, 7, "float32")
    y = tvm_convt.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                   stride=3, padding=2, output_padding=1, groups=2, dilation=2)
    expected = torch.nn.functional.conv_transpose1d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), 3, 2, 1, 2, 2).numpy()
    assert isinstance(y, torch.Tensor)  # torch in, torch out
    assert_close(y.numpy(), expected.astype(np.float64), "float32")


@needs_torch
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_functional_padding_modes(mode):
    p = P(4, 4, 3, stride=2, padding=2, padding_mode=mode)
    x, w, b = random_inputs(p, 1, 6, "float64")
    y = tvm_convt.conv_transpose1d(x, w, b, stride=2, padding=2, padding_mode=mode)
    assert_close(y, torch_conv_transpose1d(x, w, b, p), "float64")


def _random_cases(n: int, seed: int = 2026):
    """A seeded sweep over the parameter space, beyond the hand-picked table."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        groups = int(rng.choice([1, 1, 2, 3, 4]))
        kw = dict(stride=int(rng.integers(1, 6)), dilation=int(rng.integers(1, 5)),
                  padding=int(rng.integers(0, 6)), groups=groups, bias=bool(rng.integers(0, 2)),
                  padding_mode=str(rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])))
        limit = kw["stride"] if kw["padding_mode"] != "zeros" else max(kw["stride"], kw["dilation"])
        kw["output_padding"] = int(rng.integers(0, limit))
        p = P(groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4)), int(rng.integers(1, 8)), **kw)
        length = int(rng.integers(1, 12))
        try:
            p.output_length(length)
        except ValueError:
            continue
        cases.append((p, int(rng.integers(1, 3)), length))
    return cases


@pytest.mark.parametrize("p, batch, length", _random_cases(24), ids=lambda v: str(v) if isinstance(v, P) else None)
def test_random_sweep_float64(p, batch, length):
    _check(p, batch, length, "float64")


def _host_has_avx2() -> bool:
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        return " avx2 " in f" {open('/proc/cpuinfo').read()} ".replace("\n", " ")
    except OSError:
        return False


AVX2 = {"kind": "llvm", "mcpu": "haswell"}  # AVX2 + FMA, 16 vector registers


@pytest.mark.skipif(not _host_has_avx2(), reason="needs an x86-64 CPU with AVX2 to run AVX2 code")
@pytest.mark.parametrize("name", ["gemm-vectorised", "hifigan-small", "reflect-vectorised", "depthwise",
                                  "groups-dilated", "odd-m", "gemm-groups-dilated", "gemm-gcd",
                                  "gemm-channel-blocks"])
def test_avx2_code_path(name):
    """The AVX2 blocking (2 vectors x 6 samples, 16 registers) is what an AVX2 machine runs
    by default; check it here even on an AVX-512 host."""
    _, p, batch, length = next(c for c in CASES if c[0] == name)
    compiled = _check(p, batch, length, "float32", target=AVX2)
    assert compiled.metadata.target_key == "llvm-x86_64-avx2"
    _check(p, batch, length, "float64", target=AVX2)
