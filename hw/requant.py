"""The requantizer's arithmetic in RTL, in one place (docs/numerics.md, "Requantization").

``r = (p + 2**(shift-1)) >> shift`` (round half up, nothing added for ``shift = 0``), an
optional ReLU, and saturation to signed ``out_bits``. The matmul unit's drain
(:mod:`lowbit.hw.matmul`) and the vector units (LayerNorm, residual add, requantize, embedding)
build their rounding shifts and saturations from these functions; each function adds
combinational logic to a module and returns its result, so the caller decides where the
pipeline registers go (the matmul drain registers between :func:`rounding` and
:func:`shift_relu_saturate`).
"""

from __future__ import annotations

from amaranth.hdl import C, Mux, Signal, signed, unsigned

__all__ = ["rounding", "shift_relu_saturate", "arithmetic_shift", "relu_saturate", "saturate"]


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
    rectified = Signal(signed(len(shifted)), name=f"rectified{name}")
    m.d.comb += rectified.eq(Mux(relu & (shifted < 0), 0, shifted))
    return saturate(rectified, out_bits)


def saturate(value, bits: int):
    """``value`` clamped to signed ``bits`` (``value`` itself when it is no wider)."""
    if len(value) <= bits:
        return value
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(value < lo, lo, Mux(value > hi, hi, value))
