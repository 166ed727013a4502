"""The compiled Verilator harness (sim/harness.py) and ``lowbit verify`` against the golden model.

Every unit is built once per parameter set (cached under the lowbit cache folder) and run on
random matmuls with fixed seeds and on the corner cases of sim/operands.py, including the widest
K the unit accepts (``max_k``, 32768 by default), with and without random backpressure.
Comparison is equality. The harness streams the packer's words in blocks; the blocks are
checked to join to exactly the driver's payloads without Verilator.
"""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.cli import main
from lowbit.hw.driver import Protocol
from lowbit.hw.units import UnitDescription, unit_kinds
from lowbit.sim.harness import VerilatedUnit
from lowbit.sim.operands import corner_cases, random_operands
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.timeout(600)



def _words_to_ints(words: np.ndarray) -> list[int]:
    return [int.from_bytes(row.astype("<u4").tobytes(), "little") for row in words]


PACKING_CASES = [
    ("int8", dict(rows=3, cols=2, a_bits=5, w_bits=7, max_k=64)),
    ("int8", dict(rows=4, cols=4)),
    ("log", dict(rows=2, cols=3, bits=3, zero_code=True, max_k=64)),
    ("log", dict(rows=1, cols=1, bits=1)),
    ("xnor", dict(rows=2, cols=3, a_planes=2, w_planes=3, lanes=20, max_k=200)),
    ("xnor", dict(rows=3, cols=2, lanes=64)),
    ("xnor", dict(rows=2, cols=2, lanes=1, a_planes=2, max_k=40)),
]


@pytest.mark.parametrize("unit,params", PACKING_CASES)
def test_blocks_join_to_the_driver_payloads(unit, params):
    """The blocks the harness streams (whole tile rows) join to the driver's payloads."""
    protocol = Protocol.for_unit(unit, **params)
    packer = protocol.packer
    rng = np.random.default_rng(7)
    k_hi = min(protocol.unit.max_k, 150)
    for m, k, n in [(1, 1, 1), (5, k_hi, 7), (protocol.unit.rows * 2, 33, protocol.unit.cols)]:
        kw = random_operands(protocol.unit, rng, m, min(k, k_hi), n)
        plan = protocol.plan(**kw)
        job = packer.prepare(**kw)
        # Small blocks so that several blocks are joined, as for a large matmul.
        cfg, x = [], []
        for _, _, c, xb in packer.blocks(job, chunk_beats=3 * job.beats):
            cfg += _words_to_ints(c)
            x += _words_to_ints(xb)
        assert cfg == [t.cfg for t in plan.tiles]
        assert x == [beat for t in plan.tiles for beat in t.x]
        assert job.x_beats == plan.x_beats


# Parameter sets built with Verilator (each one build, cached): the default unit of each kind
# and variants of every width parameter.
BUILDS = {
    "int8": ("int8", dict(rows=4, cols=4)),
    "int4": ("int8", dict(rows=3, cols=2, a_bits=4, w_bits=4, out_bits=4)),
    "int3x7": ("int8", dict(rows=2, cols=3, a_bits=3, w_bits=7, out_bits=16)),
    "log4": ("log", dict(rows=4, cols=4)),
    "xnor": ("xnor", dict(rows=4, cols=4)),
    "xnor8x8": ("xnor", dict(rows=2, cols=3, a_planes=8, w_planes=8, lanes=20)),
    **{f"log{b}{'z' if z else ''}": ("log", dict(rows=2, cols=3, bits=b, zero_code=z))
       for b, z in [(1, False), (2, False), (2, True), (3, False), (5, True), (6, False),
                    (7, False), (8, False), (8, True)]},
}


def _check(rtl: VerilatedUnit, name: str, kw: dict, **run):
    res = rtl.matmul(**kw, **run)
    want = rtl.expected(**kw)
    bad = np.argwhere(res.y != want)
    assert len(bad) == 0, (f"{name}: {len(bad)}/{want.size} mismatches, first at {bad[0]}: "
                           f"RTL {res.y[tuple(bad[0])]}, golden {want[tuple(bad[0])]}")
    return res


@pytest.mark.parametrize("build", list(BUILDS))
def test_harness_random_and_corners(build):
    unit, params = BUILDS[build]
    rng = np.random.default_rng(list(BUILDS).index(build) + 11)
    with VerilatedUnit(unit, **params) as rtl:
        hw = rtl.hw
        for i, (m, k, n) in enumerate([(hw.rows * 3 + 1, 257, hw.cols * 2 + 1), (1, 1, 1),
                                       (7, 1000, 5)]):
            kw = random_operands(hw, rng, m, k, n)
            _check(rtl, f"random {i}", kw)
            # Random gaps and backpressure change the timing, never the result.
            _check(rtl, f"random {i} backpressure", kw, gaps=0.3, stalls=0.4, seed=i)
        for name, kw in corner_cases(hw, rng):
            _check(rtl, name, kw)


