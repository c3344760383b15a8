"""The ``tvm-convt`` command line: ``demo``, ``bench``, ``compile``, ``tune``, ``bundle`` and ``info``.

Each sub-command parses and validates its arguments (argparse ``type=``
functions raise on bad values) and then calls the Python API. Every failure is
one line on stderr: user errors exit 2, a failed check 1, an internal error 1
with its traceback saved to a file, an interrupt 130.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import write_atomic
from .params import DTYPES, OP, PADDING_MODES, ConvTranspose1dParams, Workload

LOGS_HELP = ("tuning logs folder, holding one folder per hardware class "
             "(default: $TVM_CONVT_TUNING_LOGS, else ~/.local/share/tvm_convt/tuning_logs)")

# The HiFi-GAN V1 generator's first upsampling layer.
DEMO = {"in_channels": 512, "out_channels": 256, "kernel_size": 16, "stride": 8, "padding": 4,
        "batch": 1, "length": 86}


# Sizes go to TVM as int64; a larger value would overflow there instead of failing here.
INT_MAX = 2**63 - 1


def _int_arg(text: str, low: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {_clip(text)!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
    if value > INT_MAX:
        raise argparse.ArgumentTypeError(f"must be at most 2**63-1 (64-bit sizes), got {_clip(text)}")
    return value


def positive_int(text: str) -> int:
    return _int_arg(text, 1, "positive")


def non_negative_int(text: str) -> int:
    return _int_arg(text, 0, "non-negative")


def _clip(text: str, limit: int = 40) -> str:
    """Echo at most ``limit`` characters of a value, so a pasted blob stays one short line."""
    return text if len(text) <= limit else text[:limit] + "..."


def target_arg(text: str) -> str:
    """Validate a target now, so a typo fails before any compiling."""
    from .target import resolve_target

    try:
        resolve_target(text)
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def cpu_target_arg(text: str) -> str:
    """A target the CPU benchmark can run: llvm only (PyTorch runs beside it on the CPU)."""
    from .target import missing_cpu_support, resolve_target

    text = target_arg(text)
    target = resolve_target(text)
    if target.kind.name != "llvm":
        raise argparse.ArgumentTypeError(
            f"bench compares CPU kernels with PyTorch's on the CPU and takes llvm targets only, "
            f"got target={text!r}")
    missing = missing_cpu_support(target)
    if missing is not None:
        raise argparse.ArgumentTypeError(
            f"bench runs the kernels here, and code for this target needs {missing}, which this "
            f"machine does not have, got target={text!r}")
    return text


def output_file(text: str) -> Path:
    """A file to write into an existing, writable folder: a typo in the folder fails before any work."""
    path = Path(text)
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"folder {str(folder)!r} {what}, got {text!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"folder {str(folder)!r} is not writable, got {text!r}")
    return path


def so_path(text: str) -> Path:
    if Path(text).suffix != ".so":
        raise argparse.ArgumentTypeError(f"must end in .so, got {text!r}")
    return output_file(text)


def _add_layer_args(p: argparse.ArgumentParser, defaults: dict[str, Any] | None = None,
                    required: bool = True, unless: str = "--suite") -> None:
    d = defaults or {}
    req = defaults is None and required

    def size(flag: str, what: str, needed: bool = req, note_unless: str = unless) -> None:
        """A size with no generic default: required, defaulted (demo), or needed unless another option."""
        key = flag.removeprefix("--").replace("-", "_")
        if defaults is not None:
            note = f" (default: {d.get(key)})"
        else:
            note = "" if needed else f" (required without {note_unless})"
        p.add_argument(flag, type=positive_int, required=needed, default=d.get(key), help=what + note)

    size("--in-channels", "input channels")
    size("--out-channels", "output channels")
    size("--kernel-size", "kernel size")
    p.add_argument("--stride", type=positive_int, default=d.get("stride", 1), help="stride (default: %(default)s)")
    p.add_argument("--padding", type=non_negative_int, default=d.get("padding", 0),
                   help="padding on both sides (default: %(default)s)")
    p.add_argument("--output-padding", type=non_negative_int, default=0,
                   help="extra samples on the right (default: %(default)s)")
    p.add_argument("--groups", type=positive_int, default=1, help="groups (default: %(default)s)")
    p.add_argument("--dilation", type=positive_int, default=1, help="dilation (default: %(default)s)")
    p.add_argument("--padding-mode", choices=PADDING_MODES, default="zeros",
                   help="padding mode (default: %(default)s)")
    p.add_argument("--no-bias", action="store_true", help="compile without a bias (default: with bias)")
    p.add_argument("--batch", type=positive_int, default=d.get("batch", 1), help="batch size (default: %(default)s)")
    # compile takes --any-length instead of a length.
    size("--length", "input length L_in", needed=req and unless != "--any-length")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype (default: %(default)s)")
    p.add_argument("--target", type=target_arg, default="llvm",
                   help="'llvm' (this CPU), 'cuda' (this GPU) or a JSON target dict (default: %(default)s)")
    p.add_argument("--logs", type=Path, default=None, help=LOGS_HELP)


def _workload_params(args: argparse.Namespace) -> ConvTranspose1dParams:
    return ConvTranspose1dParams(
        args.in_channels, args.out_channels, args.kernel_size, stride=args.stride,
        padding=args.padding, output_padding=args.output_padding, groups=args.groups,
        bias=not args.no_bias, dilation=args.dilation, padding_mode=args.padding_mode)


def _workload(args: argparse.Namespace) -> Workload:
    return Workload(_workload_params(args), args.batch, args.length, args.dtype)


def _cmd_compile(args: argparse.Namespace) -> int:
    from .runtime import compile as compile_module

    if args.length is None and not args.any_length:
        print("tvm-convt compile: error: --length is required without --any-length", file=sys.stderr)
        return 2
    if args.any_length:
        args.length = _workload_params(args).min_length  # any length: a valid one for the checks
    w = _workload(args)
    shape = {} if args.any_length else {"batch": w.batch, "length": w.length}
    compiled = compile_module(w.params, **shape, dtype=w.dtype, target=args.target,
                              logs=args.logs, prepack_weight=args.prepack_weight)
    path = compiled.export(args.output)
    if compiled.symbolic:
        ranges = ", ".join(f"{r.first}-{'' if r.last is None else r.last}" for r in compiled.metadata.ranges)
        print(f"compiled any batch x {w.params.in_channels} x any length (from {w.params.min_length}) {w.dtype} "
              f"for {compiled.metadata.target_key}; functions by input length: {ranges}")
    else:
        print(f"compiled {w.input_shape} -> {w.output_shape} {w.dtype} for {compiled.metadata.target_key}")
    print(f"schedule: {compiled.metadata.schedule}")
    if compiled.weight_packed:
        print(f"main reads the weight packed as {list(compiled.metadata.main_weight_shape)}: "
              "CompiledConvTranspose1d.prepare_weights packs it (once per weight)")
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import tvm

    from . import __version__
    from .build import cache_dir
    from .layer_records import read_layer_records
    from .records import WORKLOAD_FILE, default_logs_dir, shipped_schedules_dir
    from .target import resolve_target, target_key

    host = resolve_target("llvm")
    host_key = target_key(host)

    def records(root: Path) -> str:
        found = root / host_key / WORKLOAD_FILE
        count = sum(1 for line in found.read_text().splitlines() if line.strip()) if found.exists() else 0
        layers = sum(r.applies_on(host) for r in read_layer_records(root / host_key).values())
        return (f"{root} ({count} tuned workload(s), {layers} layer(s) tuned for every length on this core, "
                f"for {host_key})")

    info: dict[str, Any] = {
        "tvm_convt": __version__,
        "tvm": tvm.__version__,
        "host_target": json.loads(json.dumps(dict(host.export()), default=str)),
        "targets": {"llvm": f"this CPU ({host_key})"},
        "cpu_threads": int(os.environ.get("TVM_NUM_THREADS", 0)) or None,
        "cache_dir": str(cache_dir()),
        "tuning_logs": records(args.logs if args.logs is not None else default_logs_dir()),
        "schedules": records(shipped_schedules_dir()),
        "nvcc": shutil.which("nvcc"),
    }
    if tvm.cuda(0).exist:
        gpu = resolve_target("cuda")
        info["targets"]["cuda"] = f"this GPU ({target_key(gpu)})"
    else:
        info["targets"]["cuda"] = ('code generation only, no GPU here: name the arch, '
                                   'e.g. {"kind": "cuda", "arch": "sm_90"}')
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if isinstance(value, dict) and key == "targets":
                for name, what in value.items():
                    print(f"target {name:4s} {what}")
            elif key != "host_target":
                print(f"{key:11s} {value}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .benchmark import CHECK_TOLERANCE, interleaved_medians, module_call, relative_error, torch_call
    from .reference import conv_transpose1d_reference
    from .runtime import ConvTranspose1d
    from .runtime import compile as compile_module

    w = _workload(args)
    p = w.params
    print(f"layer: ConvTranspose1d({p.in_channels}, {p.out_channels}, kernel_size={p.kernel_size}, "
          f"stride={p.stride}, padding={p.padding}), input {w.input_shape} {w.dtype}, target {args.target}")
    layer = ConvTranspose1d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding,
                            p.output_padding, p.groups, p.bias, p.dilation, p.padding_mode,
                            target=args.target, dtype=w.dtype, seed=0, logs=args.logs)
    x = np.random.default_rng(1).standard_normal(w.input_shape).astype(w.dtype)
    compiled = layer.compiled_for(x.shape)
    print(f"compiled for {compiled.metadata.target_key} with schedule {compiled.metadata.schedule}")
    y = layer(x)
    err = relative_error(y, conv_transpose1d_reference(x, layer.weight, layer.bias, p))
    ok = err <= CHECK_TOLERANCE[w.dtype]
    print(f"output {y.shape}, max error against the float64 reference {err:.2e}: {'OK' if ok else 'FAIL'}")

    threads = int(compiled.target.attrs.get("num-cores", 1))
    fns = {"tvm_convt (module)": module_call(compiled, x, layer.weight, layer.bias),
           "tvm_convt (layer call)": lambda: layer(x)}
    if compiled.metadata.schedule.startswith("tuned:"):
        default = compile_module(p, batch=w.batch, length=w.length, dtype=w.dtype, target=args.target,
                                 tuned=False, prepack_weight=True)
        print(f"also timing the default schedule ({default.metadata.schedule}) for comparison")
        fns["tvm_convt (default sched.)"] = module_call(default, x, layer.weight, layer.bias)
    fns["numpy reference (float64)"] = lambda: conv_transpose1d_reference(x, layer.weight, layer.bias, p)
    rival, label = torch_call(w, x, layer.weight, layer.bias, threads)
    if rival is None:
        print(f"no PyTorch comparison: {label}")
    else:
        fns[f"{label.lower()} ({threads} threads)"] = rival
    times = interleaved_medians(fns, rounds=args.rounds, number=5)
    base = times["tvm_convt (module)"]
    print(f"\n{'':28s} {'median ms':>10s} {'GFLOP/s':>9s} {'vs tvm_convt':>13s}")
    for name, t in times.items():
        print(f"{name:28s} {t * 1e3:10.3f} {w.flops / t / 1e9:9.1f} {t / base:12.2f}x")
    print(f"\n({w.flops / 1e6:.0f} MFLOP of useful multiply-adds per call; medians of "
          f"{args.rounds} interleaved rounds of 5 calls)")
    return 0 if ok else 1


# What matplotlib's savefig writes, by suffix (the plot's format is its file's).
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


def _check_outputs(args: argparse.Namespace) -> None:
    """bench's --json and --plot, refused before anything is timed: a plot format matplotlib cannot
    write, one file for both, or a folder where no file can be made (/proc)."""
    if args.plot is not None and args.plot.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"{OP}: --plot must end in one of {', '.join(PLOT_SUFFIXES)}, got {str(args.plot)!r}")
    if args.plot is not None and args.json is not None and args.plot.resolve() == args.json.resolve():
        raise ValueError(f"{OP}: --json and --plot must be different files, got {str(args.json)!r} for both")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is None:
            continue
        try:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tvm-convt-check-"):
                pass
        except OSError as err:
            raise ValueError(f"{OP}: {flag} must be in a folder where files can be made, got {str(path)!r} "
                             f"({err.strerror or err})") from None


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import check_plotting, plot, run_bench, stream_progress
    from .suite import default_suite, load_suite

    _check_outputs(args)
    if args.plot is not None:
        try:
            check_plotting()
        except ImportError as err:
            print(f"tvm-convt bench: error: {err}", file=sys.stderr)
            return 2
    suite = load_suite(args.suite) if args.suite is not None else default_suite()
    if args.lengths is not None:
        return _bench_lengths(args, suite)
    if not args.in_process:
        return _bench_peers(args, suite)
    print(f"benchmarking {len(suite)} layer(s) "
          f"({'suite ' + str(args.suite) if args.suite else 'the default suite'}); "
          "each is checked against PyTorch before it is timed", file=sys.stderr)
    report = run_bench(suite, target=args.target, threads=args.threads, rounds=args.rounds,
                       logs=args.logs, tuned=not args.default_schedule, progress=stream_progress)
    return _print_report(args, report, plot)


def _bench_peers(args: argparse.Namespace, suite: dict) -> int:
    from .peer_bench import plot_peers, run_peer_bench, stream_peer_progress

    print(f"benchmarking {len(suite)} layer(s) "
          f"({'suite ' + str(args.suite) if args.suite else 'the default suite'}): tvm_convt's layer call against "
          f"{', '.join(args.peers)}, each library in its own worker process, taking turns; every output is "
          "checked against the float64 NumPy reference before it is timed", file=sys.stderr)
    report = run_peer_bench(suite, target=args.target, threads=args.threads, rounds=args.rounds, logs=args.logs,
                            tuned=not args.default_schedule, peers=tuple(args.peers), progress=stream_peer_progress)
    return _print_report(args, report, plot_peers)


def peers_arg(text: str) -> list[str]:
    """A comma-separated list of peers (torch, onnxruntime, openvino), or "none"."""
    from .peers import PEERS

    if text == "none":
        return []
    names = [part.strip() for part in text.split(",")]
    bad = [n for n in names if n not in PEERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"must be comma-separated names among {', '.join(PEERS)} (or none), "
                                         f"got {text!r}")
    return list(dict.fromkeys(names))


def _print_report(args: argparse.Namespace, report: Any, plot: Any) -> int:
    """A bench report's machine line and table; its JSON and plot where asked for."""
    m = report.machine
    print(f"machine: {m['cpu']}, {m['target_key']} ({m['target']}), {m['threads']} threads, "
          f"tvm {m['tvm']}, torch {m['torch']}")
    print(report.table())
    if args.json is not None:
        write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n"))
        print(f"wrote {args.json}")
    if args.plot is not None:
        print(f"wrote {plot(report, args.plot)}")
    return 0


