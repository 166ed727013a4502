"""Co-simulation of the integer-only model's operations between the matmuls, on the vector units.

The integer-only model (:mod:`lowbit.sw.quant.integer`) sends every operation between its
matmuls through :func:`lowbit.sw.quant.kernels.call_op`: ``requantize``, ``softmax``,
``residual_add``, ``layernorm``, ``embedding`` and ``argmax``. :class:`RtlOps` substitutes each
of them (with :func:`~lowbit.sw.quant.kernels.use_kernels`): the call's tensors become rows of
the registered vector unit that implements the operation (:data:`OP_UNITS`; the unit kinds of
:mod:`lowbit.hw.vector`), the rows run through the Verilated unit
(:class:`lowbit.sim.vector_harness.VerilatedVector`), and the result is compared with the golden
operation's, by equality. The first difference raises
:class:`~lowbit.sim.cosim_kernels.CosimMismatch` naming the operation, its site (layer), the
decode step and the first differing element. With the matmuls on
:class:`~lowbit.sim.cosim_kernels.RtlKernels` nothing of a decode step is computed on the host
but the control of the search.

Each operation's rows are one harness call (rows of one length: a softmax over ``[B, H, Lq,
Lk]`` is ``B*H*Lq`` rows of ``Lk``); one unit is built per operation kind and parameter set
(cached builds) and reused for every call.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from lowbit.contract import ACC_MAX_BITS
from lowbit.hw.units import unit_kinds

from .cosim_kernels import CosimMismatch, UnitStats, describe_site

__all__ = ["OP_UNITS", "RtlOps"]

# operation (a key of lowbit.sw.quant.kernels.OPS) -> the vector unit kind that implements it
# (None: no unit yet, the golden operation runs on the host and is counted as such)
OP_UNITS = {"requantize": "requant", "softmax": "softmax", "residual_add": "residual",
            "layernorm": "layernorm", "embedding": "embedding", "argmax": "argmax",
            "log_softmax": None}


def _rows(t: torch.Tensor) -> np.ndarray:
    """``t`` [..., L] as an int64 numpy array of rows [R, L]."""
    return t.reshape(-1, t.shape[-1]).to(torch.int64).cpu().numpy()


def _per_row(v, rows: int, length: int, per_channel: bool) -> np.ndarray:
    """A multiplier or shift (0-dim, or [L] per channel) as the unit's operand: [R] or [R, L]."""
    v = torch.as_tensor(v).to(torch.int64).cpu()
    if per_channel:
        return np.broadcast_to(v.numpy(), (rows, length)).copy()
    return np.full(rows, int(v))


