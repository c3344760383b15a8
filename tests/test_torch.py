"""tvm_convt.torch: the custom op, the layer, convert/revert, torch.compile/export, the example.

PyTorch is the oracle: forward against conftest's float64 reference (the padding modes
as the adjoint of ``conv1d(pad(z))``), gradients against ``torch.autograd`` on that same
definition in float64, and against ``torch.nn.ConvTranspose1d`` itself for zeros.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import torch_conv_transpose1d
from tvm_convt.params import PADDING_MODES, ConvTranspose1dParams, Workload

torch = pytest.importorskip("torch")
F = torch.nn.functional
tt = pytest.importorskip("tvm_convt.torch")

ROOT = Path(__file__).resolve().parent.parent
# Relative to the largest expected magnitude: forward as conftest's float32 tolerance,
# gradients (PyTorch's float32 kernels) to the 1e-4.
FORWARD_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
GRAD_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    expected = expected.detach().double()
    scale = max(float(expected.abs().max()), 1e-30) if expected.numel() else 1.0
    return float((actual.detach().double() - expected).abs().max()) / scale if expected.numel() else 0.0


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: ConvTranspose1dParams,
              output_padding: int) -> torch.Tensor:
    """The definition, differentiable in x, w and b: F.conv_transpose1d for zeros, otherwise
    the gradient with respect to z of F.conv1d(F.pad(z, (padding, padding), mode), w)."""
    unbatched = x.dim() == 2
    xb = x[None] if unbatched else x
    if p.padding_mode == "zeros":
        y = F.conv_transpose1d(xb, w, b, p.stride, p.padding, output_padding, p.groups, p.dilation)
    else:
        length = p.with_output_padding(output_padding).output_length(xb.shape[-1])
        z = torch.zeros(xb.shape[0], p.out_channels, length, dtype=x.dtype, requires_grad=True)
        fwd = F.conv1d(F.pad(z, (p.padding, p.padding), mode=p.padding_mode), w, stride=p.stride,
                       dilation=p.dilation, groups=p.groups)
        (y,) = torch.autograd.grad(fwd, z, xb, create_graph=True)
        if b is not None:
            y = y + b[None, :, None]
    return y[0] if unbatched else y


# -- a seeded random sweep over the parameter space -----------------------------------------------


def _draw_case(rng: np.random.Generator) -> dict:
    """One valid case: parameters, batch (None: unbatched), length, output_size or None, dtype."""
    while True:
        groups = int(rng.integers(1, 4))
        mode = PADDING_MODES[int(rng.integers(len(PADDING_MODES)))]
        stride, dilation = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        limit = stride if mode != "zeros" else max(stride, dilation)
        case = dict(
            in_channels=groups * int(rng.integers(1, 4)), out_channels=groups * int(rng.integers(1, 4)),
            kernel_size=int(rng.integers(1, 6)), stride=stride, padding=int(rng.integers(0, 4)),
            output_padding=int(rng.integers(0, limit)), groups=groups, bias=bool(rng.integers(2)),
            dilation=dilation, padding_mode=mode)
        batch = [None, 1, 3][int(rng.integers(3))]
        length = int(rng.integers(1, 7))
        try:
            p = ConvTranspose1dParams(**case)
            Workload(p, batch or 1, length)
        except ValueError:
            continue
        # Every fourth case asks for a size instead, which re-derives output_padding.
        output_size = None
        if rng.integers(4) == 0:
            base = p.with_output_padding(0).output_length(length)
            output_size = base + int(rng.integers(0, stride))
            try:
                p.with_output_padding(output_size - base).output_length(length)
            except ValueError:
                continue
        dtype = [torch.float32, torch.float64][int(rng.integers(2))]
        return dict(params=p, batch=batch, length=length, output_size=output_size, dtype=dtype)


SWEEP = [dict(_draw_case(np.random.default_rng(seed)), seed=seed) for seed in range(32)]


def _case_id(case: dict) -> str:
    p = case["params"]
    return (f"{p.padding_mode}-c{p.in_channels}x{p.out_channels}g{p.groups}k{p.kernel_size}s{p.stride}"
            f"p{p.padding}o{p.output_padding}d{p.dilation}{'b' if p.bias else ''}-n{case['batch']}"
            f"l{case['length']}{'-size' if case['output_size'] else ''}-{str(case['dtype'])[6:]}")


def test_sweep_covers_the_space():
    """The sweep is a sweep: every mode, groups, dilation, output_padding, batch > 1,
    unbatched inputs, output_size and both dtypes occur."""
    ps = [c["params"] for c in SWEEP]
    assert {p.padding_mode for p in ps} == set(PADDING_MODES)
    assert any(p.groups > 1 for p in ps) and any(p.dilation > 1 for p in ps)
    assert any(p.output_padding > 0 for p in ps) and any(not p.bias for p in ps)
    assert {c["batch"] for c in SWEEP} == {None, 1, 3}
    assert any(c["output_size"] for c in SWEEP)
    assert {c["dtype"] for c in SWEEP} == {torch.float32, torch.float64}


@pytest.mark.parametrize("case", SWEEP, ids=_case_id)
def test_forward_and_gradients_match_the_definition(case):
    p, dtype, size = case["params"], case["dtype"], case["output_size"]
    gen = torch.manual_seed(case["seed"])  # the layer's initialisation too
    shape = (p.in_channels, case["length"]) if case["batch"] is None else (case["batch"], p.in_channels, case["length"])
    layer = tt.ConvTranspose1d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding,
                               p.output_padding, p.groups, p.bias, p.dilation, p.padding_mode, dtype=dtype)
    x = torch.randn(shape, dtype=dtype, generator=gen, requires_grad=True)
    y = layer(x) if size is None else layer(x, output_size=[size])
    output_padding = p.output_padding if size is None else size - p.with_output_padding(0).output_length(shape[-1])

    bias = None if layer.bias is None else layer.bias.detach().numpy()
    expected = torch_conv_transpose1d(x.detach().numpy(), layer.weight.detach().numpy(), bias,
                                      p.with_output_padding(output_padding))
    assert rel_err(y, torch.from_numpy(expected)) <= FORWARD_TOL[dtype]

    grad_y = torch.randn(y.shape, dtype=dtype, generator=gen)
    inputs = [x, layer.weight] + ([layer.bias] if p.bias else [])
    grads = torch.autograd.grad(y, inputs, grad_y)
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    y64 = reference(inputs64[0], inputs64[1], inputs64[2] if p.bias else None, p, output_padding)
    expected_grads = torch.autograd.grad(y64, inputs64, grad_y.double())
    for name, got, want in zip(("input", "weight", "bias"), grads, expected_grads):
        assert rel_err(got, want) <= GRAD_TOL[dtype], name


def test_functional_form_matches_the_layer():
    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 4, 5, generator=gen), torch.randn(4, 3, 4, generator=gen), torch.randn(6, generator=gen)
    y = tt.conv_transpose1d(x, w, b, (2,), 1, 1, 2, 1, "circular")
    expected = torch_conv_transpose1d(x.numpy(), w.numpy(), b.numpy(), ConvTranspose1dParams(
        4, 6, 4, 2, 1, 1, 2, True, 1, "circular"))
    assert rel_err(y, torch.from_numpy(expected)) <= 1e-5
    assert tt.conv_transpose1d(x[0], w, b, 2, 1, 1, 2, 1, "circular").shape == y.shape[1:]


def test_targets_as_json_dicts():
    layer = tt.ConvTranspose1d(3, 2, 3, stride=2, target={"kind": "llvm", "mcpu": "znver3"})  # AVX2 code
    x = torch.randn(1, 3, 4)
    assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 2)) <= 1e-5
    assert "znver3" in repr(layer)
    layer.target = "llvm"  # takes effect at the next call
    assert layer._backend == "llvm" and rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 2)) <= 1e-5
    with pytest.raises(ValueError, match="conv_transpose1d: target must be"):
        tt.ConvTranspose1d(3, 2, 3, target="tpu")


def _eager_op(x, w, b, mode):
    return tt.conv_transpose1d(x, w, b, 2, 1, 1, 2, 2, mode)


def _registered_op(x, w, b, mode):
    return torch.ops.tvm_convt.conv_transpose1d.default(x, w, b, [2, 1, 1, 2, 2], mode, "llvm")


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("op", [_eager_op, _registered_op], ids=["eager", "registered"])
def test_gradcheck_eager_and_through_the_dispatcher(op, mode):
    """Eager calls that need autograd take their own torch.autograd.Function past the
    dispatcher; the registered op's autograd formula is what torch.compile and torch.func see."""
    gen = torch.Generator().manual_seed(3)
    args = [torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
            for shape in ((2, 4, 5), (4, 3, 3), (6,))]
    assert torch.autograd.gradcheck(lambda x, w, b: op(x, w, b, mode), args)


