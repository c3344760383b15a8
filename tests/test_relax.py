"""tvm_convt.relax: models exported from PyTorch, legalized with use_tvm_convt, built with tvm.compile.

A seeded random set of layers (``TVM_CONVT_PROPERTY_EXAMPLES`` for a longer sweep, e.g.
``TVM_CONVT_PROPERTY_EXAMPLES=200 pytest tests/test_relax.py``) against PyTorch; the
skipped calls and their log lines; the bias fusion; workloads as a suite file; the
CUDA build for sm_90 without a GPU; the example on a short input.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
import torch  # noqa: E402
import tvm  # noqa: E402
import tvm_ffi  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic  # noqa: E402
from tvm.relax.frontend.torch import from_exported_program  # noqa: E402

import tvm_convt.relax as tr  # noqa: E402
from tvm_convt.build import device_source, schedule  # noqa: E402
from tvm_convt.params import ConvTranspose1dParams, Workload  # noqa: E402
from tvm_convt.relax.legalize import FUNC_PREFIX, SCHEDULE_ATTR, func_name  # noqa: E402
from tvm_convt.suite import load_suite  # noqa: E402
from tvm_convt.target import resolve_target, target_key  # noqa: E402

from conftest import assert_close, torch_conv_transpose1d  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("TVM_CONVT_PROPERTY_EXAMPLES", "8"))
CPU = resolve_target("llvm")
CUDA = resolve_target({"kind": "cuda", "arch": "sm_90"})
has_gpu = tvm.cuda(0).exist


# -- helpers ------------------------------------------------------------------------------
def export(model: torch.nn.Module, *inputs: torch.Tensor, **kwargs) -> tvm.IRModule:
    return from_exported_program(torch.export.export(model.eval(), inputs, **kwargs))


def run_cpu(mod: tvm.IRModule, *inputs: np.ndarray) -> list[np.ndarray]:
    vm = relax.VirtualMachine(tvm.compile(mod, target=CPU), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    return [t.numpy() for t in out]


def op_names(func: relax.Function) -> list[str]:
    """The operators (and call_tir targets) called in ``func``, in order."""
    names = []
    for value in relax.analysis.get_var2val(func).values():
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            callee = value.args[0].name_hint if value.op.name == "relax.call_tir" else ""
            names.append(f"{value.op.name}:{callee}" if callee else value.op.name)
    return names


def our_funcs(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if gv.name_hint.startswith(FUNC_PREFIX)}


def layer(p: ConvTranspose1dParams) -> torch.nn.ConvTranspose1d:
    return torch.nn.ConvTranspose1d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding,
                                    p.output_padding, p.groups, p.bias, p.dilation)


def random_case(rng: np.random.Generator) -> Workload:
    """A layer PyTorch and Relax both accept (Relax wants output_padding < stride)."""
    while True:
        groups = int(rng.choice([1, 1, 2, 3, 4]))
        stride, dilation, kernel = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 10))
        try:
            p = ConvTranspose1dParams(
                groups * int(rng.integers(1, 5)), groups * int(rng.integers(1, 5)), kernel, stride,
                int(rng.integers(0, dilation * (kernel - 1) // 2 + 2)), int(rng.integers(0, stride)),
                groups, bool(rng.integers(0, 2)), dilation)
            return Workload(p, int(rng.integers(1, 4)), int(rng.integers(1, 24)))
        except ValueError:
            continue


_rng = np.random.default_rng(20261128)
CASES = [random_case(_rng) for _ in range(EXAMPLES)]


# -- the random set against PyTorch ---------------------------------------------------------
@pytest.mark.parametrize("w", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_random_layers_match_torch(w):
    torch.manual_seed(0)
    model = layer(w.params)
    x = torch.randn(w.input_shape)
    mod = tr.use_tvm_convt(export(model, x), CPU)
    ops = op_names(mod["main"])
    assert not any(op.startswith(("relax.nn.conv1d_transpose", "relax.add")) for op in ops), ops
    # The PrimFunc is what tvm_convt.compile would build: the same schedule lookup.
    (func,) = our_funcs(mod).values()
    expected, source = schedule(w, CPU)
    tvm_ffi.structural_equal(func.body, expected["main"].body) or pytest.fail("schedule differs")
    assert func.attrs[SCHEDULE_ATTR] == source
    (y,) = run_cpu(mod, x.numpy())
    b = None if model.bias is None else model.bias.detach().numpy()
    assert_close(y, torch_conv_transpose1d(x.numpy(), model.weight.detach().numpy(), b, w.params), "float32")


@pytest.mark.parametrize("in_logs", [False, True], ids=["shipped", "user-logs"])
def test_tuned_record_is_used(in_logs, tmp_path, monkeypatch):
    """A layer with a tuned record for this CPU class gets it, as compile does: from the shipped
    records, or from the user's ``logs`` (searched first). The records are the repository's
    tuning logs, standing in for shipped ones (a class whose defaults won ships none)."""
    records = ROOT / "tuning_logs" / target_key(CPU)
    w = _recorded_here(records, Workload(ConvTranspose1dParams(64, 32, 4, stride=2, padding=1), 1, 11008))
    if w is None:
        pytest.skip(f"no tuning record for {target_key(CPU)} in the formulation this CPU computes")
    shutil.copytree(records, tmp_path / "records" / target_key(CPU))
    logs = tmp_path / "records" if in_logs else None
    if not in_logs:
        monkeypatch.setattr("tvm_convt.records.shipped_schedules_dir", lambda: tmp_path / "records")
    mod = tr.use_tvm_convt(export(layer(w.params), torch.randn(w.input_shape)), CPU, logs=logs)
    (func,) = our_funcs(mod).values()
    expected, source = schedule(w, CPU, logs=logs)
    assert source == f"tuned:{tmp_path / 'records' / target_key(CPU)}"
    assert func.attrs[SCHEDULE_ATTR] == source
    assert tvm_ffi.structural_equal(func.body, expected["main"].body)


def _recorded_here(directory: Path, preferred: Workload) -> Workload | None:
    """``preferred``, else the smallest indexed workload, that has a record in ``directory`` in
    the formulation this CPU computes it in (a Zen 5 computes long strided layers directly,
    and the repository's records of those are of the GEMM form)."""
    from tvm_convt.records import open_database
    from tvm_convt.remeasure import tuned_module

    indexed = _shipped(directory)
    db = open_database(directory) if indexed else None
    ranked = sorted(indexed, key=lambda w: (w != preferred, w.flops))
    return next((w for w in ranked if db is not None and db.has_workload(tuned_module(w, CPU))), None)


def _shipped(directory: Path) -> list[Workload]:
    from tvm_convt.records import read_index

    return read_index(directory) if directory.is_dir() else []


# -- the bias add ----------------------------------------------------------------------------
class ChannelBias(torch.nn.Module):
    """A convolution without bias and a per-channel add written as ``b[:, None]`` (shape (C, 1))."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.ConvTranspose1d(6, 4, 5, stride=2, padding=1, bias=False)
        self.b = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        return self.up(x) + self.b[:, None]


class SharedOutput(torch.nn.Module):
    """The convolution's result is used twice, so its add cannot absorb it."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.ConvTranspose1d(6, 4, 5, stride=2, padding=1, bias=False)
        self.b = torch.nn.Parameter(torch.randn(1, 4, 1))

    def forward(self, x):
        y = self.up(x)
        return y + self.b, y * 2


@pytest.mark.parametrize("model, fused", [
    (torch.nn.ConvTranspose1d(6, 4, 5, stride=2, padding=1), True),  # R.add(lv, R.reshape(bias, (1, C, 1)))
    (ChannelBias(), True),
    (SharedOutput(), False),
], ids=["exported-bias", "channel-column", "shared-output"])
def test_bias_add(model, fused):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 9)
    mod = tr.use_tvm_convt(export(model, x), CPU)
    ops = op_names(mod["main"])
    assert "relax.nn.conv1d_transpose" not in ops
    assert ("relax.add" in ops) != fused, ops
    assert [name.endswith("_bias") for name in our_funcs(mod)] == [fused]
    with torch.no_grad():
        expected = model(x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for y, ref in zip(run_cpu(mod, x.numpy()), expected):
        assert_close(y, ref.double().numpy(), "float32")


# -- conv1d=True --------------------------------------------------------------------------------
@pytest.mark.parametrize("conv, as_input", [
    (dict(in_channels=8, out_channels=6, kernel_size=5, padding=4, dilation=2, groups=2), False),
    (dict(in_channels=6, out_channels=3, kernel_size=7, padding=9, dilation=3, groups=3), True),
    (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, bias=False), True),
], ids=["grouped-constant-weight", "weight-as-input", "no-bias"])
def test_conv1d_as_transposed_convolution(conv, as_input):
    torch.manual_seed(4)
    model, x = torch.nn.Conv1d(**conv).eval(), torch.randn(2, conv["in_channels"], 17)
    mod = from_exported_program(torch.export.export(model, (x,)), keep_params_as_input=as_input)
    params = [p.detach().numpy() for p in model.parameters()] if as_input else []
    if as_input:
        mod, _ = relax.frontend.detach_params(mod)
    out = tr.use_tvm_convt(mod, CPU, conv1d=True)
    assert not any(op.startswith(("relax.nn.conv1d", "relax.add")) for op in op_names(out["main"]))
    assert len(our_funcs(out)) == 1 and tr.workloads(mod, conv1d=True)[0].params.stride == 1
    (y,) = run_cpu(out, x.numpy(), *params)
    with torch.no_grad():
        assert_close(y, model(x).double().numpy(), "float32")


