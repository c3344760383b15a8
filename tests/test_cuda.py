"""CUDA: code generation and real nvcc compilation without a GPU; running with one (gpu marker)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import tvm

import tvm_convt
from tvm_convt.build import device_source, schedule, schedule_symbolic
from tvm_convt.lengths import range_for
from tvm_convt.params import ConvTranspose1dParams, SymbolicWorkload, Workload
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.schedule import default_schedule
from tvm_convt.suite import default_suite
from tvm_convt.target import resolve_target

from conftest import assert_close, random_inputs, random_layer

P = ConvTranspose1dParams
CUDA_LAYERS = [
    P(8, 6, 5, stride=3, padding=2, groups=2),
    P(4, 4, 4, stride=2, padding=1, groups=4, padding_mode="reflect"),
    P(6, 3, 3, stride=2, dilation=2, output_padding=1, padding_mode="replicate", bias=False),
    P(16, 8, 16, stride=8, padding=4, padding_mode="circular"),
]
# (rule, layer, batch, length): each rule through groups, dilation, output_padding, every
# padding mode and bias or none, with sizes ragged against its tiles.
RULE_CASES = [
    ("gpu-direct", P(6, 6, 4, stride=2, padding=1, groups=6, padding_mode="reflect"), 2, 40),
    ("gpu-direct", P(8, 4, 5, stride=3, padding=2, dilation=2, output_padding=1, groups=2,
                     padding_mode="replicate", bias=False), 1, 70),
    ("gpu-direct", P(4, 8, 3, stride=1, padding=2, dilation=3, groups=4, padding_mode="circular"), 2, 33),
    ("gpu-direct", P(4, 4, 16, stride=8, padding=4, groups=4), 1, 9),
    ("gpu-gemm", P(20, 6, 5, stride=3, padding=2, groups=2), 2, 9),
    ("gpu-gemm", P(24, 12, 4, stride=2, padding=3, dilation=3, output_padding=1,
                   padding_mode="reflect", bias=False), 1, 70),
    ("gpu-gemm", P(17, 9, 16, stride=8, padding=4, padding_mode="replicate"), 2, 75),
    ("gpu-gemm", P(32, 16, 7, stride=4, padding=3, output_padding=1, groups=2,
                   padding_mode="circular"), 1, 130),
    ("gpu-fallback", P(8, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect"), 2, 9),
    # Issue #9's extremes: a window past the input (huge dilation), a reduction gather
    # (more than 16 live taps), kernels longer than the input, a single tap with stride.
    ("gpu-direct", P(2, 2, 9, padding=7, dilation=4096), 1, 16),
    ("gpu-gemm", P(32, 16, 40, stride=1, padding=3), 2, 64),
    ("gpu-gemm", P(4, 3, 300, padding_mode="reflect", padding=5), 1, 10),
    ("gpu-gemm", P(2, 8, 1, stride=5, output_padding=3), 2, 7),
    ("gpu-fallback", P(4, 4, 70, stride=2, groups=4, dilation=3), 1, 30),
    ("gpu-gemm", P(1, 2, 20), 1, 1),  # a one-element x tile per K chunk
]
SUITE_RULES = {
    "hifigan_v1_up0": "gpu-gemm", "hifigan_v1_up1": "gpu-gemm", "hifigan_v1_up2": "gpu-gemm",
    "hifigan_v1_up3": "gpu-gemm", "hifigan_train_up0": "gpu-gemm", "encodec_up0": "gpu-gemm",
    "encodec_up3": "gpu-gemm", "mimi_depthwise": "gpu-direct", "dilated_s1": "gpu-gemm",
    "grouped_g8": "gpu-gemm",
}
ARCHS = ("sm_80", "sm_90")
# Modules for every length: gpu-gemm through groups, dilation, output_padding, every padding mode,
# many taps (a gather that is a reduction), one tap with stride, and depthwise (gpu-direct's per shape).
SYMBOLIC_LAYERS = [
    P(20, 6, 5, stride=3, padding=2, groups=2),
    P(17, 9, 16, stride=8, padding=4, padding_mode="replicate"),
    P(6, 6, 4, stride=2, padding=1, groups=6, padding_mode="reflect"),
    P(32, 16, 40, stride=1, padding=3),
    P(24, 12, 4, stride=2, padding=3, dilation=3, output_padding=1, padding_mode="circular", bias=False),
    P(2, 8, 1, stride=5, output_padding=3),
]
has_gpu = tvm.cuda(0).exist


def _case_id(case) -> str:
    rule, p, batch, length = case
    return (f"{rule}-{p.in_channels}to{p.out_channels}-k{p.kernel_size}s{p.stride}d{p.dilation}"
            f"g{p.groups}-{p.padding_mode}-{batch}x{length}")


def _cuda(arch: str):
    return resolve_target({"kind": "cuda", "arch": arch})


def _sources(arch: str) -> dict[str, str]:
    """Every kernel file the nvcc test compiles for ``arch``: the default suite and the
    small layers under their default rule, and each rule on its own layers."""
    target = _cuda(arch)
    sources = {f"suite_{name}": device_source(w, target=target) for name, w in default_suite().items()}
    for i, p in enumerate(CUDA_LAYERS):
        sources[f"layer{i}"] = device_source(Workload(p, 2, 9), target=target)
    for i, (rule, p, batch, length) in enumerate(RULE_CASES):
        sources[f"{rule}{i}"] = device_source(Workload(p, batch, length), target=target, rule=rule)
    for i, p in enumerate(SYMBOLIC_LAYERS[:4]):
        sources[f"any_length{i}"] = device_source(SymbolicWorkload(p), target=target)
    return sources


def test_default_suite_rules():
    for arch in ARCHS:
        got = {name: schedule(w, _cuda(arch), tuned=False)[1] for name, w in default_suite().items()}
        assert got == {name: f"default:{rule}" for name, rule in SUITE_RULES.items()}, arch


KERNEL_START = 'extern "C" __global__'


def _kernel_prefix(name: str) -> str:
    return re.sub(r"\W", "_", name) + "_kernel"


def _translation_units(sources: dict[str, str]) -> dict[str, str]:
    """The sources merged into one file per distinct preamble (the helpers before the first
    kernel), each kernel renamed after its source: nvcc spends most of a small file on start-up
    and headers, so one file of 26 kernels compiles about 3x faster than 26 files."""
    groups: dict[str, list[str]] = {}
    for name, source in sources.items():
        start = source.index(KERNEL_START)
        # main_kernel, or main_<range>_kernel in a module for every length.
        kernels = re.sub(r"\bmain(_\d+)?_kernel", lambda m: _kernel_prefix(name) + (m.group(1) or ""), source[start:])
        groups.setdefault(source[:start], []).append(kernels)
    return {f"unit{i}": preamble + "\n".join(kernels) for i, (preamble, kernels) in enumerate(groups.items())}


def check_with_nvcc(sources: dict[str, str], arch: str, folder) -> None:
    """Compile every source with the real nvcc for ``arch`` (skip where it is missing) and check
    that each kernel is in the cubins; kernels staging data in shared memory must synchronise."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed: CUDA sources are generated but not compiled")
    for name, source in sources.items():
        assert KERNEL_START in source, name
        for kernel in re.split(f"(?={re.escape(KERNEL_START)})", source):
            if "__shared__" in kernel:
                assert "__syncthreads()" in kernel, name
    units = _translation_units(sources)
    for unit, text in units.items():
        (folder / f"{unit}.cu").write_text(text)
    result = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-odir", str(folder),
                             *(str(folder / f"{unit}.cu") for unit in units)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    cubins = b"".join((folder / f"{unit}.cubin").read_bytes() for unit in units)
    for name in sources:
        assert _kernel_prefix(name).encode() in cubins, name


