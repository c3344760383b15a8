"""The CPU lowering's additions (tvm_convt.lowering): small parallel loops run on the calling thread,
buffers allocated inside loops live on the stack, and a module that shares unaligned inputs declares
their alignment."""

import numpy as np
import pytest

import tvm_convt
from tvm_convt.build import schedule, schedule_symbolic
from tvm_convt.lowering import INLINE_BELOW_STORES, STACK_BYTES, compile_module, declare_input_alignment, lower
from tvm_convt.params import ConvTranspose1dParams as P
from tvm_convt.params import SymbolicWorkload, Workload
from tvm_convt.reference import conv_transpose1d_reference
from tvm_convt.target import resolve_target

from conftest import assert_close, random_inputs

LLVM = resolve_target("llvm")


def _lowered_script(mod) -> str:
    return lower(mod, LLVM).script()


def test_a_small_static_function_launches_no_thread_pool():
    """16 -> 8 channels, 9 samples: every stage is a few hundred stores, below the bound."""
    mod, _ = schedule(Workload(P(16, 8, 4, padding=1), 2, 9), LLVM, tuned=False)
    assert "T.parallel" in mod["main"].script()  # the rule's loops are parallel ...
    assert "T.parallel" not in _lowered_script(mod)  # ... and none is launched


def test_a_large_static_function_keeps_its_parallel_loops():
    mod, _ = schedule(Workload(P(512, 256, 16, stride=8, padding=4), 1, 86), LLVM, tuned=False)
    lowered = _lowered_script(mod)
    assert lowered.count("T.parallel") >= 1
    assert f">= T.int64({INLINE_BELOW_STORES})" not in lowered  # constant work: decided at compile time


def test_symbolic_functions_test_their_work_at_each_call():
    """A symbolic function's loops have work in the batch and length: each such parallel loop is
    kept beside a serial copy, behind a test of its store count against the bound."""
    mod, _, _ = schedule_symbolic(SymbolicWorkload(P(64, 32, 4, stride=2, padding=1)), LLVM, tuned=False)
    lowered = lower(mod, LLVM)
    for gv in mod.get_global_vars():
        if gv.name_hint != "pack_weight":
            assert f">= T.int64({INLINE_BELOW_STORES})" in lowered[gv.name_hint].script(), gv.name_hint


@pytest.mark.parametrize("length", [1, 2, 7, 8, 33, 200, 1500])
def test_symbolic_module_exact_on_both_sides_of_the_bound(length):
    """The serial and the parallel copy of each loop compute the same result (lengths whose loops fall
    on either side of the bound, batch 1 and 3)."""
    p = P(64, 32, 4, stride=2, padding=1)
    compiled = tvm_convt.compile(p, target="llvm", prepack_weight=True)
    for batch in (1, 3):
        x, w, b = random_inputs(p, batch, length, "float32", seed=length)
        assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, p), "float32")


# Depthwise, 8 channels: the direct rule keeps each channel's output row in a buffer of its own,
# allocated in the parallel loop (a constant 1 KiB at 125 samples, at any length a size in it).
DEPTHWISE = P(8, 8, 4, stride=2, groups=8)
ON_STACK = '"disable_lower_builtin": T.bool(True)'


def test_a_static_loop_buffer_of_a_kilobyte_is_on_the_stack():
    """TVM keeps only buffers under 1 KiB on the stack; the row of 252 samples (padded to 256) is
    1 KiB and was a workspace call at each iteration."""
    mod, rule = schedule(Workload(DEPTHWISE, 1, 125), LLVM, tuned=False)
    assert rule.endswith("cpu-direct")
    assert ON_STACK in _lowered_script(mod)


def test_an_avx512_register_tile_is_on_the_stack_and_compiles():
    """Six 64-lane vectors (1,536 B, every lane counted) of a GEMM register tile: TVM made it a
    workspace call per tile; built, not run (this machine may lack AVX-512)."""
    avx512 = resolve_target({"kind": "llvm", "mcpu": "skylake-avx512"})
    mod, rule = schedule(Workload(P(512, 256, 16, stride=8, padding=4), 1, 86), avx512, tuned=False)
    assert rule.endswith("cpu-gemm")
    tiles = [line for line in lower(mod, avx512).script().splitlines() if "col_global = T.alloc_buffer" in line]
    assert tiles and all(ON_STACK in line and "x64" in line for line in tiles), tiles
    assert compile_module(mod, avx512)["main"] is not None


