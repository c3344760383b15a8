"""``tvm-convt bundle``: a folder that loads and runs modules where TVM's compiler is absent.

The CPU bundle is run in a fresh interpreter whose only paths are the bundle, a folder
holding NumPy alone and the standard library; the CUDA bundle is built with the real nvcc
and checked by its bytes (no GPU here to load it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_close, random_inputs, torch, torch_conv_transpose1d
import tvm_convt
from tvm_convt import cli
from tvm_convt.bundle import FATBIN_MAGIC, fatbin_entries, library_imports, write_bundle
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.params import Workload
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.suite import write_suite

SUITE = {"up": Workload(P(4, 6, 3, stride=2, padding=1), 2, 9, "float32"),
         "grouped reflect": Workload(P(4, 4, 4, stride=2, groups=2, bias=False, padding_mode="reflect"), 1, 9,
                                     "float32"),
         "dilated f64": Workload(P(3, 2, 3, dilation=2, output_padding=1, stride=2), 1, 7, "float64")}
CUDA_TARGET = '{"kind": "cuda", "arch": "sm_80"}'

# Run in the bundle's interpreter: every module against inputs saved by the test, the outputs
# saved back, and what the process loaded (modules' files, mapped libraries) reported.
CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
import tvm, tvm_convt
from tvm_convt import CompiledConvTranspose1d
bundle, io = Path(sys.argv[1]), Path(sys.argv[2])
manifest = json.loads((bundle / "manifest.json").read_text())
for i, entry in enumerate(manifest["workloads"]):
    m = CompiledConvTranspose1d.load(bundle / entry["library"])
    args = np.load(io / f"in{i}.npz")
    y = m(args["x"], args["w"], args["b"] if "b" in args else None)
    np.save(io / f"out{i}.npy", y)
files = sorted({str(Path(f).resolve()) for f in (getattr(v, "__file__", None) for v in list(sys.modules.values())) if f})
libs = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line})
print(json.dumps({"runtime_only": tvm.base._RUNTIME_ONLY, "files": files, "libs": libs,
                  "torch": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    suite = write_suite(root / "suite.json", SUITE)
    assert cli.main(["bundle", "--suite", str(suite), "-o", str(root / "out")]) == 0
    return root / "out"


def _numpy_only(folder: Path) -> Path:
    """A folder holding NumPy and nothing else, for the bundle's interpreter."""
    folder.mkdir()
    source = Path(np.__file__).resolve().parent
    for name in (source.name, source.name + ".libs"):
        if (source.parent / name).exists():
            os.symlink(source.parent / name, folder / name)
    return folder


