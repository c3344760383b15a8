"""The command line: as a real subprocess, and through main() for the error table."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import tempfile
from pathlib import Path

import pytest
import tvm
import tvm.error

from tvm_convt import CompiledConvTranspose1d
from tvm_convt.benchmark import ResultMismatch
from tvm_convt.cli import main, non_negative_int, positive_int
from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, random_inputs


def cli(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tvm_convt", *args], capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, **env))
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_compile_writes_a_loadable_module(tmp_path):
    out = tmp_path / "layer.so"
    result = cli("compile", "--in-channels", "6", "--out-channels", "4", "--kernel-size", "5",
                 "--stride", "3", "--padding", "2", "--groups", "2", "--dilation", "2",
                 "--padding-mode", "circular", "--batch", "2", "--length", "7", "--dtype", "float64",
                 "-o", str(out))
    assert "schedule: default:" in result.stdout and str(out) in result.stdout
    compiled = CompiledConvTranspose1d.load(out)
    p = compiled.params
    assert (p.in_channels, p.groups, p.dilation, p.padding_mode) == (6, 2, 2, "circular")
    x, w, b = random_inputs(p, 2, 7, "float64")
    assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, p), "float64")


def test_compile_prepack_weight_writes_a_module_that_reads_it_packed(tmp_path):
    out = tmp_path / "packed.so"
    result = cli("compile", "--in-channels", "32", "--out-channels", "64", "--kernel-size", "8",
                 "--stride", "4", "--padding", "2", "--length", "24", "--prepack-weight", "-o", str(out))
    assert "schedule: default:cpu-gemm" in result.stdout and "reads the weight packed as" in result.stdout
    compiled = CompiledConvTranspose1d.load(out)
    assert compiled.weight_packed
    x, w, b = random_inputs(compiled.params, 1, 24, "float32")
    y = compiled.run(compiled.to_device(x), compiled.prepare_weights(w, b))
    assert_close(y, conv_transpose1d_reference(x, w, b, compiled.params), "float32")


def test_info_json():
    info = json.loads(cli("info", "--json").stdout)
    assert info["tvm"] == "0.27.0.post1"
    assert info["targets"]["llvm"].startswith("this CPU (llvm-")
    assert info["cache_dir"] == os.environ["TVM_CONVT_CACHE"]


def test_demo_runs_and_checks():
    result = cli("demo", "--rounds", "2")
    assert "OK" in result.stdout
    assert "tvm_convt (module)" in result.stdout and "GFLOP/s" in result.stdout


LAYER = ["--in-channels", "2", "--out-channels", "2", "--kernel-size", "3", "--length", "4"]
MISSING = "{missing}"  # replaced by a folder under tmp_path that does not exist

# Invocations -> (exit status, part of the one line on stderr); none of them compiles anything.
USER_ERRORS = [
    ([], 2, "tvm-convt: error: a command is required (demo, bench, compile, tune, bundle, info)"),
    (["frobnicate"], 2, "tvm-convt: error: argument command: invalid choice: 'frobnicate'"),
    (["info", "--bogus"], 2, "tvm-convt info: error: unrecognized arguments: --bogus"),
    (["tune", "--trials", "0"], 2, "tvm-convt tune: error: argument --trials: must be positive, got 0"),
    (["tune", "--in-channels", "2"], 2, "tvm-convt tune: error: conv_transpose1d: tune needs --suite FILE"),
    (["compile", *LAYER, "--stride", "0", "-o", "a.so"], 2,
     "tvm-convt compile: error: argument --stride: must be positive, got 0"),
    (["compile", *LAYER, "--stride", "abc", "-o", "a.so"], 2, "argument --stride: must be an integer, got 'abc'"),
    (["compile", *LAYER, "--padding", "-1", "-o", "a.so"], 2, "argument --padding: must be non-negative, got -1"),
    (["compile", "--in-channels", "99999999999999999999999"], 2, "argument --in-channels: must be at most 2**63-1"),
    (["compile", *LAYER, "--dtype", "float16", "-o", "a.so"], 2,
     "conv_transpose1d: dtype float16 needs a CUDA target, got dtype='float16', target='llvm'"),
    (["compile", *LAYER, "--padding-mode", "same", "-o", "a.so"], 2, "argument --padding-mode: invalid choice"),
    (["compile", *LAYER, "--target", "gpu", "-o", "a.so"], 2, "argument --target: conv_transpose1d: target must be"),
    (["compile", *LAYER, "--target", "{bad json", "-o", "a.so"], 2, "target is not valid JSON"),
    (["compile", *LAYER, "--target", '{"kind": "opencl"}', "-o", "a.so"], 2,
     "target kind must be 'llvm' or 'cuda', got kind='opencl'"),
    (["compile", *LAYER, "--target", '{"kind": "llvm", "foo": 1}', "-o", "a.so"], 2,
     "conv_transpose1d: TVM rejected target"),
    (["compile", *LAYER], 2, "the following arguments are required: -o/--output"),
    (["compile", "--out-channels", "2", "--kernel-size", "3", "--length", "4", "-o", "a.so"], 2,
     "the following arguments are required: --in-channels"),
    (["compile", *LAYER, "-o", "x.txt"], 2, "argument -o/--output: must end in .so, got 'x.txt'"),
    (["compile", *LAYER, "-o", f"{MISSING}/x.so"], 2, "argument -o/--output: folder '{missing}' does not exist"),
    (["compile", *LAYER, "--stride", "2", "--output-padding", "2", "-o", "a.so"], 2,
     "tvm-convt compile: error: conv_transpose1d: output_padding must be smaller than stride or dilation"),
    (["compile", "--in-channels", "4", "--out-channels", "6", "--kernel-size", "3", "--length", "4",
      "--groups", "4", "-o", "a.so"], 2, "conv_transpose1d: out_channels must be divisible by groups"),
    (["compile", "--in-channels", "2", "--out-channels", "2", "--kernel-size", "1", "--length", "1",
      "--padding", "3", "-o", "a.so"], 2, "conv_transpose1d: output length must be at least 1"),
    (["bench", "--json", f"{MISSING}/r.json"], 2, "tvm-convt bench: error: argument --json: folder '{missing}'"),
    (["bench", "--plot", f"{MISSING}/r.png"], 2, "argument --plot: folder '{missing}' does not exist"),
    (["bench", "--suite", f"{MISSING}/suite.json"], 2, "tvm-convt bench: error: conv_transpose1d: suite"),
    (["bench", "--target", '{"kind": "cuda", "arch": "sm_90"}'], 2, "takes llvm targets only"),
    (["bench", "--target", '{"kind": "llvm", "mcpu": "diamondrapids"}'], 2,
     "which this machine does not have"),
]


def _one_line(out: str, err: str) -> str:
    assert "Traceback" not in out + err and "usage:" not in out + err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    return lines[0]


def _in(tmp_path, args: list[str], message: str) -> tuple[list[str], str]:
    missing = str(tmp_path / "no" / "such")
    return [a.replace(MISSING, missing) for a in args], message.replace(MISSING, missing)


@pytest.mark.parametrize("args, status, message", USER_ERRORS,
                         ids=[" ".join(case[0])[:50] or "no-arguments" for case in USER_ERRORS])
def test_user_errors_are_one_line(args, status, message, tmp_path, capsys):
    args, message = _in(tmp_path, args, message)
    assert main(args) == status
    out, err = capsys.readouterr()
    assert message in _one_line(out, err)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("args, message", [
    ([], "tvm-convt: error: a command is required"),
    (["compile", *LAYER, "-o", f"{MISSING}/x.so"], "tvm-convt compile: error: argument -o/--output: folder"),
])
def test_user_errors_from_the_entry_point(args, message, tmp_path):
    args, message = _in(tmp_path, args, message)
    result = cli(*args, check=False)
    assert result.returncode == 2
    assert message in _one_line(result.stdout, result.stderr)


def test_sizes_beyond_64_bits_are_refused():
    assert positive_int(str(2**63 - 1)) == 2**63 - 1
    for text in ("99999999999999999999999", str(2**63)):
        with pytest.raises(argparse.ArgumentTypeError, match=r"at most 2\*\*63-1"):
            positive_int(text)
    with pytest.raises(argparse.ArgumentTypeError, match=r"integer, got '1{40}\.\.\.'$"):
        non_negative_int("1" * 5000)  # beyond int()'s digit limit; echoed clipped


def _raise(err: BaseException):
    def fail(*args, **kwargs):
        raise err
    return fail


def _tvm_value_error(*args, **kwargs):
    return tvm.target.Target("nosuch")  # TVM's FFI raises a builtin ValueError from C++


@pytest.mark.parametrize("fail, message", [
    pytest.param(_raise(tvm.error.InternalError("boom\nline2")), "InternalError: boom;", id="InternalError"),
    pytest.param(_raise(RuntimeError("a bug")), "RuntimeError: a bug;", id="RuntimeError"),
    pytest.param(_raise(AssertionError()), "internal error: AssertionError;", id="no-message"),
    pytest.param(_raise(tvm.error.RPCSessionTimeoutError("rpc timed out")),
                 "RPCSessionTimeoutError: rpc timed out;", id="tvm-OSError"),
    pytest.param(_tvm_value_error, 'ValueError: Target kind "nosuch" is not defined', id="tvm-ValueError"),
])
def test_internal_errors_save_the_traceback(fail, message, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr("tvm_convt.target.resolve_target", fail)
    assert main(["info"]) == 1
    out, err = capsys.readouterr()
    line = _one_line(out, err)
    assert line.startswith("tvm-convt info: internal error: ") and message in line, line
    path = Path(line.rsplit("; full traceback in ", 1)[1])
    assert path.parent == tmp_path and path.name.startswith("tvm-convt-traceback-")
    assert "Traceback" in path.read_text() and "_cmd_info" in path.read_text()


def test_traceback_on_the_terminal_when_asked(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TVM_CONVT_TRACEBACK", "1")
    monkeypatch.setattr("tvm_convt.target.resolve_target", _raise(RuntimeError("a bug")))
    assert main(["info"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("Traceback") and "internal error: RuntimeError: a bug;" in lines[-1]


@pytest.mark.parametrize("err, status, message", [
    (ValueError("conv_transpose1d: x must be y,\ngot x=1"), 2, "error: conv_transpose1d: x must be y, got x=1"),
    (PermissionError(13, "Permission denied", "/ro/x.so"), 2, "error: [Errno 13] Permission denied: '/ro/x.so'"),
    (ResultMismatch("conv_transpose1d: differs"), 1, "tvm-convt info: error: conv_transpose1d: differs"),
])
def test_library_errors_are_one_line(err, status, message, monkeypatch, capsys):
    monkeypatch.setattr("tvm_convt.target.resolve_target", _raise(err))
    assert main(["info"]) == status
    out, stderr = capsys.readouterr()
    assert message in _one_line(out, stderr)


def test_interrupt_exits_130(monkeypatch, capsys):
    monkeypatch.setattr("tvm_convt.target.resolve_target", _raise(KeyboardInterrupt()))
    assert main(["info"]) == 130
    assert capsys.readouterr().err.strip() == "tvm-convt info: interrupted"


@pytest.mark.parametrize("command, args, said", [
    ("compile", ["--in-channels", "4", "--out-channels", "4", "--kernel-size", "2", "--length", "8", "-o", "x.so"],
     "a module file is written whole or not at all"),
    ("bench", [], "nothing was written"),
])
def test_an_interrupt_says_what_each_command_leaves(command, args, said, monkeypatch, capsys, tmp_path):
    """Issue #27, 13: compile and bench said tune's "every record already measured is kept"."""
    import tvm_convt.cli as cli

    monkeypatch.chdir(tmp_path)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, command, _raise(KeyboardInterrupt())))
    assert main([command, *args]) == 130
    assert capsys.readouterr().err.strip() == f"tvm-convt {command}: interrupted; {said}"


