# amaranth: UnusedElaboratable=no
"""The vector units' scaffold (hw/vector.py): the shared divider and integer square root against
Python's integers, by equality, in the Amaranth simulator."""

from __future__ import annotations

import math
import random

import pytest
from amaranth.sim import Simulator

from lowbit.hw.units import ParameterError
from lowbit.hw.vector import Divider, Isqrt, RowBuffer

pytestmark = pytest.mark.timeout(600)


def run_stream_op(op, payloads, *, stall_every: int = 0):
    """Push each payload dict through ``op.i``, collect ``op.o`` payloads; also return the
    cycles from each accepted ``i`` beat to its ``o`` beat (must be ``op.latency``)."""
    results, latencies = [], []

    async def bench(ctx):
        n = 0
        for p in payloads:
            ctx.set(op.i.payload, p)
            ctx.set(op.i.valid, 1)
            await ctx.tick().until(op.i.ready)
            ctx.set(op.i.valid, 0)
            cycles = 0
            while True:
                cycles += 1
                _, _, valid, out = await ctx.tick().sample(op.o.valid, op.o.payload)
                if ctx.get(op.o.valid):
                    break
            latencies.append(cycles)
            n += 1
            if stall_every and n % stall_every == 0:     # result waits untaken a while
                await ctx.tick().repeat(3)
            results.append({k: ctx.get(getattr(op.o.payload, k))
                            for k, _ in op.o.payload.shape()})
            ctx.set(op.o.ready, 1)
            await ctx.tick()
            ctx.set(op.o.ready, 0)

    sim = Simulator(op)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return results, latencies


def _corners(width):
    top = (1 << width) - 1
    vals = {0, 1, 2, 3, top, top - 1, top >> 1, (top >> 1) + 1}
    vals |= {1 << b for b in range(width)} | {(1 << b) - 1 for b in range(1, width + 1)}
    return sorted(v for v in vals if 0 <= v <= top)


@pytest.mark.parametrize("n_width, d_width", [(38, 31), (9, 4), (1, 1), (41, 32)])
def test_divider_matches_python_floor_division(n_width, d_width):
    rng = random.Random(n_width * 100 + d_width)
    cases = [(n, d) for n in _corners(n_width)[::2] for d in _corners(d_width)[::3] if d]
    cases += [(n, 1) for n in _corners(n_width)]                     # D = 1
    cases += [(rng.getrandbits(min(n_width, d_width) - 1 or 1), (1 << d_width) - 1)
              for _ in range(4)]                                     # D > N
    cases += [(rng.getrandbits(n_width), rng.randint(1, (1 << d_width) - 1))
              for _ in range(40)]
    div = Divider(n_width, d_width)
    got, lat = run_stream_op(div, [{"n": n, "d": d} for n, d in cases], stall_every=7)
    assert [(g["q"], g["r"]) for g in got] == [divmod(n, d) for n, d in cases]
    assert set(lat) == {div.latency} and div.latency == n_width


@pytest.mark.parametrize("n_width, d_width, q_width", [(38, 31, 23), (46, 32, 31), (8, 8, 1)])
def test_divider_with_a_short_quotient(n_width, d_width, q_width):
    """``q_width`` < ``n_width``: exact wherever ``N < D * 2**q_width`` (the caller's promise),
    in ``q_width`` cycles; softmax's case (N = 127 * 2**31, D = S >= 2**15) among them."""
    rng = random.Random(q_width)
    cases = [(127 << 31, 1 << 15), (127 << 31, (1 << 31) - 1), (127 << 31, 55938)]
    while len(cases) < 60:
        n, d = rng.getrandbits(n_width), rng.randint(1, (1 << d_width) - 1)
        if n < d << q_width:
            cases.append((n, d))
    cases = [(n, d) for n, d in cases if n < 1 << n_width and d < 1 << d_width]
    div = Divider(n_width, d_width, q_width)
    got, lat = run_stream_op(div, [{"n": n, "d": d} for n, d in cases])
    assert [(g["q"], g["r"]) for g in got] == [divmod(n, d) for n, d in cases]
    assert set(lat) == {q_width}