def _bench_lengths(args: argparse.Namespace, suite: dict) -> int:
    from .length_sweep import plot_lengths, run_length_sweep, stream_point

    lengths = None if args.lengths == "default" else args.lengths
    print(f"sweeping {len(suite)} layer(s) over input lengths "
          f"({'each layer: 1, 7, 97, L-1, L, L+1, 3L' if lengths is None else lengths}): one symbolic module "
          "per layer against the static module of each length and PyTorch (and the layer's tuned module "
          "where --logs holds its record of tune --any-length)", file=sys.stderr)
    report = run_length_sweep(suite, target=args.target, threads=args.threads, rounds=args.rounds,
                              lengths=lengths, logs=args.logs, progress=stream_point)
    return _print_report(args, report, plot_lengths)


def lengths_arg(text: str) -> list[int] | str:
    """A comma-separated list of positive input lengths ("default": each layer's default set)."""
    if text == "default":
        return text
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return sorted(set(values))


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{'is not a file' if path.exists() else 'does not exist'}, got {text!r}")
    return path


def python_version_arg(text: str) -> str:
    from .bundle import check_python_version

    try:
        return check_python_version(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"{OP}: ")) from None


def bundle_folder(text: str) -> Path:
    """A folder to create (or an empty one) whose parent exists and is writable."""
    path = Path(text)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise argparse.ArgumentTypeError(f"must be a new or empty folder, got {text!r}")
    output_file(str(path / "x") if path.is_dir() else text)  # the folder it is written into
    return path