# -- cpu_pipeline ---------------------------------------------------------------------------------
class _Block(torch.nn.Module):
    """conv1d, LeakyReLU, a residual add, an upsampling layer, a mean over time (a reduction), tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)

    def forward(self, x):
        h = torch.nn.functional.leaky_relu(self.conv(torch.nn.functional.leaky_relu(x, 0.1)), 0.1) + x
        y = self.up(h)
        return torch.tanh(y - y.mean(dim=-1, keepdim=True))


def _is_reduction(func: tvm.tirx.PrimFunc) -> bool:
    """Whether a block of ``func`` reduces (only a reduction block has an init statement)."""
    return "T.init()" in func.script()


def test_cpu_pipeline_schedules_only_the_spatial_functions():
    torch.manual_seed(5)
    model, x = _Block().eval(), torch.randn(1, 8, 1024)
    ours = tr.use_tvm_convt(export(model, x), CPU, conv1d=True)
    with CPU:
        fused = tvm.transform.Sequential(cpu_generic.legalize_passes(CPU) + [tr.schedule_spatial()])(ours)
    others = {gv.name_hint: f for gv, f in fused.functions_items()
              if isinstance(f, tvm.tirx.PrimFunc) and not gv.name_hint.startswith(FUNC_PREFIX)}
    reductions = [name for name, f in others.items() if _is_reduction(f)]
    spatial = [f for name, f in others.items() if name not in reductions]
    assert reductions and spatial, list(others)
    assert not any(others[name].attrs.get("tirx.is_scheduled") for name in reductions)
    assert all(f.attrs.get("tirx.is_scheduled") for f in spatial)
    assert any("T.parallel" in f.script() and "T.vectorized" in f.script() for f in spatial)
    for name, func in our_funcs(ours).items():
        tvm.ir.assert_structural_equal(our_funcs(fused)[name], func)
    vm = relax.VirtualMachine(tvm.compile(ours, target=CPU, relax_pipeline=tr.cpu_pipeline(CPU)), tvm.cpu())
    # Against the model in float64: PyTorch's own float32 result of this block moved by 5e-5
    # (relative) with the state earlier tests left its thread pools in.
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double()).numpy()
    assert_close(vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy(), expected, "float32")


def test_cpu_pipeline_refuses_a_cuda_target():
    with pytest.raises(ValueError, match="cpu_pipeline needs an llvm target, got target kind cuda"):
        tr.cpu_pipeline(CUDA)


# -- calls left to TVM -------------------------------------------------------------------------
def hand_built(dtype="float32", layout="NCW", padding=(1, 1), x_shape=(2, 4, 9)) -> tvm.IRModule:
    """A Relax module with one conv1d_transpose (4 -> 6 channels, K3, stride 2) written directly."""
    x = relax.Var("x", relax.TensorType(x_shape, dtype))
    w = relax.Var("w", relax.TensorType((4, 6, 3), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv1d_transpose(x, w, strides=2, padding=padding, data_layout=layout,
                                                     out_dtype=dtype))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def symbolic_length(model: torch.nn.Module | None = None) -> tvm.IRModule:
    """A layer exported with its input length symbolic."""
    model = model if model is not None else torch.nn.ConvTranspose1d(4, 6, 3, stride=2)
    return export(model, torch.randn(1, 4, 9),
                  dynamic_shapes={"input": {2: torch.export.Dim("length", min=2, max=64)}})


SKIPS = [
    ("symbolic-batch-cuda", lambda: export(torch.nn.ConvTranspose1d(4, 6, 3, stride=2), torch.randn(2, 4, 9),
                                            dynamic_shapes={"input": {0: torch.export.Dim("batch", min=1, max=64)}}),
     CUDA, "a CUDA call for every length needs a static batch of at most 65535, got batch s"),
    ("float16-on-cpu", lambda: hand_built("float16"), CPU, "dtype float16 needs a CUDA target"),
    ("layout", lambda: hand_built(layout="NWC", x_shape=(2, 9, 4)), CPU,
     "layouts must be data NCW, kernel IOW, output NCW, got data_layout=NWC"),
    ("asymmetric-padding", lambda: hand_built(padding=(1, 2)), CPU,
     "padding must be equal on both sides, got padding=(1, 2)"),
]
CONV1D_SKIPS = [
    ("conv1d-stride-2", dict(stride=2, padding=1), "a conv1d must have stride 1 to be a transposed convolution, "
     "got strides=[2]"),
    ("conv1d-wide-padding", dict(padding=3), "a conv1d's padding must be at most dilation*(kernel_size-1), "
     "got padding=3, dilation*(kernel_size-1)=2"),
]


@pytest.mark.parametrize("build, target, reason", [s[1:] for s in SKIPS], ids=[s[0] for s in SKIPS])
def test_skipped_call_is_logged(build, target, reason, caplog):
    mod = build()
    with caplog.at_level(logging.WARNING, logger="tvm_convt.relax"):
        out = tr.use_tvm_convt(mod, target)
    lines = [r.getMessage() for r in caplog.records if r.name == "tvm_convt.relax"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("conv_transpose1d: relax.nn.conv1d_transpose lv in main is left to "
                               "TVM's default legalization: ") and reason in lines[0], lines[0]
    assert "relax.nn.conv1d_transpose" in op_names(out["main"]) and not our_funcs(out)
    assert tr.workloads(mod, target) == []


@pytest.mark.parametrize("conv, reason", [c[1:] for c in CONV1D_SKIPS], ids=[c[0] for c in CONV1D_SKIPS])
def test_skipped_conv1d_is_logged(conv, reason, caplog):
    mod = export(torch.nn.Conv1d(4, 4, 3, **conv), torch.randn(1, 4, 9))
    with caplog.at_level(logging.WARNING, logger="tvm_convt.relax"):
        out = tr.use_tvm_convt(mod, CPU, conv1d=True)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "tvm_convt.relax"]
    assert line == f"conv_transpose1d: relax.nn.conv1d lv in main is left to TVM's default legalization: {reason}"
    assert "relax.nn.conv1d" in op_names(out["main"])


def test_symbolic_length_builds_with_tvm_on_cuda_skip():
    """A skipped call is TVM's to legalize, and the module still runs correctly."""
    torch.manual_seed(2)
    model = torch.nn.ConvTranspose1d(4, 6, 3, stride=2)
    x = torch.randn(1, 4, 13)
    (y,) = run_cpu(tvm.relax.transform.LegalizeOps()(symbolic_length(model)), x.numpy())
    with torch.no_grad():
        assert_close(y, model(x).double().numpy(), "float32")