def _with_func(parser, command, func):
    parser._subparsers._group_actions[0].choices[command].set_defaults(func=func)
    return parser


def test_help_shows_usage_and_the_traceback_variable(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tvm-convt") and "TVM_CONVT_TRACEBACK=1" in out


def test_help_states_defaults(capsys):
    assert main(["compile", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: 1)" in out and "(default: zeros)" in out and "(default: llvm)" in out


def test_the_package_and_the_cli_import_without_tvm():
    """Issue #27, 13: Ctrl-C while TVM loaded printed a KeyboardInterrupt traceback, since the package
    imported TVM before the CLI's main could catch anything. TVM now loads inside main."""
    code = ("import sys, tvm_convt; from tvm_convt.cli import main; "
            "print(sorted(m for m in ('tvm', 'tvm_ffi', 'torch') if m in sys.modules)); "
            "tvm_convt.ConvTranspose1dParams(4, 4, 3); print(tvm_convt.ConvTranspose1d.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "ConvTranspose1d"]


def test_an_interrupt_that_tvm_hands_back_as_a_runtime_error_is_an_interrupt(tmp_path):
    """Issue #27, 13: SIGINT during compile's build: TVM's pass pipeline runs Python callbacks and turns
    the KeyboardInterrupt raised in one into a bare RuntimeError; it read as an internal error."""
    code = textwrap.dedent("""
        import os, signal, sys, time
        import tvm_convt.build as build
        def interrupted_build(*args, **kwargs):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                raise RuntimeError  # what TVM's FFI hands back
        build._compile_into = interrupted_build
        from tvm_convt.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    args = ["compile", "--in-channels", "4", "--out-channels", "4", "--kernel-size", "3", "--length", "8",
            "-o", str(tmp_path / "m.so")]
    env = dict(os.environ, TVM_CONVT_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("tvm-convt compile: interrupted; a module file is written "
                                                      "whole or not at all")
    assert not (tmp_path / "m.so").exists()