@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_sources_compile_with_nvcc(arch, tmp_path):
    """One nvcc call an architecture for all the sources, merged into few files."""
    check_with_nvcc(_sources(arch), arch, tmp_path)


def _threads_as_loops(mod: tvm.IRModule) -> tvm.IRModule:
    """The scheduled program with every thread binding a plain loop and every buffer in
    ordinary memory: what the CPU runs is then the schedule's TIR semantics."""
    text = re.sub(r', thread="[^"]+"', "", mod.script().replace("T.thread_binding(", "T.serial("))
    text = text.replace(', scope="shared"', "").replace(', scope="local"', "")
    return tvm.script.from_source(text)


@pytest.mark.parametrize("case", RULE_CASES, ids=_case_id)
def test_cuda_rules_compute_the_reference_on_cpu(case):
    """Without a GPU: each rule's program, threads run as loops, matches the reference.
    Catches layout and predicate mistakes (gpu-direct's modular col tile among them)."""
    rule, p, batch, length = case
    w = Workload(p, batch, length)
    sch, name = default_schedule(w, _cuda("sm_80"), rule=rule)
    executable = tvm.compile(_threads_as_loops(sch.mod), target="llvm")
    x, weight, b = random_inputs(p, batch, length, "float32")
    args = [tvm.runtime.tensor(a) for a in (x, weight, b) if a is not None]
    out = tvm.runtime.empty(w.output_shape, "float32")
    executable["main"](*args, out)
    assert_close(out.numpy(), conv_transpose1d_reference(x, weight, b, p), "float32")


