"""Where the FPGA flow puts a product into an ECP5 MULT18X18D with its output register
(lowbit.hw.dsp): which multiplies become blocks for each --dsp mode and family, and how a block
is configured. The products themselves are checked by every simulation of the units (which
builds the Amaranth arithmetic the blocks stand for)."""

# amaranth: UnusedElaboratable=no

from __future__ import annotations

from types import SimpleNamespace

import pytest
from amaranth.hdl import Fragment, Instance

from lowbit.hw.dsp import uses_dsp_primitive
from lowbit.hw.matmul import make_unit


def _instances(fragment):
    found = []
    for sub, _name, _loc in fragment.subfragments:
        if isinstance(sub, Instance):
            found.append(sub)
        else:
            found += _instances(Fragment.get(sub, None) if not isinstance(sub, Fragment)
                                else sub)
    return found


def _blocks(unit_name, family, dsp, **params):
    platform = SimpleNamespace(family=family, lowbit_dsp=dsp)
    unit = make_unit(unit_name, **params)
    return [i for i in _instances(Fragment.get(unit, platform)) if i.type == "MULT18X18D"]


@pytest.mark.parametrize("dsp, pe_blocks", [("auto", 6), ("requant", 0), ("off", None)])
def test_ecp5_blocks_per_mode(dsp, pe_blocks):
    """A 2x3 INT8 unit (32-bit accumulator: two 16-bit slices of t per column): with
    --dsp auto every PE product and every requantization slice is a block; with requant only
    the slices; with off none."""
    blocks = _blocks("int8", "ecp5", dsp, rows=2, cols=3)
    if pe_blocks is None:
        assert blocks == []
    else:
        assert len(blocks) == pe_blocks + 3 * 2


def test_no_blocks_elsewhere():
    """Simulation (no platform) and the iCE40 (Yosys infers its SB_MAC16 registers itself)
    keep the Amaranth arithmetic."""
    assert _blocks("int8", "ice40", "auto", rows=2, cols=2) == []
    unit = make_unit("int8", rows=2, cols=2)
    assert [i for i in _instances(Fragment.get(unit, None)) if i.type == "MULT18X18D"] == []


def test_block_configuration():
    """Output register on CLK0 with CE0 (the stage's enable) and RST0, every other register
    bypassed, signed operands; the operand ports carry 18 bits and the product 36."""
    block = _blocks("int8", "ecp5", "auto", rows=1, cols=1)[0]
    p = {k: v for k, v in block.parameters.items()}
    assert p["REG_OUTPUT_CLK"] == "CLK0" and p["REG_OUTPUT_CE"] == "CE0"
    assert p["REG_OUTPUT_RST"] == "RST0" and p["RESETMODE"] == "SYNC"
    for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_PIPELINE_CLK"):
        assert p[reg] == "NONE", reg
    ports = set(block.ports)
    assert {f"A{i}" for i in range(18)} <= ports and {f"B{i}" for i in range(18)} <= ports
    assert {f"P{i}" for i in range(36)} <= ports
    assert {"CLK0", "CE0", "RST0", "SIGNEDA", "SIGNEDB"} <= ports
    assert not any(name.startswith(("C1", "SRIA", "SRIB")) for name in ports)


def test_uses_dsp_primitive_widths():
    ecp5 = SimpleNamespace(family="ecp5", lowbit_dsp="requant")
    assert uses_dsp_primitive(ecp5, 18, 18)
    assert not uses_dsp_primitive(ecp5, 19, 8)
    assert not uses_dsp_primitive(SimpleNamespace(family="ecp5", lowbit_dsp="off"), 8, 8)
    assert not uses_dsp_primitive(None, 8, 8)