def test_a_symbolic_loop_buffer_is_on_the_stack_behind_a_test_of_its_size():
    mod, _, _ = schedule_symbolic(SymbolicWorkload(DEPTHWISE), LLVM, tuned=False)
    lowered = _lowered_script(mod)
    assert ON_STACK in lowered
    assert f"<= T.int64({STACK_BYTES})" in lowered


@pytest.mark.parametrize("length", [1, 125, 1900, 2100, 5000])
def test_symbolic_module_exact_on_both_sides_of_the_stack_bound(length):
    """Rows up to 16 KiB (1,900 samples) on the stack, longer ones in TVM's workspace: both exact,
    at batch 1 and 2."""
    compiled = tvm_convt.compile(DEPTHWISE, target="llvm", tuned=False)  # the module the test above reads
    for batch in (1, 2):
        x, w, b = random_inputs(DEPTHWISE, batch, length, "float32", seed=length)
        assert_close(compiled(x, w, b), conv_transpose1d_reference(x, w, b, DEPTHWISE), "float32")


@pytest.mark.parametrize("buffers, stacked, copies", [(1, 1, 2), (2, 2, 3), (4, 2, 3)])
def test_symbolic_loop_buffers_on_the_stack_are_bounded(buffers, stacked, copies):
    """Buffers of symbolic size in one loop: at most STACK_PATH_BYTES of them on the stack along a path,
    and a scope kept on the heap moves no more of them, so its copies stay three however many there are."""
    from tvm import tirx
    from tvm.tirx import stmt as S

    from tvm_convt.lowering import STACK_PATH_BYTES, _stack

    n, i = tirx.Var("n", "int32"), tirx.Var("i", "int32")
    allocated = [tirx.decl_buffer((n,), "float32", f"b{j}") for j in range(buffers)]
    body = S.SeqStmt([S.AllocBuffer(b) for b in allocated]
                     + [S.BufferStore(b, tirx.const(0.0, "float32"), [i]) for b in allocated])
    text = _stack(S.For(i, 0, n, S.ForKind.SERIAL, body), False).script()
    assert text.count("disable_lower_builtin") == stacked <= STACK_PATH_BYTES // STACK_BYTES
    assert text.count("b0[i] = ") == copies


def test_the_input_is_declared_at_the_alignment_the_module_takes():
    mod, _ = schedule(Workload(P(16, 8, 4, padding=1), 2, 9), LLVM, tuned=False)
    assert int(mod["main"].params[0].data_alignment) == 64
    declared = declare_input_alignment(mod, 4)
    assert int(declared["main"].params[0].data_alignment) == 4
    assert int(declared["main"].params[-1].data_alignment) == 64  # the output keeps TVM's


@pytest.mark.parametrize("offset", [4, 8, 12, 16, 20, 28, 36, 60])
def test_unaligned_input_to_a_function_without_parallel_loops(offset):
    """With no parallel loop, LLVM sees the input's pointer and the loads' alignment, and turned the
    scalar copy of x into aligned vector loads (a crash, 3 runs in 4) until the input's buffer
    declared the alignment the module takes it at."""
    p = P(16, 8, 4, padding=1)
    compiled = tvm_convt.compile(p, batch=2, length=9, target="llvm")
    assert compiled.metadata.input_alignment == 4
    x, w, b = random_inputs(p, 2, 9, "float32", seed=offset)
    raw = np.empty(x.size + 32, np.float32)
    start = next(i for i in range(16) if (raw[i:].ctypes.data % 64) == offset % 64)
    unaligned = raw[start:start + x.size].reshape(x.shape)
    unaligned[...] = x
    assert np.shares_memory(np.from_dlpack(compiled.to_device(unaligned, "input")), unaligned)
    assert_close(compiled(unaligned, w, b), conv_transpose1d_reference(x, w, b, p), "float32")
