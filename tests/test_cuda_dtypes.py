"""float16 and bfloat16 on CUDA: accepted dtypes, CPU refusal, float32 accumulation, the CUDA
rules' programs run on the CPU, real nvcc compilation without a GPU; running with one (gpu marker)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm

import tvm_convt
from tvm_convt.build import device_source, schedule_symbolic
from tvm_convt.lengths import range_for
from tvm_convt.params import ConvTranspose1dParams, SymbolicWorkload, Workload, check_dtype, numpy_dtype
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.schedule import default_schedule
from tvm_convt.schedule.cuda import GemmConfig, _gemm_tiles
from tvm_convt.suite import default_suite
from tvm_convt.target import resolve_target

from conftest import TOLERANCES, assert_close, random_inputs, torch
from test_cuda import RULE_CASES, SUITE_RULES, SYMBOLIC_LAYERS, _case_id, _threads_as_loops, check_with_nvcc

P = ConvTranspose1dParams
HALF = ("float16", "bfloat16")
ARCHS = ("sm_80", "sm_90")
# Each rule through every padding mode, dilation, groups and a reduction gather (20 live taps),
# smaller than test_cuda's where the threads-run-as-loops program would take seconds.
HALF_RULE_CASES = [
    RULE_CASES[0], RULE_CASES[2], RULE_CASES[4],
    ("gpu-gemm", P(9, 5, 16, stride=8, padding=4, padding_mode="replicate", bias=False), 1, 20),
    ("gpu-gemm", P(4, 4, 20, padding=3), 1, 24),
    RULE_CASES[8],
]
# The C type TVM's CUDA code gives each dtype.
C_TYPES = {"float16": "half", "bfloat16": "nv_bfloat16"}
has_gpu = tvm.cuda(0).exist
on_gpu = pytest.mark.skipif(not has_gpu, reason="no CUDA GPU")


def _cuda(arch: str = "sm_80", **limits):
    return resolve_target({"kind": "cuda", "arch": arch, **limits})


def _half(w: Workload, dtype: str) -> Workload:
    return Workload(w.params, w.batch, w.length, dtype)


def _run_on_cpu(rule: str, w: Workload, x, weight, b) -> np.ndarray:
    """``rule``'s CUDA program for ``w``, threads run as loops, built for and run on the CPU."""
    sch, _ = default_schedule(w, _cuda(), rule=rule)
    executable = tvm.compile(_threads_as_loops(sch.mod), target="llvm")
    args = [tvm.runtime.tensor(a) for a in (x, weight, b) if a is not None]
    out = tvm.runtime.empty(w.output_shape, w.dtype)
    executable["main"](*args, out)
    return out.numpy()


# -- the dtypes themselves ----------------------------------------------------------------------
def test_half_dtypes_are_accepted_by_name_numpy_ml_dtypes_and_torch():
    import ml_dtypes

    assert check_dtype("float16") == check_dtype(np.float16) == "float16"
    assert check_dtype("bfloat16") == check_dtype(ml_dtypes.bfloat16) == "bfloat16"
    assert check_dtype(np.dtype(ml_dtypes.bfloat16)) == "bfloat16"
    assert numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    if torch is not None:
        assert check_dtype(torch.float16) == "float16" and check_dtype(torch.bfloat16) == "bfloat16"


def test_half_workloads_accumulate_in_float32():
    w = Workload(P(16, 8, 4, stride=2), 2, 10, "bfloat16")
    assert w.accumulator == "float32" and Workload(w.params, 2, 10, "float64").accumulator == "float64"
    stored = 2 * 16 * 10 + 16 * 8 * 4 + 8 + 2 * 8 * w.out_length  # x, weight, bias, y: 2 bytes each
    _, n_q = w.phase_range
    accumulated = 2 * 10 * 8 * 4 + 2 * 8 * 2 * n_q  # col and the gather: 4 bytes each
    assert w.working_set_bytes == 2 * stored + 4 * accumulated


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("call", ["compile", "layer", "functional", "functional-torch"])
def test_cpu_target_refuses_half_dtypes(call, dtype):
    p = P(4, 2, 3, stride=2)
    x, w, b = random_inputs(p, 1, 5, dtype)
    message = rf"^conv_transpose1d: dtype {dtype} needs a CUDA target, got dtype='{dtype}', target='llvm'$"
    with pytest.raises(ValueError, match=message):
        if call == "compile":
            tvm_convt.compile(p, batch=1, length=5, dtype=dtype)
        elif call == "layer":
            tvm_convt.ConvTranspose1d(4, 2, 3, stride=2, dtype=dtype)
        elif call == "functional":
            tvm_convt.conv_transpose1d(x, w, b, stride=2)
        else:
            if torch is None:
                pytest.skip("torch is not installed")
            t = getattr(torch, dtype)
            tvm_convt.conv_transpose1d(torch.randn(1, 4, 5, dtype=t), torch.randn(4, 2, 3, dtype=t), stride=2)


