"""Elementwise vector units: requantize (optional ReLU) and the residual add of two terms.

Both are one pipeline over ``lanes`` elements per beat (docs/hardware.md, "Vector units"):
each term of a lane is requantized (``p = v * mult``; ``(p + 2**(shift-1)) >> shift``, round
half up; ReLU; saturation: the arithmetic of :mod:`lowbit.hw.requant`), and the residual add
sums its two terms and saturates the sum:

* ``requant`` (:class:`RequantUnit`): ``golden.requantize(acc, mult, shift, out_bits=,
  relu=)``;
* ``residual`` (:class:`ResidualUnit`): ``golden_ops.residual_add(a, mult_a, shift_a, b,
  mult_b, shift_b, out_bits=)`` (each term saturated to ``out_bits + 1`` bits, the sum to
  ``out_bits``).

The multipliers and shifts are per tensor (the ``cfg`` beat of each row carries them) or, with
``per_channel``, per element (they travel in the ``x`` beats beside the data, lane by lane).
One ``y`` beat leaves per ``x`` beat, ``last`` copied, :attr:`ElementwiseDescription.latency`
cycles later (3 for requantize, 4 for the residual add). The next row's ``cfg`` beat is taken
in the cycle of the previous row's last ``x`` beat, so rows follow each other without a gap:
``ceil(D / lanes)`` cycles per row of ``D`` elements at full rate.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data

from lowbit.contract import ACC_MAX_BITS, MULT_BITS, SHIFT_MAX, ceil_div, int_range

from .requant import rounding, saturate, shift_relu_saturate
from .units import Param, register_unit
from .vector import VectorDescription, VectorUnit, cfg_layout, max_len_param, x_layout, y_layout

__all__ = ["ElementwiseDescription", "RequantDescription", "ResidualDescription",
           "ElementwiseUnit", "RequantUnit", "ResidualUnit"]

SHIFT_BITS = SHIFT_MAX.bit_length()
ELEMENTWISE_MAX_LEN = 1 << 16       # a row only groups beats here: any length up to this

PER_CHANNEL = Param("per_channel", "Per channel", False,
                    help="multipliers and shifts per element (in the x beats), not per row")


class ElementwiseDescription(VectorDescription):
    """A unit that requantizes each of its :attr:`terms` per element and sums them.

    ``terms`` is ``((field, bits_param, mult, shift), ...)``: the ``x`` field of a term, the
    parameter giving its signed width, and the names of its multiplier and shift (None: the
    term is added as it is). A subclass sets them, ``relu`` (a ``relu`` bit in ``cfg``) and the
    golden call.
    """
    terms: tuple = ()
    relu = False

    @property
    def scalars_in(self) -> str:
        """Where the multipliers and shifts travel: ``"cfg"`` (per row), ``"lane"`` (per
        element, ``per_channel``) or ``"beat"`` (plain fields of each ``x`` beat)."""
        return "lane" if self.per_channel else "cfg"

    def cfg_extra(self) -> dict:
        """The kind's own ``cfg`` fields besides the scalars."""
        return {}

    @property
    def term_bits(self) -> int:
        """Each term's saturation width (the output width for a single term)."""
        return self.out_bits if len(self.terms) == 1 else self.out_bits + 1

    @property
    def latency(self) -> int:
        """Cycles from an ``x`` beat's handshake to its ``y`` beat (``y`` ready)."""
        return 3 + (len(self.terms) > 1)

    def scalar_shapes(self) -> dict:
        out = {}
        for _, _, mult, shift in self.terms:
            if mult is not None:
                out[mult], out[shift] = unsigned(MULT_BITS), unsigned(SHIFT_BITS)
        return out

    def layouts(self):
        scalars = self.scalar_shapes()
        lane = {f: signed(self.params[p]) for f, p, _, _ in self.terms[1:]}
        if self.scalars_in == "lane":
            lane |= scalars
        cfg = self.cfg_extra() | (scalars if self.scalars_in == "cfg" else {})
        if self.relu:
            cfg["relu"] = unsigned(1)
        bits0 = self.params[self.terms[0][1]]          # the first term is the x beat's data
        x = x_layout(self.lanes, signed(bits0), **lane)
        if self.scalars_in == "beat":
            fields = {name: field.shape for name, field in x}
            last = fields.pop("last")
            x = data.StructLayout(fields | scalars | {"last": last})
        return (cfg_layout(self.max_len, **cfg), x, y_layout(self.lanes, signed(self.out_bits)))

    def cycles_per_row(self, length: int) -> int:
        """One cycle per beat: rows stream back to back (the next row's ``cfg`` is taken with
        the last ``x`` beat), so ``N`` rows take ``N * cycles_per_row + latency + 1`` cycles
        from the first ``cfg`` beat to the last ``y`` beat."""
        return ceil_div(length, self.lanes)

    # --- operands ------------------------------------------------------------------------------

    def _scalars(self, rng, rows, length) -> dict:
        shape = (rows, length) if self.per_channel else (rows,)
        out = {}
        for _, p, mult, shift in self.terms:
            out[mult] = rng.integers(1 << 15, 1 << MULT_BITS, shape)
            # shifts around the one that maps the term's range onto the output's, so that
            # results spread over the output range and saturate at both ends
            centre = self.params[p] + MULT_BITS - self.term_bits
            out[shift] = np.clip(centre + rng.integers(-2, 3, shape), 0, SHIFT_MAX)
        return out

    def random_rows(self, rng, rows, length):
        ops = {f: _signed(rng, self.params[p], (rows, length)) for f, p, _, _ in self.terms}
        ops |= self._scalars(rng, rows, length)
        if self.relu:
            ops["relu"] = rng.integers(0, 2, rows)
        return ops

    def corner_cases(self, rng):
        length = min(self.max_len, 2 * self.lanes + 1)
        cases = []
        for name, value in (("min", "lo"), ("max", "hi")):
            ops = self.random_rows(rng, 2, length)
            for f, p, _, _ in self.terms:
                ops[f] = np.full((2, length), self._bound(self.params[p])[value])
            for _, _, mult, shift in self.terms:
                ops[mult] = np.full_like(ops[mult], (1 << MULT_BITS) - 1)
                ops[shift] = np.zeros_like(ops[shift])
            cases.append((f"saturate_{name}", ops))
        ops = self.random_rows(rng, 2, length)
        for _, _, mult, shift in self.terms:
            ops[shift] = np.full_like(ops[shift], SHIFT_MAX)
        cases.append(("shift_max", ops))
        ops = self.random_rows(rng, 2, length)
        for _, _, mult, shift in self.terms:
            ops[mult] = np.zeros_like(ops[mult])
        cases.append(("mult_zero", ops))
        # halves: v * mult = (2k + 1) * 2**(shift-1) rounds up, negative ones too
        ops = self.random_rows(rng, 2, length)
        for f, p, mult, shift in self.terms:
            ops[mult] = np.ones_like(ops[mult])
            ops[shift] = np.ones_like(ops[shift])
            lo, hi = self._bound(self.params[p]).values()
            ops[f] = np.clip(rng.integers(-9, 10, (2, length)) * 2 + 1, lo, hi)
        cases.append(("round_half_up", ops))
        cases.append(("length_1", self.random_rows(rng, 3, 1)))
        return cases

    @staticmethod
    def _bound(bits):
        lo, hi = int_range(bits)
        # golden.requantize takes |acc| < 2**46: the 47-bit minimum is out of its range
        return {"lo": max(lo, -(1 << (ACC_MAX_BITS - 1)) + 1), "hi": hi}

    def cfg_fields(self, ops):
        names = [] if self.per_channel else list(self.scalar_shapes())
        return {n: ops[n] for n in names + (["relu"] if self.relu else [])}

    def x_fields(self, ops):
        names = [f for f, _, _, _ in self.terms]
        if self.per_channel:
            names += list(self.scalar_shapes())
        return {n: ops[n] for n in names}

    def operands_from_fields(self, cfg, x):
        return {**cfg, **x}