def _cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import write_bundle
    from .suite import load_suite

    report = write_bundle(load_suite(args.suite), args.output, target=args.target, python=args.python,
                          kernels=args.kernels, logs=args.logs, any_length=args.any_length)
    m = report.manifest
    print(f"bundled {len(m['workloads'])} module(s) for {m['target_key']}, Python {m['python']}: "
          f"{m['sizes']['total'] / 2**20:.1f} MiB in {report.folder}")
    if m["cuda_kernels"]:
        print(f"CUDA kernels: {m['cuda_kernels']}")
    print(f"run there: python {report.folder / 'run.py'} --check")
    return 0


def tracker_arg(text: str) -> str:
    from .tuning import parse_tracker

    try:
        parse_tracker(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _prune_for_shipping(report, workloads: dict[str, Workload], args: argparse.Namespace) -> None:
    """Write the best record per workload to --schedules; measured locally, the best few
    and the default schedule are timed against each other first, and the fastest kept."""
    from .remeasure import describe
    from .tuning import prune

    local = args.rpc_tracker is None
    confirmed: dict[str, list] = {}
    for path in prune(report.logs.parent, args.schedules, target_key_name=report.target_key,
                      confirm_on=args.target if local else None, confirmed=confirmed):
        print(f"pruned best records: {path}")
    for name, w in workloads.items():
        ranked = confirmed.get(json.dumps(w.to_dict(), sort_keys=True))
        if ranked:
            print(f"  {name}: kept {ranked[0].source} (re-measured: {describe(ranked)})")


def _cmd_tune(args: argparse.Namespace) -> int:
    from .suite import load_suite
    from .tuning import tune

    if args.suite is not None:
        given = [f"--{n.replace('_', '-')}" for n in ("in_channels", "out_channels", "kernel_size", "length")
                 if getattr(args, n) is not None]
        if given:
            raise ValueError(f"{OP}: tune takes --suite FILE or one layer's options, got both (--suite and "
                             f"{', '.join(given)})")
        workloads = load_suite(args.suite)
    else:
        missing = [f"--{n.replace('_', '-')}" for n in ("in_channels", "out_channels", "kernel_size", "length")
                   if getattr(args, n) is None]
        if missing:
            raise ValueError(f"{OP}: tune needs --suite FILE or the layer's {', '.join(missing)}, "
                             f"got neither")
        workloads = {"layer": _workload(args)}
    if args.any_length:
        return _tune_any_length(workloads, args)
    _, report = tune(workloads, target=args.target, trials=args.trials, logs=args.logs,
                     work_dir=args.work_dir, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                     build_only=args.build_only, seed=args.seed, trials_per_iter=args.trials_per_iter)
    if report.interrupted:
        print(f"tvm-convt tune: interrupted after {report.trials} trials; every record measured so far "
              f"is kept in {report.logs}; run the same command again to continue", file=sys.stderr)
        return 130
    if args.build_only:
        print(f"build-only: {report.built} of {report.trials} candidates compiled for "
              f"{report.target_key} ({report.build_errors} failed)")
        return 0 if report.built > 0 else 1
    print(f"tuned {len(workloads)} workload(s) for {report.target_key} in {report.elapsed:.0f} s: "
          f"{report.trials} trials, {report.build_errors} failed builds, {report.run_errors} failed runs")
    for name, w in workloads.items():
        secs = report.best_seconds.get(name)
        best = f"{secs * 1e3:.3f} ms, {report.best_gflops(name):.1f} GFLOP/s" if secs else "no valid run"
        print(f"  {name}: {w.input_shape} -> {w.output_shape} {w.dtype}: best {best}")
    print(f"records: {report.logs}")
    if args.schedules is not None:
        _prune_for_shipping(report, workloads, args)
    if not report.best_seconds:
        print("tvm-convt tune: error: no candidate ran successfully; see the logs in the work dir",
              file=sys.stderr)
        return 1
    return 0


def _tune_any_length(workloads: dict[str, Workload], args: argparse.Namespace) -> int:
    """Tune each layer's module for every length at :func:`~tvm_convt.layer_tuning.tuning_lengths` of
    its length, on this machine; the records go to the tuning logs (and --schedules)."""
    from .layer_records import write_layer_record
    from .layer_tuning import tune_layer, tuning_lengths
    from .records import default_logs_dir
    from .target import resolve_target

    refused = [flag for flag, given in (("--rpc-tracker", args.rpc_tracker), ("--build-only", args.build_only))
               if given]
    if refused:
        raise ValueError(f"{OP}: tune --any-length times candidates on this machine, got {', '.join(refused)}")
    logs = args.logs if args.logs is not None else default_logs_dir()
    tgt = resolve_target(args.target)
    for name, w in workloads.items():
        lengths = tuning_lengths(w.params, w.length)
        print(f"{name}: tuning for every length at lengths {', '.join(map(str, lengths))}", flush=True)
        found = tune_layer(w.params, lengths, dtype=w.dtype, target=tgt, rounds=args.rounds,
                           log=lambda line: print("  " + line, flush=True))
        times = ", ".join(f"{n}: {d:.3f} -> {t:.3f} ms" for n, d, t in zip(lengths, found.default_ms, found.tuned_ms))
        if not found.fields:
            print(f"  the default won ({times}); no record")
            continue
        print(f"  tuned {found.speedup:.2f}x the default ({times}): {found.fields}")
        for root in [logs] + ([args.schedules] if args.schedules is not None else []):
            print(f"  record: {write_layer_record(root, tgt, found.record(str(tgt)))}")
    return 0


def one_line(text: str) -> str:
    """Collapse a message that spans lines (argparse's, TVM's) into one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the sub-command, exit status 2;
    the usage block is left to --help."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # argparse reports a sub-command's unknown options from the top parser; name the command.
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(2, f"{prog}: error: unrecognized arguments: {one_line(' '.join(extras))}\n")
        return parsed


EPILOG = ("Exit status: 0 done; 1 a failed check or an internal error; 2 a usage error (bad option, "
          "bad layer, unreadable or unwritable file); 130 interrupted. An internal error prints one "
          "line naming a file that holds its traceback; TVM_CONVT_TRACEBACK=1 also prints the "
          "traceback.")


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="tvm-convt", description="PyTorch's ConvTranspose1d compiled with Apache TVM.",
                       epilog=EPILOG)
    # Not required=True: argparse's message for a missing command names "command", not the choices.
    sub = parser.add_subparsers(dest="command", parser_class=CliParser)

    demo = sub.add_parser("demo", help="compile, check and time the HiFi-GAN V1 first upsampling layer",
                          description="Compile the HiFi-GAN V1 first upsampling layer (512->256 "
                                      "channels, kernel 16, stride 8, padding 4, length 86) for this "
                                      "CPU, check it against the reference and time it beside the "
                                      "NumPy reference and PyTorch (when installed).")
    _add_layer_args(demo, DEMO)
    demo.add_argument("--rounds", type=positive_int, default=15,
                      help="interleaved timing rounds (default: %(default)s)")
    demo.set_defaults(func=_cmd_demo)

    comp = sub.add_parser("compile", help="compile one layer for one input shape into a .so",
                          description="Compile the operator for a parameter set and input shape; "
                                      "writes FILE.so and its FILE.json metadata.")
    _add_layer_args(comp, unless="--any-length")
    comp.add_argument("-o", "--output", type=so_path, required=True, help="output library FILE.so")
    comp.add_argument("--any-length", action="store_true",
                      help="compile one module for every batch and input length (--batch and --length are "
                           "then ignored; default rules, CPU targets)")
    comp.add_argument("--prepack-weight", action="store_true",
                      help="where the default schedule packs the weight in every call (cpu-gemm, "
                           "cpu-gemm-blocked), compile a main that reads it packed and a pack_weight "
                           "function to run once per weight (CompiledConvTranspose1d.prepare_weights)")
    comp.set_defaults(func=_cmd_compile)

    tune = sub.add_parser(
        "tune", help="auto-tune one layer or a suite with MetaSchedule (XGBoost cost model)",
        description="Tune with MetaSchedule's evolutionary search and XGBoost cost model. Records go "
                    "to LOGS/<hardware class>/ and are used by every later compile on that class of "
                    "machine; running the same command again continues from them.")
    _add_layer_args(tune, required=False)
    tune.add_argument("--suite", type=Path, default=None,
                      help="JSON list of layers to tune together, sharing the trial budget "
                           "(default: tune the one layer given by the layer options)")
    tune.add_argument("--trials", type=positive_int, default=64,
                      help="measurement trials in all (default: %(default)s)")
    tune.add_argument("--trials-per-iter", type=positive_int, default=32,
                      help="candidates built and measured per search round (default: %(default)s)")
    tune.add_argument("--work-dir", type=Path, default=None,
                      help="MetaSchedule's log files (default: LOGS/<hardware class>/work)")
    tune.add_argument("--rpc-tracker", type=tracker_arg, default=None,
                      help="measure on devices of this TVM RPC tracker, HOST:PORT (default: locally)")
    tune.add_argument("--rpc-key", default=None, help="device key at the RPC tracker (default: none)")
    tune.add_argument("--build-only", action="store_true",
                      help="build --trials random candidates without measuring; no device needed, "
                           "nothing recorded (default: off)")
    tune.add_argument("--seed", type=non_negative_int, default=None,
                      help="random seed of the search (default: random)")
    tune.add_argument("--any-length", action="store_true",
                      help="tune the module that serves every batch and length (what the layer uses): the "
                           "schedule rules' tile and cache sizes, timed here at a quarter, one and four times "
                           "--length, kept when 5%% faster than the default; the record also steers the "
                           "layer's static modules that MetaSchedule has no record of, on this core "
                           "(default: MetaSchedule, for the static module of --batch and --length)")
    tune.add_argument("--rounds", type=positive_int, default=9,
                      help="with --any-length: interleaved rounds per measurement, medians (default: %(default)s)")
    tune.add_argument("--schedules", type=Path, default=None,
                      help="also write the best record per workload to SCHEDULES/<hardware class>/; "
                           "measured locally, the best few records and the default schedule are first "
                           "timed against each other and the fastest is kept (default: do not)")
    tune.set_defaults(func=_cmd_tune)

    bench = sub.add_parser(
        "bench", help="time tvm_convt against PyTorch, ONNX Runtime and OpenVINO on a suite of layers "
                      "(default: real model layers)",
        description="For each layer: compile with the best schedule available (your tuning logs, "
                    "the shipped records, else the default rule) and time the call a user makes (the layer: "
                    "NumPy in, a new array out) against PyTorch, ONNX Runtime and OpenVINO (those installed: "
                    "pip install 'tvm_convt[peers]'), each library alone in its own worker process, taking "
                    "turns, on the same threads, after checking every output against the float64 NumPy "
                    "reference; report medians, GFLOP/s of useful multiply-adds and the speed-ups. "
                    "--in-process times the compiled module against PyTorch in this process instead.")
    bench.add_argument("--suite", type=Path, default=None,
                       help="JSON list of layers, the format tune reads (default: the shipped suite)")
    bench.add_argument("--target", type=cpu_target_arg, default="llvm",
                       help="'llvm' (this CPU) or a JSON llvm target, e.g. "
                            '\'{"kind": "llvm", "mcpu": "znver3"}\' (default: %(default)s)')
    bench.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads for every library timed (default: the physical cores)")
    bench.add_argument("--rounds", type=positive_int, default=15,
                       help="timing rounds per layer, each library in turn (default: %(default)s)")
    bench.add_argument("--json", type=output_file, default=None, help="also write the report as JSON here")
    bench.add_argument("--plot", type=output_file, default=None,
                       help="also draw the speed-ups as a bar chart (PNG; needs matplotlib)")
    bench.add_argument("--logs", type=Path, default=None, help=LOGS_HELP)
    bench.add_argument("--default-schedule", action="store_true",
                       help="ignore every tuning record (yours and the shipped ones) and time the "
                            "default schedules, as for a layer nobody tuned")
    bench.add_argument("--peers", type=peers_arg, default=["torch", "onnxruntime", "openvino"],
                       help="comma-separated peers to time: torch, onnxruntime, openvino, or none "
                            "(default: all three; one not installed is reported as such)")
    bench.add_argument("--in-process", action="store_true",
                       help="time the compiled module on prepared tensors against PyTorch, interleaved in this "
                            "process (the comparison of earlier versions), instead of the worker processes")
    bench.add_argument("--lengths", type=lengths_arg, nargs="?", const="default", default=None,
                       help="time one symbolic module per layer (any length) against the static module of each "
                            "length and PyTorch, at these comma-separated input lengths (default, with no value: "
                            "1, 7, 97, the layer's length L, L-1, L+1 and 3L); default schedules only")
    bench.set_defaults(func=_cmd_bench)

    bundle = sub.add_parser(
        "bundle", help="write a self-contained folder that runs a suite's modules without TVM's compiler",
        description="Compile every layer of a suite for one target and write them into a folder with "
                    "the TVM runtime (no compiler library), tvm_ffi for the Python that will run it, "
                    "tvm_convt's runtime files, a manifest, a README and run.py (--check compares each "
                    "module with the NumPy reference). The machine that runs it needs Python and NumPy; "
                    "a bundle for another architecture (an aarch64 target) holds that architecture's "
                    "runtime and NumPy, downloaded with pip, and the machine needs only Python.")
    bundle.add_argument("--suite", type=existing_file, required=True,
                        help="JSON list of layers, the format tune and bench read")
    bundle.add_argument("--target", type=target_arg, default="llvm",
                        help="'llvm' (this CPU) or a JSON target, e.g. '{\"kind\": \"cuda\", \"arch\": "
                             "\"sm_90\"}' or '{\"kind\": \"llvm\", \"mtriple\": \"aarch64-linux-gnu\", "
                             "\"mcpu\": \"cortex-a76\"}' (default: %(default)s)")
    bundle.add_argument("--any-length", action="store_true",
                        help="one module per layer for every batch and length (default: the suite's shapes)")
    bundle.add_argument("-o", "--output", type=bundle_folder, required=True, help="the folder to write (new or empty)")
    bundle.add_argument("--python", type=python_version_arg, default=None,
                        help="Python version of the machine that runs it, 3.N (default: this one's)")
    bundle.add_argument("--kernels", choices=("fatbin", "source"), default="fatbin",
                        help="CUDA kernels compiled here by nvcc (fatbin) or as source compiled at "
                             "load time (default: %(default)s)")
    bundle.add_argument("--logs", type=Path, default=None, help=LOGS_HELP)
    bundle.set_defaults(func=_cmd_bundle)

    info = sub.add_parser("info", help="TVM version, usable targets and the cache directory")
    info.add_argument("--json", action="store_true", help="print JSON (default: text)")
    info.add_argument("--logs", type=Path, default=None, help=LOGS_HELP)
    info.set_defaults(func=_cmd_info)
    return parser


COMMANDS = ("demo", "bench", "compile", "tune", "bundle", "info")
USER_ERRORS = (ValueError, TypeError, OSError)  # bad layer or input; missing, unreadable, unwritable file
TVM_MODULES = ("tvm", "tvm_ffi")


def _raised_by_tvm(err: BaseException) -> bool:
    """Whether TVM raised this (its own class, or a builtin such as ValueError that TVM's FFI
    raises from C++): frames after the last tvm_convt frame are TVM's, or have no module at all
    (the C++ frames the FFI adds)."""
    if type(err).__module__.split(".")[0] in TVM_MODULES:
        return True
    modules = []
    tb = err.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__"))
        tb = tb.tb_next
    ours = [i for i, name in enumerate(modules) if name and name.split(".")[0] == __package__]
    after = modules[ours[-1] + 1:] if ours else modules
    return any(name is None or name.split(".")[0] in TVM_MODULES for name in after)


def _save_traceback(err: BaseException) -> str:
    """Write the traceback to a fresh file, so the terminal gets one line and a report keeps it all."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    if os.environ.get("TVM_CONVT_TRACEBACK") == "1":
        print(text, end="", file=sys.stderr)
    try:
        fd, path = tempfile.mkstemp(prefix="tvm-convt-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as why:
        return f"nowhere (saving it failed: {one_line(str(why))})"
    return path


def _report(err: BaseException, prog: str) -> int:
    """Print one line for an exception a command raised and return the exit status."""
    message = one_line(str(err))
    # Only a loaded benchmark module can have raised its ResultMismatch; importing it here could fail.
    benchmark = sys.modules.get(f"{__package__}.benchmark")
    if benchmark is not None and isinstance(err, benchmark.ResultMismatch):
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    if isinstance(err, USER_ERRORS) and not _raised_by_tvm(err):
        print(f"{prog}: error: {message or type(err).__name__}", file=sys.stderr)
        return 2
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), None)
    what = f"{type(err).__name__}: {first}" if first else type(err).__name__
    print(f"{prog}: internal error: {what}; full traceback in {_save_traceback(err)}", file=sys.stderr)
    return 1


