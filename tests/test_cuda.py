"""CUDA: code generation and real nvcc compilation without a GPU; running with one (gpu marker)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import tvm

import tvm_convt
from tvm_convt.build import device_source
from tvm_convt.params import ConvTranspose1dParams, Workload
from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, random_inputs

P = ConvTranspose1dParams
CUDA_LAYERS = [
    P(8, 6, 5, stride=3, padding=2, groups=2),
    P(4, 4, 4, stride=2, padding=1, groups=4, padding_mode="reflect"),
    P(6, 3, 3, stride=2, dilation=2, output_padding=1, padding_mode="replicate", bias=False),
    P(16, 8, 16, stride=8, padding=4, padding_mode="circular"),
]
has_gpu = tvm.cuda(0).exist


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("p", CUDA_LAYERS, ids=str)
def test_cuda_source_compiles_with_nvcc(p, arch, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    source = device_source(Workload(p, 2, 9), target={"kind": "cuda", "arch": arch})
    assert "__global__" in source
    (tmp_path / "k.cu").write_text(source)
    result = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-o", str(tmp_path / "k.cubin"),
                             str(tmp_path / "k.cu")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 0


def test_cuda_module_exports_without_gpu(tmp_path):
    compiled = tvm_convt.compile(CUDA_LAYERS[0], batch=2, length=9, target={"kind": "cuda", "arch": "sm_90"})
    assert compiled.metadata.target_key == "cuda-sm_90"
    assert compiled.metadata.schedule == "default:gpu-fallback"
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