def test_second_derivatives_eager():
    """The backward is made of differentiable PyTorch ops, so it has a gradient too."""
    gen = torch.Generator().manual_seed(4)
    args = [torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
            for shape in ((1, 2, 4), (2, 3, 3), (6,))]
    assert torch.autograd.gradgradcheck(lambda x, w, b: _eager_op(x, w, b, "reflect"), args)


def test_fake_tensors_get_the_shape_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = tt.ConvTranspose1d(3, 2, 3, stride=2, padding=1, padding_mode="circular")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        y = layer(mode.from_tensor(torch.randn(4, 3, 5)))
    assert y.shape == (4, 2, 9) and type(y).__name__ == "FakeTensor"
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, pytest.raises(TypeError, match="float16"):
        layer(mode.from_tensor(torch.randn(4, 3, 5, dtype=torch.float16)))


# -- the layer as a drop-in for torch.nn.ConvTranspose1d ------------------------------------------


def test_zeros_layer_matches_torch_layer_and_shares_its_state_dict():
    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose1d(6, 4, 5, stride=3, padding=2, output_padding=1, groups=2, dilation=2)
    layer = tt.ConvTranspose1d(6, 4, 5, stride=3, padding=2, output_padding=1, groups=2, dilation=2)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 7, requires_grad=True)
    y, y_ref = layer(x), ref(x)
    assert rel_err(y, y_ref) <= 1e-5
    grad_y = torch.randn(y.shape)
    grads = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad_y)
    grads_ref = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), grad_y)
    for got, want in zip(grads, grads_ref):
        assert rel_err(got, want) <= 1e-4
    again = torch.nn.ConvTranspose1d(6, 4, 5, stride=3, padding=2, output_padding=1, groups=2, dilation=2)
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again.weight, ref.weight) and torch.equal(again.bias, ref.bias)
    assert rel_err(layer(x, output_size=[24]), ref(x, output_size=[24])) <= 1e-5


