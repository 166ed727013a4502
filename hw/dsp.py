"""Registered products, and where an FPGA flow asks for it, the DSP block that registers them.

``registered_product(m, en, a, b, out, platform=...)`` makes ``out`` a register that takes
``a * b`` on each cycle ``en`` is 1. In simulation and on most platforms that is Amaranth
arithmetic and a register, which Yosys maps as it likes. On the ECP5 with DSP blocks allowed,
Yosys 0.70 maps a multiplier onto a MULT18X18D with every register of the block bypassed, so
the route from the logic to the block and back lies in one clock period (about 3 ns each way
on the ECP5-85F, more than half of an 8.3 ns period). There the product is the block itself,
instantiated with its output register in use (``REG_OUTPUT_CLK``), clocked by the ``sync``
domain, enabled by ``en`` and reset by the domain's synchronous reset like any other register
of the unit. The block computes the same product of the same operands (sign-extended to its
18 bits), so the unit's function and latency do not change.

The FPGA flow (:mod:`lowbit.hw.fpga`) sets ``platform.lowbit_dsp`` to the ``--dsp`` mode;
``"off"`` keeps every multiplier in LUT logic.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, ResetSignal, Signal, signed

__all__ = ["registered_product", "uses_dsp_primitive"]

_ECP5_WIDTH = 18        # MULT18X18D operand width (signed operands)


def uses_dsp_primitive(platform, a_width: int, b_width: int) -> bool:
    """Whether :func:`registered_product` instantiates the platform's DSP block for operands
    of these widths (signed widths: an unsigned operand needs one bit more)."""
    return (getattr(platform, "family", None) == "ecp5"
            and getattr(platform, "lowbit_dsp", "auto") != "off"
            and a_width <= _ECP5_WIDTH and b_width <= _ECP5_WIDTH)


def _signed_width(value) -> int:
    shape = value.shape()
    return shape.width if shape.signed else shape.width + 1


def registered_product(m, en, a, b, out, *, platform, name: str) -> None:
    """``out`` takes ``a * b`` on each cycle ``en`` is 1: a register of the ``sync`` domain,
    reset to 0, wide enough for the product (nothing else may drive it)."""
    if not uses_dsp_primitive(platform, _signed_width(a), _signed_width(b)):
        with m.If(en):
            m.d.sync += out.eq(a * b)
        return
    a18 = Signal(signed(_ECP5_WIDTH), name=f"{name}_a")
    b18 = Signal(signed(_ECP5_WIDTH), name=f"{name}_b")
    p = Signal(2 * _ECP5_WIDTH, name=f"{name}_p")
    m.d.comb += [a18.eq(a), b18.eq(b)]      # sign- or zero-extended by the operand's shape
    # Only the ports in use are connected: the block's unused inputs (C, the cascade and shift
    # inputs, the other clocks) take their defaults in nextpnr, where tying them to 0 made
    # one constant net too large to route.
    ports = {
        "i_CLK0": ClockSignal("sync"), "i_CE0": en,
        "i_RST0": ResetSignal("sync", allow_reset_less=True),
        "i_SIGNEDA": Const(1, 1), "i_SIGNEDB": Const(1, 1),
    }
    for i in range(_ECP5_WIDTH):
        ports.update({f"i_A{i}": a18[i], f"i_B{i}": b18[i]})
    for i in range(2 * _ECP5_WIDTH):
        ports[f"o_P{i}"] = p[i]
    m.submodules[name] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="NONE", p_REG_INPUTB_CLK="NONE", p_REG_INPUTC_CLK="NONE",
        p_REG_PIPELINE_CLK="NONE",
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_CLK0_DIV="ENABLED", p_CLK1_DIV="ENABLED", p_CLK2_DIV="ENABLED",
        p_CLK3_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED",
        p_CAS_MATCH_REG="FALSE", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
        p_RESETMODE="SYNC",
        **ports)
    m.d.comb += out.eq(p.as_signed())
