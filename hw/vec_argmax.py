"""Argmax unit: :func:`lowbit.sw.golden_ops.argmax` (greedy decoding's token pick), bit for bit.

Per row: the index of the largest score; ties go to the lowest index. Each ``x`` beat's lanes
are reduced by a balanced tree of compare-and-select nodes (the left, lower-index side wins a
tie), and the beat's winner replaces the running one only when strictly larger (an earlier beat
holds lower indices), so the row streams through at one beat per cycle and its one ``y`` beat
leaves in the cycle after its last ``x`` beat.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned

from lowbit.contract import MAX_ROW, ceil_div

from .units import Param, register_unit
from .vector import VectorDescription, VectorUnit, cfg_layout, max_len_param, x_layout, y_layout

__all__ = ["ArgmaxDescription", "Argmax"]


@register_unit
class ArgmaxDescription(VectorDescription):
    """Index of each row's largest score (lowest index on ties), one ``y`` beat per row."""
    kind, kind_code = "argmax", 17
    golden = "lowbit.sw.golden_ops:argmax"
    rtl = "lowbit.hw.vec_argmax:Argmax"
    parameters = (Param("in_bits", "In bits", 32, 2, 32, help="score width (signed)"),
                  max_len_param(MAX_ROW, 8192))
    y_per_lane = False

    @property
    def index_width(self) -> int:
        return max(1, (self.max_len - 1).bit_length())

    def layouts(self):
        return (cfg_layout(self.max_len), x_layout(self.lanes, signed(self.in_bits)),
                y_layout(None, unsigned(self.index_width)))

    def cycles_per_row(self, length):
        return ceil_div(length, self.lanes) + 1

    def random_rows(self, rng, rows, length):
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        # a narrow random range per row, so that some rows hold ties for the largest score
        width = rng.integers(1, 1 << min(12, self.in_bits - 1), (rows, 1))
        base = rng.integers(lo, hi + 1, (rows, 1))
        z = np.clip(base + (rng.random((rows, length)) * width).astype(np.int64), lo, hi)
        return {"z": z}

    def corner_cases(self, rng):
        lo, hi = -(1 << (self.in_bits - 1)), (1 << (self.in_bits - 1)) - 1
        n = self.max_len
        short = min(n, 2 * self.lanes + 1)
        tie = np.full((1, short), lo)
        tie[0, [short // 3, short - 1]] = hi                # a tie for the top: lowest wins
        last = np.full((1, short), lo)
        last[0, -1] = lo + 1
        return [
            ("length_1", {"z": rng.integers(lo, hi + 1, (3, 1))}),
            ("length_max", self.random_rows(rng, 2, n)),
            ("all_equal", {"z": np.full((2, short), int(rng.integers(lo, hi + 1)))}),
            ("all_min", {"z": np.full((1, short), lo)}),
            ("all_max", {"z": np.full((1, n), hi)}),
            ("tie_at_top", {"z": tie}),
            ("max_last", {"z": last}),
            ("extremes", {"z": np.where(np.arange(short) % 2 == 0, lo, hi)[None]}),
        ]

    def x_fields(self, ops):
        return {"data": ops["z"]}

    def operands_from_fields(self, cfg, x):
        return {"z": x["data"]}

    def golden_rows(self, ops):
        import torch

        return self._golden()(torch.as_tensor(np.asarray(ops["z"], np.int64))).numpy()


class Argmax(VectorUnit):
    """Argmax unit (:class:`ArgmaxDescription` validates the parameters).

    Parameters (keyword only)
    -------------------------
    lanes : int, 1..64, default 4
        Scores per beat.
    in_bits : int, 2..32, default 32
        Score width (signed; the output scores of docs/numerics.md are 32-bit).
    max_len : int, 1..65536, default 8192
        Longest row (the vocabulary); the index is ``ceil(log2(max_len))`` bits.

    Streams: ``cfg`` {length}; ``x`` {data, last}; ``y`` {data: the index, last = 1}, one beat
    per row. Cycles per row with beats offered and taken at once: ``ceil(length / lanes) + 1``
    (the ``cfg`` beat is taken in the cycle after a row's last ``x`` beat).
    """

    def __init__(self, **params):
        super().__init__(ArgmaxDescription(**params))

    def elaborate(self, platform):
        m = Module()
        lanes, iw = self.lanes, self.description.index_width
        length = Signal.like(self.cfg.payload.length)
        pos = Signal(range(self.words * lanes + lanes + 1))    # elements before this beat
        best = Signal(signed(self.in_bits))
        best_at = Signal(iw)
        have = Signal()
        active = Signal()                                      # a row's cfg has been taken

        beat = self.x.payload
        nodes = [(beat.data[i], pos + i < length, i) for i in range(lanes)]
        level, n = nodes, 0
        while len(level) > 1:
            nxt = []
            for (va, oka, ia), (vb, okb, ib) in zip(level[0::2], level[1::2]):
                v = Signal(signed(self.in_bits), name=f"arg_v{n}")
                ok = Signal(name=f"arg_ok{n}")
                at = Signal(range(lanes), name=f"arg_i{n}")
                n += 1
                take_b = okb & (~oka | (vb > va))              # a tie keeps the left lane
                m.d.comb += [v.eq(Mux(take_b, vb, va)), ok.eq(oka | okb),
                             at.eq(Mux(take_b, ib, ia))]
                nxt.append((v, ok, at))
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        beat_v, beat_ok, beat_i = level[0]

        better = beat_ok & (~have | (beat_v > best))
        win_v = Mux(better, beat_v, best)
        win_at = Mux(better, pos + beat_i, best_at)

        with m.If(self.y.ready):
            m.d.sync += self.y.valid.eq(0)
        # A row's x beats are taken while its cfg is in and no earlier result waits untaken.
        m.d.comb += [self.cfg.ready.eq(~active),
                     self.x.ready.eq(active & (~self.y.valid | self.y.ready))]
        with m.If(self.cfg.valid & self.cfg.ready):
            m.d.sync += [length.eq(self.cfg.payload.length), pos.eq(0), have.eq(0),
                         active.eq(1)]
        with m.If(self.x.valid & self.x.ready):
            m.d.sync += [pos.eq(pos + lanes), best.eq(win_v), best_at.eq(win_at),
                         have.eq(have | beat_ok)]
            with m.If(beat.last):
                m.d.sync += [self.y.valid.eq(1), self.y.payload.data.eq(win_at),
                             self.y.payload.last.eq(1), active.eq(0)]
        return m
