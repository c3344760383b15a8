"""Check and time tvm_convt against PyTorch (cuDNN) on a GPU: every suite workload, float32 and float16.

    # a full install on a CUDA machine: compile the default suite here, check, time
    python tools/gpu_check.py --out results/
    # no GPU here: write the modules (CUDA kernels as nvcc fatbins) to ship to one
    python tools/gpu_check.py --compile-only --target '{"kind": "cuda", "arch": "sm_90"}' --out shipped/
    # on the GPU machine (a full install, or a tvm-convt bundle's folder on PYTHONPATH)
    python tools/gpu_check.py --modules shipped/modules --out results/
    # the whole pipeline on this CPU, on a tiny suite (what the tests run)
    python tools/gpu_check.py --device cpu --suite tiny.json --out results/
    # the same with one module per layer for every length (--modules runs its functions at 1x97, 2x1000)
    python tools/gpu_check.py --any-length --compile-only --target '{"kind": "cuda", "arch": "sm_90"}' --out any/

Each case (a workload in one dtype) runs on random input and is compared with PyTorch's answer
in float64 on the same device (F.conv_transpose1d; for the other padding modes the adjoint of
F.conv1d over F.pad). Issue #7's goal is a relative error under 1e-5 (float32) and 1e-2
(float16). Then tvm_convt and PyTorch in the case's dtype are timed in the same process,
interleaved: CUDA events around batches of calls after a warm-up, medians of --repeat samples,
cuDNN with torch.backends.cudnn.benchmark = True, float32 both with TF32 disabled and allowed.
Tensors are torch tensors on the device, handed to the module function through DLPack
(tvm.runtime.from_dlpack): nothing is copied; tvm_convt writes into an output allocated once,
PyTorch allocates its own each call (from its caching allocator). Writes gpu_check.json and gpu_check.md into
--out; exits 1 when a case fails its check (or none ran), 2 on usage errors or a missing device.
--write-suite FILE writes the cases as a suite file, for `tvm-convt bundle --suite FILE`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

# Before TVM and torch start their CPU thread pools: spinning TVM workers starve PyTorch's OpenMP
# threads when the two alternate on a CPU (README: the two thread pools); GPU timing is unaffected.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tvm_convt.params import OP, Workload, check_dtype  # noqa: E402

FORMAT = 1
# Issue #7's goals for the relative error, max |error| / max(1, max |reference|).
GOALS = {"float32": 1e-5, "float64": 1e-12, "float16": 1e-2, "bfloat16": 2e-2}
DEVICES = ("cuda", "cpu")
MIN_SAMPLE_SECONDS = 1e-3  # a timed batch of calls lasts at least this long
START = time.monotonic()


def progress(line: str) -> None:
    print(f"[{time.monotonic() - START:6.1f} s] {line}", file=sys.stderr, flush=True)


# -- the command line -------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _dtypes(text: str) -> tuple[str, ...]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must name at least one dtype, got {text!r}")
    try:
        return tuple(dict.fromkeys(check_dtype(n) for n in names))
    except TypeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _target(text: str) -> Any:
    try:
        return json.loads(text) if text.lstrip().startswith("{") else text
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"target is not valid JSON: {err}") from None


def parser() -> argparse.ArgumentParser:
    doc = __doc__.splitlines()
    p = argparse.ArgumentParser(prog="gpu_check.py", description=doc[0], epilog="\n".join(doc[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", choices=DEVICES, default="cuda", help="where to run (default: %(default)s)")
    p.add_argument("--suite", type=Path, help="suite file (default: the suite `tvm-convt bench` uses)")
    p.add_argument("--dtypes", type=_dtypes, help="comma-separated; each suite workload in each "
                   "(default: float32,float16 on cuda, float32 on cpu)")
    p.add_argument("--modules", type=Path, help="run the compiled modules (.so + .json) in this folder "
                   "instead of compiling: the cases are then the modules found")
    p.add_argument("--target", type=_target, help="target to compile for (default: this GPU's arch; "
                   "llvm with --device cpu)")
    p.add_argument("--default-schedules", action="store_true", help="ignore tuning records")
    p.add_argument("--any-length", action="store_true", help="compile each layer once for every batch and "
                   "length (what the layer uses), and run it at the suite's shapes (default: a module per shape)")
    p.add_argument("--compile-only", action="store_true", help="write the modules to OUT/modules and stop")
    p.add_argument("--write-suite", type=Path, metavar="FILE", help="write the cases as a suite file and stop")
    p.add_argument("--dry-run", action="store_true", help="print the cases and their modules and stop")
    p.add_argument("--warmup", type=_positive, default=5, help="untimed calls first (default: %(default)s)")
    p.add_argument("--repeat", type=_positive, default=25, help="timed samples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="of the random inputs (default: %(default)s)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with the default dtypes filled in and the rules between options checked."""
    p = parser()
    args = p.parse_args(argv)
    if args.dtypes is None:
        args.dtypes = ("float32", "float16") if args.device == "cuda" else ("float32",)
    if args.modules is not None and (args.suite or args.target or args.compile_only or args.any_length):
        p.error("--modules runs modules already compiled: it takes no --suite, --target, --compile-only "
                "or --any-length")
    if args.modules is not None and not args.modules.is_dir():
        p.error(f"--modules must be a folder, got {str(args.modules)!r}")
    half = [d for d in args.dtypes if d in ("float16", "bfloat16")]
    if args.device == "cpu" and half:
        p.error(f"{OP}: dtype {half[0]} needs a CUDA target, got --device cpu")
    return args