def _exit_status(done: SystemExit) -> int:
    return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)


# What an interrupt leaves behind, by command (said after "interrupted").
INTERRUPTED = {
    "tune": "every record already measured is kept",
    "compile": "a module file is written whole or not at all",
    "bench": "nothing was written",
    "bundle": "the bundle's folder may be incomplete: remove it",
}


class _Interrupts:
    """Whether SIGINT arrived during this command. TVM's compiler runs Python callbacks (its pass
    pipeline) and hands a KeyboardInterrupt raised in one back as a bare RuntimeError, so the
    type alone cannot tell an interrupt from a failure."""

    def __init__(self) -> None:
        self.seen = False

    def install(self) -> None:
        import signal

        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by the parent
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt


def _interrupted(prog: str, tool: str) -> int:
    """The one line and exit status of an interrupt; ``prog`` is the tool's name and its command's."""
    after = INTERRUPTED.get(prog.removeprefix(tool).strip())
    print(f"\n{prog}: interrupted{'; ' + after if after else ''}", file=sys.stderr)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    interrupts = _Interrupts()
    interrupts.install()
    parser = build_parser()
    prog = parser.prog
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            print(f"{prog}: error: a command is required ({', '.join(COMMANDS)}); see {prog} --help",
                  file=sys.stderr)
            return 2
        prog = f"{parser.prog} {args.command}"
        return args.func(args)
    except SystemExit as done:  # argparse: --help, or a usage error already printed
        return _exit_status(done)
    except KeyboardInterrupt:
        return _interrupted(prog, parser.prog)
    except Exception as err:  # noqa: BLE001 - the one place every failure becomes one line
        return _interrupted(prog, parser.prog) if interrupts.seen else _report(err, prog)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