def test_divider_by_zero_gives_all_ones():
    div = Divider(12, 5)
    got, _ = run_stream_op(div, [{"n": 1234, "d": 0}, {"n": 0, "d": 0}, {"n": 77, "d": 5}])
    assert [g["q"] for g in got] == [4095, 4095, 15]


@pytest.mark.parametrize("width", [63, 45, 7, 2, 1])
def test_isqrt_matches_python_isqrt(width):
    rng = random.Random(width)
    vals = _corners(width)
    vals += [k * k for k in (0, 1, 2, 3, math.isqrt((1 << width) - 1))]     # exact squares
    vals += [k * k - 1 for k in (1, 2, 3, math.isqrt((1 << width) - 1))]    # just below them
    vals = [v for v in vals if v < 1 << width]
    vals += [rng.getrandbits(width) for _ in range(40)]
    sq = Isqrt(width)
    got, lat = run_stream_op(sq, [{"v": v} for v in vals], stall_every=5)
    assert [g["root"] for g in got] == [math.isqrt(v) for v in vals]
    assert set(lat) == {sq.latency} and sq.latency == (width + 1) // 2


def test_row_buffer_reads_what_was_written():
    from amaranth.hdl import signed
    from amaranth.lib import data

    shape = data.ArrayLayout(signed(9), 3)
    buf = RowBuffer(shape, 5)
    rng = random.Random(3)
    words = [[rng.randint(-256, 255) for _ in range(3)] for _ in range(5)]
    got = []

    async def bench(ctx):
        for a, w in enumerate(words):
            ctx.set(buf.w_addr, a)
            ctx.set(buf.w_data, w)
            ctx.set(buf.w_en, 1)
            await ctx.tick()
        ctx.set(buf.w_en, 0)
        for a in (4, 0, 2, 2, 1, 3):
            ctx.set(buf.r_addr, a)
            ctx.set(buf.r_en, 1)
            await ctx.tick()
            got.append(list(ctx.get(buf.r_data)))
        ctx.set(buf.r_en, 0)
        ctx.set(buf.r_addr, 0)
        await ctx.tick()
        got.append(list(ctx.get(buf.r_data)))              # held: still word 3

    sim = Simulator(buf)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [words[a] for a in (4, 0, 2, 2, 1, 3, 3)]


@pytest.mark.parametrize("make, message", [
    (lambda: Divider(0, 4), "^N width must be an integer in 1..128, not 0$"),
    (lambda: Divider(8, 129), "^D width must be an integer in 1..128, not 129$"),
    (lambda: Divider(8, 4, 9), "^Q width must be an integer in 1..8, not 9$"),
    (lambda: Isqrt(True), "^Width must be an integer in 1..128, not True$"),
    (lambda: RowBuffer(8, 0), "^Depth must be a positive integer, not 0$"),
])
def test_scaffold_parameters_are_validated(make, message):
    with pytest.raises(ParameterError, match=message):
        make()


# ---------------------------------------------------------------------------------------------
# Vector unit kinds: registry, beats, RTL (compiled Verilator harness, cocotb) against the
# golden operations of sw/golden_ops.py, by equality

import numpy as np  # noqa: E402

from lowbit.cli import main  # noqa: E402
from lowbit.hw.units import describe, unit_class, unit_kinds  # noqa: E402
from lowbit.hw.verilog import generate_verilog, lint_verilog  # noqa: E402

SOFTMAX = [dict(lanes=4, in_bits=16, frac_bits=8, out_bits=8, max_len=64),
           dict(lanes=3, in_bits=32, frac_bits=12, out_bits=16, max_len=40),
           dict(lanes=1, in_bits=6, frac_bits=0, out_bits=2, max_len=9),
           dict(lanes=2, in_bits=32, frac_bits=30, out_bits=9, max_len=11),
           dict(lanes=5, in_bits=8, frac_bits=8, out_bits=8, max_len=1)]
ARGMAX = [dict(lanes=4, in_bits=32, max_len=64), dict(lanes=3, in_bits=5, max_len=7),
          dict(lanes=1, in_bits=2, max_len=5)]