class _Upsampler(torch.nn.Module):
    """Two transposed convolutions with an activation between, as a vocoder's upsampling stack."""

    def __init__(self) -> None:
        super().__init__()
        self.up0 = torch.nn.ConvTranspose1d(16, 8, 8, stride=4, padding=2)
        self.up1 = torch.nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up1(torch.nn.functional.leaky_relu(self.up0(x), 0.1))


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_dynamic_axes_are_converted_and_match_torch(dynamic_batch):
    """torch.export with a Dim on the length (and the batch): every transposed convolution becomes
    one call to a symbolic function, and the model matches PyTorch at several lengths."""
    torch.manual_seed(3)
    model = _Upsampler().eval()
    dims = {2: torch.export.Dim("length", min=1, max=4096)}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=8)
    mod = export(model, torch.randn(2, 16, 9), dynamic_shapes={"x": dims})
    out = tr.use_tvm_convt(mod, CPU)
    assert "relax.nn.conv1d_transpose" not in op_names(out["main"])
    assert sorted(our_funcs(out)) == [f"{FUNC_PREFIX}_16x8_k8_s4_bias_any", f"{FUNC_PREFIX}_8x4_k4_s2_bias_any"]
    assert tr.workloads(mod, CPU) == []  # nothing static to tune
    vm = relax.VirtualMachine(tvm.compile(out, target=CPU, relax_pipeline=tr.cpu_pipeline(CPU)), tvm.cpu())
    for batch, length in ((2, 1), (2, 37), (2, 200)) + (((3, 50),) if dynamic_batch else ()):
        x = torch.randn(batch, 16, length)
        (y,) = vm["main"](tvm.runtime.tensor(x.numpy()))
        with torch.no_grad():
            assert_close(y.numpy(), model.double()(x.double()).numpy(), "float32")
        model.float()


