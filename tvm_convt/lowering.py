"""What the CPU lowering adds to TVM's: parallel loops too small to pay for the thread pool run on
the calling thread, buffers allocated inside loops kept on the stack, and an input declared at the
alignment a module takes it at.

TVM 0.27 turns every parallel loop into a call of ``TVMBackendParallelLaunch``, which wakes the
pool's workers and waits for them at the end: 1.5-3 microseconds on two cores here, whatever the
loop holds. A static function's one-iteration loops are simplified away before that, but a
symbolic function's are not (a copy of two samples, a gather of one tile, a partitioned tail
that runs zero times), and a static function's small stages (an output of 32 channels of six
samples) launch the pool as well. After TVM's own passes, each outermost parallel loop whose work
(its store statements, counted through its loops) is below :data:`INLINE_BELOW_STORES` becomes a
serial loop; where the work depends on the batch or the length, the loop is kept twice, behind a
test of that count made at each call.

TVM 0.27 also keeps a buffer on the stack only when its size is a constant under 1 KiB; any other
buffer is a ``TVMBackendAllocWorkspace`` call and its free, and one allocated inside a loop pays
that at each iteration: a symbolic function's output row of each channel (its length follows the
input's) cost mimi_depthwise 10 % at 125 samples. A buffer allocated inside a loop with a size
under :data:`STACK_BYTES` is kept on the stack; one whose size depends on the batch or the length
is kept twice, on the stack behind a test of its size and as TVM allocates it otherwise.
``docs/performance.md`` has the measurements.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import Var
from tvm.sym.analyzer import Analyzer
from tvm.target import Target
from tvm.tirx import stmt as S
from tvm.tirx import compilation_pipeline
from tvm.tirx.analysis import undefined_vars

from .params import PACK_WEIGHT

# Below this many stores a parallel loop runs serially: a vector FMA into a register tile or a
# scalar copy is a store here, and 4096 of them take about as long as a launch of the pool on
# two cores (encodec_up3 at 8-32 samples gained 12-31 %, none of the layers lost at 64-128).
INLINE_BELOW_STORES = 4096

# A buffer allocated inside a loop and smaller than this lives on the stack: a quarter of the
# 64 KiB that the smallest default thread stacks (musl's 128 KiB) leave comfortable, and the
# size where a workspace call's 20-40 ns no longer shows beside the loop's work.
STACK_BYTES = 16384
# At most this many bytes of such buffers are live on the stack at once along one path (the buffers
# of a function or closure add up: TVM's allocas carry no lifetimes). A scope kept twice for a size
# over STACK_BYTES moves no other buffer of symbolic size (the length is then long enough for the
# workspace calls not to show), so N such buffers in one scope make at most three copies of it.
STACK_PATH_BYTES = 2 * STACK_BYTES

PIPELINE = "tvm_convt"

# The passes' own revision, raised with any change of what they make that the constants do not show.
_REVISION = 2

# In the modules' cache key (tvm_convt.build.program_key): a program's text shows none of the
# additions, so a change to any changes this.
KEY = f"{PIPELINE}:{_REVISION}:inline-below-{INLINE_BELOW_STORES}:stack-{STACK_BYTES}-{STACK_PATH_BYTES}"


def _int64(e: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.Cast("int64", e)


def _stores(st: S.Stmt, defined: list[tirx.Var]) -> tirx.PrimExpr | None:
    """The store statements ``st`` runs, as an int64 expression (None: not countable, a while
    loop); ``defined`` gathers the variables ``st`` binds, which the count may not use."""
    if isinstance(st, S.SeqStmt):
        total = tirx.const(0, "int64")
        for part in st.seq:
            count = _stores(part, defined)
            if count is None:
                return None
            total = total + count
        return total
    if isinstance(st, S.For):
        defined.append(st.loop_var)
        count = _stores(st.body, defined)
        return None if count is None else _int64(st.extent) * count
    if isinstance(st, S.AttrStmt):
        return _stores(st.body, defined)
    if isinstance(st, S.IfThenElse):
        # Both branches counted: an upper bound, cheaper than a maximum to test.
        counts = [_stores(b, defined) for b in (st.then_case, st.else_case) if b is not None]
        return None if any(c is None for c in counts) else sum(counts[1:], counts[0])
    if isinstance(st, S.Bind):
        defined.append(st.var)
        return tirx.const(0, "int64")
    if isinstance(st, (S.BufferStore, S.Evaluate)):
        return tirx.const(1, "int64")
    if isinstance(st, (S.AllocBuffer, S.DeclBuffer, S.AssertStmt)):
        return tirx.const(0, "int64")
    return None  # While, and anything this pass does not know


def _serial(loop: S.For) -> S.For:
    return S.For(loop.loop_var, loop.min, loop.extent, S.ForKind.SERIAL, loop.body)


def _parallel_or_serial(loop: S.For) -> S.Stmt:
    """``loop`` (parallel) as it is, serial, or both behind a test of its work."""
    defined: list[tirx.Var] = []
    count = _stores(loop.body, defined)
    if count is None:
        return loop
    work = Analyzer().simplify(_int64(loop.extent) * count)
    if isinstance(work, tirx.IntImm):
        return loop if int(work.value) >= INLINE_BELOW_STORES else _serial(loop)
    if any(v.same_as(d) for v in undefined_vars(work) for d in defined):
        return loop  # counted from values the loop computes: not testable before it
    return S.IfThenElse(work >= INLINE_BELOW_STORES, loop, _serial(loop))


def _with_bodies(st: S.Stmt, visit) -> S.Stmt:
    """``st`` with ``visit`` applied to the statements it holds (a sequence's parts, an attribute's,
    a branch's or a loop's body); any other statement as it is."""
    if isinstance(st, S.SeqStmt):
        return S.SeqStmt([visit(part) for part in st.seq])
    if isinstance(st, S.AttrStmt):
        return S.AttrStmt(st.node, st.attr_key, st.value, visit(st.body))
    if isinstance(st, S.IfThenElse):
        return S.IfThenElse(st.condition, visit(st.then_case), None if st.else_case is None else visit(st.else_case))
    if isinstance(st, S.For):
        return S.For(st.loop_var, st.min, st.extent, st.kind, visit(st.body), st.thread_binding, st.annotations,
                     st.step)
    return st


def _each_function(mod: tvm.IRModule, rewrite) -> tvm.IRModule:
    """Every PrimFunc of ``mod`` with its body through ``rewrite``; what a rewrite keeps twice binds its
    variables twice, which ``ConvertSSA`` renames."""
    functions = {gv: f.with_body(rewrite(f.body)) if isinstance(f, tirx.PrimFunc) else f
                 for gv, f in mod.functions.items()}
    return tirx.transform.ConvertSSA()(tvm.IRModule(functions, attrs=mod.attrs))


def _rewrite(st: S.Stmt) -> S.Stmt:
    """``st`` with each outermost parallel loop through :func:`_parallel_or_serial`."""
    if isinstance(st, S.For) and st.kind == S.ForKind.PARALLEL:
        return _parallel_or_serial(st)
    return _with_bodies(st, _rewrite)


@tvm.transform.module_pass(opt_level=0, name="TvmConvtInlineSmallParallel")
def inline_small_parallel(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Every PrimFunc of ``mod`` through :func:`_rewrite`."""
    return _each_function(mod, _rewrite)


