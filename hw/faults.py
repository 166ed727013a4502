"""Test-only faulty variants of the matmul units: wrong arithmetic planted on purpose.

Co-simulation (``lowbit cosim``, docs/cosim.md) claims to catch any difference between the RTL
and the golden kernels. These variants prove it: each is a normal unit whose processing
elements get one deliberate arithmetic error, so the RTL disagrees with the golden kernel on
some (not all) elements. They are reachable only from tests and a hidden ``lowbit cosim`` flag;
nothing else builds them.

Faults (:data:`FAULTS`):

``drop-lsb``
    Every PE product loses its least significant bit (``p & ~1``) before it is accumulated:
    an accumulator that is wrong exactly when an odd number of odd products fall into it.
"""

from __future__ import annotations

from amaranth.hdl import Signal

from .matmul import ProcessingElements, make_unit
from .vec_softmax import Softmax

__all__ = ["FAULTS", "VECTOR_FAULTS", "make_faulty_unit"]

FAULTS = {"drop-lsb": "every PE product loses its least significant bit before accumulation"}


class _DropLsbPE(ProcessingElements):
    """A processing-element kind whose products are the wrapped kind's with bit 0 cleared.

    Same product shape, latencies, accumulators and error checks as the wrapped kind (the
    unit's description, hence its ports and layouts, is the normal one): only the arithmetic
    is wrong.
    """

    def __init__(self, inner):
        self.inner = inner
        self.latency = inner.latency
        self.product_shape = inner.product_shape
        self.bad_beat, self.beat_cost = inner.bad_beat, inner.beat_cost
        self.drain_latency = inner.drain_latency
        self.accumulator_shape, self.accumulate = inner.accumulator_shape, inner.accumulate
        self.tile_layout = inner.tile_layout
        self.tile_state, self.drain_terms = inner.tile_state, inner.drain_terms
        self.input_beat = inner.input_beat

    def elaborate(self, m, en, beat, rows, cols):
        prods = self.inner.elaborate(m, en, beat, rows, cols)
        out = []
        for r, row in enumerate(prods):
            faulty = []
            for c, p in enumerate(row):
                f = Signal(self.product_shape, name=f"fault_prod_{r}_{c}")
                m.d.comb += f.eq(p & ~1)
                faulty.append(f)
            out.append(faulty)
        return out


class _ExpEntrySoftmax(Softmax):
    """The softmax unit whose exponential table reads 0 at entry 128 (``2**-0.5``): wrong on
    rows where a kept position's ``d`` has the eight fraction bits ``1000 0000`` (binary) and an
    integer part below 16, right on the others."""

    def exp_table(self):
        table = super().exp_table()
        table[128] = 0
        return table


# Faults of the vector units: name -> (unit kind, faulty RTL class, what is wrong).
VECTOR_FAULTS = {"exp-entry": ("softmax", _ExpEntrySoftmax,
                               "entry 128 of the softmax exponential table reads 0")}


def make_faulty_unit(unit: str, fault: str, **params):
    """The unit ``make_unit(unit, **params)`` with ``fault`` (a key of :data:`FAULTS`, or of
    :data:`VECTOR_FAULTS` for its vector unit) planted.

    Raises ValueError for an unknown fault (and the unit's own errors for bad parameters).
    """
    if fault in VECTOR_FAULTS:
        kind, cls, _ = VECTOR_FAULTS[fault]
        if unit != kind:
            raise ValueError(f"fault {fault!r} applies to the {kind} unit only, not {unit}")
        return cls(**params)
    if fault not in FAULTS:
        names = ", ".join([*FAULTS, *VECTOR_FAULTS])
        raise ValueError(f"unknown fault {fault!r} (choose from {names})")
    top = make_unit(unit, **params)
    top.pe = _DropLsbPE(top.pe)
    top.fault = fault
    return top