def test_float16_is_converted_for_cuda():
    mod = tr.use_tvm_convt(hand_built("float16"), CUDA)
    assert list(our_funcs(mod)) == [f"{FUNC_PREFIX}_4x6_k3_s2"]
    assert [w.dtype for w in tr.workloads(hand_built("float16"), CUDA)] == ["float16"]


@pytest.mark.parametrize("call, error", [
    (lambda: tr.use_tvm_convt("not a module", CPU), TypeError),
    (lambda: tr.use_tvm_convt(hand_built(), "gpu"), ValueError),
    (lambda: tr.use_tvm_convt(hand_built(), CPU, logs=3), TypeError),
    (lambda: tr.workloads(None), TypeError),
])
def test_bad_arguments(call, error):
    with pytest.raises(error, match="^conv_transpose1d: "):
        call()


# -- workloads and suite files ------------------------------------------------------------------
class ThreeLayers(torch.nn.Module):
    """Two identical layers with bias and one without."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.ConvTranspose1d(8, 8, 4, stride=2, padding=1)
        self.b = torch.nn.ConvTranspose1d(8, 8, 4, stride=2, padding=1)
        self.c = torch.nn.ConvTranspose1d(8, 4, 5, stride=3, groups=2, dilation=2, output_padding=1, bias=False)

    def forward(self, x):
        return self.c(self.b(x) + self.a(x))


def test_workloads_round_trip_through_a_suite_file(tmp_path):
    mod = export(ThreeLayers(), torch.randn(2, 8, 10))
    found = tr.workloads(mod)
    assert found == [Workload(ConvTranspose1dParams(8, 8, 4, stride=2, padding=1), 2, 10),
                     Workload(ConvTranspose1dParams(8, 4, 5, stride=3, output_padding=1, groups=2, bias=False,
                                                    dilation=2), 2, 20)]
    suite = load_suite(tr.write_suite(tmp_path / "suite.json", mod))
    assert list(suite.values()) == found
    # use_tvm_convt compiles one PrimFunc per listed workload.
    assert len(our_funcs(tr.use_tvm_convt(mod, CPU))) == len(found)


def test_write_suite_refuses_a_module_without_layers(tmp_path):
    with pytest.raises(ValueError, match="at least one layer"):
        tr.write_suite(tmp_path / "suite.json", hand_built(padding=(0, 1)))


# -- CUDA ---------------------------------------------------------------------------------------
class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.ConvTranspose1d(16, 8, 16, stride=8, padding=4)
        self.b = torch.nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1, bias=False)

    def forward(self, x):
        return self.b(torch.nn.functional.leaky_relu(self.a(x), 0.1))


def cuda_source(executable) -> str:
    pending, source = [executable.mod], []
    while pending:
        m = pending.pop()
        source += [m.inspect_source("cuda")] if m.kind == "cuda" else []
        pending += list(m.imports)
    return "\n".join(source)


def kernel_bodies(source: str, prefix: str) -> list[str]:
    """The text of each kernel named ``prefix``, ``prefix_1``, ... with the name taken out."""
    parts = re.split(r"(?=extern \"C\" __global__)", source)
    return sorted(re.sub(rf"\b{prefix}(_kernel)", r"K\1", p) for p in parts if re.search(rf"\b{prefix}_kernel", p))


def test_cuda_sm90_build_without_gpu_uses_our_kernels():
    original = export(TwoLayers(), torch.randn(1, 16, 6))
    mod = tr.use_tvm_convt(original, CUDA)
    ours = our_funcs(mod)
    assert sorted(ours) == sorted(func_name(w) for w in tr.workloads(original)) and len(ours) == 2
    # The CUDA pipeline (dlight included) leaves our scheduled PrimFuncs as they are.
    with CUDA:
        lowered = relax.get_default_pipeline(CUDA)(mod)
    for name, func in ours.items():
        assert tvm_ffi.structural_equal(lowered[name].body, func.body), name
    source = cuda_source(tvm.compile(mod, target=CUDA))
    for w in tr.workloads(original):
        # The same kernels tvm_convt.compile generates for this workload (build.device_source).
        kernels = kernel_bodies(source, func_name(w))
        assert kernels and kernels == kernel_bodies(device_source(w, target=CUDA), "main"), func_name(w)


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu, reason="no CUDA GPU")
def test_cuda_model_matches_torch_on_gpu():
    torch.manual_seed(3)
    model, x = TwoLayers(), torch.randn(1, 16, 6)
    vm = relax.VirtualMachine(tvm.compile(tr.use_tvm_convt(export(model, x), CUDA), target=CUDA), tvm.cuda(0))
    y = vm["main"](tvm.runtime.tensor(x.numpy(), tvm.cuda(0)))[0].numpy()
    with torch.no_grad():
        assert_close(y, model(x).double().numpy(), "float32")


# -- the example ---------------------------------------------------------------------------------
def test_relax_vocoder_example_runs():
    # Idle pools that sleep at once keep PyTorch's turns short (examples/README.md).
    env = {**os.environ, "TVM_THREAD_POOL_SPIN_COUNT": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "relax_vocoder.py"), "--frames", "1",
                             "--rounds", "1", "--dynamic", "8,13"], capture_output=True, text=True, timeout=600,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    diffs = re.findall(r"max relative difference to PyTorch, (.+): (\S+)", result.stdout)
    assert [name for name, _ in diffs] == ["TVM default legalization", "TVM with tvm_convt",
                                           "TVM with tvm_convt, conv1d too", "conv1d too + cpu_pipeline"], \
        result.stdout
    assert all(float(d) <= 1e-5 for _, d in diffs), result.stdout
    assert re.search(r"whole generator: TVM default legalization [\d.]+ ms, TVM with tvm_convt [\d.]+ ms, "
                     r"TVM with tvm_convt, conv1d too [\d.]+ ms, conv1d too \+ cpu_pipeline [\d.]+ ms, "
                     r"PyTorch eager [\d.]+ ms", result.stdout), result.stdout
    # Exported once with a dynamic number of frames: every convolution converted, right at both lengths.
    assert "42 convolutions computed by tvm_convt, 0 conv1d_transpose and 0 conv1d left to TVM" in result.stdout, \
        result.stdout
    dynamic = re.findall(r"(\d+) frames: max relative difference to PyTorch (\S+);", result.stdout)
    assert [n for n, _ in dynamic] == ["8", "13"] and all(float(d) <= 1e-5 for _, d in dynamic), result.stdout


def test_onnx_vocoder_example_converts_every_layer_at_every_length():
    """An ONNX graph with a dynamic length axis: every ConvTranspose computed by tvm_convt, and the
    outputs within float32 tolerance of the float64 reference at each length."""
    env = {**os.environ, "TVM_THREAD_POOL_SPIN_COUNT": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_vocoder.py"), "--frames", "1,9,40",
                             "--rounds", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 ConvTranspose calls computed by tvm_convt, 0 left to TVM" in result.stdout, result.stdout
    errors = [float(e) for e in re.findall(r"tvm_convt \(Relax\)\s+[\d.]+ ms\s+max rel\. error vs float64 (\S+)",
                                           result.stdout)]
    assert len(errors) == 3 and max(errors) <= 1e-5, result.stdout
    assert result.stdout.rstrip().endswith("OK")


def test_a_converted_model_imports_with_the_packages_convert_map():
    """Issue #27, 5: from_exported_program of a converted model failed (TypeError: Mismatched type on
    argument #4): TVM looked the op up by its bare name, aten's. With torch_convert_map() it imports as
    conv1d_transpose, which use_tvm_convt then replaces; aten's own op still imports as before."""
    import tvm_convt.torch as tt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.ConvTranspose1d(16, 8, 8, stride=4, padding=2), torch.nn.LeakyReLU(0.1),
                                torch.nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1)).eval()
    x = torch.randn(1, 16, 20)
    with torch.no_grad():
        expected = model(x).double().numpy()
    plain = from_exported_program(torch.export.export(model, (x,)), custom_convert_map=tr.torch_convert_map())
    tt.convert(model)
    mod = from_exported_program(torch.export.export(model, (x,)), custom_convert_map=tr.torch_convert_map())
    for imported in (plain, mod):
        assert op_names(imported["main"]).count("relax.nn.conv1d_transpose") == 2
        converted = tr.use_tvm_convt(imported, CPU)
        assert "relax.nn.conv1d_transpose" not in op_names(converted["main"])
        (y,) = run_cpu(converted, x.numpy())
        assert_close(y, expected, "float32")
    model[0].padding_mode = "reflect"
    with pytest.raises(ValueError, match="Relax's conv1d_transpose pads with zeros only, got padding_mode='reflect'"):
        from_exported_program(torch.export.export(model, (x,)), custom_convert_map=tr.torch_convert_map())