def _isolated(args: list[str], bundle: Path, numpy_dir: Path) -> subprocess.CompletedProcess:
    """Run Python with no site-packages (-S -s) and only the bundle and NumPy on its path."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{bundle}{os.pathsep}{numpy_dir}",
           "HOME": str(numpy_dir)}
    return subprocess.run([sys.executable, "-S", "-s", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=numpy_dir)


def test_bundle_content_and_manifest(cpu_bundle):
    manifest = json.loads((cpu_bundle / "manifest.json").read_text())
    assert [e["name"] for e in manifest["workloads"]] == list(SUITE)
    assert [Workload.from_dict(e["workload"]) for e in manifest["workloads"]] == list(SUITE.values())
    for entry in manifest["workloads"]:
        assert (cpu_bundle / entry["library"]).stat().st_size == entry["bytes"]
        assert (cpu_bundle / entry["sidecar"]).is_file()
    assert manifest["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert manifest["cuda_kernels"] is None and manifest["target_key"].startswith("llvm-")
    assert not list(cpu_bundle.rglob("libtvm_compiler*")) and not list(cpu_bundle.rglob("libtvm_runtime_cuda*"))
    for left_out in ("relax", "s_tir", "topi", "include", "3rdparty", "src"):
        assert not (cpu_bundle / "tvm" / left_out).exists(), left_out
    sizes = manifest["sizes"]
    for part in ("tvm", "tvm_ffi", "modules"):
        assert sizes[part] == sum(f.stat().st_size for f in (cpu_bundle / part).rglob("*") if f.is_file())
    assert sizes["total"] == sum(v for k, v in sizes.items() if k != "total")
    assert sizes["total"] < 40 * 2**20, sizes  # the installed tvm package alone is over 250 MiB
    assert "run.py --check" in (cpu_bundle / "README.md").read_text()


@pytest.mark.skipif(torch is None, reason="torch is not installed (the oracle)")
def test_bundle_runs_without_the_compiler(cpu_bundle, tmp_path):
    numpy_dir = _numpy_only(tmp_path / "numpy_only")
    io = tmp_path / "io"
    io.mkdir()
    inputs = []
    for i, w in enumerate(SUITE.values()):
        x, weight, b = random_inputs(w.params, w.batch, w.length, w.dtype, seed=i)
        np.savez(io / f"in{i}.npz", x=x, w=weight, **({} if b is None else {"b": b}))
        inputs.append((x, weight, b))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = _isolated([str(script), str(cpu_bundle), str(io)], cpu_bundle, numpy_dir)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["runtime_only"] and not seen["torch"]
    assert not [lib for lib in seen["libs"] if "tvm_compiler" in lib]
    tvm_libs = [lib for lib in seen["libs"] if "tvm" in Path(lib).name]
    assert tvm_libs and all(lib.startswith(str(cpu_bundle.resolve())) for lib in tvm_libs), tvm_libs
    stdlib = str(Path(os.__file__).resolve().parent)
    outside = [f for f in seen["files"] if not f.startswith((str(cpu_bundle.resolve()), str(numpy_dir),
                                                             str(Path(np.__file__).resolve().parent), stdlib))]
    assert outside == [str(script.resolve())], outside
    for i, (w, (x, weight, b)) in enumerate(zip(SUITE.values(), inputs)):
        y = np.load(io / f"out{i}.npy")
        assert_close(y, torch_conv_transpose1d(x, weight, b, w.params), w.dtype)
        assert_close(y, conv_transpose1d_reference(x, weight, b, w.params), w.dtype)


def test_bundle_run_script_checks_every_module(cpu_bundle, tmp_path):
    done = _isolated([str(cpu_bundle / "run.py"), "--check"], cpu_bundle, _numpy_only(tmp_path / "np"))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(SUITE) and all(line.endswith(": OK") for line in lines), lines


def test_a_bundle_of_modules_for_every_length_checks_them_at_several_lengths(tmp_path):
    """--any-length: one module per layer for every batch and length, which run.py checks at the suite's
    shape, at length 1 and beyond it."""
    suite = write_suite(tmp_path / "suite.json", SUITE)
    assert cli.main(["bundle", "--suite", str(suite), "--any-length", "-o", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert all(entry["any_length"] for entry in manifest["workloads"])
    done = _isolated([str(tmp_path / "out" / "run.py"), "--check"], tmp_path / "out", _numpy_only(tmp_path / "np"))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(SUITE) and all(line.endswith(": OK") for line in lines), lines


def test_bundle_run_script_times_every_module(cpu_bundle, tmp_path):
    """How a board's user measures the modules' speed there without TVM's compiler."""
    done = _isolated([str(cpu_bundle / "run.py"), "--check", "--time"], cpu_bundle, _numpy_only(tmp_path / "np"))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(SUITE), lines
    for line in lines:
        match = re.search(r", ([0-9.]+) ms, ([0-9.e+-]+) GFLOP/s, max relative error .*: OK$", line)
        assert match and float(match.group(1)) > 0 and float(match.group(2)) > 0, line


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: CUDA kernels cannot be compiled")
@pytest.mark.parametrize("kernels", ["fatbin", "source"])
def test_cuda_bundle_builds_without_a_gpu(kernels, tmp_path):
    suite = {"up": SUITE["up"]}
    report = write_bundle(suite, tmp_path / "cuda", target=CUDA_TARGET, kernels=kernels)
    folder, manifest = report.folder, report.manifest
    assert (folder / "tvm" / "lib" / "libtvm_runtime_cuda.so").is_file()
    assert not list(folder.rglob("libtvm_compiler*"))
    assert manifest["target_key"] == "cuda-sm_80"
    library = folder / manifest["workloads"][0]["library"]
    data = library.read_bytes()
    imports = dict(library_imports(library))
    if kernels == "fatbin":
        assert "fatbin built by nvcc for sm_80" in manifest["cuda_kernels"]
        assert imports[b"cuda"].startswith(b"\x06" + b"\0" * 7 + b"fatbin") and FATBIN_MAGIC in imports[b"cuda"]
        assert b"__global__" not in data
        assert manifest["workloads"][0]["fatbin"] == fatbin_entries(data) == ["sm_80 SASS", "compute_80 PTX"]
    else:
        assert "compiled when a module is loaded" in manifest["cuda_kernels"]
        assert imports[b"cuda"].startswith(b"\x04" + b"\0" * 7 + b"cuda") and b"__global__" in data
        assert FATBIN_MAGIC not in data


