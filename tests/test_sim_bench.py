"""``lowbit bench units`` end to end on a tiny matmul (the three simulators, JSON output)."""

from __future__ import annotations

import json

import pytest

from lowbit.cli import main


@pytest.mark.timeout(600)
def test_bench_units_tiny(tmp_path, capsys):
    out = tmp_path / "units.json"
    assert main(["bench", "units", "--units", "int8", "--m", "5", "--k", "24", "--n", "6",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| unit | array | M x K x N")
    assert table[2].split("|")[1].strip() == "int8"
    (row,) = json.loads(out.read_text())["rows"]
    # 2 x 2 tiles of 24 beats: ideal 5*24*6/16 = 45 cycles; 4 tiles occupy 96 beat slots.
    assert row["ideal"] == 5 * 24 * 6 / 16
    assert 96 <= row["cycles"] <= 96 + 20
    assert row["harness"] > 0 and row["cocotb"] > 0 and row["amaranth"] > 0


def test_bench_units_bad_arguments(capsys):
    assert main(["bench", "units", "--skip", "verilog"]) == 2
    assert "--skip takes amaranth and/or cocotb, not verilog" in capsys.readouterr().err
    assert main(["bench", "units", "--units", "int8", "--k", "40000"]) == 2
    assert "K 40000 exceeds the int8 unit's max_k 32768" in capsys.readouterr().err
