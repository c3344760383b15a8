"""The operator as a TVM tensor expression that does only the useful multiply-adds.

Formulation (per group ``g``, with ``M = out_channels/groups * kernel_size``):

1. ``col``: a dense GEMM, ``col[n, g, j, o*K + k] = sum_c x[n, g*Cig + c, j] * w[g*Cig + c, o, k]``:
   every product of an input sample with a kernel tap, each computed once.
   The weight's (o, k) axes are contiguous in memory and form one axis here,
   so a schedule can vectorise along it.
2. ``full``: a gather (col2im) that, for each position ``u`` of the
   padding-free output, sums the live taps only. Output position ``u``
   receives ``col[i, k]`` exactly when ``i*stride + k*dilation == u``; the
   live ``k`` form one residue class modulo ``stride / gcd(stride, dilation)``,
   so each output visits ``ceil(kernel_size / (stride/gcd))`` taps, not all of
   them. It is laid out by phase, ``full[n, co, u % stride, u // stride]``. Up
   to ``MAX_UNROLLED_TAPS`` taps are an unrolled sum; more are a reduction loop
   (over the input samples instead, when there are fewer of them than taps).
3. ``y``: zeros mode reads the gather (which covers only the cropped range)
   and adds the bias. Other modes gather over the padded length and apply the
   adjoint of the padding, which adds its two ``padding``-wide margins back onto the output,
   then the bias. Replicate sums each margin once (``margin_left/right``).

The half dtypes (float16, bfloat16) widen ``x``, the weight and the bias to float32 as they are
read: ``col``, ``full`` and the margins are float32, and only ``y`` is cast back, once. float32
and float64 get no casts at all.

A second formulation of ``full``, ``DIRECT``, serves stride 1 and wide grouped layers on CPUs
(:func:`form_for`). It sums each output phase and position over (input channel, live tap)
straight from ``x_pad``, a copy of ``x`` zero-padded by the kernel's reach: an implicit GEMM per
phase with no intermediate but ``full``. It needs every phase to meet the same taps, all live
(:func:`direct_applies`). Step 3 is the same for every form.

A third, ``BLOCKED``, is the GEMM form for long layers on CPUs: ``col`` and the gather one
block of output positions at a time, each block's ``col`` holding its own input samples plus the
kernel's reach (:func:`block_rows`), which the block before computed too; a schedule then makes,
gathers and drops each block while it is in cache, where the whole ``col`` would go to memory
and back. The layer chooses it by its size (:func:`tvm_convt.schedule.schedule_form`).

The GEMM forms can also read the weight packed by column blocks of ``m``
(:meth:`ConvTranspose1dParams.packed_weight_shape`), as a second function, ``pack_weight``,
writes it once per weight (:func:`weight_pack_func`): the CPU GEMM rule otherwise packs it
inside every call.

The TE stages are named so that schedule rules can find them by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import te, tirx

from .params import PACK_WEIGHT, ConvTranspose1dParams, SymbolicWorkload, Workload, itemsize, within_index_range

# Stage names, shared with the schedule rules.
COL = "col"
X_PAD = "x_pad"
FULL = "full"
MARGIN_LEFT = "margin_left"
MARGIN_RIGHT = "margin_right"
OUT = "y"
# A stream's kernel: the partial sums it takes and the ones it leaves (ConvTranspose1dParams.overlap).
STATE = "state"
STATE_OUT = "state_out"

# Beyond this many live taps per output the gather is a reduction loop, not an unrolled
# sum: an unrolled sum's compile time (and TVM's recursion over it) grows with kernel_size.
MAX_UNROLLED_TAPS = 16


@dataclass(frozen=True)
class TapPlan:
    """Which kernel taps meet each output phase: ``k = k0(r) + t * step``, ``t < taps``."""

    step: int  # stride / gcd(stride, dilation)
    taps: int  # ceil(kernel_size / step): taps visited per output position
    gcd: int  # output phases that are not a multiple of gcd get no tap at all
    dilation_inverse: int  # (dilation / gcd)^-1 modulo step

    @classmethod
    def of(cls, p: ConvTranspose1dParams) -> TapPlan:
        g = math.gcd(p.stride, p.dilation)
        step = p.stride // g
        inverse = pow(p.dilation // g, -1, step) if step > 1 else 0
        return cls(step=step, taps=-(-p.kernel_size // step), gcd=g, dilation_inverse=inverse)


# The direct form's ``full`` runs to a multiple of this many positions per phase (the output
# reads only the real ones): every SIMD width up to 16 lanes then divides it, and a tile
# at the end is whole vectors, with no bounds check inside one.
DIRECT_Q_ALIGN = 16

# Grouped strided layers go direct from this many input channels a group; narrower groups
# have too short a reduction for a register tile (the GEMM form's fallback serves them).
DIRECT_MIN_GROUP_CHANNELS = 16

# The formulations of ``full``; the stages after it are the same.
GEMM = "gemm"
DIRECT = "direct"
BLOCKED = "blocked"
FORMS = (GEMM, DIRECT, BLOCKED)

# The blocked form's ``col`` block: rows of about this many bytes, a multiple of
# BLOCK_ROWS_MULTIPLE rows (whole register tiles of 6 or 12 rows), so that a block stays in
# every L2 it is meant for (512 KiB and up) while the gather reads it back.
BLOCK_COL_BYTES = 512 << 10
BLOCK_ROWS_MULTIPLE = 12
# The CPU GEMM rules pad a row of ``col`` to (a multiple of the first) plus (the second) floats,
# the most SIMD lanes they use (tvm_convt.schedule.cpu._pad_col_rows).
COL_ROW_ALIGN = (256, 16)
X_BLOCKS = "x_blocks"
# A symbolic GEMM form's input, copied by tiles of samples (SymbolicLayout.col_rows).
X_TILES = "x_tiles"
# The names of a symbolic function's batch and length in its TIR.
BATCH_VAR, LENGTH_VAR = "n", "l"


@dataclass(frozen=True)
class SymbolicLayout:
    """How a function symbolic in batch and length pads its intermediates, so that the tiles of
    the schedule written for it divide them and no predicate reaches the vectorised loops.

    ``col_rows``: the GEMM form's ``col`` holds its samples to a multiple of this many, read from
    ``x_tiles`` (batch, tile, input channel, ``col_rows``), zero past the input; ``positions``:
    the GEMM and direct forms' ``full`` runs to a multiple of this many positions per phase;
    ``block_rows``: the blocked form's rows per block (:func:`block_rows` of a static workload);
    ``halo``: the GEMM form's ``col`` holds rows for the samples before and after the input that
    the gather reads, computed as zeros, so the gather needs no clamp (worth it where they are few
    next to the input's: :func:`halo_pays`). ``flat_batch`` (without a halo): ``x_tiles`` and ``col``
    run over the batch's samples one after the other, (1, tile, input channel, ``col_rows``), so only
    the last of all rows pads a tile where each row of the batch padded its own.
    """

    col_rows: int = 1
    positions: int = 1
    block_rows: int | None = None
    halo: bool = True
    flat_batch: bool = False


class _SymbolicShape:
    """A :class:`SymbolicWorkload`'s sizes as TVM expressions of its batch and length variables,
    read by the compute where a :class:`Workload`'s are ints."""

    symbolic = True

    def __init__(self, w: Workload | SymbolicWorkload) -> None:
        self.params, self.dtype, self.accumulator = w.params, w.dtype, w.accumulator
        self.batch = te.var(BATCH_VAR, "int32")
        self.length = te.var(LENGTH_VAR, "int32")
        self.out_length = self.params.output_length_of(self.length)
        self.phase_range = self.params.phase_range_of(self.out_length)


def ceil_to(value, multiple: int):
    """``value`` (an int or expression) rounded up to a multiple of ``multiple``."""
    return (value + multiple - 1) // multiple * multiple


def direct_applies(w: Workload) -> bool:
    """The direct form covers the layers where every phase of the output meets the same number
    of taps, all live: stride 1, or kernel_size a multiple of the stride with the dilation
    prime to it; and where its padded copy of the input and its padded ``full`` stay within
    32-bit indices (the workload's own checks cover the unpadded sizes only)."""
    p = w.params
    taps_alike = p.stride == 1 or (p.kernel_size % p.stride == 0 and math.gcd(p.stride, p.dilation) == 1)
    return taps_alike and _direct_fits(w)


def _direct_fits(w: Workload) -> bool:
    p = w.params
    positions = direct_positions(w)
    x_pad = w.batch * p.in_channels * (positions + direct_reach(p))
    full = w.batch * p.out_channels * p.stride * positions
    return within_index_range(max(x_pad, full))


def direct_positions(w: Workload) -> int:
    """Positions per phase of the direct form's ``full``: the gather's, to a multiple of
    :data:`DIRECT_Q_ALIGN`."""
    return -(-w.phase_range[1] // DIRECT_Q_ALIGN) * DIRECT_Q_ALIGN


def direct_reach(p: ConvTranspose1dParams) -> int:
    """How many input samples before its own position an output of a phase reads."""
    return (p.kernel_size - 1) * p.dilation // p.stride


def block_rows(w: Workload) -> int:
    """Rows of the blocked form's ``col`` per block: its positions per block plus the
    kernel's reach (:func:`direct_reach`), which each block computes again. About
    :data:`BLOCK_COL_BYTES` of rows as a schedule pads them (:data:`COL_ROW_ALIGN`), and no
    more than the layer's positions need: a short input is one block."""
    p = w.params
    reach = direct_reach(p)
    m = p.out_per_group * p.kernel_size
    padded = m + (COL_ROW_ALIGN[1] - m) % COL_ROW_ALIGN[0]
    row_bytes = p.groups * padded * itemsize(w.accumulator)
    rows = BLOCK_COL_BYTES // row_bytes // BLOCK_ROWS_MULTIPLE * BLOCK_ROWS_MULTIPLE
    # At least one position beyond the halo in every block; at most the layer's positions.
    fewest = (reach // BLOCK_ROWS_MULTIPLE + 1) * BLOCK_ROWS_MULTIPLE
    needed = -(-(w.phase_range[1] + reach) // BLOCK_ROWS_MULTIPLE) * BLOCK_ROWS_MULTIPLE
    return max(min(rows, needed), fewest)


def block_positions(w: Workload) -> int:
    """Phase positions of the output each block of the blocked form gathers."""
    return block_rows(w) - direct_reach(w.params)


def blocked_applies(w: Workload) -> bool:
    """The blocked form covers layers whose gather is an unrolled sum (at most
    :data:`MAX_UNROLLED_TAPS` live taps) and whose blocked input, ``col`` (halos included)
    and ``full`` (to whole blocks) stay within 32-bit indices."""
    p = w.params
    if TapPlan.of(p).taps > MAX_UNROLLED_TAPS:
        return False
    blocks = -(-w.phase_range[1] // block_positions(w))
    rows = w.batch * blocks * block_rows(w)
    # full runs to whole blocks, a little past the gather's positions.
    full = w.batch * p.out_channels * p.stride * blocks * block_positions(w)
    return within_index_range(max(rows * p.in_channels, rows * p.groups * p.out_per_group * p.kernel_size, full))


def form_for(w: Workload, kind: str, *, strided_direct: bool = False) -> str:
    """The formulation that target kind ``kind`` ("llvm", "cuda") computes ``w`` in.

    On CPUs the direct form serves stride 1, where ``col`` would be kernel_size times
    the output and the gather would read all of it back, and grouped layers with at
    least :data:`DIRECT_MIN_GROUP_CHANNELS` input channels a group, whose ``col`` is as
    large for a fraction of the work. Dense strided layers stay in the GEMM form, whose
    register tile reuses a packed weight better (docs/performance.md has the A/B), unless
    ``strided_direct``: the core's choice for this layer, made by the schedule rules
    (:func:`tvm_convt.schedule.schedule_form`). The GPU rules schedule the GEMM form.
    """
    if kind != "llvm" or not direct_applies(w):
        return GEMM
    p = w.params
    grouped = p.groups > 1 and p.in_per_group >= DIRECT_MIN_GROUP_CHANNELS
    return DIRECT if p.stride == 1 or grouped or strided_direct else GEMM


def forms_of(w: Workload, kind: str) -> tuple[str, ...]:
    """Every formulation target kind ``kind`` may compute ``w`` in, on one core or another:
    a folder of records for a hardware class can hold any of them."""
    if kind != "llvm":
        return (GEMM,)
    return tuple(f for f, ok in ((GEMM, True), (DIRECT, direct_applies(w)), (BLOCKED, blocked_applies(w))) if ok)


def conv_transpose1d_te(w: Workload, form: str = GEMM, weight_block: int | None = None,
                        layout: SymbolicLayout | None = None) -> tuple[list[te.Tensor], te.Tensor]:
    """Build the tensor expression for one workload, ``full`` in formulation ``form``.

    Returns ``(inputs, output)`` with inputs ``[x, weight]`` or ``[x, weight, bias]``
    of shapes (batch, in_channels, L_in), (in_channels, out_channels/groups,
    kernel_size) and (out_channels,), and the output (batch, out_channels, L_out).
    ``GEMM`` computes ``col`` and gathers it; ``DIRECT`` (where :func:`direct_applies`)
    sums the live taps of each output straight from a zero-padded copy of ``x``.
    With ``weight_block``, the weight comes packed by column blocks of that width, shaped as
    :meth:`ConvTranspose1dParams.packed_weight_shape` says.
    With ``layout``, the function takes any batch and length (its shapes are expressions of two
    variables), its intermediates padded as ``layout`` says; ``w`` (static) is then only the
    workload the layout was planned for.
    """
    w, inputs, full = _full_te(w, form, weight_block, layout)
    return inputs, _output(w, full, inputs[2] if len(inputs) > 2 else None)


def _full_te(w: Workload, form: str, weight_block: int | None,
             layout: SymbolicLayout | None) -> tuple[Workload | _SymbolicShape, list[te.Tensor], te.Tensor]:
    """The workload's sizes (expressions with ``layout``), the inputs ``[x, weight(, bias)]`` and ``full``."""
    assert form in FORMS, form
    assert form != DIRECT or direct_applies(w), (form, w)
    assert form != BLOCKED or blocked_applies(w), (form, w)
    assert form != BLOCKED or layout is None or layout.block_rows, (form, layout)
    p = w.params
    if layout is not None:
        w = _SymbolicShape(w)
    x = te.placeholder((w.batch, p.in_channels, w.length), w.dtype, name="x")
    shape = p.weight_shape if weight_block is None else p.packed_weight_shape(weight_block)
    weight = te.placeholder(shape, w.dtype, name="weight")
    bias = te.placeholder((p.out_channels,), w.dtype, name="bias") if p.bias else None
    if form == GEMM:
        full = _gemm_full(w, x, _weight_reader(p, weight, weight_block), layout)
    elif form == BLOCKED:
        full = _blocked_full(w, x, _weight_reader(p, weight, weight_block), layout)
    else:
        full = _direct_full(w, x, weight, layout, weight_block)
    return w, [x, weight] + ([bias] if bias is not None else []), full


def stream_te(w: Workload, form: str, weight_block: int | None,
              layout: SymbolicLayout) -> tuple[list[te.Tensor], list[te.Tensor]]:
    """A stream's kernel for ``w`` (whose params are a layer's ``stream_params()``), any batch and length.

    Returns ``(inputs, outputs)``: inputs ``[x, weight(, bias)(, state)]``, outputs ``[y(, state_out)]``.
    ``state`` and ``state_out`` are (batch, out_channels, overlap) partial sums in the accumulator dtype,
    before the bias (none when ``overlap`` is not positive): ``state`` is what the chunk before left
    past its final outputs, ``state_out`` what this one leaves. ``y`` is (batch, out_channels,
    ``L_in * stride``): the chunk's padding-free output with ``state`` added to its first samples,
    every sample of it final, plus the bias.
    """
    w, inputs, full = _full_te(w, form, weight_block, layout)
    p = w.params
    acc, overlap = w.accumulator, max(p.overlap, 0)
    emitted = w.length * p.stride
    full_at = _full_reader(w, full)
    with_bias = _bias_adder(w, inputs[2] if p.bias else None)
    state = te.placeholder((w.batch, p.out_channels, overlap), acc, name=STATE) if overlap else None

    def summed(n, co, u):
        v = full_at(n, co, u)
        if state is None:
            return v
        # A select on a clamped index: the load is always in bounds, so it may be speculated.
        carried = state[n, co, tirx.min(u, overlap - 1)]
        return v + tirx.Select(u < overlap, carried, tirx.const(0, acc))

    y = te.compute((w.batch, p.out_channels, emitted), lambda n, co, u: with_bias(summed(n, co, u), co), name=OUT)
    if state is None:
        return inputs, [y]
    left = te.compute((w.batch, p.out_channels, overlap), lambda n, co, v: summed(n, co, emitted + v),
                      name=STATE_OUT)
    return inputs + [state], [y, left]


def prim_func(w: Workload, form: str, weight_block: int | None = None,
              layout: SymbolicLayout | None = None, stream: bool = False) -> tirx.PrimFunc:
    """The unscheduled TensorIR function ``main(x, weight[, bias], y)`` in formulation ``form``:
    what is scheduled, tuned and looked up (the weight packed when ``weight_block`` is given;
    symbolic in batch and length with ``layout``). With ``stream``, a stream's kernel
    (:func:`stream_te`): ``main(x, weight[, bias][, state], y[, state_out])``."""
    if stream:
        inputs, outputs = stream_te(w, form, weight_block, layout)
    else:
        inputs, out = conv_transpose1d_te(w, form, weight_block, layout)
        outputs = [out]
    return te.create_prim_func(inputs + outputs).with_attr("global_symbol", "main")


def weight_pack_func(p: ConvTranspose1dParams, dtype: str, block: int) -> tirx.PrimFunc:
    """The unscheduled ``pack_weight(weight, packed)``: the weight, (in_channels,
    out_channels/groups, kernel_size), copied into :meth:`ConvTranspose1dParams.packed_weight_shape`'s layout."""
    weight = te.placeholder(p.weight_shape, dtype, name="weight")
    cig, kern = p.in_per_group, p.kernel_size

    def element(g, b, c, i):
        m = b * block + i
        return weight[g * cig + c, tirx.indexdiv(m, kern), tirx.indexmod(m, kern)]

    packed = te.compute(p.packed_weight_shape(block), element, name="packed")
    return te.create_prim_func([weight, packed]).with_attr("global_symbol", PACK_WEIGHT)


def _weight_reader(p: ConvTranspose1dParams, weight: te.Tensor, block: int | None):
    """``weight_at(g, c, m)``: input channel ``c`` of group ``g`` at column ``m = o*K + k``."""
    cig, kern = p.in_per_group, p.kernel_size
    if block is None:
        return lambda g, c, m: weight[g * cig + c, tirx.indexdiv(m, kern), tirx.indexmod(m, kern)]
    return lambda g, c, m: weight[g, tirx.indexdiv(m, block), c, tirx.indexmod(m, block)]


def _widen(w: Workload, v):
    return v if w.accumulator == w.dtype else v.astype(w.accumulator)


def _gemm_full(w: Workload, x: te.Tensor, weight_at, layout: SymbolicLayout | None = None) -> te.Tensor:
    """``full`` as the gather of the ``col`` GEMM; ``weight_at(g, c, m)`` reads the weight."""
    if layout is not None:
        return _symbolic_gemm_full(w, x, weight_at, layout)
    p = w.params
    cig, cog, kern = p.in_per_group, p.out_per_group, p.kernel_size

    def widen(v):
        # col, the gather and the folds hold the accumulator dtype (float32 for the
        # half dtypes); only the output is cast back, once.
        return _widen(w, v)

    c = te.reduce_axis((0, cig), name="c")
    # (o, k) is one axis m = o*K + k: the weight is contiguous along it, and a
    # schedule's tiles of m stay contiguous (a tile of (o, k) would be a box).
    col = te.compute(
        (w.batch, p.groups, w.length, cog * kern),
        lambda n, g, j, m: te.sum(
            widen(x[n, g * cig + c, j]) * widen(weight_at(g, c, m)),
            axis=c),
        # Not marked layout-free: MetaSchedule would then repack the weight inside
        # the function, on every call (packing once per weight is weight_pack_func).
        name=COL,
    )
    return _gather(w, col)


def halo_pays(p: ConvTranspose1dParams, length: int, rows: int, positions: int) -> bool:
    """Whether the GEMM form's symbolic ``col`` should hold the halo (:class:`SymbolicLayout`) at
    inputs of ``length``: its extra rows (the halo, the cropped start, the padding to tiles) are then
    under a tenth of the input's, and the clamps they save in the gather are worth their GEMM work."""
    extra = gather_halo(p) + p.padding // p.stride + rows + positions
    return 10 * extra <= length


def gather_halo(p: ConvTranspose1dParams) -> int:
    """Input samples before the first the gather of the output's first position can read (dead taps,
    whose loads a vectorised gather may still issue, included)."""
    plan = TapPlan.of(p)
    return -((-(plan.taps * plan.step - 1) * p.dilation) // p.stride)


def _symbolic_gemm_full(w: _SymbolicShape, x: te.Tensor, weight_at, layout: SymbolicLayout) -> te.Tensor:
    """The GEMM form at any length.

    ``col`` holds whole tiles of ``layout.col_rows`` rows, read from ``x_tiles``, a copy of ``x`` by
    tiles (zero outside the input). With ``layout.halo`` the copy starts ``halo`` samples before the
    input (:func:`gather_halo`) and the rows run to the last sample the gather's positions (to a
    multiple of ``layout.positions``) read: row ``j`` is sample ``j - halo`` and every row the gather
    reads exists, so it needs no clamp. Without, the rows are the input's, to whole tiles, and the
    gather clamps its row, and with ``layout.flat_batch`` the batch's rows follow one another in one
    ``col`` (:func:`_flat_tiles`). Either way a sample's bounds are a select, not a branch around the load.
    """
    p = w.params
    cig, rows = p.in_per_group, layout.col_rows
    halo = gather_halo(p) if layout.halo else 0
    q_first, n_q = w.phase_range
    positions = ceil_to(n_q, layout.positions)
    flat = layout.flat_batch and not layout.halo
    if flat:
        x_tiles = _flat_tiles(w, x, rows)
    else:
        needed = q_first + positions + halo if layout.halo else w.length
        x_tiles = _batch_tiles(w, x, rows, (needed + rows - 1) // rows, halo)
    batch, tiles = x_tiles.shape[0], x_tiles.shape[1]
    c = te.reduce_axis((0, cig), name="c")
    col = te.compute(
        (batch, p.groups, tiles * rows, p.out_per_group * p.kernel_size),
        lambda n, g, j, m: te.sum(
            _widen(w, x_tiles[n, tirx.indexdiv(j, rows), g * cig + c, tirx.indexmod(j, rows)])
            * _widen(w, weight_at(g, c, m)), axis=c),
        name=COL,
    )

    def col_row(n, g, q, d, m):
        # Rows outside the input hold 0 * weight, not 0 when the weight has an inf: the sample's
        # own bounds decide, in a select (the load stays in col either way).
        i = q + q_first + d
        row = i + halo if layout.halo else tirx.max(tirx.min(i, w.length - 1), 0)
        exists = [i >= 0, i < w.length]
        return exists, (col[0, g, n * w.length + row, m] if flat else col[n, g, row, m])

    return _tap_sums(w, col_row, positions=positions)


def _batch_tiles(w: _SymbolicShape, x: te.Tensor, rows: int, tiles, halo: int) -> te.Tensor:
    """``x_tiles``: each batch row's samples by tiles of ``rows``, from ``halo`` before its first, zero
    outside the input."""
    def sample(n, t, ci, jj):
        i = t * rows + jj - halo
        inside = tirx.all(i >= 0, i < w.length)
        # No clamp: the copy is never vectorised by TVM (if_then_else stays a branch), and a clamp left
        # in the tiles that the partition frees of the bounds check kept LLVM copying one float at a time.
        return tirx.if_then_else(inside, x[n, ci, i], tirx.const(0, w.dtype))

    return te.compute((w.batch, tiles, w.params.in_channels, rows), sample, name=X_TILES)


def _flat_tiles(w: _SymbolicShape, x: te.Tensor, rows: int) -> te.Tensor:
    """``x_tiles`` over the batch's samples one after the other (sample ``f`` is row ``f // length``'s
    sample ``f % length``), by tiles of ``rows``, zero past the last."""
    samples = w.batch * w.length

    def sample(_, t, ci, jj):
        f = t * rows + jj
        return tirx.if_then_else(f < samples, x[tirx.indexdiv(f, w.length), ci, tirx.indexmod(f, w.length)],
                                 tirx.const(0, w.dtype))

    return te.compute((1, (samples + rows - 1) // rows, w.params.in_channels, rows), sample, name=X_TILES)


def _blocked_full(w: Workload, x: te.Tensor, weight_at, layout: SymbolicLayout | None = None) -> te.Tensor:
    """``full`` gathered block by block from a ``col`` computed per block of output positions.

    Block ``b`` gathers positions ``[b*T, (b+1)*T)`` (``T`` = :func:`block_positions`), which
    read input samples ``b*T + q_first - reach`` to ``(b+1)*T - 1 + q_first``: its ``col``
    rows are those ``T + reach`` samples (zero outside the input), the first ``reach`` of them
    also the last of the block before. So ``col`` is (batch, group, block, row, m) and a
    block's gather needs its own rows only; the input comes copied by blocks,
    (batch, block, channel, row), each contiguous. ``full`` runs to whole blocks.
    """
    p = w.params
    cig, cog, kern = p.in_per_group, p.out_per_group, p.kernel_size
    q_first, n_q = w.phase_range
    reach = direct_reach(p)
    rows = block_rows(w) if layout is None else layout.block_rows
    positions = rows - reach
    blocks = (n_q + positions - 1) // positions

    def sample(n, b, ci, jj):
        i = b * positions + q_first - reach + jj
        inside = tirx.all(i >= 0, i < w.length)
        # No clamp, as in _batch_tiles: the load is made only inside the input (if_then_else stays a
        # branch), and a symbolic length's clamp stayed in the copy where a static one's folds away.
        return tirx.if_then_else(inside, x[n, ci, i], tirx.const(0, w.dtype))

    x_blocks = te.compute((w.batch, blocks, p.in_channels, rows), sample, name=X_BLOCKS)
    c = te.reduce_axis((0, cig), name="c")
    col = te.compute(
        (w.batch, p.groups, blocks, rows, cog * kern),
        lambda n, g, b, jj, m: te.sum(
            _widen(w, x_blocks[n, b, g * cig + c, jj]) * _widen(w, weight_at(g, c, m)), axis=c),
        name=COL,
    )

    def col_row(n, g, q, d, m):
        # Rows outside the input are zeros: nothing to check but the tap. The clamp keeps a
        # dead phase's (gcd > 1) speculated load inside the block.
        row = tirx.max(tirx.min(tirx.indexmod(q, positions) + reach + d, rows - 1), 0)
        return [], col[n, g, tirx.indexdiv(q, positions), row, m]

    # Whole blocks: the positions past the gather's are never read by the output, and a
    # schedule's loop over a block's positions has no bound to check.
    return _tap_sums(w, col_row, positions=blocks * positions)


def _gather(w: Workload, col: te.Tensor, positions=None) -> te.Tensor:
    """``full``: each output position summed over the live taps of ``col`` (``positions`` per
    phase: default, the gather's own)."""
    p = w.params
    length = w.length
    q_first, _ = w.phase_range

    def col_row(n, g, q, d, m):
        # Samples past the last one's reach (output_padding) have no live tap: i >= length.
        i = q + q_first + d
        # Clamped indices keep even a speculated load in bounds.
        i_safe = tirx.max(tirx.min(i, length - 1), 0)
        return [i >= 0, i < length], col[n, g, i_safe, m]

    def sample_term(n, co, r, q, i):
        """Input sample ``i``'s contribution to output ``u``: the tap with i*stride + k*dilation == u."""
        g = tirx.indexdiv(co, p.out_per_group)
        o = tirx.indexmod(co, p.out_per_group)
        d = (q + q_first) * p.stride + r - i * p.stride
        k = tirx.indexdiv(d, p.dilation)
        live = tirx.all(d >= 0, tirx.indexmod(d, p.dilation) == 0, k < p.kernel_size)
        k_safe = tirx.max(tirx.min(k, p.kernel_size - 1), 0)
        return tirx.if_then_else(live, col[n, g, i, o * p.kernel_size + k_safe], tirx.const(0, w.accumulator))

    return _tap_sums(w, col_row, sample_term, positions)


def _tap_sums(w: Workload, col_row, sample_term=None, positions: int | None = None) -> te.Tensor:
    """``full``, each output position summed over its live taps: ``col_row(n, g, q, d, m)``
    returns ``(conditions, value)``, the element of ``col`` at column ``m`` in the row of input
    sample ``q + q_first + d`` and when it exists; ``sample_term`` (the GEMM form's) sums over
    the input samples instead when there are fewer of them than live taps. ``full`` has
    ``positions`` per phase (default: the gather's, ``phase_range``)."""
    p = w.params
    acc, length = w.accumulator, w.length
    cog, kern, stride, dil = p.out_per_group, p.kernel_size, p.stride, p.dilation
    plan = TapPlan.of(p)

    # The gather runs over the output in polyphase order, u = q*stride + r with
    # the phase r outermost: which taps are live, and where they read, depend on
    # r alone, so the inner loop over q does no index division at all.
    n_q = w.phase_range[1] if positions is None else positions

    def tap_term(n, co, r, q, t):
        """Tap ``t`` of the live residue class at output phase ``r``, position ``q``."""
        g = tirx.indexdiv(co, cog)
        o = tirx.indexmod(co, cog)
        if plan.step > 1:
            k0 = tirx.indexmod(tirx.indexdiv(r, plan.gcd) * plan.dilation_inverse, plan.step)
        else:
            k0 = 0
        k = k0 + t * plan.step
        k_safe = tirx.min(k, kern - 1)
        # u - k*dilation is a multiple of stride for live taps: sample q + (r - k*dilation)/stride.
        exists, value = col_row(n, g, q, tirx.indexdiv(r - k * dil, stride), o * kern + k_safe)
        live = tirx.all(k < kern, *exists)
        if plan.gcd > 1:
            live = tirx.all(live, tirx.indexmod(r, plan.gcd) == 0)
        if w.symbolic:
            # Every row a symbolic gather reads is inside col (the halo, or a clamp), so a select
            # that loads first is safe; an if_then_else on the phase made TVM 0.27 size col by a
            # region that still named the phase ("variable r has been used before definition").
            return tirx.Select(live, value, tirx.const(0, acc))
        return tirx.if_then_else(live, value, tirx.const(0, acc))

    if plan.taps <= MAX_UNROLLED_TAPS:
        def gather(n, co, r, q):
            # An unrolled sum over the few live taps: no reduction axis, nothing predicated
            # beyond the edges.
            total = tirx.const(0, acc)
            for t in range(plan.taps):
                total = total + tap_term(n, co, r, q, t)
            return total
    elif not w.symbolic and length < plan.taps:
        assert sample_term is not None, w
        # Fewer input samples than live taps: each output sums over the samples instead.
        i_axis = te.reduce_axis((0, length), name="i")

        def gather(n, co, r, q):
            return te.sum(sample_term(n, co, r, q, i_axis), axis=i_axis)
    else:
        t_axis = te.reduce_axis((0, plan.taps), name="t")

        def gather(n, co, r, q):
            return te.sum(tap_term(n, co, r, q, t_axis), axis=t_axis)

    return te.compute((w.batch, p.out_channels, stride, n_q), gather, name=FULL)


def _direct_full(w: Workload, x: te.Tensor, weight: te.Tensor, layout: SymbolicLayout | None = None,
                 weight_block: int | None = None) -> te.Tensor:
    """``full`` summed over (input channel, live tap) for each output phase and position: an
    implicit GEMM per phase that reads a copy of ``x`` padded by the kernel's reach, so no
    sum is predicated.

    Phase ``r`` meets taps ``k = k0(r) + t*stride``, ``t < kernel_size/stride``, each
    reading input ``q + q_first + (r - k*dilation)/stride`` (an exact division). The
    positions run to a multiple of :data:`DIRECT_Q_ALIGN`. With ``weight_block``, the weight is
    read packed (:meth:`ConvTranspose1dParams.packed_weight_shape`).
    """
    p = w.params
    cig, cog, dil, stride = p.in_per_group, p.out_per_group, p.dilation, p.stride
    plan = TapPlan.of(p)
    q_first, n_q = w.phase_range
    n_q = direct_positions(w) if layout is None else ceil_to(n_q, layout.positions)
    reach = direct_reach(p)
    # x_pad[s] = x[s + q_first - reach]: full[r, q] reads x_pad[q + reach + (r - k*dilation)/stride].
    x_pad = te.compute(
        (w.batch, p.in_channels, n_q + reach),
        lambda n, ci, s: tirx.if_then_else(
            tirx.all(s + q_first - reach >= 0, s + q_first - reach < w.length),
            x[n, ci, tirx.max(tirx.min(s + q_first - reach, w.length - 1), 0)],
            tirx.const(0, w.dtype)),
        name=X_PAD)
    c = te.reduce_axis((0, cig), name="c")
    t = te.reduce_axis((0, plan.taps), name="t")

    def weight_at(co, c, k):
        g, o = tirx.indexdiv(co, cog), tirx.indexmod(co, cog)
        if weight_block is None:  # as it always was: the records of the unpacked form keep their hash
            return weight[g * cig + c, o, k]
        return _weight_reader(p, weight, weight_block)(g, c, o * p.kernel_size + k)

    def tap(r):
        # The last tap first: the input index then grows with t, which lets LLVM address a
        # tile's vectors from one base (with t counting down it computed each one apart).
        last = plan.taps - 1 - t
        return tirx.indexmod(r * plan.dilation_inverse, stride) + last * stride if stride > 1 else last

    return te.compute(
        (w.batch, p.out_channels, stride, n_q),
        lambda n, co, r, q: te.sum(
            _widen(w, x_pad[n, tirx.indexdiv(co, cog) * cig + c,
                            q + reach + tirx.indexdiv(r - tap(r) * dil, stride)])
            * _widen(w, weight_at(co, c, tap(r))),
            axis=[c, t]),
        name=FULL)


def _full_reader(w: Workload, full: te.Tensor):
    """``full_at(n, co, u)``: position ``u`` of the padding-free output, read from ``full``'s phase layout."""
    stride, (q_first, _) = w.params.stride, w.phase_range
    return lambda n, co, u: full[n, co, tirx.indexmod(u, stride), tirx.indexdiv(u, stride) - q_first]


def _bias_adder(w: Workload, bias: te.Tensor | None):
    """``with_bias(v, co)``: ``v`` (the accumulator dtype) plus channel ``co``'s bias, cast back to the dtype once."""
    acc = w.accumulator

    def with_bias(v, co):
        v = v + _widen(w, bias[co]) if bias is not None else v
        return v if acc == w.dtype else v.astype(w.dtype)

    return with_bias


def _output(w: Workload, full: te.Tensor, bias: te.Tensor | None) -> te.Tensor:
    """``y``: ``full`` cropped (zeros mode) or folded through the padding's adjoint, plus the bias."""
    p = w.params
    acc, pad, l_out = w.accumulator, p.padding, w.out_length
    full_at, with_bias = _full_reader(w, full), _bias_adder(w, bias)
    if p.padding_mode == "zeros":
        fold = lambda n, co, l: full_at(n, co, l + pad)  # noqa: E731
    else:
        fold = _fold_margins(full_at, (w.batch, p.out_channels), p.padding_mode, pad, l_out, acc)
    return te.compute((w.batch, p.out_channels, l_out),
                      lambda n, co, l: with_bias(fold(n, co, l), co), name=OUT)


def _fold_margins(full, shape: tuple[int, int], mode: str, pad: int, l_out: int, dtype: str):
    """Adjoint of padding ``z`` (length ``l_out``) by ``pad`` on both sides in ``mode``.

    ``full(n, co, j)`` is sample ``j`` of the padding-free output (length
    ``l_out + 2*pad``). The padded sample ``j`` of ``F.pad(z, (pad, pad), mode)``
    reads ``z[src(j)]``; the adjoint sums, for each ``i``, every ``full[j]`` with
    ``src(j) == i``. Returns that sum as a function of the output indices ``(n, co, l)``.
    """
    n_batch, channels = shape
    zero = tirx.const(0, dtype)
    if pad == 0:
        return lambda n, co, l: full(n, co, l)
    if mode == "replicate":
        # Each margin collapses onto one edge sample: sum it once, not per output.
        rl = te.reduce_axis((0, pad), name="rl")
        left = te.compute((n_batch, channels), lambda n, co: te.sum(full(n, co, rl), axis=rl),
                          name=MARGIN_LEFT)
        rr = te.reduce_axis((0, pad), name="rr")
        right = te.compute((n_batch, channels),
                           lambda n, co: te.sum(full(n, co, pad + l_out + rr), axis=rr),
                           name=MARGIN_RIGHT)

        def replicate(n, co, l):
            v = full(n, co, l + pad)
            v = v + tirx.if_then_else(l == 0, left[n, co], zero)
            return v + tirx.if_then_else(l == l_out - 1, right[n, co], zero)

        return replicate

    if mode == "reflect":
        # Left margin j in [0, pad) reads z[pad - j]; right margin j in
        # [pad + L, L + 2*pad) reads z[2*L + pad - 2 - j].
        def left_j(l):
            return pad - l, tirx.all(l >= 1, l <= pad)

        def right_j(l):
            return 2 * l_out + pad - 2 - l, tirx.all(l >= l_out - 1 - pad, l <= l_out - 2)
    else:  # circular: left j reads z[L - pad + j], right j reads z[j - pad - L]
        def left_j(l):
            return l - l_out + pad, l >= l_out - pad

        def right_j(l):
            return l + pad + l_out, l < pad

    l_full = l_out + 2 * pad

    def fold(n, co, l):
        v = full(n, co, l + pad)
        for j_of in (left_j, right_j):
            j, live = j_of(l)
            j_safe = tirx.max(tirx.min(j, l_full - 1), 0)
            v = v + tirx.if_then_else(live, full(n, co, j_safe), zero)
        return v

    return fold
