"""The command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tvm_convt import CompiledConvTranspose1d
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


def test_info_json():
    info = json.loads(cli("info", "--json").stdout)
    assert info["tvm"] == "0.27.0.post1"
    assert info["targets"]["llvm"].startswith("this CPU (llvm-")
    assert info["cache_dir"] == os.environ["TVM_CONVT_CACHE"]


def test_demo_runs_and_checks():
    result = cli("demo", "--rounds", "2")
    assert "OK" in result.stdout
    assert "tvm_convt (module)" in result.stdout and "GFLOP/s" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["compile", "--in-channels", "0"], "argument --in-channels: must be positive, got 0"),
        (["compile", "--in-channels", "2", "--out-channels", "2", "--kernel-size", "3", "--length", "4",
          "--stride", "x", "-o", "a.so"], "argument --stride: must be an integer, got 'x'"),
        (["compile", "--in-channels", "2", "--out-channels", "2", "--kernel-size", "3", "--length", "4",
          "-o", "a.dll"], "argument -o/--output: must end in .so"),
        (["compile", "--in-channels", "2", "--out-channels", "2", "--kernel-size", "3", "--length", "4",
          "--target", "tpu", "-o", "a.so"], "argument --target: conv_transpose1d: target must be"),
        (["compile", "--in-channels", "2", "--out-channels", "2", "--kernel-size", "3", "--length", "4",
          "--stride", "2", "--output-padding", "2", "-o", "a.so"],
         "error: conv_transpose1d: output_padding must be smaller than stride or dilation"),
        (["compile", "--in-channels", "3", "--out-channels", "2", "--kernel-size", "3", "--length", "4",
          "--groups", "2", "-o", "a.so"], "error: conv_transpose1d: in_channels must be divisible by groups"),
        (["compile", "--in-channels", "2", "--out-channels", "2", "--kernel-size", "1", "--length", "1",
          "--padding", "3", "-o", "a.so"], "error: conv_transpose1d: output length must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, tmp_path):
    result = cli(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_states_defaults():
    out = cli("compile", "--help").stdout
    assert "(default: 1)" in out and "(default: zeros)" in out and "(default: llvm)" in out