def _signed(rng, bits, shape):
    lo, hi = ElementwiseDescription._bound(bits).values()
    return rng.integers(lo, hi + 1, shape)


@register_unit
class RequantDescription(ElementwiseDescription):
    """Requantize with optional ReLU (``golden.requantize``) over rows of accumulators."""
    kind, kind_code = "requant", 20
    golden = "lowbit.sw.golden:requantize"
    rtl = "lowbit.hw.vec_elementwise:RequantUnit"
    parameters = (Param("in_bits", "In bits", 32, 2, ACC_MAX_BITS, help="accumulator bits"),
                  Param("out_bits", "Out bits", 8, 2, 32, help="output bits"),
                  PER_CHANNEL, max_len_param(ELEMENTWISE_MAX_LEN, 4096))
    terms = (("data", "in_bits", "mult", "shift"),)
    relu = True

    def golden_rows(self, ops):
        import torch

        out = []
        for r in range(len(ops["data"])):
            out.append(self._golden()(torch.as_tensor(ops["data"][r]),
                                      torch.as_tensor(ops["mult"][r]),
                                      torch.as_tensor(ops["shift"][r]),
                                      out_bits=self.out_bits, relu=bool(ops["relu"][r])))
        return torch.stack(out).numpy()


@register_unit
class ResidualDescription(ElementwiseDescription):
    """Residual add of two requantized terms (``golden_ops.residual_add``)."""
    kind, kind_code = "residual", 19
    golden = "lowbit.sw.golden_ops:residual_add"
    rtl = "lowbit.hw.vec_elementwise:ResidualUnit"
    parameters = (Param("a_bits", "A bits", 8, 2, ACC_MAX_BITS, help="first term bits"),
                  Param("b_bits", "B bits", 32, 2, ACC_MAX_BITS, help="second term bits"),
                  Param("out_bits", "Out bits", 16, 2, 31, help="sum bits"),
                  PER_CHANNEL, max_len_param(ELEMENTWISE_MAX_LEN, 4096))
    terms = (("data", "a_bits", "mult_a", "shift_a"), ("b", "b_bits", "mult_b", "shift_b"))

    def golden_rows(self, ops):
        import torch

        t = {k: torch.as_tensor(v) for k, v in ops.items()}
        out = [self._golden()(t["data"][r], t["mult_a"][r], t["shift_a"][r], t["b"][r],
                              t["mult_b"][r], t["shift_b"][r], out_bits=self.out_bits)
               for r in range(len(ops["data"]))]
        return torch.stack(out).numpy()


