"""tools/gpu_check.py without a GPU: its arguments, module discovery, report, and the whole
pipeline on the CPU (in a subprocess, and from exported modules); CUDA modules compiled for
shipping. The GPU run itself is what the script is for (see docs/performance.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import tvm

import tvm_convt
from tvm_convt.build import ModuleMetadata, schedule, write_library
from tvm_convt.params import ConvTranspose1dParams, Workload
from tvm_convt.suite import default_suite, load_suite, write_suite
from tvm_convt.target import resolve_target, target_json, target_key

from conftest import needs_torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"
P = ConvTranspose1dParams
TINY = {"dense": Workload(P(8, 4, 4, stride=2, padding=1), 2, 20),
        "depthwise": Workload(P(6, 6, 3, stride=2, groups=6), 1, 30),
        "reflect": Workload(P(4, 4, 5, stride=3, padding=2, padding_mode="reflect", bias=False), 1, 16)}


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gc = _load_script()


# -- arguments ------------------------------------------------------------------------------------
def test_default_dtypes_follow_the_device(tmp_path):
    assert gc.parse_args(["--out", str(tmp_path)]).dtypes == ("float32", "float16")
    assert gc.parse_args(["--out", str(tmp_path), "--device", "cpu"]).dtypes == ("float32",)
    args = gc.parse_args(["--out", str(tmp_path), "--dtypes", "float16, bfloat16,float16"])
    assert args.dtypes == ("float16", "bfloat16") and args.repeat == 25 and args.device == "cuda"


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --out"),
    (["--dtypes", "float8"], "argument --dtypes: conv_transpose1d: dtype must be one of"),
    (["--dtypes", ","], "argument --dtypes: must name at least one dtype"),
    (["--repeat", "0"], "argument --repeat: must be positive, got 0"),
    (["--target", "{bad"], "argument --target: target is not valid JSON"),
    (["--device", "cpu", "--dtypes", "float32,float16"],
     "conv_transpose1d: dtype float16 needs a CUDA target, got --device cpu"),
    (["--modules", "{tmp}", "--suite", "s.json"], "--modules runs modules already compiled"),
    (["--modules", "{tmp}/none"], "--modules must be a folder"),
])
def test_usage_errors_exit_2_naming_the_rule(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + (["--out", str(tmp_path)] if argv else [])
    with pytest.raises(SystemExit) as exc:
        gc.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_suite_cases_are_every_workload_in_every_dtype(tmp_path, capsys):
    cases = gc.suite_cases(None, ("float32", "float16"))
    suite = default_suite()
    assert [c.name for c in cases] == [f"{n}-{d}" for d in ("float32", "float16") for n in suite]
    assert all(c.workload.params == suite[c.name.rsplit("-", 1)[0]].params for c in cases)
    out = tmp_path / "suite.json"
    assert gc.main(["--write-suite", str(out), "--out", str(tmp_path)]) == 0
    written = load_suite(out)
    assert {n: w.dtype for n, w in written.items()} == {c.name: c.workload.dtype for c in cases}
    assert "hifigan_v1_up0-float16: ConvTranspose1dParams(in_channels=512" in capsys.readouterr().out


# -- finding modules ------------------------------------------------------------------------------
def _export(folder: Path, workloads: dict[str, Workload]) -> None:
    for i, (name, w) in enumerate(workloads.items()):
        compiled = tvm_convt.compile(w.params, batch=w.batch, length=w.length, dtype=w.dtype, tuned=False)
        compiled.export(folder / f"{i:02d}_{name}.so")


def test_discovery_checks_sidecars_and_reads_bundle_names(tmp_path):
    modules = tmp_path / "modules"
    (modules / "nested").mkdir(parents=True)
    _export(modules, {"dense": TINY["dense"]})
    _export(modules / "nested", {"reflect": TINY["reflect"]})
    (modules / "stray.so").write_bytes(b"not a library")
    damaged = modules / "damaged.so"
    damaged.write_bytes((modules / "00_dense.so").read_bytes()[:-1])
    (modules / "damaged.json").write_text((modules / "00_dense.json").read_text())
    cases, left_out = gc.discover_modules(modules)
    assert [(c.name, c.workload) for c in cases] == [("00_dense", TINY["dense"]), ("00_reflect", TINY["reflect"])]
    assert all(c.schedule.startswith("default:") and c.target_key.startswith("llvm") for c in cases)
    assert any("damaged.so" in line and "does not match its sidecar" in line for line in left_out), left_out
    assert any("stray.so: no .json sidecar" in line for line in left_out), left_out
    manifest = {"workloads": [{"name": "hifigan dense", "library": "modules/00_dense.so"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert [c.name for c in gc.discover_modules(modules)[0]] == ["hifigan dense", "00_reflect"]


# -- the report -----------------------------------------------------------------------------------
def _result(name, w, error, seconds, status="ok"):
    return gc.Result(name, w, "default:gpu-gemm", "cuda-sm_90", status, error, error, seconds)


def test_report_json_and_table(tmp_path):
    dense, grouped = TINY["dense"], TINY["depthwise"]
    results = [_result("a", dense, 1e-7, {"tvm_convt": 2e-5, "torch": 4e-5, "torch_tf32": 1e-5}),
               _result("b", grouped, 2e-7, {"tvm_convt": 1e-5, "torch": 8e-5, "torch_tf32": 8e-5}),
               _result("c", Workload(dense.params, 2, 20, "float16"), 3e-2, {"tvm_convt": 1e-5, "torch": 1e-5},
                       status="FAIL"),
               _result("d", grouped, None, {}, status="skipped: dtype")]
    info = {"device": "cuda", "gpu": "NVIDIA H100", "arch": "sm_90", "date": "today", "torch": "2.x",
            "cudnn": 90100, "tvm": "0.27", "tvm_convt": "0.1", "command": ["gpu_check.py", "--out", "x"]}
    json_path, md_path = gc.write_report(tmp_path, info, results)
    data = json.loads(json_path.read_text())
    s = data["summary"]
    assert (s["cases"], s["failed"], s["skipped"]) == (4, 1, 1)
    assert math.isclose(s["float32"]["geomean_speedup"], 4.0) and s["float32"]["worst_speedup"] == 2.0
    assert math.isclose(s["float32"]["grouped_geomean_speedup"], 8.0)
    assert math.isclose(s["float32"]["geomean_speedup_vs_tf32"], math.sqrt(0.5 * 8))
    first = data["cases"][0]
    assert first["microseconds"] == pytest.approx({"tvm_convt": 20.0, "torch": 40.0, "torch_tf32": 10.0})
    assert first["speedup"] == pytest.approx({"torch": 2.0, "torch_tf32": 0.5}) and first["goal"] == 1e-5
    table = md_path.read_text()
    assert "# gpu_check: NVIDIA H100 (sm_90), today" in table
    assert "| a | default:gpu-gemm | 1.0e-07 (1e-05) | 20.0 | 40.0 | 10.0 | 2.00x | 0.50x |" in table
    assert "| c | default:gpu-gemm | 3.0e-02 (1e-02) **FAIL** | 10.0 | 10.0 | - | 1.00x | - |" in table
    assert "4 cases, 1 failed, 1 skipped" in table


# -- the pipeline on the CPU ----------------------------------------------------------------------
@needs_torch
def test_cpu_pipeline_end_to_end_in_a_subprocess(tmp_path):
    """Compile, check against torch, time and report, as a user runs it; then the same modules
    again from the folder it wrote (--modules), in this process."""
    suite = write_suite(tmp_path / "tiny.json", TINY)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--suite", str(suite), "--out", str(out),
                          "--repeat", "3", "--warmup", "1", "--default-schedules"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert [c["name"] for c in data["cases"]] == ["dense-float32", "depthwise-float32", "reflect-float32"]
    for case in data["cases"]:
        assert case["status"] == "ok" and case["error"] < 1e-5 and case["microseconds"]["tvm_convt"] > 0, case
    assert "torch" in data["cases"][0]["microseconds"]  # PyTorch has no reflect-mode transposed convolution
    assert "torch" not in data["cases"][2]["microseconds"] and data["cases"][2]["torch_error"] is None
    assert "| dense-float32 | default:" in (out / "gpu_check.md").read_text()
    again = tmp_path / "again"
    assert gc.main(["--modules", str(out / "modules"), "--device", "cpu", "--out", str(again),
                    "--repeat", "2", "--warmup", "1"]) == 0
    cases = json.loads((again / "gpu_check.json").read_text())["cases"]
    assert [(c["name"], c["status"]) for c in cases] == [
        ("00_dense-float32", "ok"), ("01_depthwise-float32", "ok"), ("02_reflect-float32", "ok")]


def _mislabelled_module(folder: Path) -> None:
    """A library that computes one layer, with a sidecar describing another of the same shapes
    (padding 1 dilation 1 against padding 2 dilation 2): what a wrong kernel looks like."""
    built, described = Workload(P(4, 4, 3, stride=2, padding=1), 1, 12), Workload(
        P(4, 4, 3, stride=2, padding=2, dilation=2), 1, 12)
    assert built.output_shape == described.output_shape
    tgt = resolve_target("llvm")
    mod, _ = schedule(built, tgt, tuned=False)
    metadata = ModuleMetadata(described, target_json(tgt), target_key(tgt), "default:x", tvm.__version__, "0")
    write_library(tvm.compile(mod, target=tgt), metadata, folder / "wrong.so")


@needs_torch
def test_a_wrong_result_fails_the_check_and_a_missing_gpu_is_a_usage_error(tmp_path, capsys):
    _mislabelled_module(tmp_path)
    assert gc.main(["--modules", str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "out"),
                    "--repeat", "1", "--warmup", "1"]) == 1
    (case,) = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["cases"]
    assert case["status"] == "FAIL" and case["error"] > 1e-2
    if not tvm.cuda(0).exist:
        assert gc.main(["--modules", str(tmp_path), "--out", str(tmp_path / "gpu")]) == 2
        assert "--device cuda: PyTorch sees no CUDA GPU" in capsys.readouterr().err


@needs_torch
def test_cuda_modules_compile_for_shipping_and_are_skipped_on_cpu(tmp_path):
    """--compile-only without a GPU writes CUDA modules (fatbins where nvcc is here) that
    --modules finds; run on the CPU they are skipped, and nothing checked is exit status 1."""
    suite = write_suite(tmp_path / "one.json", {"depthwise": TINY["depthwise"]})
    out = tmp_path / "shipped"
    assert gc.main(["--compile-only", "--suite", str(suite), "--target", '{"kind": "cuda", "arch": "sm_90"}',
                    "--out", str(out), "--default-schedules"]) == 0
    cases, left_out = gc.discover_modules(out / "modules")
    assert not left_out
    assert [(c.name, c.workload.dtype, c.target_key) for c in cases] == [
        ("00_depthwise-float32", "float32", "cuda-sm_90"), ("01_depthwise-float16", "float16", "cuda-sm_90")]
    assert gc.main(["--modules", str(out / "modules"), "--device", "cpu", "--out", str(tmp_path / "r"),
                    "--dtypes", "float32"]) == 1
    results = json.loads((tmp_path / "r" / "gpu_check.json").read_text())["cases"]
    assert [r["status"] for r in results] == [
        "skipped: the module targets cuda-sm_90, not --device cpu", "skipped: dtype float16 is not in --dtypes"]


@needs_torch
def test_modules_for_every_length_are_checked_at_the_suites_shapes_and_found_again(tmp_path):
    suite = write_suite(tmp_path / "two.json", {"dense": TINY["dense"], "reflect": TINY["reflect"]})
    out = tmp_path / "out"
    assert gc.main(["--device", "cpu", "--suite", str(suite), "--out", str(out), "--any-length",
                    "--repeat", "1", "--warmup", "1", "--default-schedules"]) == 0
    cases = json.loads((out / "gpu_check.json").read_text())["cases"]
    assert [(c["name"], c["status"]) for c in cases] == [("dense-float32", "ok"), ("reflect-float32", "ok")]
    found, left_out = gc.discover_modules(out / "modules")
    assert not left_out and [c.name for c in found] == [
        f"{stem}@{b}x{n}" for stem in ("00_dense-float32", "01_reflect-float32") for b, n in gc.ANY_LENGTH_SHAPES]
    assert gc.main(["--modules", str(out / "modules"), "--device", "cpu", "--out", str(tmp_path / "again"),
                    "--repeat", "1", "--warmup", "1"]) == 0
    again = json.loads((tmp_path / "again" / "gpu_check.json").read_text())["cases"]
    assert [c["status"] for c in again] == ["ok"] * 4
