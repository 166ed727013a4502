"""Integer softmax unit: :func:`lowbit.sw.golden_ops.softmax`, bit for bit.

Per row (docs/numerics.md, "Integer-only decode"; docs/hardware.md, "Vector units"):
``m = max z`` over the kept positions; ``d = m - z``; ``e = exp2_neg(d)`` from the 256-entry
table ``EXP2_TABLE`` shifted right by ``min(q, 16)`` (0 at excluded positions); ``S = sum e``;
``R = floor((2**(ob-1) - 1) * 2**31 / S)`` with the shared :class:`~lowbit.hw.vector.Divider`;
``p = (e*R + 2**30) >> 31``. A row whose every position is excluded has every ``e = 0``, hence
every ``p = 0``, whatever ``R`` is, so it needs no case of its own.

The row passes through the unit three times: it is stored in a :class:`~lowbit.hw.vector.RowBuffer`
while the running maximum is taken (``ingest``), read back to sum the exponentials (``sum``),
and, after the division, read again to recompute each exponential and emit the probabilities
(``emit``). The two read passes share one pipeline: buffer read, table read (one port per lane),
then the sum or the output register.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory

from lowbit.contract import EXP2_TABLE, EXP_INDEX_BITS, EXP_ONE_BITS, MAX_ROW, SOFTMAX_FRAC_BITS
from lowbit.contract import ceil_div
from lowbit.contract import SOFTMAX_RECIP_BITS as RECIP_BITS

from .matmul import _adder_tree
from .units import Param, register_unit
from .vector import (Divider, RowBuffer, VectorDescription, VectorUnit, cfg_layout,
                     max_len_param, x_layout, y_layout)

__all__ = ["SoftmaxDescription", "Softmax"]

@register_unit
class SoftmaxDescription(VectorDescription):
    """Integer softmax over rows of log2-domain scores, with a per-position keep mask."""
    kind, kind_code = "softmax", 16
    golden = "lowbit.sw.golden_ops:softmax"
    rtl = "lowbit.hw.vec_softmax:Softmax"
    parameters = (Param("in_bits", "In bits", 16, 2, 32, help="score width (signed)"),
                  Param("frac_bits", "Frac bits", SOFTMAX_FRAC_BITS, 0, 30,
                        help="fraction bits of the log2-domain scores"),
                  Param("out_bits", "Out bits", 8, 2, 16,
                        help="probability width (unsigned out_bits-1 bits)"),
                  max_len_param(MAX_ROW, 256))

    def layouts(self):
        return (cfg_layout(self.max_len),
                x_layout(self.lanes, signed(self.in_bits), keep=unsigned(1)),
                y_layout(self.lanes, signed(self.out_bits)))

    @property
    def top(self) -> int:
        """``2**(ob-1) - 1``: the probability 1.0."""
        return (1 << (self.out_bits - 1)) - 1

    @property
    def sum_width(self) -> int:
        """Bits of ``S`` (every ``e <= 2**15``)."""
        return (self.max_len << EXP_ONE_BITS).bit_length()

    @property
    def numerator_width(self) -> int:
        return (self.top << RECIP_BITS).bit_length()

    @property
    def recip_width(self) -> int:
        """Bits of ``R``: a row with a kept position has ``S >= 2**15`` (its maximum's
        exponential), so ``R <= top * 2**16 < 2**(out_bits + 15)``; the divider computes only
        those quotient bits (``N < S * 2**(out_bits + 15)``). A row without one has every
        ``e = 0``, whatever ``R`` is."""
        return self.out_bits + 15

    def cycles_per_row(self, length):
        w = ceil_div(length, self.lanes)
        return 3 * w + self.recip_width + 7

    # --- operands -------------------------------------------------------------------------------

    def random_rows(self, rng, rows, length):
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        # scores spread over a few dozen units of 2**-F around a random centre: most exponentials
        # are neither 2**15 nor 0
        centre = rng.integers(lo, hi + 1, (rows, 1))
        spread = 1 << min(self.in_bits - 2, self.frac_bits + 4)
        z = np.clip(centre + rng.integers(-spread, spread + 1, (rows, length)), lo, hi)
        keep = rng.random((rows, length)) < 0.8
        return {"z": z.astype(np.int64), "keep": keep}

    def corner_cases(self, rng):
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        n = self.max_len
        short = min(n, 2 * self.lanes + 1)
        ones = np.ones((1, short), bool)
        cases = [
            ("length_1", {"z": rng.integers(lo, hi + 1, (2, 1)), "keep": np.ones((2, 1), bool)}),
            ("length_1_masked", {"z": np.array([[5]]), "keep": np.zeros((1, 1), bool)}),
            ("length_max", self.random_rows(rng, 2, n)),
            ("all_masked", {"z": rng.integers(lo, hi + 1, (2, short)),
                            "keep": np.zeros((2, short), bool)}),
            ("one_kept", {"z": rng.integers(lo, hi + 1, (1, short)),
                          "keep": np.eye(1, short, short // 2, dtype=bool)}),
            ("equal_scores", {"z": np.full((1, short), int(rng.integers(lo, hi + 1))),
                              "keep": ones}),
            # S at its top: the longest row of equal kept scores gives S = max_len * 2**15
            ("sum_max", {"z": np.full((1, n), hi), "keep": np.ones((1, n), bool)}),
            # S at its bottom: one score at the top, every other one 2**(F+4) or more below
            ("sum_min_exp_zero", {"z": np.concatenate([[[hi]], np.full((1, short - 1), lo)],
                                                      axis=1), "keep": ones}),
            ("extremes", {"z": np.where(np.arange(short) % 2 == 0, hi, lo)[None],
                          "keep": ones}),
            ("extremes_min_kept", {"z": np.where(np.arange(short) % 2 == 0, hi, lo)[None],
                                   "keep": (np.arange(short) % 2 == 1)[None]}),
        ]
        # every table entry the fraction bits can reach, at q = 0: short rows (large
        # probabilities, so an entry's error shows) that start with their maximum (d = 0)
        entries = 1 << min(self.frac_bits, EXP_INDEX_BITS)
        d = np.minimum(np.arange(entries) << max(0, self.frac_bits - EXP_INDEX_BITS), hi - lo)
        if n > 1:
            run = min(n - 1, 3)
            d = np.resize(d, ceil_div(entries, run) * run).reshape(-1, run)
            d = np.concatenate([np.zeros((len(d), 1), np.int64), d], axis=1)
            cases.append(("every_table_entry", {"z": hi - d, "keep": np.ones(d.shape, bool)}))
        # d from 0 to past 16 * 2**F (exponentials reaching 0) in steps of 2**F / 8 + 1
        step = max(1, (1 << self.frac_bits) // 8 + 1)
        d = np.minimum(np.arange(short) * step * 17, hi - lo)
        cases.append(("exp_range", {"z": (hi - d)[None], "keep": ones}))
        return cases

    def x_fields(self, ops):
        return {"data": ops["z"], "keep": np.asarray(ops["keep"]).astype(np.int64)}

    def operands_from_fields(self, cfg, x):
        return {"z": x["data"], "keep": x["keep"].astype(bool)}

    def golden_rows(self, ops):
        import torch

        z = torch.as_tensor(np.asarray(ops["z"], np.int64))
        mask = ~torch.as_tensor(np.asarray(ops["keep"], bool))
        return self._golden()(z, mask, frac_bits=self.frac_bits,
                              out_bits=self.out_bits).numpy()


class Softmax(VectorUnit):
    """Integer softmax unit (:class:`SoftmaxDescription` validates the parameters).

    Parameters (keyword only)
    -------------------------
    lanes : int, 1..64, default 4
        Elements per beat.
    in_bits : int, 2..32, default 16
        Score width (signed; the golden operation takes 32-bit scores).
    frac_bits : int, 0..30, default 8
        Fraction bits of the scores.
    out_bits : int, 2..16, default 8
        The probabilities are ``0..2**(out_bits-1) - 1`` in signed ``out_bits`` lanes.
    max_len : int, 1..65536, default 256
        Longest row (the row buffer holds ``ceil(max_len / lanes)`` beats).

    Streams: ``cfg`` {length}; ``x`` {data, keep (1 = position takes part), last}; ``y``
    {data, last}, ``ceil(length / lanes)`` beats per row. Cycles per row with beats offered and
    taken at once: ``3 * ceil(length / lanes) + out_bits + 22``.
    """

    def __init__(self, **params):
        super().__init__(SoftmaxDescription(**params))

    def exp_table(self) -> list[int]:
        """The exponential table's entries (the contract's ``EXP2_TABLE``)."""
        return list(EXP2_TABLE)

    def elaborate(self, platform):
        m = Module()
        d = self.description
        lanes, F = self.lanes, self.frac_bits
        words = self.words
        word_layout = data.StructLayout({"z": data.ArrayLayout(signed(self.in_bits), lanes),
                                         "keep": unsigned(lanes)})
        m.submodules.buf = buf = RowBuffer(word_layout, words)
        m.submodules.div = div = Divider(d.numerator_width, d.sum_width, d.recip_width)
        m.submodules.table = table = Memory(shape=unsigned(EXP_ONE_BITS + 1),
                                            depth=1 << EXP_INDEX_BITS, init=self.exp_table())
        ports = [table.read_port() for _ in range(lanes)]

        length = Signal.like(self.cfg.payload.length)
        pos = Signal(range(words * lanes + lanes + 1))     # elements before this beat
        n_words = Signal(range(words + 1))
        zmax = Signal(signed(self.in_bits))
        kept = Signal()                                     # the row has a kept position
        total = Signal(d.sum_width)
        recip = Signal(d.recip_width)

        # --- ingest: store each beat, running maximum over kept positions ---------------------
        beat = self.x.payload
        keep = Signal(lanes)
        m.d.comb += keep.eq(Cat(beat.keep[i] & (pos + i < length) for i in range(lanes)))
        best, best_ok = _max_tree(m, [beat.data[i] for i in range(lanes)],
                                  [keep[i] for i in range(lanes)], self.in_bits)
        m.d.comb += [buf.w_addr.eq(n_words), buf.w_data.z.eq(beat.data), buf.w_data.keep.eq(keep)]

        # --- the read pipeline: issue -> buffer word (s1) -> table entries (s2) ---------------
        issuing = Signal()
        ra = Signal(range(words + 1))
        s1_valid, s1_last = Signal(), Signal()
        s2_valid, s2_last = Signal(), Signal()
        emitting = Signal()                                 # the emit pass
        advance = Signal()
        m.d.comb += advance.eq(~emitting | ~self.y.valid | self.y.ready)
        m.d.comb += [buf.r_addr.eq(ra), buf.r_en.eq(advance)]
        with m.If(advance):
            m.d.sync += [s1_valid.eq(issuing), s1_last.eq(ra == n_words - 1),
                         s2_valid.eq(s1_valid), s2_last.eq(s1_last)]
            with m.If(issuing):
                m.d.sync += ra.eq(ra + 1)
                with m.If(ra == n_words - 1):
                    m.d.sync += issuing.eq(0)

        dw = max(self.in_bits, F + 1) + 1
        amounts, keeps = [], []
        word = buf.r_data
        for i in range(lanes):
            diff = Signal(dw, name=f"d_{i}")              # m - z >= 0 at kept positions
            m.d.comb += diff.eq(zmax - word.z[i])
            q = diff >> F
            if F >= EXP_INDEX_BITS:
                index = diff[F - EXP_INDEX_BITS:F]
            else:
                index = Cat(C(0, EXP_INDEX_BITS - F), diff[:F])
            m.d.comb += [ports[i].addr.eq(index), ports[i].en.eq(advance)]
            amount = Signal(range(17), name=f"shift_{i}")
            keep2 = Signal(name=f"keep_{i}")
            with m.If(advance):
                m.d.sync += [amount.eq(Mux(q > 16, 16, q)), keep2.eq(word.keep[i])]
            amounts.append(amount)
            keeps.append(keep2)
        exps = []
        for i in range(lanes):
            e = Signal(EXP_ONE_BITS + 1, name=f"e_{i}")
            m.d.comb += e.eq(Mux(keeps[i], ports[i].data >> amounts[i], 0))
            exps.append(e)

        # --- the control ----------------------------------------------------------------------
        m.d.comb += [div.i.payload.n.eq(d.top << RECIP_BITS), div.i.payload.d.eq(total)]
        with m.If(self.y.ready):
            m.d.sync += self.y.valid.eq(0)
        # One-hot phases (plain registers rather than m.FSM, whose state decoding Verilator's
        # lint rejects: CASEINCOMPLETE, WIDTHTRUNC).
        waiting = Signal(init=1)
        ingest, summing, dividing = Signal(), Signal(), Signal()
        with m.If(waiting):
            m.d.comb += self.cfg.ready.eq(1)
            with m.If(self.cfg.valid):
                m.d.sync += [length.eq(self.cfg.payload.length), pos.eq(0), n_words.eq(0),
                             kept.eq(0), total.eq(0), waiting.eq(0), ingest.eq(1)]
        with m.If(ingest):
            m.d.comb += self.x.ready.eq(1)
            with m.If(self.x.valid):
                m.d.comb += buf.w_en.eq(1)
                m.d.sync += [pos.eq(pos + lanes), n_words.eq(n_words + 1)]
                with m.If(best_ok & (~kept | (best > zmax))):
                    m.d.sync += [zmax.eq(best), kept.eq(1)]
                with m.If(beat.last):
                    m.d.sync += [issuing.eq(1), ra.eq(0), ingest.eq(0), summing.eq(1)]
        with m.If(summing & s2_valid):
            m.d.sync += total.eq(total + _adder_tree(exps))
            with m.If(s2_last):
                m.d.sync += [summing.eq(0), dividing.eq(1)]
        with m.If(dividing):
            m.d.comb += [div.i.valid.eq(1), div.o.ready.eq(1)]
            with m.If(div.o.valid):
                m.d.sync += [recip.eq(div.o.payload.q), issuing.eq(1), ra.eq(0),
                             dividing.eq(0), emitting.eq(1)]
        with m.If(emitting & advance & s2_valid):
            half = 1 << (RECIP_BITS - 1)
            m.d.sync += [self.y.valid.eq(1), self.y.payload.last.eq(s2_last)]
            m.d.sync += [self.y.payload.data[i].eq((exps[i] * recip + half) >> RECIP_BITS)
                         for i in range(lanes)]
            with m.If(s2_last):
                m.d.sync += [emitting.eq(0), waiting.eq(1)]
        return m


def _max_tree(m, values, oks, width):
    """Largest of ``values`` whose ``oks`` bit is set: ``(value, any ok)``, a balanced tree."""
    level = list(zip(values, oks))
    n = 0
    while len(level) > 1:
        nxt = []
        for a, b in zip(level[0::2], level[1::2]):
            v, ok = Signal(signed(width), name=f"max_v{n}"), Signal(name=f"max_ok{n}")
            n += 1
            take_b = b[1] & (~a[1] | (b[0] > a[0]))
            m.d.comb += [v.eq(Mux(take_b, b[0], a[0])), ok.eq(a[1] | b[1])]
            nxt.append((v, ok))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]