# -- cases and their modules --------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One workload in one dtype, and the compiled module that computes it (once known)."""

    name: str
    workload: Workload
    library: Path | None = None
    schedule: str | None = None
    target_key: str | None = None


def suite_cases(suite_file: Path | None, dtypes: tuple[str, ...]) -> list[Case]:
    """Every workload of the suite (default: the bench suite) in every dtype, named ``name-dtype``."""
    from tvm_convt.suite import default_suite, load_suite

    suite = default_suite() if suite_file is None else load_suite(suite_file)
    return [Case(f"{name}-{dtype}", replace(w, dtype=dtype)) for dtype in dtypes for name, w in suite.items()]


def _manifest_names(folder: Path) -> dict[Path, str]:
    """Library path -> suite name, from a bundle's ``manifest.json`` in or above ``folder``."""
    for root in (folder, folder.parent):
        manifest = root / "manifest.json"
        if manifest.is_file():
            entries = json.loads(manifest.read_text()).get("workloads", [])
            return {(root / e["library"]).resolve(): e["name"] for e in entries if "library" in e}
    return {}


# The shapes a module for every length found in --modules runs at: (batch, length).
ANY_LENGTH_SHAPES = ((1, 97), (2, 1000))


def discover_modules(folder: Path) -> tuple[list[Case], list[str]]:
    """The modules under ``folder``: each ``.so`` with its ``.json`` sidecar, the two checked against
    each other, named by a bundle's manifest when there is one, else by file (a module for every
    length once per :data:`ANY_LENGTH_SHAPES`). Also returns what was left out, and why."""
    from tvm_convt.build import read_library, read_sidecar

    names = _manifest_names(folder)
    cases, left_out = [], []
    for library in sorted(folder.rglob("*.so")):
        if not library.with_suffix(".json").is_file():
            left_out.append(f"{library}: no .json sidecar beside it")
            continue
        try:
            metadata, digest = read_sidecar(library)
            read_library(library, digest)
        except (OSError, ValueError) as err:
            left_out.append(f"{library}: {err}")
            continue
        name = names.get(library.resolve(), library.stem)
        w = metadata.workload
        shapes = ([(f"{name}@{b}x{n}", w.at(b, max(n, w.params.min_length))) for b, n in ANY_LENGTH_SHAPES]
                  if w.symbolic else [(name, w)])
        cases += [Case(label, at, library, metadata.schedule, metadata.target_key) for label, at in shapes]
    return cases, left_out


def default_target(device: str) -> Any:
    """The host CPU, or this GPU's architecture as PyTorch reports it."""
    if device == "cpu":
        return "llvm"
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{OP}: compiling for this machine's GPU needs one; without a GPU give --target, "
                         "such as --target '{\"kind\": \"cuda\", \"arch\": \"sm_90\"}'")
    major, minor = torch.cuda.get_device_capability(0)
    return {"kind": "cuda", "arch": f"sm_{major}{minor}"}