@pytest.mark.parametrize("p,arch", [(p, "sm_80") for p in SYMBOLIC_LAYERS] + [(SYMBOLIC_LAYERS[1], "sm_90")],
                         ids=lambda v: v if isinstance(v, str) else _case_id(("", v, "", "")))
def test_cuda_modules_for_every_length_compute_the_reference_on_cpu(p, arch):
    """Without a GPU: each length range's program, threads run as loops, matches the reference at
    lengths across the ranges, their boundaries and batches."""
    mod, source, ranges = schedule_symbolic(SymbolicWorkload(p), _cuda(arch), tuned=False)
    assert source == "default:gpu-gemm"
    executable = tvm.compile(_threads_as_loops(mod), target="llvm")
    lengths = {p.min_length, 7, 97, 1000} | {r.last + d for r in ranges[:-1] for d in (0, 1)}
    for i, length in enumerate(sorted(n for n in lengths if n >= p.min_length)):
        batch = 1 + i % 3
        x, weight, b = random_inputs(p, batch, length, "float32", seed=i)
        args = [tvm.runtime.tensor(a) for a in (x, weight, b) if a is not None]
        out = tvm.runtime.empty((batch, p.out_channels, p.output_length(length)), "float32")
        executable[range_for(ranges, length).function](*args, out)
        assert_close(out.numpy(), conv_transpose1d_reference(x, weight, b, p), "float32")


# Every layer in float32 and float16 (the half dtype CUDA users take); bfloat16 on two.
SUITE_CPU_CASES = ([(name, dtype) for name in SUITE_RULES for dtype in ("float32", "float16")]
                   + [(name, "bfloat16") for name in ("hifigan_v1_up0", "mimi_depthwise")])


@pytest.mark.parametrize("name, dtype", SUITE_CPU_CASES, ids=[f"{n}-{d}" for n, d in SUITE_CPU_CASES])
def test_default_suite_cuda_programs_compute_the_reference_on_cpu(name, dtype):
    """Issue #26, 3: what a user of each default-suite layer gets on a GPU, run as CPU loops: the module
    for every length (gpu-gemm) at its shortest input, 13 and the first length of its last range, and
    the per-shape module (its default rule: gpu-gemm, gpu-direct for mimi) at length 13. The lengths
    are shrunk from the suite's; the programs keep their structure (ragged tiles, the ranges' tiles).
    Threads run one after another here, so races, missing barriers and occupancy are not tested."""
    from tvm_convt.params import check_dtype

    w = default_suite()[name]
    p, target = w.params, _cuda("sm_80")
    mod, _, ranges = schedule_symbolic(SymbolicWorkload(p, dtype), target, tuned=False)
    lengths = sorted({p.min_length, 13, ranges[-1].first})
    functions = {n: range_for(ranges, n).function for n in lengths}
    static = Workload(p, 1, 13, dtype)
    static_sch, rule = default_schedule(static, target)
    assert rule == SUITE_RULES[name], rule  # the rule the suite's own length gets
    programs = {f: mod[f] for f in set(functions.values())}
    programs["static"] = static_sch.mod["main"].with_attr("global_symbol", "static")
    executable = tvm.compile(_threads_as_loops(tvm.IRModule(programs)), target="llvm")
    for function, length in [(functions[n], n) for n in lengths] + [("static", 13)]:
        x, weight, b = random_inputs(p, 1, length, check_dtype(dtype))
        out = tvm.runtime.empty((1, p.out_channels, p.output_length(length)), dtype)
        executable[function](*[tvm.runtime.tensor(a) for a in (x, weight, b) if a is not None], out)
        assert_close(out.numpy(), conv_transpose1d_reference(x, weight, b, p), dtype)


