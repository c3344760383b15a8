"""Default schedule rules for CUDA GPUs.

Rules, most specific first: ``gpu-direct`` (depthwise and narrow groups, no
``col`` in global memory), ``gpu-gemm`` (the ``col`` GEMM tiled in shared memory
with register tiles) and dlight's ``gpu-fallback``. Tile sizes are data: one
:class:`GemmConfig` / :class:`DirectConfig` per architecture, chosen by
``target.attrs["arch"]``. They are starting points from the usual SIMT-GEMM
shapes (256 threads, 4x4 to 8x4 accumulators a thread), not yet measured on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from .. import compute as C
from ..params import Workload
from .common import has_block, is_symbolic, read_index


def _arch(target: Target) -> str:
    return str(target.attrs.get("arch", ""))


def _is_cuda(target: Target) -> bool:
    return target.kind.name == "cuda"


def _max_threads(target: Target) -> int:
    return int(target.attrs.get("max_num_threads", 0) or target.attrs.get("max_threads_per_block", 1024))


def _max_shared_bytes(target: Target) -> int:
    return int(target.attrs.get("max_shared_memory_per_block", 49152))


def _itemsize(dtype: str) -> int:
    return tvm.DataType(dtype).bits // 8


@dataclass(frozen=True)
class GemmConfig:
    """Tiles of the ``col`` GEMM: a block computes ``bm x bn`` of (m, j) for one (n, g),
    each of its ``(bm/tm) * (bn/tn)`` threads a ``tm x tn`` register tile; the
    reduction over input channels runs in chunks of ``bk`` staged in shared memory."""

    bm: int = 64  # along m = (out channel, tap), the weight's contiguous axis
    bn: int = 64  # along j = input sample, x's contiguous axis
    bk: int = 16  # input channels per shared-memory chunk
    tm: int = 4
    tn: int = 4
    epilogue_threads: int = 256  # threads a block for the gather, fold and bias stages
    unroll: int = 256  # pragma_auto_unroll_max_step of the thread's inner loops

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


# Ampere A100 and Hopper have 164-228 KiB of shared memory an SM and many SMs:
# a larger tile amortises loads better. Consumer parts (sm_86, sm_89) have
# 100 KiB and fewer SMs: a smaller chunk keeps more blocks resident.
GEMM_CONFIGS: dict[str, GemmConfig] = {
    "sm_80": GemmConfig(),
    "sm_86": GemmConfig(bk=8),
    "sm_89": GemmConfig(bk=8),
    "sm_90": GemmConfig(bm=128, tm=8),
}


def get_gemm_config(target: Target) -> GemmConfig:
    """The GEMM tiles for ``target.attrs["arch"]``; the sm_80 ones for any other."""
    return GEMM_CONFIGS.get(_arch(target), GemmConfig())


@dataclass(frozen=True)
class DirectConfig:
    """Tiles of ``gpu-direct``: a block computes ``q_tile`` output positions of every
    phase for one (n, out channel), with ``threads`` threads."""

    q_tile: int = 64
    threads: int = 128
    max_in_per_group: int = 8  # wider groups go to gpu-gemm
    min_q_tile: int = 16  # below this the halo dominates: leave the layer to gpu-gemm


# Hopper runs more threads an SM: longer tiles, the halo recomputed less often.
DIRECT_CONFIGS: dict[str, DirectConfig] = {
    "sm_80": DirectConfig(),
    "sm_86": DirectConfig(),
    "sm_89": DirectConfig(),
    "sm_90": DirectConfig(q_tile=128, threads=256),
}


def get_direct_config(target: Target) -> DirectConfig:
    """The direct rule's tiles for ``target.attrs["arch"]``; the sm_80 ones for any other."""
    return DIRECT_CONFIGS.get(_arch(target), DirectConfig())