def compile_module(workload: Workload, tgt: Any, path: Path, *, tuned: bool, fatbin: bool) -> str:
    """Compile ``workload`` into ``path`` and its sidecar; return where the schedule came from.
    CUDA kernels are packed as nvcc fatbins when ``fatbin``, else kept as source (compiled at load)."""
    from tvm_convt.bundle import write_module
    from tvm_convt.target import resolve_target

    kernels = "fatbin" if fatbin else "source"
    return write_module(workload, resolve_target(tgt), path, kernels=kernels, tuned=tuned).schedule


def compile_cases(cases: list[Case], target: Any, folder: Path, *, tuned: bool,
                  any_length: bool = False) -> list[Case]:
    """Each case compiled into ``folder`` (CUDA kernels as fatbins where nvcc is on PATH); with
    ``any_length``, its layer once for every batch and length."""
    from tvm_convt.params import SymbolicWorkload
    from tvm_convt.target import resolve_target, target_key

    tgt = resolve_target(target)
    fatbin = tgt.kind.name == "cuda" and shutil.which("nvcc") is not None
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for index, case in enumerate(cases):
        path = folder / f"{index:02d}_{case.name}.so"
        w = SymbolicWorkload(case.workload.params, case.workload.dtype) if any_length else case.workload
        source = compile_module(w, tgt, path, tuned=tuned, fatbin=fatbin)
        done.append(replace(case, library=path, schedule=source, target_key=target_key(tgt)))
        progress(f"compiled {case.name} ({source})")
    return done


# -- running on the device ----------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """Where the cases run, and how to time there."""

    kind: str  # "cuda" or "cpu"

    @property
    def torch(self) -> Any:
        import torch

        return torch.device("cuda", 0) if self.kind == "cuda" else torch.device("cpu")

    def missing(self) -> str | None:
        """What this machine lacks to run on the device (None: nothing)."""
        import torch
        import tvm

        if self.kind == "cuda" and not torch.cuda.is_available():
            return "PyTorch sees no CUDA GPU"
        if self.kind == "cuda" and not tvm.cuda(0).exist:
            return "TVM sees no CUDA GPU (its CUDA runtime library needs libcuda and libcudart)"
        return None

    def runs(self, target_key: str | None) -> bool:
        return (target_key or "").startswith("cuda") == (self.kind == "cuda")

    def sync(self) -> None:
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize()

    def batch_seconds(self, fn: Callable[[], Any], calls: int) -> float:
        """Seconds for ``calls`` back-to-back calls: CUDA events on the GPU, a clock on the CPU."""
        if self.kind != "cuda":
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            return time.perf_counter() - start
        import torch

        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


def random_tensors(w: Workload, device: Device, seed: int) -> tuple[Any, Any, Any]:
    """x from N(0, 1), weight and bias from PyTorch's default bound (outputs of order one), on the
    device in the workload's dtype, contiguous."""
    import torch

    p = w.params
    gen = torch.Generator().manual_seed(seed)
    bound = math.sqrt(p.groups / (p.out_channels * p.kernel_size))

    def uniform(*shape):
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    x = torch.randn(w.input_shape, generator=gen, dtype=torch.float64)
    tensors = (x, uniform(*p.weight_shape), uniform(p.out_channels) if p.bias else None)
    dtype = getattr(torch, w.dtype)
    return tuple(None if t is None else t.to(device.torch, dtype).contiguous() for t in tensors)


def torch_reference(x: Any, weight: Any, bias: Any, w: Workload) -> Any:
    """PyTorch's answer in float64: F.conv_transpose1d for zeros, else the gradient with respect
    to z of F.conv1d(F.pad(z, (padding, padding), mode), weight) at x, plus the bias."""
    import torch
    import torch.nn.functional as F

    p = w.params
    x, weight = x.double(), weight.double()
    bias = None if bias is None else bias.double()
    if p.padding_mode == "zeros":
        return F.conv_transpose1d(x, weight, bias, p.stride, p.padding, p.output_padding, p.groups, p.dilation)
    z = torch.zeros(w.output_shape, dtype=torch.float64, device=x.device, requires_grad=True)
    fwd = F.conv1d(F.pad(z, (p.padding, p.padding), mode=p.padding_mode), weight, stride=p.stride,
                   dilation=p.dilation, groups=p.groups)
    (y,) = torch.autograd.grad(fwd, z, x)
    return y if bias is None else y + bias[None, :, None]


