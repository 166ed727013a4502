"""One matmul scaffold with three processing-element kinds: INT, log-shift and XNOR-popcount.

The scaffold (:class:`MatmulUnit`) is an output-stationary array of ``rows x cols`` processing
elements (PEs). Each beat of the ``x`` stream carries one K-step (INT, log) or one K-chunk of one
bit-plane pair (XNOR) for ``rows`` activations and ``cols`` weights; every PE adds its product to
its accumulator. The beat marked ``last`` closes the tile: the finished sums move to an output
bank in the same cycle (so the next tile accumulates at once) and are drained one output row per
beat on ``y``, after bias, requantization (``mult``, ``shift``, round half up, optional ReLU,
saturation) or unchanged in raw mode, configured per tile by one ``cfg`` beat.

The arithmetic is the contract of docs/numerics.md; the accumulator widths come from the
contract's helpers in :mod:`lowbit.contract`. The interface is specified in docs/hardware.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import C, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from lowbit.contract import (ALPHA_BITS, MULT_BITS, int_max_product, log_depth, log_max_product,
                             signed_width)

from .requant import rounding, shift_relu_saturate
from .units import (PLANE_BITS, SHIFT_BITS, IntDescription, LogDescription, UnitDescription,
                    XnorDescription, describe)

__all__ = ["MatmulUnit", "ProcessingElements", "IntMatmul", "LogMatmul", "XnorMatmul",
           "make_unit"]


def _adder_tree(values: list):
    """Balanced adder tree (depth log2(n), not an n-long carry chain)."""
    level = list(values)
    if not level:
        return C(0, 1)
    while len(level) > 1:
        nxt = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


SWAR_STEPS = 2      # word-wide popcount levels before the adder tree (fields of 2^STEPS bits)


def _swar_masks(m, width: int, steps: int = SWAR_STEPS) -> list:
    """The constant masks of :func:`_popcount` for ``width``-bit words, as registers.

    Mask ``j`` holds the low ``2^j`` bits of every ``2^(j+1)``-bit field. The registers are
    never written (``init`` value, no reset), so they are constants; synthesis folds them
    (Yosys ``opt_dff``). They are registers rather than literals only because Amaranth splits
    an AND with a literal into single-bit wiring, which Verilator then evaluates bit by bit;
    against a register the AND stays one word-wide operation.
    """
    p = 1 << max(width - 1, 1).bit_length()
    masks = []
    for j in range(steps):
        s = 1 << j
        if 2 * s > p:
            break
        value = sum(((1 << s) - 1) << (2 * s * i) for i in range(p // (2 * s)))
        reg = Signal(p, init=value, reset_less=True, name=f"swar_mask{j}")
        m.d.sync += reg.eq(reg)
        masks.append(reg)
    return masks


def _popcount(m, word, width: int, masks: list, name: str):
    """Number of ones in ``word[:width]`` (unsigned, ``width.bit_length()`` bits).

    The first ``len(masks)`` levels of the adder tree are computed on the whole word at once
    (SIMD within a register): ``x = (x & m_j) + ((x >> 2^j) & m_j)`` adds neighbouring
    ``2^j``-bit fields in place (a ``2^(j+1)``-bit field holds a count of at most ``2^(j+1)``,
    so no carry crosses fields). The resulting ``2^len(masks)``-bit counts go through an
    ordinary balanced adder tree. The function is the tree's over single bits, and so is the
    FPGA cost, within a few LUTs: per PE 652 LUTs on the iCE40 either way, 654 against 672 on
    the ECP5 (docs/fpga.md, caveats). What changes is simulation speed: each word-wide step is
    one operation in Verilator, where the tree's first levels were one operation per bit.
    """
    if width <= 2 or not masks:
        return _adder_tree([word[i] for i in range(width)])
    p = len(masks[0])
    x = Signal(p, name=f"{name}_w")
    m.d.comb += x.eq(word[:width])
    s = 1
    for j, mask in enumerate(masks):
        nxt = Signal(p, name=f"{name}_l{j + 1}")
        m.d.comb += nxt.eq((x & mask) + ((x >> s) & mask))
        x, s = nxt, 2 * s
    return _adder_tree([x[i:i + s] for i in range(0, p, s)])


# ---------------------------------------------------------------------------------------------
# Processing-element kinds. A kind builds the product pipeline from the fields of an x beat
# (the unit description's ``beat_fields``): ``latency`` register stages, all enabled by the
# scaffold's advance signal ``en``, ending in one product per PE of ``product_shape``.


class ProcessingElements:
    """The processing elements of one unit kind (the scaffold's datapath part).

    Subclasses set ``latency`` and ``product_shape`` and implement :meth:`elaborate`; the
    accelerator top asks :meth:`bad_beat` and :meth:`beat_cost` for its error flags.
    """
    latency = 1
    product_shape = signed(2)

    def elaborate(self, m, en, beat, rows, cols) -> list:
        """Products ``[rows][cols]`` of ``beat`` (registered ``latency`` times when ``en``)."""
        raise NotImplementedError

    def bad_beat(self, beat, rows, cols):
        """1 when the golden kernel rejects the x beat (ERRORS.BAD_BEAT); never by default."""
        return Const(0)

    def beat_cost(self, beat):
        """What one x beat adds to its tile's K budget (ERRORS.K_OVERFLOW): one element."""
        return Const(1)


class _IntPE(ProcessingElements):
    """``a * w``: signed ``a_bits`` x signed ``w_bits``, one registered multiply (DSP-shaped)."""
    latency = 1

    def __init__(self, a_bits: int, w_bits: int):
        self.a_bits, self.w_bits = a_bits, w_bits
        self.product_shape = signed(signed_width(int_max_product(a_bits, w_bits)))

    def elaborate(self, m, en, beat, rows, cols):
        prods = []
        for r in range(rows):
            row = []
            for c in range(cols):
                p = Signal(self.product_shape, name=f"prod_{r}_{c}")
                with m.If(en):
                    m.d.sync += p.eq(beat.a[r] * beat.w[c])
                row.append(p)
            prods.append(row)
        return prods


class _LogPE(ProcessingElements):
    """``+-(a << (D-1-e))``: an arithmetic left shift and a conditional negate.

    Codes: bit ``bits-1`` is the sign, the rest the exponent index ``e``. ``e >= D`` (the zero
    code, or an invalid index the golden kernel rejects) gives 0. Each column's code is decoded
    once (sign, shift amount, zero) and shared by the ``rows`` PEs of that column.
    """
    latency = 1

    def __init__(self, a_bits: int, bits: int, zero_code: bool):
        self.a_bits, self.bits, self.zero_code = a_bits, bits, zero_code
        self.depth = log_depth(bits, zero_code)
        self.product_shape = signed(signed_width(log_max_product(a_bits, bits, zero_code)))

    def bad_beat(self, beat, rows, cols):
        if self.bits > 1:
            # Valid exponent indices: 0..D-1, and D itself with the zero code.
            limit = self.depth - 1 + int(self.zero_code)
            if limit < (1 << (self.bits - 1)) - 1:
                return Cat(beat.w[c][:self.bits - 1] > limit for c in range(cols)).any()
        return Const(0)

    def elaborate(self, m, en, beat, rows, cols):
        d = self.depth
        decoded = []
        for c in range(cols):
            code = beat.w[c]
            neg = code[self.bits - 1]
            if d > 1:
                e = code[:self.bits - 1]
                amount = Signal(range(d), name=f"shamt_{c}")
                zero = Signal(name=f"zero_{c}")
                m.d.comb += [amount.eq(d - 1 - e), zero.eq(e >= d)]
            elif self.bits > 1:     # zero code with one magnitude: e = 0 is +-a, e = 1 is 0
                amount, zero = C(0, 1), code[:self.bits - 1] != 0
            else:                   # 1-bit codes: sign only
                amount, zero = C(0, 1), C(0, 1)
            decoded.append((neg, amount, zero))
        prods = []
        for r in range(rows):
            row = []
            for c, (neg, amount, zero) in enumerate(decoded):
                mag = Signal(self.product_shape, name=f"mag_{r}_{c}")
                m.d.comb += mag.eq(beat.a[r] << amount)
                p = Signal(self.product_shape, name=f"prod_{r}_{c}")
                with m.If(en):
                    m.d.sync += p.eq(Mux(zero, 0, Mux(neg, -mag, mag)))
                row.append(p)
            prods.append(row)
        return prods


class _XnorPE(ProcessingElements):
    """``alpha[c] * 2^plane * (2 * popcount(~(a ^ w) & mask) - count)``.

    Stage 1 registers the masked popcount dot (``mask`` = lanes below ``count``, decoded once
    per beat); stage 2 registers its product with the column's 16-bit ``alpha``, shifted left by
    the activation plane index.
    """
    latency = 2

    def __init__(self, lanes: int, a_planes: int, w_planes: int):
        self.lanes, self.a_planes, self.w_planes = lanes, a_planes, w_planes
        self.count_bits = lanes.bit_length()
        self.dot_shape = signed(signed_width(lanes))
        top = lanes * ((1 << ALPHA_BITS) - 1) << (a_planes - 1)
        self.product_shape = signed(signed_width(top))

    def bad_beat(self, beat, rows, cols):
        # ~any() rather than == 0: Amaranth writes the latter as a multi-bit `!`, which
        # Verilator's lint rejects (WIDTHTRUNC). Comparisons that cannot be true are left out
        # (Verilator's CMPCONST).
        bad = ~beat.count.any()
        if (1 << len(beat.count)) - 1 > self.lanes:
            bad = bad | (beat.count > self.lanes)
        if self.a_planes < (1 << len(beat.plane)):
            bad = bad | (beat.plane >= self.a_planes)
        return bad

    def beat_cost(self, beat):
        return beat.count << beat.plane

    def elaborate(self, m, en, beat, rows, cols):
        mask = Signal(self.lanes, name="lane_mask")
        m.d.comb += mask.eq(Cat(beat.count > lane for lane in range(self.lanes)))
        count = Signal(self.dot_shape, name="count_s")  # zero-extended into a signed width
        m.d.comb += count.eq(beat.count)
        # Per-beat operands that stage 2 still needs travel with the stage-1 registers.
        alpha = [Signal(ALPHA_BITS, name=f"alpha_{c}") for c in range(cols)]
        plane = Signal(PLANE_BITS, name="plane_s1")
        with m.If(en):
            m.d.sync += [alpha[c].eq(beat.alpha[c]) for c in range(cols)]
            m.d.sync += plane.eq(beat.plane)
        masks = _swar_masks(m, self.lanes)     # shared by every PE
        prods = []
        for r in range(rows):
            row = []
            for c in range(cols):
                agree = Signal(self.lanes, name=f"agree_{r}_{c}")
                m.d.comb += agree.eq(~(beat.a[r] ^ beat.w[c]) & mask)
                pop = Signal(self.dot_shape, name=f"pop_{r}_{c}")
                m.d.comb += pop.eq(_popcount(m, agree, self.lanes, masks, f"pop_{r}_{c}"))
                dot = Signal(self.dot_shape, name=f"dot_{r}_{c}")
                p = Signal(self.product_shape, name=f"prod_{r}_{c}")
                with m.If(en):
                    m.d.sync += dot.eq(pop * 2 - count)
                    m.d.sync += p.eq((dot * alpha[c]) << plane)
                row.append(p)
            prods.append(row)
        return prods


# ---------------------------------------------------------------------------------------------
# The scaffold


class MatmulUnit(wiring.Component):
    """Output-stationary ``rows x cols`` matmul array with streaming tiles and requantization.

    Use one of the concrete units (:class:`IntMatmul`, :class:`LogMatmul`,
    :class:`XnorMatmul`); this class holds what they share. docs/hardware.md is the full
    interface specification.

    Parameters
    ----------
    description : UnitDescription
        The unit's description (:mod:`lowbit.hw.units`): array size, accumulator width,
        ``out_bits``, ``max_k`` and the payload layouts come from it.
    pe : ProcessingElements
        The unit kind's processing elements.

    Attributes
    ----------
    description, params, rows, cols, acc_width, y_width, out_bits, max_k, x_layout,
    cfg_layout, y_layout
        As the description has them.
    x : In(stream.Signature(x_layout))
        Data beats; the field ``last`` closes a tile.
    cfg : In(stream.Signature(cfg_layout))
        One beat per tile: ``bias``, ``mult``, ``shift`` per column, ``relu``, ``raw``.
    y : Out(stream.Signature(y_layout))
        ``rows`` beats per tile: output row ``r`` (``data`` per column, ``last`` on the final row).

    Contract
    --------
    For each tile, ``t[r][c] = sum of the PE products over the tile's beats + bias[c]``; the
    output is ``t`` (``raw``) or ``requantize(t, mult, shift, out_bits, relu)`` of
    docs/numerics.md, bit for bit. Sums stay exact while a tile holds at most ``max_k``
    elements of K and ``|bias| <= max_k * Pmax``.
    """

    def __init__(self, description: UnitDescription, pe: ProcessingElements):
        d = self.description = description
        self.pe = pe
        self.params = d.params
        for name, value in d.params.items():   # rows, cols, a_bits, lanes, ...
            setattr(self, name, value)
        self.rows, self.cols, self.out_bits, self.max_k = d.rows, d.cols, d.out_bits, d.max_k
        self.acc_width, self.y_width = d.acc_width, d.y_width
        self.x_layout, self.cfg_layout, self.y_layout = d.x_layout, d.cfg_layout, d.y_layout
        super().__init__({
            "x": In(stream.Signature(self.x_layout)),
            "cfg": In(stream.Signature(self.cfg_layout)),
            "y": Out(stream.Signature(self.y_layout)),
        })

    # Register stages between the x handshake and the accumulators: input register + PE.
    @property
    def accumulate_latency(self) -> int:
        return 1 + self.pe.latency

    def elaborate(self, platform):
        m = Module()
        bank = self._accumulate(m)
        cfg, cfg_valid = self._config_buffer(m)
        self._drain(m, bank, cfg, cfg_valid)
        return m

    def _accumulate(self, m) -> "_Bank":
        """The accumulation pipeline: x beats -> PE products -> accumulators; the beat marked
        ``last`` moves the tile's sums into the output bank (returned)."""
        rows, cols, aw = self.rows, self.cols, self.acc_width
        # One global advance signal: every stage moves together. The only stall is a finished
        # tile whose sums cannot enter the output bank because the previous tile still drains.
        advance = Signal()
        beat = Signal(self.x_layout)
        beat_valid = Signal()
        m.d.comb += self.x.ready.eq(advance)
        with m.If(advance):
            m.d.sync += [beat.eq(self.x.payload), beat_valid.eq(self.x.valid)]

        prods = self.pe.elaborate(m, advance, beat, rows, cols)
        p_valid, p_last = beat_valid, beat.last
        for stage in range(self.pe.latency):
            v, l = Signal(name=f"pe_valid_{stage}"), Signal(name=f"pe_last_{stage}")
            with m.If(advance):
                m.d.sync += [v.eq(p_valid), l.eq(p_last)]
            p_valid, p_last = v, l

        acc = [[Signal(signed(aw), name=f"acc_{r}_{c}") for c in range(cols)]
               for r in range(rows)]
        bank = [[Signal(signed(aw), name=f"bank_{r}_{c}") for c in range(cols)]
                for r in range(rows)]
        bank_full = Signal()
        m.d.comb += advance.eq(~(p_valid & p_last & bank_full))

        do_accumulate = advance & p_valid
        with m.If(do_accumulate):
            for r in range(rows):
                for c in range(cols):
                    total = acc[r][c] + prods[r][c]
                    with m.If(p_last):
                        # Close the tile: sums to the bank, accumulators cleared for the next.
                        m.d.sync += [bank[r][c].eq(total), acc[r][c].eq(0)]
                    with m.Else():
                        m.d.sync += acc[r][c].eq(total)
        return _Bank(rows=bank, full=bank_full, closing=do_accumulate & p_last)

    def _config_buffer(self, m):
        """One cfg beat held ahead (``cfg``, ``cfg_valid``); the drain releases it when its
        tile's last row leaves the bank."""
        cfg = Signal(self.cfg_layout)
        cfg_valid = Signal()
        m.d.comb += self.cfg.ready.eq(~cfg_valid)
        with m.If(self.cfg.valid & self.cfg.ready):
            m.d.sync += [cfg.eq(self.cfg.payload), cfg_valid.eq(1)]
        return cfg, cfg_valid

    def _drain(self, m, tile: "_Bank", cfg, cfg_valid) -> None:
        """The drain and requantization pipeline: one bank row per y beat.

        Stages: D1 t = bank row + bias; D2 p = t * mult; D3 p + 2^(shift-1); y register:
        >> shift, ReLU, saturation (or raw t). All advance together when y can take a beat.
        """
        rows, cols, aw = self.rows, self.cols, self.acc_width
        bank, bank_full = tile.rows, tile.full
        drain_advance = Signal()
        m.d.comb += drain_advance.eq(~self.y.valid | self.y.ready)
        draining = bank_full & cfg_valid
        row = Signal(range(max(rows, 2)), name="drain_row")  # >= 1 bit: no [-1:0] vectors
        last_row = row == rows - 1
        do_emit = drain_advance & draining

        with m.If(tile.closing):
            m.d.sync += bank_full.eq(1)
        with m.If(do_emit):
            # The bank is a shift register: row 0 always leaves next (no rows:1 multiplexer).
            for r in range(rows - 1):
                m.d.sync += [bank[r][c].eq(bank[r + 1][c]) for c in range(cols)]
            m.d.sync += row.eq(Mux(last_row, 0, row + 1))
            with m.If(last_row):
                m.d.sync += [bank_full.eq(0), cfg_valid.eq(0)]

        pw = aw + MULT_BITS  # |t * mult| < 2^(aw-1) * 2^16
        s1 = _DrainStage(m, "d1", cols, aw)
        s2 = _DrainStage(m, "d2", cols, pw + 1)
        s3 = _DrainStage(m, "d3", cols, pw + 1)
        with m.If(drain_advance):
            m.d.sync += s1.take(do_emit, last_row, cfg)
            m.d.sync += [s1.value[c].eq(bank[0][c] + cfg.bias[c]) for c in range(cols)]
            m.d.sync += s2.follow(s1)
            m.d.sync += [s2.value[c].eq(s1.value[c] * s1.mult[c]) for c in range(cols)]
            m.d.sync += [s2.raw_t[c].eq(s1.value[c]) for c in range(cols)]
            m.d.sync += s3.follow(s2)
            m.d.sync += [s3.raw_t[c].eq(s2.raw_t[c]) for c in range(cols)]
            for c in range(cols):
                # |p| < 2^(pw-1): the clamped shift keeps p + 2^(shift-1) in pw + 1 bits.
                shift, term = rounding(m, s2.shift[c], pw, f"_{c}")
                m.d.sync += [s3.value[c].eq(s2.value[c] + term), s3.shift[c].eq(shift)]

            m.d.sync += [self.y.valid.eq(s3.valid), self.y.payload.last.eq(s3.last)]
            for c in range(cols):
                saturated = shift_relu_saturate(m, s3.value[c], s3.shift[c], s3.relu,
                                                self.out_bits, f"_{c}")
                m.d.sync += self.y.payload.data[c].eq(Mux(s3.raw, s3.raw_t[c], saturated))


@dataclass
class _Bank:
    """The output bank between accumulation and drain: ``rows[r][c]`` registers, ``full``
    while a finished tile waits or drains, ``closing`` when a tile's sums enter it."""
    rows: list
    full: Signal
    closing: object


class _DrainStage:
    """Registers of one drain stage: a value per column plus the tile's settings it still needs.

    The settings travel with each row so the next tile's ``cfg`` may replace the buffer while
    earlier rows are still in flight.
    """

    def __init__(self, m, name, cols, width):
        self.valid = Signal(name=f"{name}_valid")
        self.last = Signal(name=f"{name}_last")
        self.value = [Signal(signed(width), name=f"{name}_value_{c}") for c in range(cols)]
        self.raw_t = [Signal(signed(width), name=f"{name}_raw_{c}") for c in range(cols)]
        self.mult = [Signal(MULT_BITS, name=f"{name}_mult_{c}") for c in range(cols)]
        self.shift = [Signal(SHIFT_BITS, name=f"{name}_shift_{c}") for c in range(cols)]
        self.relu = Signal(name=f"{name}_relu")
        self.raw = Signal(name=f"{name}_raw")
        self.cols = cols

    def take(self, valid, last, cfg):
        cols = range(self.cols)
        return [self.valid.eq(valid), self.last.eq(last), self.relu.eq(cfg.relu),
                self.raw.eq(cfg.raw),
                *[self.mult[c].eq(cfg.mult[c]) for c in cols],
                *[self.shift[c].eq(cfg.shift[c]) for c in cols]]

    def follow(self, prev):
        cols = range(self.cols)
        return [self.valid.eq(prev.valid), self.last.eq(prev.last), self.relu.eq(prev.relu),
                self.raw.eq(prev.raw),
                *[self.mult[c].eq(prev.mult[c]) for c in cols],
                *[self.shift[c].eq(prev.shift[c]) for c in cols]]


# ---------------------------------------------------------------------------------------------
# The three units: a description (parameters, validated there) and processing elements


class IntMatmul(MatmulUnit):
    """INT matmul unit (INT8, also INT2..INT8): ``acc += a * w``, signed x signed.

    Parameters (keyword only; :class:`lowbit.hw.units.IntDescription` validates them)
    ----------
    rows, cols : int, 1..64, default 4
        PE array size (tile of the output).
    a_bits, w_bits : int, 2..8, default 8
        Activation and weight widths (signed).
    max_k : int, default 32768
        Largest K; the accumulator is ``int_acc_width(a_bits, w_bits, max_k)`` bits (<= 47).
    out_bits : int, 2..32, default 8
        Requantized output width.
    src_loc_at : int
        Amaranth's convention: stack frames to skip when reporting where the unit was created.

    The golden kernel is :func:`lowbit.sw.golden.int_matmul`; see docs/hardware.md for ports.
    """

    def __init__(self, *, src_loc_at=0, **params):
        d = IntDescription(**params)
        super().__init__(d, _IntPE(d.a_bits, d.w_bits))


class LogMatmul(MatmulUnit):
    """Log-shift matmul unit: power-of-two weights, the multiply is a shift and a negate.

    Parameters (keyword only; :class:`lowbit.hw.units.LogDescription` validates them)
    ----------
    rows, cols : int, 1..64, default 4
    bits : int, 1..8, default 4
        Log code width (sign + ``bits-1`` exponent-index bits, Aji & Heafield).
    a_bits : int, 2..8, default 8
        Activation width (signed).
    zero_code : bool, default False
        Exponent index ``D`` means an exact zero (needs ``bits >= 2``).
    max_k : int, default 32768
        Largest K; accumulator ``log_acc_width(bits, a_bits, max_k, zero_code)`` bits.
    out_bits : int, 2..32, default 8
    src_loc_at : int (Amaranth's convention, see :class:`IntMatmul`)

    The golden kernel is :func:`lowbit.sw.golden.log_matmul`.
    """

    def __init__(self, *, src_loc_at=0, **params):
        d = LogDescription(**params)
        super().__init__(d, _LogPE(d.a_bits, d.bits, d.zero_code))


class XnorMatmul(MatmulUnit):
    """XNOR-popcount matmul unit over bit planes with integer plane scales.

    Parameters (keyword only; :class:`lowbit.hw.units.XnorDescription` validates them)
    ----------
    rows, cols : int, 1..64, default 4
    a_planes, w_planes : int, 1..8, default 1
        Activation planes (weights ``2^j``) and binary-coded weight planes (``alpha``).
    lanes : int, 1..256, default 32
        Bits of K per beat (the popcount width).
    max_k : int, default 32768
        Largest K; accumulator ``xnor_acc_width(a_planes, w_planes, max_k)`` bits.
    out_bits : int, 2..32, default 8
    src_loc_at : int (Amaranth's convention, see :class:`IntMatmul`)

    The golden kernel is :func:`lowbit.sw.golden.xnor_matmul`.
    """

    def __init__(self, *, src_loc_at=0, **params):
        d = XnorDescription(**params)
        super().__init__(d, _XnorPE(d.lanes, d.a_planes, d.w_planes))


def make_unit(unit: str, **params) -> MatmulUnit:
    """Build the unit of kind ``unit`` (``int8``, ``log``, ``xnor`` or another registered kind)
    from keyword parameters."""
    # src_loc_at: Amaranth's "created but never used" check points at make_unit's caller
    return describe(unit, **params).build(src_loc_at=1)
