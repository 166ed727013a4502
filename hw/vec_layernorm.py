"""The LayerNorm vector unit: ``golden_ops.layernorm`` bit for bit (docs/numerics.md).

One row at a time, in passes over a row buffer (docs/hardware.md, "Vector units"):

1. **load**: the ``x`` beats (``lanes`` elements ``t`` with their gains ``g`` and offsets
   ``b``) go into the buffer while ``sum t`` accumulates;
2. **mean**: ``mu = floor((sum t + floor(D/2)) / D)`` on the divider (a negative dividend
   ``N`` as ``-floor((-N + D - 1) / D)``);
3. **variance**: a read pass sums ``c*c`` with ``c = t - mu``; ``V = sum + eps``;
4. **root and reciprocal**: ``sigma = isqrt(V << 18)``, ``inv = floor(2**40 / sigma)`` (0 when
   ``sigma = 0``) on the square root and the divider;
5. **output**: a read pass computes ``y = sat((c * inv * g + b + 2**(S-1)) >> S)`` per lane
   (the rounding shift and saturation of :mod:`lowbit.hw.requant`) into the ``y`` beats.

The row buffer, divider and square root are the scaffold's (:mod:`lowbit.hw.vector`); one
divider serves both divisions. The cycles per row depend on the row length only
(:meth:`LayerNormDescription.cycles_per_row`).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum

from lowbit.contract import (LN_BETA_BITS, LN_EPS_MAX, LN_GAMMA_BITS, LN_MAX_D, LN_RECIP_BITS,
                             LN_SHIFT_MAX, LN_SQRT_SHIFT, ceil_div, int_range, signed_width)

from .requant import rounding, shift_relu_saturate
from .units import Param, register_unit
from .vector import (Divider, Isqrt, RowBuffer, VectorDescription, VectorUnit, cfg_layout,
                     max_len_param, x_layout, y_layout)

__all__ = ["LayerNormDescription", "LayerNormUnit"]


class _State(enum.Enum, shape=4):
    # from 1: a comparison with 0 becomes a multi-bit `!` in Verilog (Verilator WIDTHTRUNC)
    IDLE = 1
    LOAD = 2
    MEAN = 3
    MEAN_WAIT = 4
    VARIANCE = 5
    ROOT = 6
    RECIPROCAL = 7
    RECIPROCAL_WAIT = 8
    OUTPUT = 9

# Hardware widths from the bounds of docs/numerics.md ("Widths at the largest allowed sizes")
V_BITS = 45             # V = sum c*c + eps < 2**45
SIGMA_BITS = 32         # sigma = isqrt(V << 18) < 2**32
INV_BITS = 32           # inv = floor(2**40 / sigma) <= 2**31 (sigma >= 2**9 once V >= 1)
NORM_BITS = 33          # n = c * inv, |n| < 2**32
NG_BITS = 48            # |n * g| < 2**32 * 2**15
SUM_BITS = 49           # |n * g + b| < 2**48
SHIFT_BITS = LN_SHIFT_MAX.bit_length()
EPS_BITS = LN_EPS_MAX.bit_length()


@register_unit
class LayerNormDescription(VectorDescription):
    """Integer LayerNorm over rows of up to ``max_len`` elements (``golden_ops.layernorm``).

    Parameters: ``lanes``; ``in_bits`` (2..16, signed input); ``out_bits`` (2..32, signed
    output); ``max_len`` (1..4096, the row buffer holds ``ceil(max_len / lanes)`` beats).

    Beats: ``cfg`` per row: ``length`` (D), ``shift`` (S, 0..47), ``eps`` (0..2**44). ``x``:
    ``data`` (t), ``g`` (signed 16) and ``b`` (signed 48) per lane. ``y``: ``data`` per lane.
    """
    kind, kind_code = "layernorm", 18
    golden = "lowbit.sw.golden_ops:layernorm"
    rtl = "lowbit.hw.vec_layernorm:LayerNormUnit"
    parameters = (Param("in_bits", "In bits", 16, 2, 16, help="input bits"),
                  Param("out_bits", "Out bits", 8, 2, 32, help="output bits"),
                  max_len_param(LN_MAX_D, 512))

    def layouts(self):
        return (cfg_layout(self.max_len, shift=unsigned(SHIFT_BITS), eps=unsigned(EPS_BITS)),
                x_layout(self.lanes, signed(self.in_bits), g=signed(LN_GAMMA_BITS),
                         b=signed(LN_BETA_BITS)),
                y_layout(self.lanes, signed(self.out_bits)))

    # --- widths and timing -------------------------------------------------------------------

    @property
    def sum_bits(self) -> int:
        """``sum t + floor(D/2)`` and the mean's dividend ``-N + D - 1`` (signed)."""
        return signed_width((self.max_len << (self.in_bits - 1)) + 2 * self.max_len)

    @property
    def divider_widths(self) -> tuple[int, int]:
        """``(n_width, d_width)`` of the one divider: the mean's dividend and ``2**40``, the
        row length and ``sigma``."""
        return (max(self.sum_bits - 1, LN_RECIP_BITS + 1),
                max(self.max_len.bit_length(), SIGMA_BITS))

    def cycles_per_row(self, length):
        """Cycles from the ``cfg`` handshake to the last ``y`` beat's, ``x`` valid and ``y``
        ready throughout (the next row's ``cfg`` is taken the cycle after)."""
        beats = ceil_div(length, self.lanes)
        n_width = self.divider_widths[0]
        root = ceil_div(V_BITS + LN_SQRT_SHIFT, 2)
        # three passes over the row, the divider twice, the square root once, and 15 cycles
        # of state changes and pipeline fill (read, c, the two products, the sum, y)
        return 3 * beats + 2 * n_width + root + 15

    # --- operands ------------------------------------------------------------------------------

    def random_rows(self, rng, rows, length):
        lo, hi = int_range(self.in_bits)
        # rows of a random spread around a random centre: small and full-range variances
        centre = rng.integers(lo, hi + 1, (rows, 1))
        spread = np.exp2(rng.uniform(0, self.in_bits, (rows, 1)))
        t = np.clip(np.round(centre + spread * rng.standard_normal((rows, length))), lo, hi)
        return self._ops(rng, t.astype(np.int64))

    def _ops(self, rng, t, *, shift=None, eps=None, g=None, b=None):
        rows, length = t.shape
        if shift is None:
            # |n| ~ 2**31 / sqrt(D) and |g| < 2**15: S ~ 46 - log2(sqrt(D)) - (out_bits - 1)
            # spreads y over the output range, saturating now and then
            centre = 47 - int(np.log2(length)) // 2 - (self.out_bits - 1)
            shift = np.clip(centre + rng.integers(-1, 2, rows), 0, LN_SHIFT_MAX)
        if g is None:
            g = rng.integers(-(1 << 15), 1 << 15, (rows, length))
        if b is None:
            half = 1 << max(self.out_bits - 3, 0)
            b = rng.integers(-half, half + 1, (rows, length)) << np.asarray(shift)[:, None]
            b = np.clip(b, *int_range(LN_BETA_BITS))
        if eps is None:
            eps = rng.integers(0, 1 << 20, rows)
        full = (rows,)
        return {"t": t, "g": np.broadcast_to(g, t.shape).copy(),
                "b": np.broadcast_to(b, t.shape).copy(),
                "shift": np.broadcast_to(shift, full).copy(),
                "eps": np.broadcast_to(eps, full).copy()}

    def corner_cases(self, rng):
        lo, hi = int_range(self.in_bits)
        m = self.max_len
        n = min(m, 2 * self.lanes + 1)
        cases = [("length_1", self._ops(rng, rng.integers(lo, hi + 1, (3, 1)))),
                 ("length_max", self.random_rows(rng, 1, m)),
                 ("zero_variance", self._ops(rng, np.full((2, n), [[lo], [hi]]),
                                             eps=np.array([0, LN_EPS_MAX]))),
                 ("largest_c_largest_v", self._ops(
                     rng, np.where(np.arange(m) == 0, hi, lo)[None].repeat(2, 0),
                     eps=np.array([0, LN_EPS_MAX]))),
                 ("alternating_extremes", self._ops(
                     rng, np.where(np.arange(n) % 2, hi, lo)[None].repeat(2, 0))),
                 ("eps_bounds", self._ops(rng, self.random_rows(rng, 2, n)["t"],
                                          eps=np.array([0, LN_EPS_MAX]))),
                 ("shift_bounds", self._ops(rng, self.random_rows(rng, 2, n)["t"],
                                            shift=np.array([0, LN_SHIFT_MAX]),
                                            b=rng.integers(-(1 << 47), 1 << 47, (2, n))))]
        t = self.random_rows(rng, 2, n)["t"]
        g_max = np.where(np.arange(n) % 2, (1 << 15) - 1, -(1 << 15))
        for name, b in (("saturate_high", (1 << 47) - 1), ("saturate_low", -(1 << 47))):
            cases.append((name, self._ops(rng, t, g=g_max, b=np.full((2, n), b))))
        cases.append(("gain_offset_bounds", self._ops(rng, t, g=g_max[None].repeat(2, 0),
                                                      shift=np.array([LN_SHIFT_MAX] * 2),
                                                      b=np.where(np.arange(n) % 2,
                                                                 (1 << 47) - 1, -(1 << 47)))))
        return cases

    def cfg_fields(self, ops):
        return {"shift": ops["shift"], "eps": ops["eps"]}

    def x_fields(self, ops):
        return {"data": ops["t"], "g": ops["g"], "b": ops["b"]}

    def operands_from_fields(self, cfg, x):
        return {"t": x["data"], "g": x["g"], "b": x["b"], "shift": cfg["shift"],
                "eps": cfg["eps"]}

    def golden_rows(self, ops):
        import torch

        t = {k: torch.as_tensor(v) for k, v in ops.items()}
        out = [self._golden()(t["t"][r], t["g"][r], t["b"][r], t["shift"][r], t["eps"][r],
                              in_bits=self.in_bits, out_bits=self.out_bits)
               for r in range(len(ops["t"]))]
        return torch.stack(out).numpy()


