"""The requantizer's arithmetic in RTL, in one place (docs/numerics.md, "Requantization").

``r = (p + 2**(shift-1)) >> shift`` (round half up, nothing added for ``shift = 0``), an
optional ReLU, and saturation to signed ``out_bits``. The matmul unit's drain
(:mod:`lowbit.hw.matmul`) and the vector units (LayerNorm, residual add, requantize, embedding)
build their rounding shifts and saturations from these functions; each function adds
combinational logic to a module and returns its result, so the caller decides where the
pipeline registers go (the matmul drain registers after :func:`rounding`'s term, after the
add, after the shift and between :func:`relu_clamp` and :func:`clamp_select`).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import C, Mux, Signal, signed, unsigned

__all__ = ["rounding", "shift_relu_saturate", "arithmetic_shift", "relu_saturate", "saturate",
           "Clamp", "relu_clamp", "clamp_select"]


def rounding(m, shift, width: int, name: str = ""):
    """The rounding term of a shift of a value ``|p| < 2**(width-1)``.

    Returns ``(clamped, term)``: ``clamped = min(shift, width)`` and ``term = 2**(clamped-1)``
    (0 when ``clamped = 0``), unsigned ``width`` bits. Every shift ``>= width`` rounds such a
    ``p`` to 0, as ``width`` itself does, so the clamp keeps the term and ``p + term`` within
    ``width + 1`` signed bits without changing the result.
    """
    clamped = Signal(range(width + 1), name=f"shift_clamped{name}")
    # no comparison when the shift cannot exceed the width (Verilator: CMPCONST)
    m.d.comb += clamped.eq(Mux(shift > width, width, shift) if (1 << len(shift)) - 1 > width
                           else shift)
    term = Signal(unsigned(width), name=f"round{name}")
    m.d.comb += term.eq((C(1, width + 1) << clamped) >> 1)
    return clamped, term


def shift_relu_saturate(m, value, shift, relu, out_bits: int, name: str = ""):
    """``sat(max(value >> shift, 0 if relu))``: the requantizer's last step.

    ``value`` is ``p + term`` (signed), ``shift`` the clamped shift of :func:`rounding`; ``>>``
    is an arithmetic (flooring) shift. ``relu`` is a 1-bit signal, or None for no ReLU.
    Returns the saturated value (an expression of ``value``'s width or narrower). A caller
    that registers between the shift and the rest uses :func:`arithmetic_shift` and
    :func:`relu_saturate`, whose composition this is.
    """
    return relu_saturate(m, arithmetic_shift(m, value, shift, name), relu, out_bits, name)


def arithmetic_shift(m, value, shift, name: str = ""):
    """``value >> shift`` (signed, flooring), as a signal of ``value``'s width."""
    shifted = Signal(signed(len(value)), name=f"shifted{name}")
    m.d.comb += shifted.eq(value >> shift)
    return shifted


def relu_saturate(m, shifted, relu, out_bits: int, name: str = ""):
    """``sat(max(shifted, 0 if relu))`` of a shifted value (:func:`arithmetic_shift`)."""
    if relu is None:
        return saturate(shifted, out_bits)
    if len(shifted) > out_bits and shifted.shape().signed:
        return clamp_select(relu_clamp(shifted, relu, out_bits), out_bits)
    rectified = Signal(signed(len(shifted)), name=f"rectified{name}")
    m.d.comb += rectified.eq(Mux(relu & (shifted < 0), 0, shifted))
    return saturate(rectified, out_bits)


@dataclass
class Clamp:
    """What ReLU and saturation to signed ``bits`` decide about a signed value, in two halves
    a pipeline may register between (:func:`relu_clamp`, then :func:`clamp_select`).

    ``low``: the value's low ``bits`` bits (signed); ``fits``: the value fits ``bits``
    (its bits from ``bits - 1`` up are all equal); ``neg``: it is negative; ``zero``: ReLU
    clears it (``relu`` and negative). Each is a narrow signal: a register between the halves
    holds ``bits + 3`` bits, not the value's width.
    """
    low: object
    fits: object
    neg: object
    zero: object

    def fields(self) -> list:
        return [self.low, self.fits, self.neg, self.zero]


def relu_clamp(value, relu, bits: int) -> Clamp:
    """The first half of ``sat(max(value, 0 if relu))``: a LUT tree over ``value``'s top bits
    (``value`` signed; ``relu`` a 1-bit signal or None)."""
    neg = value[-1]
    if len(value) <= bits:
        fits, low = C(1, 1), value.as_signed()
    else:
        top = value[bits - 1:]
        fits, low = ~top.any() | top.all(), value[:bits].as_signed()
    return Clamp(low=low, fits=fits, neg=neg, zero=C(0, 1) if relu is None else relu & neg)


def clamp_select(clamp: Clamp, bits: int):
    """The second half: 0, the low bits, or the bound on the value's side (signed ``bits``)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(clamp.zero, C(0, signed(bits)),
               Mux(clamp.fits, clamp.low.as_signed(),
                   Mux(clamp.neg, C(lo, signed(bits)), C(hi, signed(bits)))))


def saturate(value, bits: int):
    """``value`` clamped to signed ``bits`` (``value`` itself when it is no wider).

    A value fits ``bits`` exactly when its bits from ``bits - 1`` up are all equal (all 0 or
    all 1), so the clamp is that bit test and the sign bit choosing the bound
    (:func:`relu_clamp`, :func:`clamp_select`): a tree of LUTs, where comparisons against the
    two bounds would be two carry chains as wide as ``value``.
    """
    if len(value) <= bits:
        return value
    if not value.shape().signed:        # only the upper bound applies
        hi = (1 << (bits - 1)) - 1
        return Mux(value[bits - 1:].any(), C(hi, signed(bits)), value[:bits].as_signed())
    return clamp_select(relu_clamp(value, None, bits), bits)