def test_layer_accepts_padding_modes_pytorch_refuses():
    with pytest.raises(ValueError, match="zeros"):
        torch.nn.ConvTranspose1d(2, 2, 3, padding_mode="reflect")
    layer = tt.ConvTranspose1d(2, 2, 3, padding=1, padding_mode="reflect")
    assert layer.padding_mode == "reflect" and "padding_mode=reflect" in repr(layer)
    with pytest.raises(ValueError, match="output_padding must be smaller than stride"):
        tt.ConvTranspose1d(2, 2, 3, stride=2, output_padding=2, dilation=3, padding_mode="circular")
    with pytest.raises(ValueError, match="padding_mode"):
        tt.ConvTranspose1d(2, 2, 3, padding_mode="mirror")


def test_in_place_updates_and_load_state_dict_take_effect():
    torch.manual_seed(0)
    layer = tt.ConvTranspose1d(3, 2, 3, stride=2, padding=1)
    x = torch.randn(1, 3, 4)
    with torch.no_grad():
        bias = layer.bias.clone()
        y = layer(x)
        layer.weight.mul_(0.5)
        layer.bias.zero_()
        assert rel_err(layer(x), 0.5 * (y - bias[None, :, None])) <= 1e-5
        state = {"weight": torch.randn(3, 2, 3), "bias": torch.randn(2)}
        layer.load_state_dict(state)
        assert rel_err(layer(x), F.conv_transpose1d(x, state["weight"], state["bias"], 2, 1)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prepack_weight_packs_once_per_change_and_sees_updates(dtype):
    torch.manual_seed(0)
    # Over 128 input channels: every length range of every CPU class here is of the GEMM form, packed alike.
    layer = tt.ConvTranspose1d(256, 64, 8, stride=4, padding=2, prepack_weight=True, dtype=dtype)
    x = torch.randn(2, 256, 24, dtype=dtype)
    tol = FORWARD_TOL[dtype]
    packed = tt.op._PACKED
    with torch.no_grad():
        plan = tt.op._plan(x, layer.weight, layer.bias, [4, 2, 0, 1, 1], "zeros", layer._backend)
        assert plan.packed and plan.compiled.weight_packed
        assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 4, 2)) <= tol
        first = packed.get(layer.weight, plan.compiled)
        assert packed.get(layer.weight, plan.compiled) is first  # unchanged: the same packed copy
        layer.weight.mul_(-0.5)  # an in-place op moves the version counter
        assert packed.get(layer.weight, plan.compiled) is not first
        assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 4, 2)) <= tol
        state = {"weight": torch.randn(256, 64, 8, dtype=dtype), "bias": torch.randn(64, dtype=dtype)}
        layer.load_state_dict(state)
        assert rel_err(layer(x), F.conv_transpose1d(x, state["weight"], state["bias"], 4, 2)) <= tol
        layer.weight = torch.nn.Parameter(torch.randn(256, 64, 8, dtype=dtype))  # a new tensor
        assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 4, 2)) <= tol
    # Gradients flow as without packing.
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()
    expected = torch.autograd.grad(F.conv_transpose1d(xg, layer.weight, layer.bias, 4, 2).sum(), xg)[0]
    assert rel_err(xg.grad, expected) <= GRAD_TOL[dtype]


OPTIMIZERS = {
    "adam-fused": lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True),
    "adam-foreach": lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=True),
    "sgd-foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, foreach=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.1, foreach=False),
}


