"""Bare registered processing elements: the FPGA bench's measure of what the tools reach.

``lowbit fpga --design bare --unit U`` (and ``lowbit bench fpga``, in the same run as the units)
builds one processing element of unit kind ``U`` alone, the simplest way to write its
arithmetic: registered inputs, a registered product, a 24-bit accumulator, nothing else (no
output bank, no drain, no requantization, no tile protocol). Its LUTs are a floor for one PE of
the unit built by the same Yosys and nextpnr, so the bench can say how far a unit's per-PE cost
is from it (docs/fpga.md).

Each kind writes its bare product itself (``bare_operands`` and ``bare_product`` of its
processing elements, :mod:`lowbit.hw.matmul`); the shipped kinds:

* INT (``int8``): ``acc += a * w``, signed ``a_bits`` x ``w_bits``.
* log (``log``): ``acc += +-(a << (D-1-e))``, 0 for an index ``e >= D``.
* XNOR (``xnor``): ``acc += popcount(~(a ^ w))`` over ``lanes`` bits.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from lowbit import LowbitError

from .units import describe, resolve, unit_kinds

__all__ = ["BARE_ACC_BITS", "BarePE"]

BARE_ACC_BITS = 24      # the accumulator of the reference PEs (K up to 2^8 INT8 products)


class BarePE(wiring.Component):
    """One registered processing element of a unit kind, for the FPGA bench's comparison.

    Parameters
    ----------
    unit : str
        A matmul unit kind whose processing elements have a bare form (``int8``, ``log``,
        ``xnor``).
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
        if unit not in unit_kinds("matmul"):
            raise LowbitError(f"--design bare takes a matmul unit kind "
                              f"({', '.join(unit_kinds('matmul'))}), not {unit}")
        try:
            d = describe(unit, rows=1, cols=1, **params)
        except (TypeError, ValueError) as e:
            raise LowbitError(str(e)) from None
        pe_class = resolve(type(d).rtl).pe_class
        self.pe = pe_class(d) if pe_class is not None else None
        shapes = self.pe.bare_operands() if self.pe is not None else None
        if shapes is None:
            raise LowbitError(f"--design bare: unit {unit} has no bare reference processing "
                              f"element")
        self.kind, self.description, self.params = unit, d, d.params
        self.rows = self.cols = 1
        a, w = shapes
        super().__init__({"a": In(a), "w": In(w), "acc": Out(signed(BARE_ACC_BITS))})

    def elaborate(self, platform):
        m = Module()
        a = Signal.like(self.a, name="a_reg")
        w = Signal.like(self.w, name="w_reg")
        m.d.sync += [a.eq(self.a), w.eq(self.w)]
        product = Signal(signed(BARE_ACC_BITS), name="product")
        m.d.sync += product.eq(self.pe.bare_product(m, a, w))
        m.d.sync += self.acc.eq(self.acc + product)
        return m