def test_harness_throughput_int8():
    """With K >= rows + 1 the INT unit takes one beat per cycle (docs/hardware.md)."""
    with VerilatedUnit("int8", rows=4, cols=4) as rtl:
        rng = np.random.default_rng(3)
        res = _check(rtl, "mid", random_operands(rtl.hw, rng, 32, 256, 32, raw=False))
        assert res.ideal_cycles == 32 * 256 * 32 / 16
        assert res.ideal_cycles <= res.cycles <= res.ideal_cycles + 32
        assert res.utilisation > 0.99


def test_harness_detects_a_wrong_result():
    """A checker must be able to fail: a result one LSB off is reported."""
    with VerilatedUnit("int8", rows=4, cols=4) as rtl:
        kw = random_operands(rtl.hw, np.random.default_rng(5), 5, 9, 6, raw=True)
        res = rtl.matmul(**kw)
        want = rtl.expected(**kw)
        want[2, 3] += 1
        assert int((res.y != want).sum()) == 1


def test_harness_reports_a_hang():
    with VerilatedUnit("int8", rows=4, cols=4) as rtl:
        job = rtl.prepare(**random_operands(rtl.hw, np.random.default_rng(1), 4, 3, 4))
        _, _, cfg, x = next(rtl.packer.blocks(job))
        with pytest.raises(RuntimeError, match=r"the unit hung: after \d+ cycles"):
            rtl.run_beats(cfg, x[:-1], rtl.hw.rows)       # the tile's last beat never comes


# ---------------------------------------------------------------------------------------------
# lowbit verify


@pytest.mark.parametrize("argv", [
    ["--unit", "int8", "--m", "9", "--k", "37", "--n", "6"],
    ["--unit", "log", "--bits", "4", "--m", "5", "--k", "32768", "--n", "5", "--zero-code"],
    ["--unit", "xnor", "--m", "6", "--k", "45", "--n", "9", "--bits", "8", "--rows", "2",
     "--cols", "3", "--lanes", "20", "--backpressure", "0.3"],
    ["--unit", "int8", "--bits", "4", "--m", "3", "--k", "5", "--n", "2", "--rows", "3",
     "--cols", "2", "--out-bits", "4", "--relu"],
])
def test_verify_cli(argv, capsys):
    assert main(["verify", *argv, "--seed", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m, n = int(argv[argv.index("--m") + 1]), int(argv[argv.index("--n") + 1])
    assert out[-1] == f"bit-exact: {m * n}/{m * n}"


def test_verify_cli_reports_mismatch(monkeypatch, capsys):
    """A golden model that disagrees in one element: the count drops and the exit status is 1."""
    real = UnitDescription.golden_result

    def off_by_one(self, *a, **kw):
        y = real(self, *a, **kw)
        y[0, 1] += 1
        return y
    monkeypatch.setattr(UnitDescription, "golden_result", off_by_one)
    assert main(["verify", "--unit", "int8", "--m", "4", "--k", "8", "--n", "4"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "bit-exact: 15/16"
    assert any(line.startswith("MISMATCH Y[0, 1]") for line in out)


@pytest.mark.parametrize("argv,message", [
    (["--unit", "int9"], f"unknown unit 'int9' (choose from {', '.join(unit_kinds())})"),
    (["--unit", "int8", "--m", "0"], "--m must be a positive integer, not 0"),
    (["--unit", "int8", "--n", "-3"], "--n must be a positive integer, not -3"),
    (["--unit", "int8", "--k", "0"], "--k must be a positive integer, not 0"),
    (["--unit", "int8", "--k", "40000"], "--k 40000 exceeds the unit's max_k 32768"),
    (["--unit", "int8", "--k", "65", "--max-k", "64"], "--k 65 exceeds the unit's max_k 64"),
    (["--unit", "log", "--bits", "9"], "--bits must be an integer in 1..8, not 9"),
    (["--unit", "log", "--bits", "0"], "--bits must be an integer in 1..8, not 0"),
    (["--unit", "int8", "--bits", "1"], "--bits must be an integer in 2..8 for int8, not 1"),
    (["--unit", "xnor", "--bits", "9"], "--bits must be an integer in 1..8 for xnor, not 9"),
    (["--unit", "int8", "--rows", "0"], "--rows must be a positive integer, not 0"),
    (["--unit", "int8", "--a-bits", "9"], "--a-bits must be an integer in 2..8, not 9"),
    (["--unit", "int8", "--lanes", "8"], "--lanes applies to the xnor unit only, not int8"),
    (["--unit", "int8", "--seed", "-1"], "--seed must be a non-negative integer, not -1"),
    (["--unit", "int8", "--relu", "--raw"], "--relu and --raw exclude each other"),
])
def test_verify_cli_bad_arguments(argv, message, capsys):
    defaults = {"--m": "2", "--k": "3", "--n": "2"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv = argv + [flag, value]
    assert main(["verify", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowbit: error: ")
    assert message in err[0]