def test_bundle_for_another_python(tmp_path):
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.11"
    try:
        report = write_bundle({"up": SUITE["up"]}, tmp_path / "b", python=other)
    except ValueError as err:
        if "pip could not download it" in str(err):
            pytest.skip(f"no apache-tvm-ffi wheel for Python {other} reachable: {err}")
        raise
    tag = other.replace(".", "")
    assert list((report.folder / "tvm_ffi").glob(f"core.cpython-{tag}-*.so"))
    assert not list((report.folder / "tvm_ffi").glob(f"core.cpython-{sys.version_info[0]}{sys.version_info[1]}-*"))
    assert report.manifest["python"] == other


@pytest.mark.parametrize("args, message", [
    (["--suite", "{missing}", "-o", "{tmp}/b"], "argument --suite: does not exist"),
    (["--suite", "{tmp}", "-o", "{tmp}/b"], "argument --suite: is not a file"),
    (["--suite", "{suite}", "-o", "{tmp}/b", "--python", "3"], "Python version must read 3.N, such as 3.12, got python='3'"),
    (["--suite", "{suite}", "-o", "{tmp}/b", "--python", "py3.12"], "must read 3.N"),
    (["--suite", "{suite}", "-o", "{suite}"], "argument -o/--output: must be a new or empty folder"),
    (["--suite", "{suite}", "-o", "{tmp}/no/b"], "does not exist"),
    (["--suite", "{suite}", "-o", "/proc/tvm-convt-bundle"], "cannot write a bundle into /proc"),
    (["--suite", "{suite}", "-o", "{tmp}/b", "--kernels", "ptx"], "argument --kernels: invalid choice"),
    (["--suite", "{suite}", "-o", "{tmp}/b", "--target", "rocm"], "target must be 'llvm', 'cuda'"),
    (["--suite", "{bad_suite}", "-o", "{tmp}/b"], "missing keys"),
])
def test_bundle_usage_errors(args, message, tmp_path, capsys):
    suite = write_suite(tmp_path / "suite.json", {"up": SUITE["up"]})
    (tmp_path / "bad.json").write_text('[{"name": "x"}]')
    names = {"missing": tmp_path / "nope.json", "tmp": tmp_path, "suite": suite, "bad_suite": tmp_path / "bad.json"}
    assert cli.main(["bundle", *(a.format(**names) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvm-convt bundle: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "b").exists()


def test_bundle_run_script_fails_a_module_that_computes_something_else(cpu_bundle, tmp_path):
    """Issue #26, 2: no test showed run.py --check ever reporting a failure. The "up" module is replaced
    by one that computes replicate padding under a sidecar that says zeros (same shapes)."""
    import tvm

    from tvm_convt.build import ModuleMetadata, schedule, write_library
    from tvm_convt.target import resolve_target, target_json, target_key

    bundle = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(e for e in manifest["workloads"] if e["name"] == "up")
    described = SUITE["up"]
    built = Workload(dataclasses.replace(described.params, padding_mode="replicate"), described.batch,
                     described.length, described.dtype)
    tgt = resolve_target("llvm")
    metadata = ModuleMetadata(described, target_json(tgt), target_key(tgt), "default:x", tvm.__version__,
                              tvm_convt.__version__)
    write_library(tvm.compile(schedule(built, tgt, tuned=False)[0], target=tgt), metadata, bundle / entry["library"])
    done = _isolated([str(bundle / "run.py"), "--check"], bundle, _numpy_only(tmp_path / "np"))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["up"].endswith(": FAIL") and lines["grouped reflect"].endswith(": OK"), lines


RUN_FAILURES = [
    ("manifest", lambda b: (b / "manifest.json").write_text("{not json"), 2,
     r"run.py: error: .*manifest.json cannot be read as this bundle's manifest: JSONDecodeError"),
    ("python", lambda b: (b / "manifest.json").write_text(
        (b / "manifest.json").read_text().replace('"python": "', '"python": "2.')), 2,
     r"run.py: error: this bundle was built for Python 2\.3\.\d+ and this is Python 3\.\d+: run it with python2"),
    ("tvm_ffi", lambda b: next(b.glob("tvm_ffi/lib/*.so")).write_bytes(b"not a library"), 2,
     r"run.py: error: the bundle's runtime does not import here: "),
]


@pytest.mark.parametrize("what, damage, status, said", RUN_FAILURES, ids=[c[0] for c in RUN_FAILURES])
def test_a_bundle_that_cannot_run_here_says_why_in_one_line(cpu_bundle, tmp_path, what, damage, status, said):
    """Issue #27, 11: a damaged manifest or library gave a traceback, a bundle run by another Python
    "circular import"; the Python version is compared first, and each problem is one line."""
    import re

    bundle = tmp_path / "copy"
    shutil.copytree(cpu_bundle, bundle, symlinks=True)
    damage(bundle)
    result = _isolated([str(bundle / "run.py"), "--check"], bundle, _numpy_only(tmp_path / "np"))
    assert result.returncode == status, result.stdout + result.stderr
    assert re.fullmatch(said + ".*", result.stdout.strip().splitlines()[-1]), result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_damaged_module_fails_alone_and_the_others_are_checked(cpu_bundle, tmp_path):
    bundle = tmp_path / "copy"
    shutil.copytree(cpu_bundle, bundle, symlinks=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    first = manifest["workloads"][0]
    (bundle / first["library"]).write_bytes(b"damaged")
    result = _isolated([str(bundle / "run.py"), "--check"], bundle, _numpy_only(tmp_path / "np"))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(manifest["workloads"])
    assert lines[0].startswith(f"{first['name']}: FAIL: ModuleFileError: ")
    assert all(line.endswith(": OK") for line in lines[1:]), lines


def test_compiling_inside_a_bundle_says_it_needs_the_full_install(cpu_bundle, tmp_path):
    """Issue #27, 11: AttributeError (llvm_get_system_cpu) from the layer and compile in a bundle."""
    code = ("import tvm_convt\n"
            "for make in (lambda: tvm_convt.ConvTranspose1d(4, 4, 3),\n"
            "             lambda: tvm_convt.compile(tvm_convt.ConvTranspose1dParams(4, 4, 3), batch=1, length=8)):\n"
            "    try:\n"
            "        make()\n"
            "    except RuntimeError as err:\n"
            "        print(type(err).__name__, err)\n")
    result = _isolated(["-c", code], cpu_bundle, _numpy_only(tmp_path / "np"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("CompilerUnavailable conv_transpose1d: compiling needs the full "
                                                   "install") for line in lines), lines