class LayerNormUnit(VectorUnit):
    """The LayerNorm unit; parameters as :class:`LayerNormDescription` (``lanes``,
    ``in_bits``, ``out_bits``, ``max_len``)."""

    def __init__(self, **params):
        super().__init__(LayerNormDescription(**params))

    def elaborate(self, platform):
        m = Module()
        d = self.description
        lanes, ib = self.lanes, self.in_bits
        lane_range = range(lanes)
        word = data.StructLayout({name: field.shape for name, field in self.x_layout
                                  if name != "last"})
        m.submodules.buffer = buf = RowBuffer(word, self.words)
        m.submodules.div = div = Divider(*d.divider_widths)
        m.submodules.isqrt = isqrt = Isqrt(V_BITS + LN_SQRT_SHIFT)

        len_bits = len(self.cfg.payload.length)
        length = Signal(len_bits)
        shift = Signal(SHIFT_BITS)
        eps = Signal(EPS_BITS)
        total = Signal(signed(d.sum_bits))          # floor(D/2) + sum t
        negative = Signal()                         # ... is negative
        zero_sigma = Signal()                       # sigma = 0: inv = 0
        mu = Signal(signed(ib + 1))
        var = Signal(V_BITS)
        inv = Signal(INV_BITS)
        beats = Signal(range(self.words + 1))       # x beats of the row
        waddr = Signal(range(max(self.words, 2)))
        remaining = Signal(signed(len_bits + 1))    # row elements from this beat on

        # --- the read pipeline of the variance and output passes ----------------------------
        # Every stage advances when y can take a beat (always, in the variance pass).
        advance = Signal()
        m.d.comb += advance.eq(~self.y.valid | self.y.ready)
        issuing = Signal()
        raddr = Signal(range(max(self.words, 2)))
        rremaining = Signal(signed(len_bits + 1))
        m.d.comb += [buf.r_addr.eq(raddr), buf.r_en.eq(advance)]
        v0, l0 = Signal(name="rd_valid"), Signal(name="rd_last")
        r0 = Signal(signed(len_bits + 1), name="rd_remaining")
        v1, l1 = Signal(name="c_valid"), Signal(name="c_last")
        r1 = Signal(signed(len_bits + 1), name="c_remaining")
        c1 = [Signal(signed(ib + 2), name=f"c_{i}") for i in lane_range]       # |c| < 2**ib
        g1 = [Signal(signed(LN_GAMMA_BITS), name=f"g1_{i}") for i in lane_range]
        b1 = [Signal(signed(LN_BETA_BITS), name=f"b1_{i}") for i in lane_range]
        with m.If(advance):
            m.d.sync += [v0.eq(issuing), l0.eq(raddr == beats - 1), r0.eq(rremaining),
                         v1.eq(v0), l1.eq(l0), r1.eq(r0)]
            m.d.sync += [c1[i].eq(buf.r_data.data[i] - mu) for i in lane_range]
            m.d.sync += [g1[i].eq(buf.r_data.g[i]) for i in lane_range]
            m.d.sync += [b1[i].eq(buf.r_data.b[i]) for i in lane_range]
            with m.If(issuing):
                m.d.sync += [raddr.eq(raddr + 1), rremaining.eq(rremaining - lanes)]
                with m.If(raddr == beats - 1):
                    m.d.sync += issuing.eq(0)

        # variance pass: c*c of the lanes inside the row (summed by the control below)
        v2, l2 = Signal(name="sq_valid"), Signal(name="sq_last")
        sq = [Signal(unsigned(2 * ib), name=f"sq_{i}") for i in lane_range]
        # output pass: n = c * inv; n * g; + b + 2**(S-1); >> S, saturated into y
        out_pass = Signal()
        n2 = [Signal(signed(NORM_BITS), name=f"n_{i}") for i in lane_range]
        g2 = [Signal(signed(LN_GAMMA_BITS), name=f"g2_{i}") for i in lane_range]
        b2 = [Signal(signed(LN_BETA_BITS), name=f"b2_{i}") for i in lane_range]
        ng3 = [Signal(signed(NG_BITS), name=f"ng_{i}") for i in lane_range]
        b3 = [Signal(signed(LN_BETA_BITS), name=f"b3_{i}") for i in lane_range]
        s4 = [Signal(signed(SUM_BITS + 1), name=f"s_{i}") for i in lane_range]
        v3, l3 = Signal(name="ng_valid"), Signal(name="ng_last")
        v4, l4 = Signal(name="s_valid"), Signal(name="s_last")
        clamped, term = rounding(m, shift, SUM_BITS)
        with m.If(advance):
            m.d.sync += [v2.eq(v1), l2.eq(l1), v3.eq(v2 & out_pass), l3.eq(l2),
                         v4.eq(v3), l4.eq(l3)]
            for i in lane_range:
                m.d.sync += [sq[i].eq(Mux(r1 > i, c1[i] * c1[i], 0)),
                             n2[i].eq(c1[i] * inv), g2[i].eq(g1[i]), b2[i].eq(b1[i]),
                             ng3[i].eq(n2[i] * g2[i]), b3[i].eq(b2[i]),
                             s4[i].eq(ng3[i] + b3[i] + term)]
            m.d.sync += [self.y.valid.eq(v4), self.y.payload.last.eq(l4)]
            for i in lane_range:
                m.d.sync += self.y.payload.data[i].eq(
                    shift_relu_saturate(m, s4[i], clamped, None, self.out_bits, f"_{i}"))

        # --- control --------------------------------------------------------------------------
        take = Signal()
        m.d.comb += [take.eq(self.x.valid & self.x.ready),
                     buf.w_addr.eq(waddr), buf.w_en.eq(take)]
        m.d.comb += [buf.w_data[name].eq(self.x.payload[name]) for name, _ in word]
        lane_sum = sum(Mux(remaining > i, self.x.payload.data[i], 0) for i in lane_range)
        # The states as separate Ifs on a state register (not m.FSM, whose case statements
        # Verilator's lint calls incomplete); at most one is active.
        state = Signal(_State, init=_State.IDLE)
        with m.If(state == _State.IDLE):
            m.d.comb += self.cfg.ready.eq(1)
            with m.If(self.cfg.valid):
                p = self.cfg.payload
                m.d.sync += [length.eq(p.length), shift.eq(p.shift), eps.eq(p.eps),
                             total.eq(p.length >> 1), waddr.eq(0), remaining.eq(p.length)]
                m.d.sync += state.eq(_State.LOAD)
        with m.If(state == _State.LOAD):
            m.d.comb += self.x.ready.eq(1)
            with m.If(take):
                m.d.sync += [total.eq(total + lane_sum), waddr.eq(waddr + 1),
                             remaining.eq(remaining - lanes)]
                with m.If(self.x.payload.last):
                    m.d.sync += beats.eq(waddr + 1)
                    m.d.sync += state.eq(_State.MEAN)
        with m.If(state == _State.MEAN):
            # floor(N / D) = -floor((-N + D - 1) / D) for N < 0
            m.d.comb += [div.i.valid.eq(1), div.i.payload.d.eq(length),
                         div.i.payload.n.eq(Mux(total < 0, length - 1 - total, total))]
            m.d.sync += negative.eq(total < 0)
            with m.If(div.i.ready):
                m.d.sync += state.eq(_State.MEAN_WAIT)
        with m.If(state == _State.MEAN_WAIT):
            m.d.comb += div.o.ready.eq(1)
            with m.If(div.o.valid):
                q = div.o.payload.q
                m.d.sync += [mu.eq(Mux(negative, -q, q)), var.eq(eps), issuing.eq(1),
                             raddr.eq(0), rremaining.eq(length)]
                m.d.sync += state.eq(_State.VARIANCE)
        with m.If(state == _State.VARIANCE):
            with m.If(v2):
                m.d.sync += var.eq(var + sum(sq))
                with m.If(l2):
                    m.d.sync += state.eq(_State.ROOT)
        with m.If(state == _State.ROOT):
            m.d.comb += [isqrt.i.valid.eq(1), isqrt.i.payload.v.eq(var << LN_SQRT_SHIFT)]
            with m.If(isqrt.i.ready):
                m.d.sync += state.eq(_State.RECIPROCAL)
        with m.If(state == _State.RECIPROCAL):
            m.d.comb += [div.i.valid.eq(isqrt.o.valid), isqrt.o.ready.eq(div.i.ready),
                         div.i.payload.n.eq(1 << LN_RECIP_BITS),
                         div.i.payload.d.eq(isqrt.o.payload.root)]
            with m.If(isqrt.o.valid & div.i.ready):
                m.d.sync += zero_sigma.eq(~isqrt.o.payload.root.any())
                m.d.sync += state.eq(_State.RECIPROCAL_WAIT)
        with m.If(state == _State.RECIPROCAL_WAIT):
            m.d.comb += div.o.ready.eq(1)
            with m.If(div.o.valid):
                m.d.sync += [inv.eq(Mux(zero_sigma, 0, div.o.payload.q)), issuing.eq(1),
                             raddr.eq(0), rremaining.eq(length), out_pass.eq(1)]
                m.d.sync += state.eq(_State.OUTPUT)
        with m.If(state == _State.OUTPUT):
            with m.If(self.y.valid & self.y.ready & self.y.payload.last):
                m.d.sync += out_pass.eq(0)
                m.d.sync += state.eq(_State.IDLE)
        return m