@pytest.mark.parametrize("prepack", [True, False], ids=["prepacked", "shared"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_steps_are_seen_by_every_kind_of_optimizer(name, prepack):
    """A fused optimizer writes the parameters in its own kernel without moving their version
    counters (issue #27, 2: the next output was off by up to 6.2); every step is seen."""
    torch.manual_seed(0)
    layer = tt.ConvTranspose1d(16, 8, 8, stride=4, padding=2, prepack_weight=prepack)
    opt = OPTIMIZERS[name](layer.parameters())
    x = torch.randn(2, 16, 50)
    for _ in range(2):
        layer(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 4, 2)) <= FORWARD_TOL[torch.float32]


@pytest.mark.parametrize("prepack", [True, False], ids=["prepacked", "shared"])
def test_inference_tensors_are_accepted(prepack):
    """Inference tensors have no version counter (issue #27, 4: RuntimeError): values made from them
    are not kept, so an in-place change inside inference mode is seen too."""
    torch.manual_seed(0)
    with torch.inference_mode():
        layer = tt.ConvTranspose1d(16, 8, 8, stride=4, padding=2, prepack_weight=prepack)
        x = torch.randn(2, 16, 40)
        assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 4, 2)) <= 1e-5
        layer.weight.mul_(-2.0)
        assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 4, 2)) <= 1e-5
        strided = torch.randn(8, 16, 8).transpose(0, 1)  # a non-contiguous inference weight
        y = tt.conv_transpose1d(x, strided, None, stride=4, padding=2)
        assert rel_err(y, F.conv_transpose1d(x, strided, None, 4, 2)) <= 1e-5


def test_prepack_weight_through_convert_and_revert():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.ConvTranspose1d(32, 16, 8, stride=4, padding=2),
                                torch.nn.ConvTranspose1d(16, 16, 3, padding=1))  # the second is direct
    x = torch.randn(1, 32, 20)
    with torch.no_grad():
        expected = model(x)
        tt.convert(model, prepack_weight=True)
        assert all(layer._prepack_weight for layer in model)
        assert rel_err(model(x), expected) <= 1e-5
        model[0].target = {"kind": "llvm"}  # changing the target keeps the option
        assert model[0]._prepack_weight and '"prepack_weight": true' in model[0]._backend
        tt.revert(model)
        assert not hasattr(model[0], "_prepack_weight") and rel_err(model(x), expected) <= 1e-5
    with pytest.raises(TypeError, match="prepack_weight must be a bool, got prepack_weight='yes'"):
        tt.ConvTranspose1d(2, 2, 3, prepack_weight="yes")


@pytest.mark.parametrize("kind", ["unaligned", "strided"])
def test_weights_that_cannot_be_shared_are_copied_once_per_change(kind):
    torch.manual_seed(0)
    layer = tt.ConvTranspose1d(3, 2, 3, stride=2, padding=1, bias=False)
    if kind == "unaligned":  # one float past an aligned start
        weight = torch.randn(3 * 2 * 3 + 1)[1:].view(3, 2, 3)
        assert weight.data_ptr() % 64
    else:
        weight = torch.randn(3, 2, 3).transpose(0, 2).contiguous().transpose(0, 2)
        assert not weight.is_contiguous()
    layer.weight = torch.nn.Parameter(weight)
    x = torch.randn(2, 3, 4)
    copies = tt.op._COPIES
    before = len(copies)
    with torch.no_grad():
        assert rel_err(layer(x), F.conv_transpose1d(x, weight, None, 2, 1)) <= 1e-5
        assert len(copies) == before + 1
        first = copies.get(layer.weight)
        assert copies.get(layer.weight) is first  # unchanged tensor: the same copy
        layer.weight.mul_(-2.0)
        assert copies.get(layer.weight) is not first
        assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, None, 2, 1)) <= 1e-5
    del layer, weight, first
    assert len(copies) == before  # the copy goes with its tensor


def test_inputs_that_cannot_be_shared_are_copied():
    torch.manual_seed(0)
    layer = tt.ConvTranspose1d(3, 2, 3, stride=2)
    x = torch.randn(4, 2, 3).transpose(0, 2)  # (3, 2, 4): strided
    unaligned = torch.randn(2 * 3 * 4 + 1)[1:].view(2, 3, 4)
    with torch.no_grad():
        for inp in (x.transpose(0, 1), unaligned):
            assert rel_err(layer(inp), F.conv_transpose1d(inp, layer.weight, layer.bias, 2)) <= 1e-5