def relative_error(actual: Any, expected: Any) -> float:
    if expected.numel() == 0:
        return 0.0
    scale = max(1.0, float(expected.abs().max()))
    return float((actual.double() - expected).abs().max()) / scale


def module_call(library: Path, x: Any, weight: Any, bias: Any, y: Any) -> Callable[[], Any]:
    """The module's ``main`` (a module for every length: its function for x's length) on the tensors,
    shared through DLPack (no copies)."""
    import tvm
    from tvm_convt.build import read_metadata
    from tvm_convt.lengths import range_for

    ranges = read_metadata(library).ranges
    name = "main" if ranges is None else range_for(ranges, int(x.shape[-1])).function
    func = tvm.runtime.load_module(str(library))[name]
    args = [tvm.runtime.from_dlpack(t) for t in (x, weight, bias, y) if t is not None]
    return lambda: func(*args)


def rival_calls(w: Workload, x: Any, weight: Any, bias: Any, device: Device) -> dict[str, Callable[[], Any]]:
    """PyTorch's own layer in the case's dtype: ``torch`` (TF32 disabled) and, for float32 on a GPU,
    ``torch_tf32`` (TF32 allowed, PyTorch's default for convolutions). None for the other
    padding modes, which PyTorch's transposed convolution does not have."""
    import torch
    import torch.nn.functional as F

    p = w.params
    if p.padding_mode != "zeros":
        return {}

    def call(tf32: bool) -> Callable[[], Any]:
        def run():
            torch.backends.cudnn.allow_tf32 = tf32
            return F.conv_transpose1d(x, weight, bias, p.stride, p.padding, p.output_padding, p.groups,
                                      p.dilation)
        return run

    calls = {"torch": call(False)}
    if device.kind == "cuda" and w.dtype == "float32":
        calls["torch_tf32"] = call(True)
    return calls