UNITS = [("softmax", p) for p in SOFTMAX] + [("argmax", p) for p in ARGMAX]


def _full(kind, params):
    """Every parameter (the cache key of a build is the whole parameter set)."""
    return describe(kind, **params).params


def test_vector_kinds_are_registered_beside_the_matmul_kinds():
    assert unit_kinds("matmul") == ("int8", "log", "xnor")
    assert {"softmax", "argmax"} <= set(unit_kinds("vector"))
    assert set(unit_kinds()) == set(unit_kinds("matmul")) | set(unit_kinds("vector"))
    codes = [unit_class(k).kind_code for k in unit_kinds()]
    assert len(set(codes)) == len(codes)
    assert all(unit_class(k).kind_code >= 16 for k in unit_kinds("vector"))
    with pytest.raises(ValueError, match=r"^unknown unit 'softmax' \(choose from int8, log, "
                                         r"xnor\)$"):
        unit_class("softmax", "matmul")


@pytest.mark.parametrize("kind, params, message", [
    ("softmax", {"lanes": 0}, "^Lanes must be a positive integer, not 0$"),
    ("softmax", {"lanes": 65}, "^Lanes must be at most 64, not 65$"),
    ("softmax", {"max_len": 1 << 17}, "^Max len must be at most 65536, not 131072$"),
    ("softmax", {"out_bits": 17}, "^Out bits must be an integer in 2..16, not 17$"),
    ("softmax", {"frac_bits": -1}, "^Frac bits must be an integer in 0..30, not -1$"),
    ("argmax", {"in_bits": 33}, "^In bits must be an integer in 2..32, not 33$"),
    ("argmax", {"rows": 4}, "^Unknown parameter 'rows' for the argmax unit"),
])
def test_vector_parameters_are_validated(kind, params, message):
    with pytest.raises(ParameterError, match=message):
        describe(kind, **params)


