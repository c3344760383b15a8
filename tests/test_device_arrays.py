"""Arrays handed over through DLPack: torch in, torch out; NumPy in, NumPy out; shared, not copied.

Without a GPU the CPU cases run (torch CPU tensors on CPU modules); the CUDA cases (torch
CUDA tensors and CuPy arrays in place, host arrays copied to the GPU, the wrong device or
dtype refused) carry the ``gpu`` marker.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import tvm_convt
import tvm_convt.runtime as runtime
from tvm_convt import ConvTranspose1dParams as P
from tvm_convt.reference import conv_transpose1d_reference

from conftest import assert_close, needs_torch, random_inputs, torch, torch_conv_transpose1d

has_gpu = tvm.cuda(0).exist
LAYERS = [P(4, 6, 3, stride=2, padding=1), P(4, 4, 4, stride=2, groups=2, bias=False, padding_mode="reflect")]


def _module_call(p, x, w, b):
    batch = x.shape[0] if x.dim() == 3 else 1
    return tvm_convt.compile(p, batch=batch, length=x.shape[-1])(x, w, b)


def _layer_call(p, x, w, b):
    layer = tvm_convt.ConvTranspose1d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding,
                                      p.output_padding, p.groups, p.bias, p.dilation, p.padding_mode)
    layer.weight = w
    if b is not None:
        layer.bias = b
    return layer(x)


def _function_call(p, x, w, b):
    return tvm_convt.conv_transpose1d(x, w, b, p.stride, p.padding, p.output_padding, p.groups, p.dilation,
                                      p.padding_mode)


CALLS = {"module": _module_call, "layer": _layer_call, "function": _function_call}


@needs_torch
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("batch", [2, None], ids=["batched", "unbatched"])
@pytest.mark.parametrize("p", LAYERS, ids=str)
def test_torch_cpu_in_torch_out(call, batch, p):
    x, w, b = random_inputs(p, batch, 9, "float32")
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    tb = None if b is None else torch.from_numpy(b)
    y = CALLS[call](p, tx, tw, tb)
    assert isinstance(y, torch.Tensor) and y.device.type == "cpu" and y.dtype == torch.float32
    assert_close(y.numpy(), torch_conv_transpose1d(x, w, b, p), "float32")
    assert_close(y.numpy(), conv_transpose1d_reference(x, w, b, p), "float32")


def test_numpy_in_numpy_out():
    p = LAYERS[0]
    x, w, b = random_inputs(p, 2, 9, "float32")
    compiled = tvm_convt.compile(p, batch=2, length=9)
    for y in (compiled(x, w, b), _numpy_layer(p, w, b)(x), _function_call(p, x, w, b)):
        assert type(y) is np.ndarray
        assert_close(y, conv_transpose1d_reference(x, w, b, p), "float32")


def _numpy_layer(p, w, b):
    layer = tvm_convt.ConvTranspose1d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding)
    layer.weight, layer.bias = w, b
    return layer


@needs_torch
def test_torch_cpu_input_is_shared_not_copied(monkeypatch):
    p = LAYERS[0]
    x, w, b = random_inputs(p, 2, 9, "float32")
    tx, tw, tb = (torch.from_numpy(a).clone() for a in (x, w, b))  # torch's allocations: 64-byte aligned
    compiled = tvm_convt.compile(p, batch=2, length=9)
    shared = compiled.to_device(runtime.as_array(tx, "input"), "input")
    assert shared.data_ptr() == tx.data_ptr()

    def no_copy(arr):
        raise AssertionError("the input was copied")

    monkeypatch.setattr(runtime.module, "aligned_copy", no_copy)
    y = compiled(tx, tw, tb)
    assert isinstance(y, torch.Tensor)
    assert_close(y.numpy(), conv_transpose1d_reference(x, w, b, p), "float32")


@needs_torch
def test_torch_views_and_empty_batches():
    p = LAYERS[0]
    x, w, b = random_inputs(p, 2, 10, "float32")
    view = torch.from_numpy(x)[:, :, 1:]  # strided and unaligned: copied, still torch out
    y = _function_call(p, view, torch.from_numpy(w), torch.from_numpy(b))
    assert isinstance(y, torch.Tensor)
    assert_close(y.numpy(), conv_transpose1d_reference(x[:, :, 1:], w, b, p), "float32")
    empty = _function_call(p, torch.zeros(0, 4, 9), torch.from_numpy(w), torch.from_numpy(b))
    assert isinstance(empty, torch.Tensor) and tuple(empty.shape) == (0, 6, p.output_length(9))


@needs_torch
def test_torch_wrong_dtype_is_a_type_error():
    p = LAYERS[0]
    x, w, b = random_inputs(p, 2, 9, "float32")
    with pytest.raises(TypeError, match="input must have dtype float32, got input.dtype=float64"):
        tvm_convt.compile(p, batch=2, length=9)(torch.from_numpy(x).double(), w, b)


# -- on a GPU -----------------------------------------------------------------------------------
CUDA = {"kind": "cuda"}  # the local GPU's arch
on_gpu = pytest.mark.skipif(not has_gpu, reason="no CUDA GPU")


def _cuda_inputs(p, batch, device="cuda:0"):
    x, w, b = random_inputs(p, batch, 9, "float32")
    return (x, w, b), tuple(None if a is None else torch.from_numpy(a).to(device) for a in (x, w, b))


def _cuda_call(call, p, x, w, b):
    batch = x.shape[0] if x.dim() == 3 else 1
    if call == "module":
        return tvm_convt.compile(p, batch=batch, length=x.shape[-1], target=CUDA)(x, w, b)
    if call == "layer":
        layer = tvm_convt.ConvTranspose1d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding,
                                          p.output_padding, p.groups, p.bias, p.dilation, p.padding_mode,
                                          target=CUDA)
        layer.weight = w  # a CUDA tensor: kept on the host, uploaded once
        if b is not None:
            layer.bias = b
        return layer(x)
    return tvm_convt.conv_transpose1d(x, w, b, p.stride, p.padding, p.output_padding, p.groups, p.dilation,
                                      p.padding_mode, target=CUDA)


@pytest.mark.gpu
@on_gpu
@needs_torch
@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("batch", [2, None], ids=["batched", "unbatched"])
@pytest.mark.parametrize("p", LAYERS, ids=str)
def test_torch_cuda_in_place(call, batch, p):
    (x, w, b), (tx, tw, tb) = _cuda_inputs(p, batch)
    y = _cuda_call(call, p, tx, tw, tb)
    assert isinstance(y, torch.Tensor) and y.device == tx.device
    assert_close(y.cpu().numpy(), torch_conv_transpose1d(x, w, b, p), "float32")


@pytest.mark.gpu
@on_gpu
@needs_torch
def test_torch_cuda_input_is_shared_and_weights_uploaded_once():
    p = LAYERS[0]
    (x, w, b), (tx, _, _) = _cuda_inputs(p, 2)
    compiled = tvm_convt.compile(p, batch=2, length=9, target=CUDA)
    assert compiled.to_device(runtime.as_array(tx, "input"), "input").data_ptr() == tx.data_ptr()
    layer = _numpy_layer_on(p, w, b, CUDA)
    first = layer(tx)
    copies = layer._state[2][str(compiled.device)]
    second = layer(tx)
    assert layer._state[2][str(compiled.device)] is copies  # the same device weights, not re-uploaded
    assert_close(second.cpu().numpy(), first.cpu().numpy(), "float32")


def _numpy_layer_on(p, w, b, target):
    layer = tvm_convt.ConvTranspose1d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding,
                                      target=target)
    layer.weight, layer.bias = w, b
    return layer


@pytest.mark.gpu
@on_gpu
@needs_torch
def test_host_arrays_on_a_cuda_module_come_back_on_the_host():
    p = LAYERS[0]
    x, w, b = random_inputs(p, 2, 9, "float32")
    compiled = tvm_convt.compile(p, batch=2, length=9, target=CUDA)
    y = compiled(x, w, b)
    assert type(y) is np.ndarray
    yt = compiled(torch.from_numpy(x), w, b)
    assert isinstance(yt, torch.Tensor) and yt.device.type == "cpu"
    assert_close(yt.numpy(), conv_transpose1d_reference(x, w, b, p), "float32")


@pytest.mark.gpu
@on_gpu
@needs_torch
def test_wrong_device_or_dtype_is_refused():
    p = LAYERS[0]
    (x, w, b), (tx, tw, tb) = _cuda_inputs(p, 2)
    on_gpu = tvm_convt.compile(p, batch=2, length=9, target=CUDA)
    with pytest.raises(TypeError, match="input must have dtype float32"):
        on_gpu(tx.double(), tw, tb)
    with pytest.raises(ValueError, match="must be in host memory or on this module's device cpu"):
        tvm_convt.compile(p, batch=2, length=9)(tx, w, b)
    with pytest.raises(ValueError, match="must be contiguous"):
        on_gpu(tx.transpose(1, 2).contiguous().transpose(1, 2), tw, tb)
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="on this module's device cuda:0, got input on cuda:1"):
            on_gpu(tx.to("cuda:1"), tw, tb)


@pytest.mark.gpu
@on_gpu
def test_cupy_in_cupy_out():
    cp = pytest.importorskip("cupy")
    p = LAYERS[0]
    x, w, b = random_inputs(p, 2, 9, "float32")
    y = tvm_convt.compile(p, batch=2, length=9, target=CUDA)(cp.asarray(x), cp.asarray(w), cp.asarray(b))
    assert isinstance(y, cp.ndarray)
    assert_close(cp.asnumpy(y), conv_transpose1d_reference(x, w, b, p), "float32")
