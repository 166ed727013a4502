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

from amaranth.hdl import Cat, ClockSignal, Const, Instance, ResetSignal, Signal, signed

__all__ = ["dsp_mode", "paired_products", "pairs_products", "registered_product",
           "uses_dsp_primitive"]

_ECP5_WIDTH = 18        # MULT18X18D operand width (signed operands)


def _family(platform) -> str:
    """The platform's FPGA family in lower case (Amaranth: ``"ecp5"``, ``"iCE40"``), or
    ``""`` for none (simulation)."""
    return str(getattr(platform, "family", "") or "").lower()


def dsp_mode(platform) -> str:
    """The flow's ``--dsp`` mode for this platform (``platform.lowbit_dsp``): ``"auto"`` where
    the flow set none (simulation, other platforms), ``"requant"`` or ``"off"``."""
    return getattr(platform, "lowbit_dsp", "auto")


def uses_dsp_primitive(platform, a_width: int, b_width: int) -> bool:
    """Whether :func:`registered_product` instantiates the platform's DSP block for operands
    of these widths (signed widths: an unsigned operand needs one bit more)."""
    return (_family(platform) == "ecp5"
            and dsp_mode(platform) != "off"
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


def pairs_products(platform) -> bool:
    """Whether the INT PEs' products go two to a DSP block (:func:`paired_products`): on the
    iCE40 with DSP blocks for the PEs (``--dsp auto``)."""
    return _family(platform) == "ice40" and dsp_mode(platform) == "auto"


def paired_products(m, en, a0, w0, a1, w1, p0, p1, *, name: str) -> None:
    """``p0 = a0 * w0`` and ``p1 = a1 * w1`` (signed operands of at most 8 bits) in one iCE40
    SB_MAC16 in its two-8x8 mode: the block's input registers take the operands and its
    8x8 product registers the products when ``en`` is 1, so ``p0``, ``p1`` follow the
    operands by two enabled cycles, as registered operands and a registered product do.

    Yosys infers one 16x16 multiply per block; two products per block need the block's
    ``MODE_8x8`` (the bottom multiplier takes the low bytes of A and B, the top one the high
    bytes, each signed), which only an instance asks for.
    """
    ops = [Signal(signed(8), name=f"{name}_{x}") for x in ("a0", "w0", "a1", "w1")]
    m.d.comb += [op.eq(v) for op, v in zip(ops, (a0, w0, a1, w1))]   # sign-extended
    o = Signal(32, name=f"{name}_o")
    reset = ResetSignal("sync", allow_reset_less=True)
    m.submodules[name] = Instance(
        "SB_MAC16",
        p_NEG_TRIGGER=Const(0, 1), p_MODE_8x8=Const(1, 1),
        p_A_SIGNED=Const(1, 1), p_B_SIGNED=Const(1, 1),
        p_A_REG=Const(1, 1), p_B_REG=Const(1, 1), p_C_REG=Const(0, 1), p_D_REG=Const(0, 1),
        p_TOP_8x8_MULT_REG=Const(1, 1), p_BOT_8x8_MULT_REG=Const(1, 1),
        p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(0, 1),
        p_TOPOUTPUT_SELECT=Const(2, 2), p_BOTOUTPUT_SELECT=Const(2, 2),
        p_TOPADDSUB_LOWERINPUT=Const(0, 2), p_TOPADDSUB_UPPERINPUT=Const(0, 1),
        p_TOPADDSUB_CARRYSELECT=Const(0, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2),
        p_BOTADDSUB_UPPERINPUT=Const(0, 1), p_BOTADDSUB_CARRYSELECT=Const(0, 2),
        i_CLK=ClockSignal("sync"), i_CE=en,
        i_A=Cat(ops[0], ops[2]), i_B=Cat(ops[1], ops[3]),
        i_IRSTTOP=reset, i_IRSTBOT=reset,
        o_O=o)
    m.d.comb += [p0.eq(o[:16].as_signed()), p1.eq(o[16:].as_signed())]