def test_cuda_modules_compile_in_half_dtypes_without_gpu():
    for dtype in HALF:
        compiled = tvm_convt.compile(P(8, 6, 5, stride=3, groups=2), batch=2, length=9, dtype=dtype,
                                     target={"kind": "cuda", "arch": "sm_90"}, tuned=False)
        assert compiled.workload.dtype == dtype and compiled.metadata.schedule == "default:gpu-direct"


# -- shared memory sized by what it holds --------------------------------------------------------
def test_gemm_shared_tiles_are_sized_in_the_input_dtype():
    """x and weight tiles are 2-byte in the half dtypes: a chunk twice as deep fits."""
    w = default_suite()["hifigan_v1_up0"]
    cfg = GemmConfig()
    small = _cuda(max_shared_memory_per_block=8192)  # 16 x 144 elements: 9216 B in float32
    assert _gemm_tiles(cfg, w, small).bk == 8
    for dtype in HALF:
        assert _gemm_tiles(cfg, _half(w, dtype), small).bk == 16, dtype


def _shared_declarations(source: str) -> list[str]:
    return sorted(re.findall(r"__shared__ (?:alignas\(\d+\) )?(\w+) (\w+)\[(\d+)\]", source))


def test_direct_col_tile_is_sized_in_float32():
    """gpu-direct's shared tile holds col (float32 in every dtype): a limit that halves the
    float32 tile halves the float16 one too, and the tile fits that limit."""
    p, batch, length = P(6, 6, 4, stride=2, padding=1, groups=6), 1, 600
    full = _shared_declarations(device_source(Workload(p, batch, length), target=_cuda(), rule="gpu-direct"))
    ((ctype, _, elements),) = full
    assert ctype == "float"
    limit = 4 * int(elements) - 4  # the float32 tile at the configured q_tile no longer fits
    for dtype in ("float32", *HALF):
        source = device_source(Workload(p, batch, length, dtype), target=_cuda(max_shared_memory_per_block=limit),
                               rule="gpu-direct")
        ((ctype, _, shrunk),) = _shared_declarations(source)
        assert ctype == "float" and 4 * int(shrunk) <= limit, dtype


# -- the CUDA rules' programs, run on the CPU ----------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", HALF_RULE_CASES, ids=_case_id)
def test_cuda_rules_compute_the_reference_on_cpu_in_half_dtypes(case, dtype):
    """LLVM loads, converts and stores float16 and bfloat16 (the arithmetic is float32)."""
    rule, p, batch, length = case
    w = Workload(p, batch, length, dtype)
    x, weight, b = random_inputs(p, batch, length, dtype)
    y = _run_on_cpu(rule, w, x, weight, b)
    assert y.dtype == numpy_dtype(dtype)
    assert_close(y, conv_transpose1d_reference(x, weight, b, p), dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_cuda_module_for_every_length_computes_the_reference_on_cpu_in_half_dtypes(dtype):
    p = SYMBOLIC_LAYERS[0]
    mod, _, ranges = schedule_symbolic(SymbolicWorkload(p, dtype), _cuda(), tuned=False)
    executable = tvm.compile(_threads_as_loops(mod), target="llvm")
    for batch, length in ((1, 1), (2, 70), (1, 300)):
        x, weight, b = random_inputs(p, batch, length, dtype)
        out = tvm.runtime.empty((batch, p.out_channels, p.output_length(length)), dtype)
        executable[range_for(ranges, length).function](*[tvm.runtime.tensor(a) for a in (x, weight, b)], out)
        assert_close(out.numpy(), conv_transpose1d_reference(x, weight, b, p), dtype)


def _cancelling(kind: str, dtype: str):
    """A layer and inputs whose sums lose everything in a 16-bit accumulator: +1000, then
    small terms that 1000 absorbs, then -1000. ``channels``: the terms come from the input
    channels (col's reduction); ``taps``: from the kernel taps of one channel (the gather).
    Every output is about 0.6 (channels) or 0.75 (taps), so the error is not scaled down."""
    npd = numpy_dtype(dtype)
    if kind == "channels":
        p = P(8, 2, 1, bias=False)
        x = np.full((1, 8, 6), 0.1)
        x[:, 0], x[:, 7] = 1000.0, -1000.0
        weight = np.ones(p.weight_shape)
    else:
        p = P(1, 1, 5, padding=4, bias=False)  # padding crops the partial sums at the edges
        x = np.ones((1, 1, 10))
        weight = np.array([1000.0, 0.25, 0.25, 0.25, -1000.0]).reshape(p.weight_shape)
    return p, x.astype(npd), weight.astype(npd)


def _sequential_sum(terms: np.ndarray, dtype: str) -> float:
    acc = numpy_dtype(dtype).type(0)
    for t in terms:
        acc = numpy_dtype(dtype).type(float(acc) + float(t))
    return float(acc)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rule", ["gpu-direct", "gpu-gemm", "gpu-fallback"])
def test_half_programs_hold_every_sum_in_float32(rule, dtype):
    """Every buffer the CUDA program allocates (col, the gather, margins, accumulators) is
    float32 but the shared copies of the inputs, which keep the dtype."""
    p = P(4, 4, 4, stride=2, padding=1, groups=2, padding_mode="replicate")
    w = Workload(p, 1, 20, dtype)
    sch, _ = default_schedule(w, _cuda(), rule=rule)
    buffers = {b.name: str(b.dtype) for b in sch.mod["main"].body.block.alloc_buffers}
    assert "col" in buffers or "col_shared" in buffers, buffers
    for name, held in buffers.items():
        assert held == (dtype if name.split("_")[0] in ("x", "weight") else "float32"), (name, buffers)


@pytest.mark.parametrize("kind", ["channels", "taps"])
@pytest.mark.parametrize("rule", ["gpu-direct", "gpu-gemm", "gpu-fallback"])
def test_float16_sums_are_float32_on_cpu(rule, kind):
    """Numerically, on the CPU: float16 only, since TVM's LLVM code computes bfloat16 arithmetic
    in float32 whatever the program says (its bfloat16 legalisation), so a CPU run cannot tell."""
    dtype = "float16"
    p, x, weight = _cancelling(kind, dtype)
    expected = conv_transpose1d_reference(x, weight, None, p)
    # The case discriminates: a running sum in the dtype itself misses by far more than the tolerance.
    terms = x[0, :, 0] * weight[:, 0, 0] if kind == "channels" else weight[0, 0, :]
    assert abs(_sequential_sum(terms, dtype) - expected[0, 0, 0]) > 10 * TOLERANCES[dtype]
    w = Workload(p, 1, x.shape[-1], dtype)
    assert_close(_run_on_cpu(rule, w, x, weight, None), expected, dtype)


# -- real nvcc, no GPU needed --------------------------------------------------------------------
def _half_sources(arch: str) -> dict[str, tuple[str, str]]:
    """``{file name: (dtype, CUDA source)}``: the default suite under its default rules and each
    rule on its own layers, in both half dtypes."""
    target = _cuda(arch)
    sources = {}
    for dtype in HALF:
        for name, w in default_suite().items():
            sources[f"{dtype}_suite_{name}"] = (dtype, device_source(_half(w, dtype), target=target))
        for i, (rule, p, batch, length) in enumerate(HALF_RULE_CASES):
            w = Workload(p, batch, length, dtype)
            sources[f"{dtype}_{rule}{i}"] = (dtype, device_source(w, target=target, rule=rule))
        sources[f"{dtype}_any_length"] = (dtype, device_source(SymbolicWorkload(SYMBOLIC_LAYERS[1], dtype),
                                                               target=target))
    return sources


def _check_kernel_types(name: str, dtype: str, source: str) -> None:
    """Inputs and output in the dtype, col and the gather in float32."""
    signatures = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?\w+\(([^)]*)\)', source)
    params = {m.group(2): m.group(1) for sig in signatures
              for m in re.finditer(r"(\w+)\* __restrict__ (\w+)_ptr", sig)}
    assert params.get("y") == C_TYPES[dtype], (name, params)
    assert params.get("x", params.get("weight")) == C_TYPES[dtype], (name, params)
    for buffer in ("col", "full"):
        assert params.get(buffer, "float") == "float", (name, buffer, params)


