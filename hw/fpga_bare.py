"""Bare registered processing elements: the FPGA bench's measure of what the tools reach.

``lowbit fpga --design bare --unit U`` (and ``lowbit bench fpga``, in the same run as the units)
builds one processing element of unit kind ``U`` alone, the simplest way to write its
arithmetic: registered inputs, a registered product, a 24-bit accumulator, nothing else (no
output bank, no drain, no requantization, no tile protocol). Its LUTs are a floor for one PE of
the unit built by the same Yosys and nextpnr, so the bench can say how far a unit's per-PE cost
is from it (docs/fpga.md).

* INT (``int8``): ``acc += a * w``, signed ``a_bits`` x ``w_bits``.
* log (``log``): ``acc += +-(a << (D-1-e))``, 0 for an index ``e >= D``.
* XNOR (``xnor``): ``acc += popcount(~(a ^ w))`` over ``lanes`` bits.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from lowbit import LowbitError
from lowbit.contract import log_depth

from .units import describe

__all__ = ["BARE_ACC_BITS", "BarePE"]

BARE_ACC_BITS = 24      # the accumulator of the reference PEs (K up to 2^8 INT8 products)


class BarePE(wiring.Component):
    """One registered processing element of a unit kind, for the FPGA bench's comparison.

    Parameters
    ----------
    unit : str
        ``int8``, ``log`` or ``xnor``.
    **params
        The kind's own parameters (``a_bits``, ``bits``, ``lanes``, ...; rows and cols are 1).

    Attributes
    ----------
    description : UnitDescription
        The 1x1 unit of the same parameters (the bench counts MACs with it).
    params, rows, cols
        As the description has them (``rows = cols = 1``).
    a, w : In
        The operands of one beat (``w``: the weight, log code or weight bits).
    acc : Out(signed(24))
        The accumulator.
    """

    def __init__(self, unit: str, **params):
        params = {k: v for k, v in params.items() if k not in ("rows", "cols")}
        try:
            d = describe(unit, rows=1, cols=1, **params)
        except (TypeError, ValueError) as e:
            raise LowbitError(str(e)) from None
        if unit not in ("int8", "log", "xnor"):
            raise LowbitError(f"--design bare has processing elements for int8, log and xnor, "
                              f"not {unit}")
        self.kind, self.description, self.params = unit, d, d.params
        self.rows = self.cols = 1
        if unit == "int8":
            a, w = signed(d.a_bits), signed(d.w_bits)
        elif unit == "log":
            a, w = signed(d.a_bits), unsigned(d.bits)
        else:
            a = w = unsigned(d.lanes)
        super().__init__({"a": In(a), "w": In(w), "acc": Out(signed(BARE_ACC_BITS))})

    def elaborate(self, platform):
        m = Module()
        d = self.description
        a = Signal.like(self.a, name="a_reg")
        w = Signal.like(self.w, name="w_reg")
        m.d.sync += [a.eq(self.a), w.eq(self.w)]
        product = Signal(signed(BARE_ACC_BITS), name="product")
        if self.kind == "int8":
            m.d.sync += product.eq(a * w)
        elif self.kind == "log":
            depth = log_depth(d.bits, d.zero_code)
            e = w[:d.bits - 1] if d.bits > 1 else 0
            amount = Signal(range(max(depth, 2)), name="amount")
            m.d.comb += amount.eq(depth - 1 - e)
            magnitude = a << amount if depth > 1 else a
            zero = (e >= depth) if depth > 1 else 0
            m.d.sync += product.eq(Mux(zero, 0, Mux(w[d.bits - 1], -magnitude, magnitude)))
        else:
            agree = ~(a ^ w)
            m.d.sync += product.eq(sum(agree[i] for i in range(d.lanes)))
        m.d.sync += self.acc.eq(self.acc + product)
        return m