def _bind_flat(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, n_spatial: int, threads: int) -> None:
    """Fuse the first ``n_spatial`` loops of ``block`` and bind them to (block, thread):
    the last loop varies fastest across threads, so its accesses coalesce."""
    loops = sch.get_loops(block)[:n_spatial]
    if is_symbolic(sch):
        _bind_symbolic(sch, loops, threads)
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _bind_symbolic(sch: s_tir.Schedule, loops: list, threads: int) -> None:
    """:func:`_bind_flat` of a symbolic function's loops (batch first, one other symbolic extent among
    the rest): the batch on ``blockIdx.y`` (at most :data:`tvm_convt.lengths.CUDA_MAX_BATCH`, which a
    call checks) and the rest fused with the symbolic loop outermost, so that every index divides by
    constants only (divided by a symbolic extent, TVM 0.27's bound analysis overflows or fails to
    prove a padding)."""
    n, *rest = loops
    sch.bind(n, "blockIdx.y")
    symbolic = [not isinstance(sch.get(lp).extent, tirx.IntImm) for lp in rest]
    if symbolic[-1]:
        # The samples: split into thread tiles first, so the threads stay along them.
        bx, tx = sch.split(rest[-1], [None, threads])
        sch.reorder(bx, *rest[:-1], tx)
        sch.bind(sch.fuse(bx, *rest[:-1]) if len(rest) > 1 else bx, "blockIdx.x")
    else:
        assert not any(symbolic[1:]), symbolic
        bx, tx = sch.split(sch.fuse(*rest) if len(rest) > 1 else rest[0], [None, threads])
        sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _schedule_epilogue(sch: s_tir.Schedule, threads: int) -> None:
    """Margins and ``y``: one thread an output (margins: one an (n, channel), summing serially)."""
    for name, n_spatial in ((C.MARGIN_LEFT, 2), (C.MARGIN_RIGHT, 2), (C.OUT, 3), (C.STATE_OUT, 3)):
        if has_block(sch, name):
            block = sch.get_sblock(name)
            _bind_flat(sch, block, n_spatial, threads)
            if n_spatial == 2:
                sch.decompose_reduction(block, sch.get_loops(block)[-1])