def interleaved_medians(fns: dict[str, Callable[[], Any]], device: Device, *, warmup: int,
                        repeat: int) -> dict[str, float]:
    """Median seconds a call of each function: after ``warmup`` calls, each sample is a batch of at
    least MIN_SAMPLE_SECONDS, and samples alternate between the functions."""
    per_sample = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        device.sync()
        one = device.batch_seconds(fn, 1)
        per_sample[name] = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(one, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            samples[name].append(device.batch_seconds(fn, per_sample[name]) / per_sample[name])
    return {name: statistics.median(values) for name, values in samples.items()}


@dataclass
class Result:
    """What one case gave: its check, its times (seconds a call) and how it ended."""

    name: str
    workload: Workload
    schedule: str | None
    target_key: str | None
    status: str = "ok"  # "ok", "FAIL", "error: ...", "skipped: ..."
    error: float | None = None
    torch_error: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def goal(self) -> float:
        return GOALS[self.workload.dtype]

    def speedup(self, rival: str) -> float | None:
        """The rival's time over tvm_convt's (above 1: tvm_convt is faster)."""
        if rival not in self.seconds or "tvm_convt" not in self.seconds:
            return None
        return self.seconds[rival] / self.seconds["tvm_convt"]

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        return {"name": self.name, "dtype": w.dtype, "workload": w.to_dict(), "schedule": self.schedule,
                "target_key": self.target_key, "status": self.status, "error": self.error,
                "goal": self.goal, "torch_error": self.torch_error,
                "microseconds": {k: v * 1e6 for k, v in self.seconds.items()},
                "speedup": {k: self.speedup(k) for k in self.seconds if k != "tvm_convt"},
                "gflops": {k: w.flops / v / 1e9 for k, v in self.seconds.items()}}


def check_case(case: Case, device: Device, args: argparse.Namespace) -> Result:
    """Run ``case`` once against the float64 reference, then time it and PyTorch."""
    import torch

    result = Result(case.name, case.workload, case.schedule, case.target_key)
    w = case.workload
    x, weight, bias = random_tensors(w, device, args.seed)
    y = torch.empty(w.output_shape, dtype=x.dtype, device=device.torch)
    call = module_call(case.library, x, weight, bias, y)
    call()
    device.sync()
    expected = torch_reference(x, weight, bias, w)
    result.error = relative_error(y, expected)
    rivals = rival_calls(w, x, weight, bias, device)
    if "torch" in rivals:
        result.torch_error = relative_error(rivals["torch"](), expected)
    result.status = "ok" if result.error <= result.goal else "FAIL"
    result.seconds = interleaved_medians({"tvm_convt": call, **rivals}, device, warmup=args.warmup,
                                         repeat=args.repeat)
    return result


def _error_status(err: Exception) -> str:
    """An exception in one line: TVM's errors end with the line that says what went wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"error: {type(err).__name__}: {lines[-1] if lines else ''}"


def run_cases(cases: list[Case], device: Device, args: argparse.Namespace) -> list[Result]:
    """Every case checked and timed; one that cannot run here is recorded as skipped or an error."""
    import torch

    torch.backends.cudnn.benchmark = True
    results = []
    for case in cases:
        if case.workload.dtype not in args.dtypes:
            status = f"skipped: dtype {case.workload.dtype} is not in --dtypes"
        elif not device.runs(case.target_key):
            status = f"skipped: the module targets {case.target_key}, not --device {device.kind}"
        else:
            try:
                results.append(check_case(case, device, args))
                r = results[-1]
                progress(f"{case.name}: error {r.error:.1e} {r.status}, "
                         + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in r.seconds.items()))
                continue
            except (RuntimeError, ValueError, TypeError, OSError) as err:  # a module that does not load or run
                status = _error_status(err)
        results.append(Result(case.name, case.workload, case.schedule, case.target_key, status))
        progress(f"{case.name}: {status}")
    return results


# -- the report -----------------------------------------------------------------------------------
def environment(device: Device, argv: list[str]) -> dict[str, Any]:
    """The machine and the versions behind the numbers."""
    import torch
    import tvm

    import tvm_convt

    info = {"device": device.kind, "python": platform.python_version(), "machine": platform.machine(),
            "torch": torch.__version__, "tvm": tvm.__version__, "tvm_convt": tvm_convt.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": ["gpu_check.py", *argv]}
    if device.kind == "cuda":
        major, minor = torch.cuda.get_device_capability(0)
        info.update(gpu=torch.cuda.get_device_name(0), arch=f"sm_{major}{minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summary(results: list[Result]) -> dict[str, Any]:
    """Per dtype: how many cases passed, and tvm_convt's speed-up over PyTorch (TF32 disabled) as a
    geometric mean and at worst, over all workloads and over the grouped ones (depthwise included)."""
    out: dict[str, Any] = {"cases": len(results), "failed": sum(r.status != "ok" and not r.status.startswith(
        "skipped") for r in results), "skipped": sum(r.status.startswith("skipped") for r in results)}
    for dtype in dict.fromkeys(r.workload.dtype for r in results):
        ran = [r for r in results if r.workload.dtype == dtype and r.speedup("torch") is not None]
        grouped = [r.speedup("torch") for r in ran if r.workload.params.groups > 1]
        speedups = [r.speedup("torch") for r in ran]
        out[dtype] = {"geomean_speedup": _geomean(speedups), "worst_speedup": min(speedups, default=None),
                      "grouped_geomean_speedup": _geomean(grouped)}
        if dtype == "float32":
            out[dtype]["geomean_speedup_vs_tf32"] = _geomean(
                [r.speedup("torch_tf32") for r in ran if r.speedup("torch_tf32") is not None])
    return out


def _us(result: Result, key: str) -> str:
    return f"{result.seconds[key] * 1e6:.1f}" if key in result.seconds else "-"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(info: dict[str, Any], results: list[Result], totals: dict[str, Any]) -> str:
    """A short table: one row a case, times in microseconds a call (medians)."""
    where = info.get("gpu") or info.get("cpu")
    rival = "cuDNN" if info["device"] == "cuda" else "PyTorch"
    lines = [f"# gpu_check: {where} ({info.get('arch', info['device'])}), {info['date']}", "",
             f"torch {info['torch']}, cuDNN {info.get('cudnn', '-')}, TVM {info['tvm']}, "
             f"tvm_convt {info['tvm_convt']}; `{' '.join(info['command'])}`", "",
             f"| case | schedule | error (goal) | tvm_convt us | {rival} us | {rival} TF32 us | speed-up | "
             "vs TF32 |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        error = "-" if r.error is None else f"{r.error:.1e} ({r.goal:.0e})"
        status = "" if r.status == "ok" else f" **{r.status}**"
        lines.append(f"| {r.name} | {r.schedule or '-'} | {error}{status} | {_us(r, 'tvm_convt')} | "
                     f"{_us(r, 'torch')} | {_us(r, 'torch_tf32')} | {_x(r.speedup('torch'))} | "
                     f"{_x(r.speedup('torch_tf32'))} |")
    lines += ["", f"{totals['cases']} cases, {totals['failed']} failed, {totals['skipped']} skipped. "
              "Speed-up: the rival's time over tvm_convt's (TF32 disabled unless the column says TF32)."]
    for dtype, t in totals.items():
        if isinstance(t, dict):
            lines.append(f"- {dtype}: geomean {_x(t['geomean_speedup'])}, worst {_x(t['worst_speedup'])}, "
                         f"grouped and depthwise {_x(t['grouped_geomean_speedup'])}"
                         + (f", vs TF32 {_x(t['geomean_speedup_vs_tf32'])}" if "geomean_speedup_vs_tf32" in t else ""))
    return "\n".join(lines) + "\n"


def write_report(folder: Path, info: dict[str, Any], results: list[Result]) -> tuple[Path, Path]:
    """``gpu_check.json`` (everything) and ``gpu_check.md`` (the table) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    totals = summary(results)
    data = {"format": FORMAT, "environment": info, "goals": GOALS, "summary": totals,
            "cases": [r.to_dict() for r in results]}
    json_path, md_path = folder / "gpu_check.json", folder / "gpu_check.md"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(markdown(info, results, totals))
    return json_path, md_path


# -- main -----------------------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> tuple[list[Case], list[str]]:
    """The cases: the modules in --modules, or the suite in each dtype (compiled later)."""
    if args.modules is not None:
        return discover_modules(args.modules)
    return suite_cases(args.suite, args.dtypes), []


def _print_plan(cases: list[Case], left_out: list[str]) -> None:
    for case in cases:
        w = case.workload
        print(f"{case.name}: {w.params}, batch={w.batch}, length={w.length}, dtype={w.dtype}; "
              f"module {case.library or 'compiled here'}")
    for line in left_out:
        print(f"left out: {line}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        cases, left_out = plan(args)
    except (OSError, ValueError, TypeError) as err:
        print(f"gpu_check.py: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run or args.write_suite:
        if args.write_suite:
            from tvm_convt.suite import write_suite

            write_suite(args.write_suite, {case.name: case.workload for case in cases})
        _print_plan(cases, left_out)
        return 0
    device = Device(args.device)
    if args.modules is None:
        try:
            target = args.target if args.target is not None else default_target(args.device)
            cases = compile_cases(cases, target, args.out / "modules", tuned=not args.default_schedules,
                                  any_length=args.any_length)
        except (ValueError, TypeError) as err:
            print(f"gpu_check.py: error: {err}", file=sys.stderr)
            return 2
        if args.compile_only:
            return 0
    missing = device.missing()
    if missing is not None:
        print(f"gpu_check.py: error: --device {device.kind}: {missing}", file=sys.stderr)
        return 2
    for line in left_out:
        progress(f"left out: {line}")
    results = run_cases(cases, device, args)
    json_path, md_path = write_report(args.out, environment(device, argv), results)
    print(md_path.read_text())
    progress(f"wrote {json_path} and {md_path}")
    totals = summary(results)
    if totals["failed"] or totals["skipped"] == totals["cases"]:
        return 1  # a check failed, or nothing was checked at all
    return 0


if __name__ == "__main__":
    sys.exit(main())