class RtlOps:
    """The vector units behind the integer-only model's operations, checked against golden.

    Parameters
    ----------
    config : the model's configuration (sizes the units: longest attention row, vocabulary,
        widths).
    lanes : elements per beat of every vector unit.
    fault : test only: a key of :data:`lowbit.hw.faults.VECTOR_FAULTS`; the unit kind it names
        is built faulty (co-simulation must report a mismatch).
    """

    def __init__(self, config, lanes: int = 8, fault: str | None = None):
        self.lanes, self.fault = lanes, fault
        longest = max(config.vocab_size, config.ffn_dim, config.d_model)
        self.sizes = {"softmax": config.max_position_embeddings, "argmax": config.vocab_size,
                      "layernorm": config.d_model, "requant": longest, "residual": longest,
                      "embedding": config.d_model}
        self.units: dict = {}           # (kind, params tuple) -> VerilatedVector
        self._stats: dict = {}          # (kind, params tuple) -> UnitStats
        self.counts: Counter = Counter()    # operation -> calls
        self.on_rtl: Counter = Counter()    # operation -> calls run on a vector unit
        self.calls = 0
        self.step = 0                   # decode step of the batch (argmax calls so far)

    # -- the substitutes ------------------------------------------------------------------------
    def kernels(self) -> dict:
        """``{operation: substitute}`` for :func:`lowbit.sw.quant.kernels.use_kernels`."""
        return {op: self._substitute(op) for op in OP_UNITS}

    def available(self, op: str) -> bool:
        """Whether the vector unit of ``op`` is registered (else it runs golden, on the host)."""
        return OP_UNITS[op] is not None and OP_UNITS[op] in unit_kinds()

    def new_batch(self) -> None:
        self.step = 0

    def _substitute(self, op: str):
        from lowbit.sw.quant import kernels

        golden = getattr(kernels.OPS[op], op)
        adapt = getattr(self, f"_{op}", None)

        def run(*args, **kwargs):
            site = kernels.current_site()
            t0 = time.perf_counter()
            want = golden(*args, **kwargs)
            golden_seconds = time.perf_counter() - t0
            self.counts[op] += 1
            self.calls += 1
            if not self.available(op):
                return want
            kind, params, ops, shape = adapt(*args, **kwargs)
            got = self._run(kind, params, ops, golden_seconds)
            got = torch.as_tensor(got, dtype=torch.int64).reshape(shape).to(want.device)
            if not torch.equal(got, want.to(torch.int64)):
                raise CosimMismatch(self._mismatch(op, site, args, got, want))
            self.on_rtl[op] += 1
            if op == "argmax":
                self.step += 1
            return want
        return run

    def _run(self, kind: str, params: dict, ops: dict, golden_seconds: float):
        from .vector_harness import VerilatedVector

        key = (kind, tuple(sorted(params.items())))
        unit = self.units.get(key)
        if unit is None:
            extra = {}
            if self.fault is not None:
                from lowbit.hw.faults import VECTOR_FAULTS
                if VECTOR_FAULTS[self.fault][0] == kind:
                    extra["fault"] = self.fault
            unit = self.units[key] = VerilatedVector(kind, lanes=self.lanes, **params, **extra)
            self._stats[key] = UnitStats(kind, {"lanes": self.lanes, **params})
        t0 = time.perf_counter()
        res = unit.run(ops)
        stats = self._stats[key]
        stats.calls += 1
        stats.harness_calls += 1
        stats.cycles += res.cycles
        stats.sim_seconds += res.seconds
        stats.pack_seconds += time.perf_counter() - t0 - res.seconds
        stats.golden_seconds += golden_seconds
        return res.y

    def _mismatch(self, op, site, args, got, want) -> dict:
        name = site.name if site is not None else op
        layer, role = describe_site(name)
        diff = got != want.to(torch.int64)
        index = [int(i) for i in diff.nonzero()[0]]
        where = "encoder pass" if name.startswith(("model.encoder", "encoder")) else \
            f"decode step {self.step}"
        return {"call": self.calls, "kernel": op, "site": name, "layer": layer,
                "role": f"{role}, {where}",
                "shapes": " x ".join(str(list(a.shape)) for a in args
                                     if isinstance(a, torch.Tensor) and a.dim() > 1),
                "result_shape": list(want.shape), "index": index,
                "rtl": int(got[tuple(index)]), "golden": int(want[tuple(index)]),
                "differing": int(diff.sum()), "elements": want.numel(), "what": "operation"}

    # -- operation -> unit rows -------------------------------------------------------------------
    def _requantize(self, acc, mult, shift, *, out_bits=8, relu=False, check=True):
        rows = _rows(acc)
        r, n = rows.shape
        per_channel = torch.as_tensor(mult).dim() > 0 or torch.as_tensor(shift).dim() > 0
        params = {"in_bits": ACC_MAX_BITS, "out_bits": out_bits, "per_channel": per_channel,
                  "max_len": self.sizes["requant"]}
        ops = {"data": rows, "mult": _per_row(mult, r, n, per_channel),
               "shift": _per_row(shift, r, n, per_channel), "relu": np.full(r, int(relu))}
        return "requant", params, ops, acc.shape

    def _softmax(self, z, mask=None, *, frac_bits=None, out_bits=8, check=True):
        from lowbit.contract import SOFTMAX_FRAC_BITS

        rows = _rows(z)
        keep = (np.ones_like(rows, dtype=bool) if mask is None
                else _rows(~mask.expand(z.shape)).astype(bool))
        params = {"in_bits": 16, "frac_bits": SOFTMAX_FRAC_BITS if frac_bits is None
                  else frac_bits, "out_bits": out_bits, "max_len": self.sizes["softmax"]}
        return "softmax", params, {"z": rows, "keep": keep}, z.shape

    def _residual_add(self, a, mult_a, shift_a, b, mult_b, shift_b, *, out_bits=16,
                      check=True):
        ra, rb = _rows(a), _rows(b)
        r, n = ra.shape
        per_channel = any(torch.as_tensor(v).dim() > 0
                          for v in (mult_a, shift_a, mult_b, shift_b))
        params = {"a_bits": 8, "b_bits": ACC_MAX_BITS, "out_bits": out_bits,
                  "per_channel": per_channel, "max_len": self.sizes["residual"]}
        ops = {"data": ra, "b": rb,
               "mult_a": _per_row(mult_a, r, n, per_channel),
               "shift_a": _per_row(shift_a, r, n, per_channel),
               "mult_b": _per_row(mult_b, r, n, per_channel),
               "shift_b": _per_row(shift_b, r, n, per_channel)}
        return "residual", params, ops, a.shape

    def _layernorm(self, t, g, b, shift, eps=0, *, in_bits=16, out_bits=8, check=True):
        rows = _rows(t)
        r, d = rows.shape
        ops = {"t": rows, "g": np.broadcast_to(_rows(g[None]), (r, d)).copy(),
               "b": np.broadcast_to(_rows(b[None]), (r, d)).copy(),
               "shift": np.full(r, int(torch.as_tensor(shift))),
               "eps": np.full(r, int(torch.as_tensor(eps)))}
        params = {"in_bits": in_bits, "out_bits": out_bits, "max_len": self.sizes["layernorm"]}
        return "layernorm", params, ops, t.shape

    def _embedding(self, ids, table, mult, shift, positions, offset=0, *, out_bits=8,
                   check=True):
        b, length = ids.shape
        pos = (offset + torch.arange(length)).expand(b, length)
        ops = {"ids": ids.reshape(-1).to(torch.int64).cpu().numpy(),
               "position": pos.reshape(-1).numpy(),
               "table": _rows(table), "mult": _rows(mult[None])[0],
               "shift": _rows(shift[None])[0], "positions": _rows(positions)}
        widest = int(table.abs().max()) if table.numel() else 0
        params = {"table_bits": max(8, widest.bit_length() + 1), "out_bits": out_bits,
                  "id_bits": max(int(table.shape[0] - 1).bit_length(), 1),
                  "pos_bits": max(int(positions.shape[0] - 1).bit_length(), 1),
                  "max_len": self.sizes["embedding"]}
        return "embedding", params, ops, (b, length, table.shape[1])

    def _argmax(self, z, *, check=True):
        rows = _rows(z)
        params = {"in_bits": 32, "max_len": self.sizes["argmax"]}
        return "argmax", params, {"z": rows}, z.shape[:-1]

    # -- results ----------------------------------------------------------------------------------
    def stats(self) -> list[UnitStats]:
        return list(self._stats.values())

    def op_counts(self) -> dict:
        """``{operation: [calls on a vector unit, calls]}``."""
        return {op: [self.on_rtl[op], self.counts[op]] for op in OP_UNITS if self.counts[op]}

    def close(self) -> None:
        for unit in self.units.values():
            unit.close()
        self.units.clear()