class ElementwiseUnit(VectorUnit):
    """The pipeline of an :class:`ElementwiseDescription`: requantize each term, sum, saturate.

    Stages (all advance together when ``y`` can take a beat): products ``v * mult``; plus the
    rounding term; shift, ReLU and saturation of each term (the ``y`` register for a single
    term); the saturated sum.
    """

    def elaborate(self, platform):
        m = Module()
        d = self.description
        # The cfg beat of a row is held until the row's last x beat, which also takes the next.
        cfg = Signal(self.cfg_layout)
        cfg_valid = Signal()
        advance = Signal()
        take = Signal()
        m.d.comb += [advance.eq(~self.y.valid | self.y.ready),
                     self.x.ready.eq(advance & cfg_valid),
                     take.eq(self.x.valid & self.x.ready),
                     self.cfg.ready.eq(~cfg_valid | (take & self.x.payload.last))]
        with m.If(take & self.x.payload.last):
            m.d.sync += cfg_valid.eq(0)
        with m.If(self.cfg.valid & self.cfg.ready):
            m.d.sync += [cfg.eq(self.cfg.payload), cfg_valid.eq(1)]

        beat = self.x.payload
        scalars = cfg if d.scalars_in == "cfg" else beat
        valid = [Signal(name=f"s{i}_valid") for i in range(d.latency - 1)]
        last = [Signal(name=f"s{i}_last") for i in range(d.latency - 1)]
        relu = [Signal(name=f"s{i}_relu") for i in range(2)]
        results = []
        for field, bits_param, mult_name, shift_name in d.terms:
            pw = self.params[bits_param] + MULT_BITS      # |v * mult| < 2**(pw-1)
            out = []
            for lane in range(self.lanes):
                tag = f"_{field}_{lane}"
                if mult_name is None:       # added as it is, as late as the requantized terms
                    delayed = beat[field][lane]
                    for stage in range(3):
                        reg = Signal(signed(self.params[bits_param]), name=f"d{stage}{tag}")
                        with m.If(advance):
                            m.d.sync += reg.eq(delayed)
                        delayed = reg
                    out.append(delayed)
                    continue
                mult, shift = scalars[mult_name], scalars[shift_name]
                if d.scalars_in == "lane":
                    mult, shift = mult[lane], shift[lane]
                prod = Signal(signed(pw), name=f"prod{tag}")
                shift1 = Signal(SHIFT_BITS, name=f"shift1{tag}")
                value = Signal(signed(pw + 1), name=f"value{tag}")
                shift2 = Signal(range(pw + 1), name=f"shift2{tag}")
                clamped, term = rounding(m, shift1, pw, tag)
                with m.If(advance):
                    m.d.sync += [prod.eq(beat[field][lane] * mult), shift1.eq(shift),
                                 value.eq(prod + term), shift2.eq(clamped)]
                res = shift_relu_saturate(m, value, shift2, relu[1] if d.relu else None,
                                          d.term_bits, tag)
                if len(d.terms) > 1:        # registered before the sum
                    reg = Signal(signed(d.term_bits), name=f"term{tag}")
                    with m.If(advance):
                        m.d.sync += reg.eq(res)
                    res = reg
                out.append(res)
            results.append(out)

        with m.If(advance):
            m.d.sync += [valid[0].eq(take), last[0].eq(beat.last)]
            for i in range(1, len(valid)):
                m.d.sync += [valid[i].eq(valid[i - 1]), last[i].eq(last[i - 1])]
            if d.relu:
                m.d.sync += [relu[0].eq(cfg.relu), relu[1].eq(relu[0])]
            m.d.sync += [self.y.valid.eq(valid[-1]), self.y.payload.last.eq(last[-1])]
            for lane in range(self.lanes):
                if len(results) == 1:
                    y = results[0][lane]
                else:
                    y = saturate(sum(r[lane] for r in results[1:]) + results[0][lane],
                                 self.out_bits)
                m.d.sync += self.y.payload.data[lane].eq(y)
        return m


class RequantUnit(ElementwiseUnit):
    """Requantize with optional ReLU; parameters as :class:`RequantDescription` (``lanes``,
    ``in_bits``, ``out_bits``, ``per_channel``, ``max_len``)."""

    def __init__(self, **params):
        super().__init__(RequantDescription(**params))


class ResidualUnit(ElementwiseUnit):
    """Residual add; parameters as :class:`ResidualDescription` (``lanes``, ``a_bits``,
    ``b_bits``, ``out_bits``, ``per_channel``, ``max_len``)."""

    def __init__(self, **params):
        super().__init__(ResidualDescription(**params))