@pytest.mark.parametrize("arch", ARCHS)
def test_half_sources_compile_with_nvcc(arch, tmp_path):
    """Every source's types checked, then all compiled in one nvcc call (one file a dtype)."""
    sources = _half_sources(arch)
    assert len(sources) == 2 * (len(SUITE_RULES) + len(HALF_RULE_CASES) + 1)
    for name, (dtype, source) in sources.items():
        _check_kernel_types(name, dtype, source)
    check_with_nvcc({name: source for name, (_, source) in sources.items()}, arch, tmp_path)


# -- on a GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", list(SUITE_RULES))
def test_default_suite_matches_reference_on_gpu_in_half_dtypes(name, dtype):
    w = _half(default_suite()[name], dtype)
    x, weight, b = random_inputs(w.params, w.batch, w.length, dtype)
    compiled = tvm_convt.compile(w.params, batch=w.batch, length=w.length, dtype=dtype, target="cuda",
                                 tuned=False)
    assert compiled.metadata.schedule == f"default:{SUITE_RULES[name]}"
    assert_close(compiled(x, weight, b), conv_transpose1d_reference(x, weight, b, w.params), dtype)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", HALF_RULE_CASES, ids=_case_id)
def test_cuda_rules_match_reference_on_gpu_in_half_dtypes(case, dtype):
    rule, p, batch, length = case
    x, w, b = random_inputs(p, batch, length, dtype)
    y = tvm_convt.compile(p, batch=batch, length=length, dtype=dtype, target="cuda", rule=rule,
                          tuned=False)(x, w, b)
    assert_close(y, conv_transpose1d_reference(x, w, b, p), dtype)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("kind", ["channels", "taps"])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rule", ["gpu-direct", "gpu-gemm", "gpu-fallback"])
def test_half_dtypes_accumulate_in_float32_on_gpu(rule, dtype, kind):
    p, x, weight = _cancelling(kind, dtype)
    y = tvm_convt.compile(p, batch=1, length=x.shape[-1], dtype=dtype, target="cuda", rule=rule,
                          tuned=False)(x, weight)
    assert_close(y, conv_transpose1d_reference(x, weight, None, p), dtype)