def test_empty_batch_returns_an_empty_output():
    layer = tt.ConvTranspose1d(3, 2, 3, stride=2)
    y = layer(torch.randn(0, 3, 5))
    assert y.shape == (0, 2, 11) and y.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_on_the_cpu_name_the_target_they_need(dtype):
    layer = tt.ConvTranspose1d(3, 2, 3, dtype=dtype)
    name = str(dtype)[6:]
    with pytest.raises(ValueError, match=f"conv_transpose1d: dtype {name} needs a CUDA target, "
                                         f"got dtype='{name}', target='llvm'"):
        layer(torch.randn(1, 3, 5, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_other_dtypes_raise_type_error_naming_them(dtype):
    x = torch.ones(1, 3, 5, dtype=dtype)
    with pytest.raises(TypeError, match=f"conv_transpose1d: dtype must be one of float32, float64, .*"
                                        f"got dtype='{str(dtype)[6:]}'"):
        tt.conv_transpose1d(x, torch.ones(3, 2, 3, dtype=dtype))


def test_bad_calls_name_the_rule():
    layer = tt.ConvTranspose1d(3, 2, 3)
    with pytest.raises(ValueError, match=r"conv_transpose1d: given transposed=1.*to have 3 channels, but got 4"):
        layer(torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match="conv_transpose1d: expected a 2-D .* got input.shape=\\(5,\\)"):
        layer(torch.randn(5))
    with pytest.raises(TypeError, match="conv_transpose1d: weight must have the input's dtype float64"):
        tt.conv_transpose1d(torch.randn(1, 3, 5, dtype=torch.float64), layer.weight)
    with pytest.raises(ValueError, match="valid sizes range"):  # PyTorch's own check of output_size
        layer(torch.randn(1, 3, 5), output_size=[20])


# -- convert / revert -------------------------------------------------------------------------------


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = torch.nn.Conv1d(2, 4, 3, padding=1)
        self.ups = torch.nn.Sequential(torch.nn.ConvTranspose1d(4, 3, 4, stride=2, padding=1),
                                       torch.nn.LeakyReLU(0.1),
                                       torch.nn.ConvTranspose1d(3, 2, 3, stride=3, bias=False))
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.ups(self.pre(x)))


def test_convert_and_revert_keep_weights_hooks_and_mode():
    torch.manual_seed(0)
    model = _Model().double().eval()
    x = torch.randn(2, 2, 5, dtype=torch.float64)
    expected = model(x)
    calls = []
    model.ups.register_forward_hook(lambda m, i, o: calls.append("parent"))
    model.ups[0].register_forward_pre_hook(lambda m, i: calls.append("own"))
    params = dict(model.named_parameters())

    assert tt.convert(model) is model
    layers = [model.ups[0], model.ups[2]]
    assert all(type(m) is tt.ConvTranspose1d for m in layers)
    assert dict(model.named_parameters()) == params  # the same Parameter objects
    assert all(a is b for a, b in zip(dict(model.named_parameters()).values(), params.values()))
    assert not model.training and not model.ups[0].training
    assert model.ups[0].weight.dtype == torch.float64
    assert rel_err(model(x), expected) <= 1e-12
    assert calls == ["own", "parent"]

    model.train()
    assert model.ups[2].training
    assert tt.revert(model) is model
    assert all(type(m) is torch.nn.ConvTranspose1d for m in layers)
    assert not hasattr(model.ups[0], "_backend")
    model.eval()
    assert rel_err(model(x), expected) <= 1e-12
    assert dict(model.named_parameters()) == params


def test_revert_refuses_padding_modes_pytorch_lacks_and_changes_nothing():
    model = torch.nn.Sequential(tt.ConvTranspose1d(2, 2, 3), tt.ConvTranspose1d(2, 2, 3, padding=1, padding_mode="replicate"))
    with pytest.raises(ValueError, match=r"conv_transpose1d: revert needs padding_mode='zeros'.*got "
                                         r"padding_mode='replicate' in 1"):
        tt.revert(model)
    assert all(type(m) is tt.ConvTranspose1d for m in model)


def test_convert_checks_every_layer_before_changing_any():
    model = torch.nn.Sequential(torch.nn.ConvTranspose1d(2, 2, 3))
    with pytest.raises(ValueError, match="target"):
        tt.convert(model, target="tpu")
    assert type(model[0]) is torch.nn.ConvTranspose1d


# -- torch.compile and torch.export -------------------------------------------------------------


def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    model = tt.convert(_Model().eval())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 2, 5, requires_grad=True)
    y = compiled(x)
    assert rel_err(y, model(x)) <= 1e-6
    (grad,) = torch.autograd.grad(y.sum(), x)
    (grad_eager,) = torch.autograd.grad(model(x).sum(), x)
    assert rel_err(grad, grad_eager) <= 1e-6


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_default_backend_against_pytorchs_own_layer(dynamic):
    """Issue #26, 4: the default backend (inductor, what the README shows), forward and backward,
    against PyTorch's own nn.ConvTranspose1d, not this package's eager path."""
    import copy

    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1), torch.nn.Tanh())
    ours = tt.convert(copy.deepcopy(theirs))
    compiled = torch.compile(ours, dynamic=dynamic)
    for length in (9, 23):
        x = torch.randn(2, 8, length, requires_grad=True)
        y, expected = compiled(x), theirs(x)
        assert rel_err(y, expected) <= FORWARD_TOL[torch.float32]
        grads = torch.autograd.grad(y.square().sum(), [x, *ours.parameters()])
        expected_grads = torch.autograd.grad(expected.square().sum(), [x, *theirs.parameters()])
        for got, want in zip(grads, expected_grads):
            assert rel_err(got, want) <= GRAD_TOL[torch.float32]


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_torch_compile_with_dynamic_lengths(backend):
    from tvm_convt.runtime.module import _MODULES

    model = tt.convert(torch.nn.Sequential(torch.nn.ConvTranspose1d(2, 3, 4, stride=2, padding=1), torch.nn.ReLU()))
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=True)
    before = len(_MODULES._modules)
    for batch, length in ((2, 5), (2, 7), (3, 61)):  # one graph, one module for every length
        x = torch.randn(batch, 2, length)
        expected = torch.nn.functional.conv_transpose1d(x.double(), model[0].weight.double(), model[0].bias.double(),
                                                        stride=2, padding=1).relu()
        assert rel_err(compiled(x), expected) <= 1e-6
    assert len(_MODULES._modules) - before <= 1


