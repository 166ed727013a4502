# amaranth: UnusedElaboratable=no
"""Verilog out of the units: Verilator lint (-Wall with the documented waivers), port names and
widths as docs/hardware.md states them, and the ``lowbit hw verilog`` command line."""

from __future__ import annotations

import re

import pytest

from lowbit.cli import main
from lowbit.hw import LINT_WAIVERS, generate_verilog, lint_verilog, make_unit, unit_kinds


def ports(source: str) -> dict[str, tuple[str, int]]:
    """``{port: (direction, width)}`` from the module's ``input``/``output`` declarations."""
    found = {}
    for direction, rng, name in re.findall(r"^\s*(input|output)\s+(\[\d+:0\]\s+)?(\w+);",
                                           source, re.M):
        width = int(re.match(r"\[(\d+)", rng).group(1)) + 1 if rng else 1
        found[name] = (direction, width)
    return found


@pytest.mark.parametrize("unit, params", [
    ("int8", {}),
    ("int8", dict(rows=1, cols=1, a_bits=2, w_bits=2, max_k=1, out_bits=32)),
    ("int8", dict(rows=3, cols=5, a_bits=4, w_bits=6)),
    ("log", dict(bits=1, rows=1, cols=2)),
    ("log", dict(bits=2, zero_code=True)),
    ("log", dict(bits=5, rows=2, cols=3)),
    ("log", dict(bits=8, zero_code=True, a_bits=4, max_k=3)),
    ("xnor", {}),
    ("xnor", dict(lanes=1, rows=1, cols=1)),
    ("xnor", dict(a_planes=8, w_planes=8, lanes=64, rows=2, cols=2)),
    ("xnor", dict(lanes=3, out_bits=2, max_k=5)),
])
def test_lint_and_ports(unit, params):
    top = make_unit(unit, **params)
    name = f"{unit}_dut"
    source = generate_verilog(unit, name=name, **params)
    lint_verilog(source, name)              # raises LowbitError with the warnings otherwise
    assert re.search(rf"^module {name}\(", source, re.M)
    assert ports(source) == {
        "clk": ("input", 1), "rst": ("input", 1),
        "x__payload": ("input", top.x_layout.size), "x__valid": ("input", 1),
        "x__ready": ("output", 1),
        "cfg__payload": ("input", top.cfg_layout.size), "cfg__valid": ("input", 1),
        "cfg__ready": ("output", 1),
        "y__payload": ("output", top.y_layout.size), "y__valid": ("output", 1),
        "y__ready": ("input", 1),
    }


def test_lint_waivers_are_the_documented_ones():
    assert LINT_WAIVERS == ("-Wno-WIDTHEXPAND", "-Wno-UNUSEDSIGNAL", "-Wno-PROCASSINIT")


def test_lint_reports_real_problems():
    from lowbit import LowbitError
    bad = "module m(input a, output b);\n  wire unused_wide = a;\n  assign b = 2'b10;\nendmodule\n"
    with pytest.raises(LowbitError, match="verilator lint of m failed"):
        lint_verilog(bad, "m")


def test_default_module_names():
    assert re.search(r"^module int8_matmul\(", generate_verilog("int8", rows=1, cols=1), re.M)
    assert re.search(r"^module log_matmul\(", generate_verilog("log", rows=1, cols=1), re.M)
    assert re.search(r"^module xnor_matmul\(", generate_verilog("xnor", rows=1, cols=1,
                                                                lanes=2), re.M)
    with pytest.raises(ValueError, match="module name must be a Verilog identifier"):
        generate_verilog("int8", name="9x")


# ---------------------------------------------------------------------------------------------
# lowbit hw verilog


def test_cli_writes_verilog(tmp_path, capsys):
    out = tmp_path / "u.v"
    assert main(["hw", "verilog", "--unit", "xnor", "--rows", "2", "--cols", "3", "--planes",
                 "2", "--w-planes", "3", "--lanes", "8", "--lint", "-o", str(out)]) == 0
    text = out.read_text()
    top = make_unit("xnor", rows=2, cols=3, a_planes=2, w_planes=3, lanes=8)
    assert ports(text)["x__payload"] == ("input", top.x_layout.size)
    assert "lint clean" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["u.v"]      # no temporary left behind


def test_cli_stdout(capsys):
    assert main(["hw", "verilog", "--unit", "log", "--bits", "3", "--zero-code", "--rows", "1",
                 "--cols", "1", "-o", "-"]) == 0
    captured = capsys.readouterr()
    assert "module log_matmul(" in captured.out
    assert "accumulator" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["--unit", "foo"], f"unknown unit 'foo' (choose from {', '.join(unit_kinds())})"),
    (["--unit", "int8", "--rows", "0"], "--rows must be a positive integer, not 0"),
    (["--unit", "int8", "--rows", "65"], "--rows must be at most 64, not 65"),
    (["--unit", "log", "--cols", "-2"], "--cols must be a positive integer, not -2"),
    (["--unit", "int8", "--max-k", "0"], "--max-k must be a positive integer, not 0"),
    (["--unit", "int8", "--max-k", str(1 << 40)],
     "--max-k 1099511627776 needs a 57-bit accumulator; at most 47 bits are allowed"),
    (["--unit", "int8", "--out-bits", "1"], "--out-bits must be an integer in 2..32, not 1"),
    (["--unit", "int8", "--a-bits", "9"], "--a-bits must be an integer in 2..8, not 9"),
    (["--unit", "int8", "--w-bits", "1"], "--w-bits must be an integer in 2..8, not 1"),
    (["--unit", "log", "--bits", "0"], "--bits must be an integer in 1..8, not 0"),
    (["--unit", "log", "--bits", "1", "--zero-code"], "--zero-code needs at least 2 bits, not 1"),
    (["--unit", "xnor", "--planes", "9"], "--planes must be an integer in 1..8, not 9"),
    (["--unit", "xnor", "--a-planes", "0"], "--a-planes must be an integer in 1..8, not 0"),
    (["--unit", "xnor", "--lanes", "300"], "--lanes must be an integer in 1..256, not 300"),
    (["--unit", "log", "--w-bits", "4"], "--w-bits applies to the int8 unit only, not log"),
    (["--unit", "int8", "--bits", "1"], "--bits must be an integer in 2..8 for int8, not 1"),
    (["--unit", "xnor", "--bits", "9"], "--bits must be an integer in 1..8 for xnor, not 9"),
    (["--unit", "xnor", "--a-bits", "4"], "--a-bits applies to the int8 and log units only, not xnor"),
    (["--unit", "log", "--lanes", "4"], "--lanes applies to the xnor unit only, not log"),
    (["--unit", "int8", "--name", "9a"], "--name must be a Verilog identifier, not '9a'"),
])
def test_cli_errors(argv, message, tmp_path, capsys):
    out = tmp_path / "x.v"
    assert main(["hw", "verilog", *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"lowbit: error: {message}\n"
    assert not out.exists()


def test_cli_missing_folder(tmp_path, capsys):
    assert main(["hw", "verilog", "--unit", "int8", "-o", str(tmp_path / "no" / "x.v")]) == 2
    assert "no does not exist" in capsys.readouterr().err
