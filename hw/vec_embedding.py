"""The embedding vector unit: ``golden_ops.embedding`` bit for bit, rows fetched from memory.

The table (``V x D`` integers with one multiplier and shift per row) does not fit on chip; the
unit reads it through a memory-read request/response pair (docs/hardware.md, "Vector units"):

``cfg``
    One beat per token: ``length`` (D), the token ``id`` and the ``position`` (``offset + l``).
``req`` (Out)
    One request per token: ``id`` and ``position``; the memory answers on ``x``.
``x``
    The memory's answer, ``ceil(D / lanes)`` beats: ``data`` (table row ``E[id]``) and ``pos``
    (position row ``P[position]``) per lane, and the row's ``mult`` and ``shift`` (the same in
    every beat of the row), ``last`` on the final one. A memory must take a request before it
    answers it; the unit itself never waits on ``req.ready`` (it drops ``req.valid`` on the
    handshake), so it also runs from a source that streams the answers in request order.
``y``
    ``x = sat(sat(requantize(E[id], mult, shift), out_bits + 1) + P[position], out_bits)``
    per lane, the residual add's pipeline (:mod:`lowbit.hw.vec_elementwise`) with the
    position term added as it is.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import unsigned
from amaranth.lib import data, stream
from amaranth.lib.wiring import Out

from lowbit.contract import MULT_BITS, SHIFT_MAX, ceil_div, int_range

from .units import Param, register_unit
from .vec_elementwise import ELEMENTWISE_MAX_LEN, ElementwiseDescription, ElementwiseUnit
from .vector import max_len_param

__all__ = ["EmbeddingDescription", "EmbeddingUnit"]


@register_unit
class EmbeddingDescription(ElementwiseDescription):
    """Token embedding plus position (``golden_ops.embedding``), one token per row.

    Parameters: ``lanes``; ``table_bits`` (2..17, signed table entries, ``|E| <= 2**15``);
    ``out_bits`` (2..31); ``id_bits`` (1..24) and ``pos_bits`` (1..16), the widths of a token
    id and a position; ``max_len`` (the embedding width D).
    """
    kind, kind_code = "embedding", 21
    golden = "lowbit.sw.golden_ops:embedding"
    rtl = "lowbit.hw.vec_embedding:EmbeddingUnit"
    parameters = (Param("table_bits", "Table bits", 8, 2, 17, help="table entry bits"),
                  Param("out_bits", "Out bits", 8, 2, 31, help="output bits"),
                  Param("id_bits", "Id bits", 16, 1, 24, help="token id bits"),
                  Param("pos_bits", "Pos bits", 10, 1, 16, help="position bits"),
                  max_len_param(ELEMENTWISE_MAX_LEN, 512))
    terms = (("data", "table_bits", "mult", "shift"), ("pos", "out_bits", None, None))
    scalars_in = "beat"

    def cfg_extra(self):
        return {"id": unsigned(self.id_bits), "position": unsigned(self.pos_bits)}

    @property
    def req_layout(self) -> data.StructLayout:
        return data.StructLayout(self.cfg_extra())

    # --- operands: a table, its scales, a position table, and (id, position) per row -----------

    def random_rows(self, rng, rows, length, *, vocab=None, n_pos=None):
        vocab = min(vocab or 50, 1 << self.id_bits)
        n_pos = min(n_pos or 20, 1 << self.pos_bits)
        lo, hi = int_range(self.table_bits)
        # per-row scales that map the row's range onto about the output's (as requant_params
        # does for s_w[id] * sqrt(D) / s_x), a few saturating
        mult = rng.integers(1 << 15, 1 << MULT_BITS, vocab)
        shift = np.clip(self.table_bits + MULT_BITS - self.out_bits - 1
                        + rng.integers(-1, 2, vocab), 0, SHIFT_MAX)
        return {"ids": rng.integers(0, vocab, rows), "position": rng.integers(0, n_pos, rows),
                "table": rng.integers(lo, hi + 1, (vocab, length)), "mult": mult,
                "shift": shift,
                "positions": rng.integers(*int_range(self.out_bits), (n_pos, length)) // 2}

    def corner_cases(self, rng):
        n = min(self.max_len, 2 * self.lanes + 1)
        lo, hi = int_range(self.table_bits)
        plo, phi = int_range(self.out_bits)
        cases = [("length_1", self.random_rows(rng, 3, 1)),
                 ("length_max", self.random_rows(rng, 2, self.max_len))]
        for name, e, p in (("saturate_high", hi, phi), ("saturate_low", lo, plo)):
            ops = self.random_rows(rng, 3, n, vocab=2, n_pos=2)
            ops |= {"table": np.full_like(ops["table"], e),
                    "positions": np.full_like(ops["positions"], p),
                    "mult": np.full_like(ops["mult"], (1 << MULT_BITS) - 1),
                    "shift": np.zeros_like(ops["shift"])}
            cases.append((name, ops))
        ops = self.random_rows(rng, 4, n, vocab=2, n_pos=2)
        ops |= {"mult": np.array([0, 1]), "shift": np.array([SHIFT_MAX, 1]),
                "table": np.clip(rng.integers(-9, 10, ops["table"].shape) * 2 + 1, lo, hi)}
        cases.append(("mult_zero_shift_max_round_half_up", ops))
        ops = self.random_rows(rng, 3, n)
        ops["ids"][:] = min(ops["table"].shape[0], 1 << self.id_bits) - 1   # the last id
        ops["position"][:] = ops["positions"].shape[0] - 1
        cases.append(("last_id_last_position", ops))
        return cases

    def cfg_fields(self, ops):
        return {"id": ops["ids"], "position": ops["position"]}

    def x_fields(self, ops):
        return {"data": ops["table"][ops["ids"]], "pos": ops["positions"][ops["position"]]}

    def operands_from_fields(self, cfg, x):
        # each row as its own one-row table and position table (the beats carry no more)
        rows = len(x["data"])
        return {"ids": np.arange(rows), "position": np.arange(rows), "table": x["data"],
                "positions": x["pos"], "mult": np.asarray(x["mult"])[:, 0],
                "shift": np.asarray(x["shift"])[:, 0]}

    def pack(self, ops):
        cfg, x, y_beats = super().pack(ops)
        # the row's scale in every beat of the row (plain fields, not lanes)
        beats = ceil_div(ops["table"].shape[1], self.lanes)
        codec = self.codecs["x"]
        for name in ("mult", "shift"):
            codec.put(x, name, np.repeat(np.asarray(ops[name])[ops["ids"]], beats))
        return cfg, x, y_beats

    def memory_answer(self, ops, ident: int, position: int) -> list[dict]:
        """The memory's ``x`` beats (field values) answering a request: the simulation's
        model of the off-chip table."""
        row, pos = ops["table"][ident], ops["positions"][position]
        beats = []
        for s in range(0, len(row), self.lanes):
            pad = self.lanes - len(row[s:s + self.lanes])
            beats.append({"data": [*map(int, row[s:s + self.lanes]), *[0] * pad],
                          "pos": [*map(int, pos[s:s + self.lanes]), *[0] * pad],
                          "mult": int(ops["mult"][ident]), "shift": int(ops["shift"][ident]),
                          "last": int(s + self.lanes >= len(row))})
        return beats

    def golden_rows(self, ops):
        import torch

        t = {k: torch.as_tensor(np.asarray(v)) for k, v in ops.items()}
        out = [self._golden()(t["ids"][r].reshape(1, 1), t["table"], t["mult"], t["shift"],
                              t["positions"], int(t["position"][r]), out_bits=self.out_bits)
               for r in range(len(ops["ids"]))]
        return torch.cat(out).reshape(len(out), -1).numpy()


class EmbeddingUnit(ElementwiseUnit):
    """The embedding unit; parameters as :class:`EmbeddingDescription`. Ports: ``cfg``,
    ``x``, ``y`` (:class:`~lowbit.hw.vector.VectorUnit`) and ``req``."""

    def __init__(self, **params):
        d = EmbeddingDescription(**params)
        super().__init__(d, req=Out(stream.Signature(d.req_layout)))

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += self.req.valid.eq(0)
        with m.If(self.cfg.valid & self.cfg.ready):
            m.d.sync += [self.req.valid.eq(1), self.req.payload.id.eq(self.cfg.payload.id),
                         self.req.payload.position.eq(self.cfg.payload.position)]
        return m