def test_torch_export_with_a_dynamic_length_runs_every_length_on_one_module():
    from tvm_convt.runtime.module import _MODULES

    torch.manual_seed(0)
    model = tt.convert(torch.nn.Sequential(torch.nn.ConvTranspose1d(4, 3, 6, stride=3, padding=1)).eval())
    exported = torch.export.export(model, (torch.randn(1, 4, 9),),
                                   dynamic_shapes={"input": {2: torch.export.Dim("length", min=1, max=4096)}})
    before = len(_MODULES._modules)
    for length in (1, 9, 100):
        x = torch.randn(1, 4, length)
        expected = torch.nn.functional.conv_transpose1d(x.double(), model[0].weight.double(), model[0].bias.double(),
                                                        stride=3, padding=1)
        assert rel_err(exported.module()(x), expected) <= 1e-6
    assert len(_MODULES._modules) - before <= 1


def test_torch_export_records_the_custom_op():
    torch.manual_seed(0)
    model = tt.convert(_Model().eval())
    x = torch.randn(1, 2, 5)
    exported = torch.export.export(model, (x,))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count("tvm_convt.conv_transpose1d.default") == 2, targets
    assert rel_err(exported.module()(x), model(x)) <= 1e-6


# -- torch stays optional ----------------------------------------------------------------------


def test_without_torch_the_package_works_and_tvm_convt_torch_says_how_to_install():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, tvm_convt\n"
            "print(tvm_convt.conv_transpose1d(np.ones((1, 2, 3), 'float32'), np.ones((2, 2, 2), 'float32')).shape)\n"
            "try:\n    import tvm_convt.torch\nexcept ImportError as err:\n    print('ImportError:', err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(1, 2, 4)" in out.stdout
    assert "ImportError:" in out.stdout and "pip install tvm_convt[torch]" in out.stdout


IDLE_CPU = """
import os, sys, time
import numpy as np
if sys.argv[1] == "torch":
    import tvm_convt.torch
import tvm_convt
p = tvm_convt.ConvTranspose1dParams(64, 32, 16, stride=8, padding=4, bias=False)
compiled = tvm_convt.compile(p, batch=1, length=64)
x, w = np.ones((1, 64, 64), "float32"), np.ones(p.weight_shape, "float32")
for _ in range(5):
    compiled(x, w)
start = time.process_time()
time.sleep(0.5)
print(os.environ.get("TVM_THREAD_POOL_SPIN_COUNT"), (time.process_time() - start) * 1e3)
"""


def _idle_cpu_after_a_kernel(importing: str, env: dict[str, str]) -> tuple[str, float]:
    """TVM_THREAD_POOL_SPIN_COUNT in a fresh process, and the CPU ms it burns in the 0.5 s
    after its last kernel (TVM's idle workers spin on sched_yield before sleeping)."""
    base = {k: v for k, v in os.environ.items() if k != "TVM_THREAD_POOL_SPIN_COUNT"}
    out = subprocess.run([sys.executable, "-c", IDLE_CPU, importing], capture_output=True, text=True,
                         timeout=300, env={**base, "TVM_NUM_THREADS": "2", **env})
    assert out.returncode == 0, out.stderr
    value, ms = out.stdout.split()
    return value, float(ms)