def _gemm_tiles(cfg: GemmConfig, workload: Workload, target: Target) -> GemmConfig:
    """Fit the configured tile to the layer: a side more than twice its extent gives
    half its threads to the other side (where that has room), and the K chunk halves
    until both tiles fit in shared memory."""
    p = workload.params
    m_total, length = p.out_per_group * p.kernel_size, workload.length
    while cfg.bn > 2 * cfg.tn and 2 * length <= cfg.bn and cfg.bm < m_total:
        cfg = replace(cfg, bn=cfg.bn // 2, bm=cfg.bm * 2)
    while cfg.bm > 2 * cfg.tm and 2 * m_total <= cfg.bm and cfg.bn < length:
        cfg = replace(cfg, bm=cfg.bm // 2, bn=cfg.bn * 2)
    limit = _max_shared_bytes(target)
    # The shared tiles are of x and the weight: the workload's own dtype (2 bytes for the half ones).
    while cfg.bk > 1 and _gemm_shared_elements(cfg, p.kernel_size) * _itemsize(workload.dtype) > limit:
        cfg = replace(cfg, bk=cfg.bk // 2)
    return cfg


def _gemm_shared_elements(cfg: GemmConfig, kernel_size: int) -> int:
    # The weight tile is a box over (o, k): bm consecutive m can straddle one more o.
    return cfg.bk * (cfg.bn + ((cfg.bm - 1) // kernel_size + 2) * kernel_size)


def _cooperative_load(sch: s_tir.Schedule, col: s_tir.schedule.SBlockRV, buffer: str,
                      k_loop: s_tir.schedule.LoopRV, depth: int, threads: tuple[int, int]) -> None:
    """Stage ``buffer``'s tile of this K chunk in shared memory, loaded by every thread of
    the block with the contiguous axis innermost, so a warp reads consecutive addresses.
    ``depth`` is the number of loops down to ``k_loop``."""
    shared = sch.cache_read(col, read_index(sch, col, buffer), "shared")
    if buffer == "weight" and is_symbolic(sch):
        # The weight's tile as (channel, m), a plain box: as (channel, o, k) a tile of m that does not
        # start at a kernel row is a box TVM 0.27 cannot size when the tile's start is symbolic.
        kernel_size = int(sch.get(shared).writes[0].source.shape[2])
        sch.transform_layout(shared, ("write", 0), lambda c, o, k: (c, o * kernel_size + k))
        sch.transform_block_layout(shared, lambda c, o, k: (c, o * kernel_size + k))
    sch.compute_at(shared, k_loop)
    inner = sch.get_loops(shared)[depth:]
    if not inner:  # a one-element tile (one channel, one sample): nothing to share out
        return
    fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    _, ty, tx = sch.split(fused, [None, *threads])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def _schedule_col_gemm(sch: s_tir.Schedule, cfg: GemmConfig) -> None:
    col = sch.get_sblock(C.COL)
    # Stored (n, g, m, j): the gather's threads step along j, so they read col coalesced.
    sch.transform_layout(col, ("write", 0), lambda n, g, j, m: (n, g, m, j))
    n, g, j, m, c = sch.get_loops(col)
    threads = (cfg.bm // cfg.tm, cfg.bn // cfg.tn)
    # A thread's tile is contiguous (m = mo*bm + ty*tm + mv): its write-back region
    # is then exactly what it computed (a strided tile would be relaxed to a box).
    mo, ty, mv = sch.split(m, [None, threads[0], cfg.tm])
    jo, tx, jv = sch.split(j, [None, threads[1], cfg.tn])
    ko, ki = sch.split(c, [None, cfg.bk])
    symbolic = is_symbolic(sch)
    if symbolic:
        # As _bind_symbolic: the batch on a grid axis of its own, the sample tiles outermost.
        sch.reorder(n, jo, g, mo, ty, tx, ko, ki, mv, jv)
        sch.bind(n, "blockIdx.y")
        sch.bind(sch.fuse(jo, g, mo), "blockIdx.x")
    else:
        sch.reorder(n, g, mo, jo, ty, tx, ko, ki, mv, jv)
        sch.bind(sch.fuse(n, g, mo, jo), "blockIdx.x")
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    acc = sch.cache_write(col, 0, "local")
    sch.reverse_compute_at(acc, tx)
    # The loops down to ko: the grid's (two when the batch has its own), ty, tx, ko.
    for buffer in (C.X_TILES if symbolic else "x", "weight"):
        _cooperative_load(sch, col, buffer, ko, 5 if symbolic else 4, threads)
    if cfg.unroll:
        sch.annotate(tx, "pragma_auto_unroll_max_step", cfg.unroll)
        sch.annotate(tx, "pragma_unroll_explicit", 1)
    sch.decompose_reduction(col, ko)


def _schedule_full(sch: s_tir.Schedule, threads: int) -> None:
    """One thread a gathered sample, q fastest: threads read col and write full along j and q."""
    _bind_flat(sch, sch.get_sblock(C.FULL), 4, threads)


@dataclass(frozen=True)
class GpuGemmRule:
    """``col`` as a shared-memory tiled GEMM with register tiles, then a coalesced gather.

    A block computes a ``bm x bn`` tile of (m, j) for one (n, g): x and weight
    chunks of ``bk`` input channels are loaded into shared memory by all threads,
    and each thread accumulates a ``tm x tn`` tile in registers. ``col`` is stored
    (n, g, m, j), so the gather (``full``, one thread a sample, q fastest) reads
    it along j. Ragged edges are predicated; not applicable only where a block
    would exceed the target's thread limit.
    """

    name: str = "gpu-gemm"
    form: str = C.GEMM

    def _config(self, workload: Workload, target: Target) -> GemmConfig | None:
        if not _is_cuda(target):
            return None
        cfg = _gemm_tiles(get_gemm_config(target), workload, target)
        return None if cfg.threads > _max_threads(target) else cfg

    def symbolic_layout(self, workload: Workload, target: Target) -> C.SymbolicLayout | None:
        """``col``'s samples to whole tiles of ``bn``, read from ``x_tiles``: a tile split of a symbolic
        extent would leave a predicate that keeps TVM from sizing the shared and register tiles."""
        cfg = self._config(workload, target)
        return None if cfg is None else C.SymbolicLayout(col_rows=cfg.bn, halo=False)

    def plan_key(self, workload: Workload, target: Target) -> tuple:
        """The tiles, fitted to the length (a short input gives its threads to the weight's axis)."""
        return (self._config(workload, target),)

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        cfg = self._config(workload, target)
        if cfg is None:
            return None
        sch = s_tir.Schedule(func)
        if has_block(sch, C.X_TILES):
            _bind_flat(sch, sch.get_sblock(C.X_TILES), 4, cfg.epilogue_threads)
        _schedule_col_gemm(sch, cfg)
        _schedule_full(sch, cfg.epilogue_threads)
        _schedule_epilogue(sch, cfg.epilogue_threads)
        return sch


def _schedule_direct(sch: s_tir.Schedule, q_tile: int, threads: int, length: int) -> int:
    """Schedule ``col`` and ``full`` for :class:`GpuDirectRule` on an input of ``length``
    samples; return the block's ``col`` tile size in elements (taps x window)."""
    col = sch.get_sblock(C.COL)
    sch.set_scope(col, 0, "shared")
    n, co, r, q = sch.get_loops(sch.get_sblock(C.FULL))[:4]
    qo, qi = sch.split(q, [None, q_tile])
    sch.reorder(n, co, qo, r, qi)
    bx = sch.fuse(n, co, qo)
    sch.bind(bx, "blockIdx.x")
    _, tx = sch.split(sch.fuse(r, qi), [None, threads])
    sch.bind(tx, "threadIdx.x")
    sch.compute_at(col, bx, preserve_unit_loops=True)
    j, m, c = sch.get_loops(col)[-3:]
    window, taps = int(sch.get(j).extent), int(sch.get(m).extent)
    sch.reorder(m, j)  # j fastest: threads read x coalesced
    _, tx = sch.split(sch.fuse(m, j), [None, threads])
    sch.bind(tx, "threadIdx.x")
    # Accumulate in a register, one store to shared memory a value.
    acc = sch.cache_write(col, 0, "local")
    sch.reverse_compute_at(acc, tx)
    sch.decompose_reduction(col, c)
    # The block's samples are `window` consecutive j, so j % window is a one-to-one
    # slot: the tile is taps x window. Left to TVM, the clamped indices of the
    # gather make the tile as long as the whole input. Rows along j: the gather's
    # threads step along q, so they hit consecutive banks. A window past the input's
    # length (a huge dilation) is the whole input, which needs no wrapping.
    window = min(window, length)
    sch.transform_layout(acc, ("write", 0), lambda n, g, j, m: (n, g, m, j % window))
    return window * taps


@dataclass(frozen=True)
class GpuDirectRule:
    """Depthwise and narrow groups: each block computes its own slice of ``col``.

    A block covers one (n, out channel) and ``q_tile`` positions of every phase
    (halved until its tile fits in shared memory); it first computes the
    ``col`` values they need (``in_channels/groups`` products each, plus a halo of
    a few samples) into shared memory, then gathers them, so ``col`` (K times the
    input) never goes through global memory: with so few input channels a GEMM
    has no reuse to win. Not applicable to wider groups, nor where the gather is a
    reduction over many taps (its ``col`` window would outgrow the input), nor to a
    single tap with stride > 1.
    """

    name: str = "gpu-direct"
    form: str = C.GEMM

    def symbolic_layout(self, workload: Workload, target: Target) -> C.SymbolicLayout | None:
        """Not for symbolic functions: a block's col window is clamped at the input's ends, and TVM 0.27
        refuses to bind the threads of the reduction block that clamp leaves (ScheduleError: not a
        local complete or reduction block). Symbolic narrow groups take gpu-gemm."""
        return None

    def plan_key(self, workload: Workload, target: Target) -> tuple:
        return ()

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        if not _is_cuda(target):
            return None
        cfg = get_direct_config(target)
        p = workload.params
        if (p.in_per_group > cfg.max_in_per_group or cfg.threads > _max_threads(target)
                or C.TapPlan.of(p).taps > C.MAX_UNROLLED_TAPS
                # A single tap with stride > 1 leaves phases without taps, whose clamped reads
                # make a col tile TVM 0.27 refuses to bind (ScheduleError in bind).
                or (p.kernel_size == 1 and p.stride > 1)):
            return None
        q_tile = cfg.q_tile
        while q_tile >= cfg.min_q_tile:
            sch = s_tir.Schedule(func)
            tile = _schedule_direct(sch, q_tile, cfg.threads, workload.length)
            # The shared tile is of col, held in the accumulator dtype (float32 for the half ones).
            if tile * _itemsize(workload.accumulator) <= _max_shared_bytes(target):
                _schedule_epilogue(sch, cfg.threads)
                return sch
            q_tile //= 2
        return None


@dataclass(frozen=True)
class GpuFallbackRule:
    """Always applies on GPU: dlight's fallback, every spatial loop bound to threads."""

    name: str = "gpu-fallback"
    form: str = C.GEMM

    def symbolic_layout(self, workload: Workload, target: Target) -> C.SymbolicLayout | None:
        """Not for symbolic functions: dlight's fallback fails on them in TVM 0.27 (decompose-reduction:
        "not a reduction block"); gpu-gemm, which takes any layer its threads fit, schedules them."""
        return None

    def plan_key(self, workload: Workload, target: Target) -> tuple:
        return ()

    def apply(self, func: tirx.PrimFunc, workload: Workload, target: Target) -> s_tir.Schedule | None:
        if "gpu" not in target.keys:
            return None
        from tvm.s_tir.dlight.gpu import Fallback

        with target:
            return Fallback().apply(func, target, False)


RULES = (GpuDirectRule(), GpuGemmRule(), GpuFallbackRule())