@pytest.mark.parametrize("kind, params", UNITS)
def test_beats_round_trip(kind, params):
    """pack -> decoded fields -> operands_from_fields gives the operands back; the layouts
    hold what docs/hardware.md says."""
    hw = describe(kind, **params)
    rng = np.random.default_rng(5)
    length = min(hw.max_len, 2 * hw.lanes + 1)
    ops = hw.random_rows(rng, 3, length)
    cfg, x, n_y = hw.pack(ops)
    assert len(cfg) == 3 and len(x) == 3 * -(-length // hw.lanes)
    assert n_y == (len(x) if hw.y_per_lane else 3)
    c = hw.codecs
    assert list(c["cfg"].get(cfg, "length")) == [length] * 3
    fields = c["x"].decode(x.reshape(3, -1, x.shape[-1]))
    assert fields["last"][:, -1].all() and not fields["last"][:, :-1].any()
    back = hw.operands_from_fields(
        {}, {k: v.reshape(3, -1)[:, :length] for k, v in fields.items() if k != "last"})
    assert set(back) == set(ops)
    for k in ops:
        assert np.array_equal(np.asarray(back[k]), np.asarray(ops[k])), k
    keep = hw.lanes if kind == "softmax" else 0                     # the keep bits
    assert hw.x_layout.size == hw.lanes * hw.in_bits + keep + 1
    assert hw.y_layout.size == (hw.lanes * hw.out_bits if kind == "softmax"
                                else (hw.max_len - 1).bit_length()) + 1
    assert hw.cfg_layout.size == hw.max_len.bit_length()
    with pytest.raises(ValueError, match=f"^rows must have 1..{hw.max_len} elements"):
        hw.pack(hw.random_rows(rng, 1, hw.max_len + 1))


def _check_rows(rtl, name, ops, **run):
    res = rtl.run(ops, **run)
    want = rtl.expected(ops)
    assert res.y.shape == want.shape, name
    bad = np.argwhere(res.y != want)
    assert len(bad) == 0, f"{name}: {len(bad)} differ, first at {bad[0]}: RTL " \
                          f"{res.y[tuple(bad[0])]}, golden {want[tuple(bad[0])]}"
    return res


@pytest.mark.parametrize("kind, params", UNITS)
def test_rtl_matches_the_golden_operation(kind, params):
    """Compiled Verilator harness: random rows of every interesting length, then the kind's
    corner cases under random backpressure; the cycle count without backpressure is
    ``rows * cycles_per_row(length) + 1`` (data-independent)."""
    from lowbit.sim.vector_harness import VerilatedVector

    rng = np.random.default_rng(11)
    with VerilatedVector(kind, **_full(kind, params)) as rtl:
        hw = rtl.hw
        lengths = sorted({1, hw.lanes - 1 or 1, hw.lanes, hw.lanes + 1, hw.max_len,
                          int(rng.integers(1, hw.max_len + 1))} & set(range(1, hw.max_len + 1)))
        for length in lengths:
            res = _check_rows(rtl, f"random length {length}", hw.random_rows(rng, 4, length))
            assert res.cycles == 4 * hw.cycles_per_row(length) + 1, length
            _check_rows(rtl, f"random length {length}, backpressure",
                        hw.random_rows(rng, 3, length), gaps=0.3, stalls=0.4, seed=length)
        cases = hw.corner_cases(rng)
        assert cases
        for i, (name, ops) in enumerate(cases):
            _check_rows(rtl, name, ops, gaps=0.2, stalls=0.2, seed=i)


def test_softmax_corner_cases_reach_the_contract_bounds():
    """The corner cases put S at its bounds and d past 16 * 2**F (exponential 0), and hold
    masked rows, one kept position and ties (checked on the golden side, which the RTL equals
    above)."""
    import torch

    from lowbit.sw.golden_ops import exp2_neg

    hw = describe("softmax", **SOFTMAX[0])
    cases = dict(hw.corner_cases(np.random.default_rng(0)))
    def sums(ops):
        z = torch.as_tensor(ops["z"])
        keep = torch.as_tensor(ops["keep"])
        m = torch.where(keep, z, torch.full_like(z, -(1 << 40))).amax(-1, keepdim=True)
        return torch.where(keep, exp2_neg(m - z, hw.frac_bits), 0).sum(-1)
    assert int(sums(cases["sum_max"]).max()) == hw.max_len << 15
    assert int(sums(cases["sum_min_exp_zero"]).min()) == 1 << 15
    assert int(sums(cases["all_masked"]).max()) == 0
    z = cases["exp_range"]["z"][0]
    assert int(z.max() - z.min()) >= 16 << hw.frac_bits
    assert not (hw.golden_rows(cases["all_masked"])).any()
    assert hw.golden_rows(cases["one_kept"]).max() == hw.top


@pytest.mark.parametrize("kind", ["softmax", "argmax"])
def test_cocotb_testbench(kind, tmp_path):
    """The cocotb testbench (sim/tb_vector.py): drivers with gaps and backpressure, a model fed
    by the observed beats, a scoreboard comparing every beat by equality."""
    from lowbit.sim.verilator import run_cocotb

    params = _full(kind, {"lanes": 3, "max_len": 20})
    tests, failed = run_cocotb(kind, params, test_dir=tmp_path, module="lowbit.sim.tb_vector",
                               env={"LOWBIT_TB_GAPS": 0.2, "LOWBIT_TB_STALLS": 0.3,
                                    "LOWBIT_TB_SEED": 4},
                               expect_tests=2)
    assert (tests, failed) == (2, 0)
    log = (tmp_path / "sim.log").read_text()
    assert "corners:" in log and "random:" in log


@pytest.mark.parametrize("kind, params", UNITS)
def test_verilog_is_lint_clean(kind, params):
    src = generate_verilog(kind, **params)
    name = describe(kind, **params).module_name
    assert src.count("module ") == 1 and f"module {name}(" in src    # one flat module
    assert "%Warning" not in lint_verilog(src, name)      # raises on any warning


def test_planted_fault_is_caught():
    """The softmax unit with one exponential-table entry off by one (hw/faults.py) differs from
    the golden operation on a row that reaches that entry; its corner cases expose it too."""
    from lowbit.sim.vector_harness import VerilatedVector

    params = _full("softmax", SOFTMAX[0])
    row = {"z": np.array([[0, -128, -1000, 5 - 128]]), "keep": np.ones((1, 4), bool)}
    with VerilatedVector("softmax", fault="exp-entry", **params) as bad:
        assert (bad.run(row).y != bad.expected(row)).any()
        caught = [name for name, ops in bad.hw.corner_cases(np.random.default_rng(0))
                  if (bad.run(ops).y != bad.expected(ops)).any()]
        assert caught
    with VerilatedVector("softmax", **params) as good:
        assert (good.run(row).y == good.expected(row)).all()
    from lowbit.hw.faults import make_faulty_unit
    with pytest.raises(ValueError, match="^fault 'exp-entry' applies to the softmax unit only, "
                                         "not argmax$"):
        make_faulty_unit("argmax", "exp-entry")


# --- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, params", [UNITS[0], UNITS[len(SOFTMAX)]])
def test_verify_cli(kind, params, capsys):
    flags = [a for k, v in params.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    m, k = 5, 37
    assert main(["verify", "--unit", kind, "--m", str(m), "--k", str(k), "--seed", "2",
                 "--backpressure", "0.2", *flags]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    hw = describe(kind, **params)
    rng = np.random.default_rng(2)
    total = hw.golden_rows(hw.random_rows(rng, m, k)).size
    total += sum(hw.golden_rows(ops).size for _, ops in hw.corner_cases(rng))
    assert out[-1] == f"bit-exact: {total}/{total}"


def test_verify_cli_reports_mismatch(monkeypatch, capsys):
    from lowbit.hw.vec_argmax import ArgmaxDescription

    real = ArgmaxDescription.golden_rows

    def off_by_one(self, ops):
        y = real(self, ops)
        y[0] += 1
        return y
    monkeypatch.setattr(ArgmaxDescription, "golden_rows", off_by_one)
    flags = ["--lanes", "4", "--in-bits", "32", "--max-len", "64"]
    assert main(["verify", "--unit", "argmax", "--m", "4", "--k", "9", *flags]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("MISMATCH random 4x9 y[0]") for line in out)
    good, total = map(int, out[-1].removeprefix("bit-exact: ").split("/"))
    assert good < total


@pytest.mark.parametrize("argv, message", [
    (["--unit", "softmax", "--k", "3"], "--m is required"),
    (["--unit", "softmax", "--m", "2"], "--k is required"),
    (["--unit", "softmax", "--m", "2", "--k", "0"], "--k must be a positive integer, not 0"),
    (["--unit", "softmax", "--m", "2", "--k", "300"],
     "--k 300 exceeds the unit's max_len 256 (raise it with --max-len)"),
    (["--unit", "softmax", "--m", "2", "--k", "3", "--n", "4"],
     "--n applies to the matmul units only, not softmax"),
    (["--unit", "argmax", "--m", "2", "--k", "3", "--relu"],
     "--relu applies to the matmul units only, not argmax"),
    (["--unit", "softmax", "--m", "2", "--k", "3", "--rows", "2"],
     "--rows applies to the int8 and log and xnor units only, not softmax"),
    (["--unit", "softmax", "--m", "2", "--k", "3", "--lanes", "0"],
     "--lanes must be a positive integer, not 0"),
    (["--unit", "argmax", "--m", "2", "--k", "3", "--frac-bits", "4"],
     "--frac-bits applies to the softmax unit only, not argmax"),
    (["--unit", "int8", "--m", "2", "--k", "3"], "--n is required"),
])
def test_verify_cli_bad_arguments(argv, message, capsys):
    assert main(["verify", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lowbit: error: {message}"]


def test_hw_verilog_cli(tmp_path, capsys):
    out = tmp_path / "a.v"
    assert main(["hw", "verilog", "--unit", "argmax", "--lanes", "5", "--lint", "-o",
                 str(out)]) == 0
    assert "module argmax_vector(" in out.read_text()
    assert "lint clean" in capsys.readouterr().out
    assert main(["hw", "verilog", "--unit", "softmax", "--top", "-o", str(out)]) == 2
    assert capsys.readouterr().err == ("lowbit: error: --unit must be one of int8, log, xnor, "
                                       "not 'softmax'\n")