def test_importing_tvm_convt_torch_puts_idle_tvm_workers_to_sleep_soon():
    """A converted model alternates TVM's pool and PyTorch's threads on the same cores."""
    value, ms = _idle_cpu_after_a_kernel("torch", {})
    assert value == str(tt.TVM_SPIN_COUNT) and ms < 20, (value, ms)
    # The user's choice stands, and TVM's own default spins for a long time.
    value, ms = _idle_cpu_after_a_kernel("torch", {"TVM_THREAD_POOL_SPIN_COUNT": "300000"})
    assert value == "300000" and ms > 20, (value, ms)


def test_benchmark_helpers_still_importable():
    from tvm_convt.torch import functional_call, set_threads, version

    assert version() == torch.__version__ and callable(set_threads) and callable(functional_call)


# -- the example --------------------------------------------------------------------------------


def test_hifigan_example_runs_on_a_short_input():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "hifigan_generator.py"), "--frames", "3",
                          "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^  (\w[\w ]*\w): ([0-9.e+-]+) \(tvm_convt ([0-9.e+-]+), PyTorch ([0-9.e+-]+)\)$",
                      out.stdout, re.MULTILINE)
    found = {name: [float(v) for v in values] for name, *values in rows}
    assert set(found) == {"output", "input gradient", "upsampling weight gradients"}, out.stdout
    limits = {"output": 1e-5, "input gradient": 1e-4, "upsampling weight gradients": 1e-4}
    for name, (against_torch, ours_exact, _) in found.items():
        assert against_torch < limits[name] and ours_exact < limits[name], out.stdout
    assert "upsampling layers" in out.stdout


@pytest.mark.parametrize("which", ["input", "weight", "bias"])
def test_arrays_that_are_not_tensors_are_a_type_error(which):
    """Issue #27, 9: a NumPy array gave AttributeError: 'numpy.ndarray' object has no attribute 'dim'."""
    args = {"input": torch.randn(1, 4, 9), "weight": torch.randn(4, 2, 3), "bias": torch.randn(2)}
    args[which] = args[which].numpy()
    with pytest.raises(TypeError, match=f"takes torch tensors, got {which} of type ndarray; "
                                        "tvm_convt.conv_transpose1d takes NumPy arrays"):
        tt.conv_transpose1d(args["input"], args["weight"], args["bias"])


def test_convert_takes_weight_normalised_layers_and_names_what_it_leaves(caplog):
    """Issue #27, 3: a layer under torch.nn.utils.parametrizations.weight_norm (HiFi-GAN, BigVGAN) was
    silently left to PyTorch; it is converted, keeps its parametrization, and other subclasses are
    named in a warning."""
    import copy
    import logging

    from torch.nn.utils import parametrizations, parametrize

    class Custom(torch.nn.ConvTranspose1d):
        pass

    torch.manual_seed(0)
    model = torch.nn.Sequential(parametrizations.weight_norm(torch.nn.ConvTranspose1d(32, 16, 8, stride=4, padding=2)),
                                torch.nn.LeakyReLU(0.1), Custom(16, 8, 4, stride=2))
    reference = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING, logger="tvm_convt.torch"):
        tt.convert(model)
    assert isinstance(model[0], tt.ConvTranspose1d) and parametrize.is_parametrized(model[0], "weight")
    assert type(model[2]) is Custom
    assert [r.getMessage() for r in caplog.records] == [
        "conv_transpose1d: 2 (Custom) is left to PyTorch: a subclass of torch.nn.ConvTranspose1d, whose forward "
        "may differ"]
    x = torch.randn(2, 32, 20)
    y, expected = model(x), reference(x)
    assert rel_err(y, expected) <= FORWARD_TOL[torch.float32]
    y.square().sum().backward()
    expected.square().sum().backward()
    for ours, theirs in zip(model[0].parameters(), reference[0].parameters()):
        assert rel_err(ours.grad, theirs.grad) <= GRAD_TOL[torch.float32]
    assert isinstance(copy.deepcopy(model)[0], tt.ConvTranspose1d)
    with torch.no_grad():
        model[0].parametrizations.weight.original0.mul_(2.0)  # g: the weight the forward reads changes
        reference[0].parametrizations.weight.original0.mul_(2.0)
        assert rel_err(model(x), reference(x)) <= FORWARD_TOL[torch.float32]
    parametrize.remove_parametrizations(model[0], "weight")
    assert type(model[0]) is tt.ConvTranspose1d
    tt.revert(model)
    assert type(model[0]) is torch.nn.ConvTranspose1d


def test_revert_keeps_a_parametrization():
    from torch.nn.utils import parametrizations, parametrize

    layer = parametrizations.weight_norm(torch.nn.ConvTranspose1d(8, 4, 4, stride=2))
    tt.revert(tt.convert(layer))
    assert parametrize.is_parametrized(layer, "weight") and not isinstance(layer, tt.ConvTranspose1d)
    assert isinstance(layer, torch.nn.ConvTranspose1d)


