# amaranth: UnusedElaboratable=no
"""lowbit fpga --design sequencer: the whole accelerator as an FPGA design (no build here; the
measured builds are in docs/fpga.md)."""

from __future__ import annotations

import pytest
from amaranth.back import rtlil

from lowbit.cli import main
from lowbit.hw.fpga import ScanWrapper, WordScanWrapper
from lowbit.hw.fpga_seq import SEQUENCER_FPGA, sequencer_core, sequencer_params
from lowbit.hw.sequencer import WORD_BITS


@pytest.mark.parametrize("argv, message", [
    (["--unit", "log"], "--design sequencer holds an INT8 array; --unit must be int8, not log"),
    (["--unit", "int8", "--rows", "3"], "--rows must be a power of two in 1..64, not 3"),
    (["--unit", "int8", "--cols", "128"], "--cols must be at most 64, not 128"),
    (["--unit", "int8", "--max-k", "64"],
     "--design sequencer takes --rows and --cols only, not --max-k"),
    (["--unit", "int8", "--out-bits", "16"],
     "--design sequencer takes --rows and --cols only, not --out-bits"),
])
def test_sequencer_design_argument_errors(capsys, tmp_path, argv, message):
    out_dir = tmp_path / "build"
    status = main(["fpga", "--board", "ulx3s-85f", "--design", "sequencer", *argv,
                   "-o", str(out_dir)])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and "Traceback" not in err
    assert err.strip() == f"lowbit: error: {message}"
    assert not out_dir.exists()     # refused before any work


def test_sequencer_design_is_the_core_with_its_memory_ports_in_the_wrapper():
    params = sequencer_params("int8", {"rows": 2, "cols": 4, "out_bits": 8})
    assert params == {"rows": 2, "cols": 4, **SEQUENCER_FPGA}
    core, p = sequencer_core("int8", {"rows": 2, "cols": 4})
    assert p == params and (core.mm_rows, core.mm_cols) == (2, 4)
    assert core.addr_bits == 24 and core.score_len == 8000
    top = ScanWrapper(core)
    # the scan chain drives every input: six operand slots, the array's read lanes (A rows
    # 1..R-1, W rows and bias words 1..C-1), program port, start
    lanes = (2 - 1) + 2 * (4 - 1)
    prog = 1 + (256 - 1).bit_length() + core.cmd_layout.size + 1
    assert top.in_bits == 6 * WORD_BITS + lanes * 64 + prog
    text = rtlil.convert(top, ports=[top.scan_in, top.scan_out])
    assert "scan_chain" in text


def test_word_scan_wrapper_sets_every_input_from_the_pin():
    """The word wrapper: a frame of WORD data bits then the address, shifted in LSB first and
    arriving MSB first, lands in the named input word; every input bit is reachable."""
    from amaranth.sim import Simulator
    from lowbit.hw.matmul import make_unit

    unit = make_unit("int8", rows=2, cols=2)
    top = WordScanWrapper(unit)
    assert top.words == -(-top.in_bits // 16) and top.wrapper_ff == top.words * 16 + 16 + top.addr_bits + 1
    frame_bits = 16 + top.addr_bits
    inputs = top._inputs
    seen = {}

    async def bench(ctx):
        for k, value in ((0, 0xA5C3), (top.words - 1, 0x1234)):
            frame = value | (k << 16)
            for i in reversed(range(frame_bits)):   # the shift register's top bit first
                ctx.set(top.scan_in, (frame >> i) & 1)
                await ctx.tick()
            await ctx.tick()
            bits = 0
            for v in reversed(inputs):
                bits = (bits << len(v)) | (ctx.get(v.as_unsigned()) if v.shape().signed else ctx.get(v))
            seen[k] = (bits >> (16 * k)) & 0xFFFF

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    last_mask = (1 << (top.in_bits - 16 * (top.words - 1))) - 1
    assert seen == {0: 0xA5C3, top.words - 1: 0x1234 & last_mask}


def test_a_design_that_does_not_fit_is_named_with_what_it_needs(tmp_path):
    from lowbit.hw import fpga

    log = tmp_path / "place_and_route.log"
    log.write_text("Info: Device utilisation:\n"
                   "Info: \t         ICESTORM_LC: 239046/ 5280  4527%\n"
                   "Info: \t        ICESTORM_DSP:    22/    8   275%\n"
                   "ERROR: Unable to place cell 'x'\n")
    with pytest.raises(fpga.FpgaDoesNotFit) as e:
        fpga._raise_failure("place and route", str(tmp_path), str(log),
                            fpga.get_board("icebreaker"), "int8 1x1 sequencer")
    assert str(e.value) == ("int8 1x1 sequencer does not fit the icebreaker (iCE40UP5K): needs "
                            "ICESTORM_LC 239046/5280 (4527%), ICESTORM_DSP 22/8 (275%)")
    assert e.value.overflow == {"ICESTORM_LC": (239046, 5280), "ICESTORM_DSP": (22, 8)}