@pytest.mark.parametrize("seed", range(6))
def test_random_layers_cuda_programs_compute_the_reference_on_cpu(seed):
    """Issue #26, 3: a seeded sample of random layers (conftest.random_layer: every padding mode,
    groups, dilation, output padding): the per-shape module of their default CUDA rule and the module
    for every length, threads run as loops, against the reference."""
    p, length = random_layer(np.random.default_rng(4100 + seed))
    target = _cuda("sm_80")
    static_sch, _ = default_schedule(Workload(p, 2, length), target)
    mod, _, ranges = schedule_symbolic(SymbolicWorkload(p), target, tuned=False)
    programs = {"static": static_sch.mod["main"].with_attr("global_symbol", "static"), **{
        gv.name_hint: mod[gv] for gv in mod.get_global_vars()}}
    executable = tvm.compile(_threads_as_loops(tvm.IRModule(programs)), target="llvm")
    for function, batch, n in (("static", 2, length), (range_for(ranges, length).function, 1, length),
                               (range_for(ranges, length + 40).function, 3, length + 40)):
        x, weight, b = random_inputs(p, batch, n, "float32", seed=seed)
        out = tvm.runtime.empty((batch, p.out_channels, p.output_length(n)), "float32")
        executable[function](*[tvm.runtime.tensor(a) for a in (x, weight, b) if a is not None], out)
        assert_close(out.numpy(), conv_transpose1d_reference(x, weight, b, p), "float32")


def test_cuda_module_for_every_length_refuses_a_batch_its_grid_cannot_hold():
    from tvm_convt.runtime.module import module_workload

    p = SYMBOLIC_LAYERS[0]
    target = {"kind": "cuda", "arch": "sm_80"}
    assert module_workload(p, 65535, 9, "float32", target).symbolic
    with pytest.raises(ValueError, match="at most 65535 batch rows a call .* got batch=65536"):
        module_workload(p, 65536, 9, "float32", target)
    compiled = tvm_convt.compile(p, target=target)
    assert compiled.symbolic and compiled.metadata.schedule == "default:gpu-gemm"
    with pytest.raises(ValueError, match="got batch=70000"):
        compiled.shape_for(70000, 9)


def test_cuda_module_exports_without_gpu(tmp_path):
    compiled = tvm_convt.compile(CUDA_LAYERS[0], batch=2, length=9, target={"kind": "cuda", "arch": "sm_90"})
    assert compiled.metadata.target_key == "cuda-sm_90"
    assert compiled.metadata.schedule == "default:gpu-direct"
    path = compiled.export(tmp_path / "cuda.so")
    assert path.stat().st_size > 0
    if not has_gpu:
        x, w, b = random_inputs(CUDA_LAYERS[0], 2, 9, "float32")
        with pytest.raises(RuntimeError, match="needs a cuda.* device to run"):
            compiled(x, w, b)


def test_cuda_target_needs_arch_without_gpu():
    if has_gpu:
        pytest.skip("a GPU is present: 'cuda' resolves to it")
    with pytest.raises(ValueError, match="name the architecture instead"):
        tvm_convt.compile(CUDA_LAYERS[0], batch=1, length=4, target="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu, reason="no CUDA GPU")
@pytest.mark.parametrize("p", CUDA_LAYERS, ids=str)
def test_cuda_matches_reference(p):
    x, w, b = random_inputs(p, 2, 9, "float32")
    y = tvm_convt.compile(p, batch=2, length=9, target="cuda")(x, w, b)
    assert_close(y, conv_transpose1d_reference(x, w, b, p), "float32")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu, reason="no CUDA GPU")
@pytest.mark.parametrize("case", RULE_CASES, ids=_case_id)
def test_cuda_rules_match_reference(case):
    rule, p, batch, length = case
    x, w, b = random_inputs(p, batch, length, "float32")
    y = tvm_convt.compile(p, batch=batch, length=length, target="cuda", rule=rule, tuned=False)(x, w, b)
    assert_close(y, conv_transpose1d_reference(x, w, b, p), "float32")


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu, reason="no CUDA GPU")
@pytest.mark.parametrize("name", list(SUITE_RULES))
def test_default_suite_matches_reference_on_gpu(name):
    w = default_suite()[name]
    x, weight, b = random_inputs(w.params, w.batch, w.length, w.dtype)
    compiled = tvm_convt.compile(w.params, batch=w.batch, length=w.length, dtype=w.dtype, target="cuda",
                                 tuned=False)
    assert compiled.metadata.schedule == f"default:{SUITE_RULES[name]}"
    assert_close(compiled(x, weight, b), conv_transpose1d_reference(x, weight, b, w.params), w.dtype)