def test_a_second_convert_takes_its_own_options(tmp_path):
    """Issue #27, 8: a second convert(..., prepack_weight=True, logs=...) silently kept the first's."""
    model = torch.nn.Sequential(torch.nn.ConvTranspose1d(32, 16, 8, stride=4, padding=2))
    tt.convert(model)
    layer = model[0]
    assert layer._prepack_weight is False and layer.logs is None
    assert tt.convert(model, prepack_weight=True, logs=tmp_path) is model and model[0] is layer
    assert layer._prepack_weight is True and layer.logs == str(tmp_path)
    x = torch.randn(1, 32, 12)
    with torch.no_grad():
        assert rel_err(layer(x), F.conv_transpose1d(x, layer.weight, layer.bias, 4, 2)) <= FORWARD_TOL[torch.float32]


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("batched", [True, False])
def test_forward_mode_ad_gives_the_tangent(mode, batched):
    """Issue #27, 6: torch.autograd.forward_ad gave a None tangent. The op is linear in the input and
    in the weight, so the tangent is the reference at (dx, w) plus at (x, dw) plus db."""
    from torch.autograd import forward_ad as fwAD

    from conftest import torch_conv_transpose1d

    torch.manual_seed(0)
    p = ConvTranspose1dParams(8, 4, 4, stride=2, padding=1, padding_mode=mode)
    x, w, b = torch.randn(2, 8, 10, dtype=torch.float64), torch.randn(8, 4, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    dx, dw, db = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    if not batched:
        x, dx = x[0], dx[0]
    with fwAD.dual_level():
        y = tt.conv_transpose1d(fwAD.make_dual(x, dx), fwAD.make_dual(w, dw), fwAD.make_dual(b, db),
                                stride=2, padding=1, padding_mode=mode)
        primal, tangent = fwAD.unpack_dual(y)
    expected = (torch_conv_transpose1d(dx.numpy(), w.numpy(), None, p) + torch_conv_transpose1d(x.numpy(), dw.numpy(), None, p)
                + (db.numpy()[:, None] if not batched else db.numpy()[None, :, None]))
    assert tangent is not None
    assert rel_err(tangent, torch.from_numpy(expected)) <= FORWARD_TOL[torch.float64]
    assert rel_err(primal, torch.from_numpy(torch_conv_transpose1d(x.numpy(), w.numpy(), b.numpy(), p))) <= 1e-12


def test_export_with_too_short_a_dim_suggests_the_layers_shortest_input():
    """Issue #27, 7: Dim("L", min=1) on a layer whose shortest input is 3 failed with "AssertionError:
    Expected op to be '==', got <=" from torch's solver; now as for PyTorch's own layer."""
    from torch.export import Dim, export

    layer = tt.ConvTranspose1d(4, 4, 4, stride=2, padding=3)
    with pytest.raises(Exception, match=r"Dim\('L', min=3\)"):
        export(layer, (torch.randn(1, 4, 8),), dynamic_shapes={"input": {2: Dim("L", min=1)}})
    program = export(layer, (torch.randn(1, 4, 8),), dynamic_shapes={"input": {2: Dim("L", min=3)}})
    for length in (3, 17):
        x = torch.randn(1, 4, length)
        with torch.no_grad():
            expected = F.conv_transpose1d(x, layer.weight, layer.bias, 2, 3)
            assert rel_err(program.module()(x), expected) <= FORWARD_TOL[torch.float32]


def test_torchscript_tracing_is_refused_in_one_sentence():
    """Issue #27, 9: torch.jit.trace gave "in_channels must be an int, got tensor(16)"."""
    model = tt.convert(torch.nn.Sequential(torch.nn.ConvTranspose1d(16, 8, 4, stride=2)))
    with pytest.raises(TypeError, match=r"does not support TorchScript \(torch.jit.trace or script\), got a call "
                                        r"while tracing; use torch.compile or torch.export"):
        torch.jit.trace(model, torch.randn(1, 16, 10))


@pytest.mark.parametrize("weight_norm", [False, True])
def test_torchscript_scripting_is_refused_in_one_sentence(weight_norm):
    """Issue #27, 9: torch.jit.script failed inside TorchScript's own frontend, on pathlib."""
    layer = torch.nn.ConvTranspose1d(16, 8, 4, stride=2)
    if weight_norm:
        torch.nn.utils.parametrizations.weight_norm(layer)
    model = tt.convert(torch.nn.Sequential(layer))
    with pytest.raises(TypeError, match=r"does not support TorchScript .*got torch.jit.script of a model with a "
                                        r"tvm_convt layer; use torch.compile or torch.export, or "
                                        r"tvm_convt.torch.revert\(model\) first"):
        torch.jit.script(model)
    tt.revert(model)
    torch.jit.script(model)  # PyTorch's own layer scripts again