def _on_stack(alloc: S.AllocBuffer, scope: list[S.Stmt], held: int, stacked_bytes: int, symbolic: bool) -> S.Stmt:
    """``alloc`` and the statements in its scope with the buffer on the stack, ``held`` bytes of it:
    TVM's code generation makes a buffer it is told not to lower an ``alloca`` at the entry of the
    function, or of the parallel loop's closure. ``stacked_bytes``: the stack this path holds, this
    buffer included; ``symbolic``: whether buffers of symbolic size may still move."""
    buffer = alloc.buffer
    stacked = tirx.decl_buffer((held // _itemsize(buffer),), buffer.dtype, buffer.name, scope=buffer.scope(),
                               data_alignment=int(buffer.data_alignment))
    body = tvm_ffi.structural_map(tirx.stmt_seq(*scope), [(Var, lambda v: stacked if v.same_as(buffer) else v)])
    return tirx.stmt_seq(S.AllocBuffer(stacked, {"disable_lower_builtin": tirx.IntImm("bool", 1)}),
                         _stack(body, True, stacked_bytes, symbolic))


def _itemsize(buffer: tirx.Buffer) -> int:
    """Bytes per element, every lane of a vector element (a register tile's ``float32x16``) counted."""
    dtype = tvm.DataType(buffer.dtype)
    return dtype.bits * dtype.lanes // 8


def _bytes(buffer: tirx.Buffer) -> tirx.PrimExpr:
    size = tirx.const(_itemsize(buffer), "int64")
    for extent in buffer.shape:
        size = size * _int64(extent)
    return Analyzer().simplify(size)


def _movable_size(part: S.Stmt, in_loop: bool, stacked_bytes: int, symbolic: bool) -> tirx.PrimExpr | None:
    """The size in bytes of the buffer ``part`` allocates, where this pass moves it to the stack (else
    None): inside a loop, global, at least TVM's own 1 KiB bound (under it TVM keeps it on the stack
    itself), at most ``STACK_BYTES`` or (where ``symbolic``) of a size that is not a constant, and
    within the path's ``STACK_PATH_BYTES``."""
    if not (in_loop and isinstance(part, S.AllocBuffer) and part.buffer.scope() == "global"):
        return None
    size = _bytes(part.buffer)
    if isinstance(size, tirx.IntImm):
        held = int(size.value)
        if not 1024 <= held <= STACK_BYTES:
            return None
    elif symbolic:
        held = STACK_BYTES
    else:
        return None
    return size if stacked_bytes + held <= STACK_PATH_BYTES else None


def _stack_in_seq(parts: list[S.Stmt], in_loop: bool, stacked_bytes: int, symbolic: bool) -> list[S.Stmt]:
    """``parts`` (a sequence, where an ``AllocBuffer`` declares its buffer for the statements after
    it) with each buffer allocated inside a loop on the stack where it fits, behind a test of its
    size where that is not a constant."""
    for i, part in enumerate(parts):
        size = _movable_size(part, in_loop, stacked_bytes, symbolic) if i + 1 < len(parts) else None
        if size is None:
            continue
        before = [_stack(p, in_loop, stacked_bytes, symbolic) for p in parts[:i]]
        scope = parts[i + 1:]
        held = int(size.value) if isinstance(size, tirx.IntImm) else STACK_BYTES
        stacked = _on_stack(part, scope, held, stacked_bytes + held, symbolic)
        if isinstance(size, tirx.IntImm):
            return before + [stacked]
        kept = tirx.stmt_seq(part, _stack(tirx.stmt_seq(*scope), in_loop, stacked_bytes, False))
        return before + [S.IfThenElse(size <= STACK_BYTES, stacked, kept)]
    return [_stack(p, in_loop, stacked_bytes, symbolic) for p in parts]


def _stack(st: S.Stmt, in_loop: bool, stacked_bytes: int = 0, symbolic: bool = True) -> S.Stmt:
    """``st`` through :func:`_stack_in_seq`; ``in_loop``: ``st`` runs inside a loop; ``stacked_bytes``:
    the stack the enclosing scopes' buffers hold; ``symbolic``: whether buffers of symbolic size may move."""
    if isinstance(st, S.SeqStmt):
        return tirx.stmt_seq(*_stack_in_seq(list(st.seq), in_loop, stacked_bytes, symbolic))
    inside = in_loop or isinstance(st, S.For)
    return _with_bodies(st, lambda body: _stack(body, inside, stacked_bytes, symbolic))


@tvm.transform.module_pass(opt_level=0, name="TvmConvtStackLoopBuffers")
def stack_loop_buffers(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Every PrimFunc of ``mod`` through :func:`_stack`."""
    return _each_function(mod, lambda body: _stack(body, False))


def declare_input_alignment(mod: tvm.IRModule, alignment: int) -> tvm.IRModule:
    """``mod`` with each function's input buffer (its first parameter, but in ``pack_weight``)
    declared at ``alignment`` bytes: TVM's code generation marks every load with the alignment the
    buffer declares (64) and the index proves, which LLVM then turns into aligned vector loads
    (``vmovaps``) even where TVM wrote scalar ones; a module that takes NumPy's 16-byte aligned
    arrays as they are (``ModuleMetadata.input_alignment``) must not claim more."""
    functions = {}
    for gv, func in mod.functions.items():
        x = func.params[0]
        if gv.name_hint != PACK_WEIGHT and int(x.data_alignment) > alignment:
            declared = tirx.decl_buffer(x.shape, x.dtype, x.name, data_alignment=alignment,
                                        offset_factor=x.offset_factor, elem_offset=x.elem_offset)
            func = tvm_ffi.structural_map(func, [(Var, lambda v, x=x, declared=declared:
                                                  declared if v.same_as(x) else v)])
        functions[gv] = func
    return tvm.IRModule(functions, attrs=mod.attrs)


def _pipeline():
    default, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("default")
    return tvm.transform.Sequential([default, inline_small_parallel, stack_loop_buffers]), finalize_host, finalize_device


compilation_pipeline.register_tir_pipeline(PIPELINE, _pipeline)


def lower(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """``mod`` through :data:`PIPELINE` up to code generation (what :func:`compile_module` hands to
    LLVM): for reading what the pass made of it."""
    pipeline, _, _ = compilation_pipeline.get_tir_pipeline(PIPELINE)
    return pipeline(tirx.transform.BindTarget(target.with_host(target))(mod))


def compile_module(mod: tvm.IRModule, target: Target):
    """``tvm.compile`` with :data:`PIPELINE` on CPU targets (TVM's own on others, whose parallel
    loops are threads of the device)."""
    return tvm.compile(mod, target=target, tir_pipeline=PIPELINE if target.kind.name == "llvm" else "default")
