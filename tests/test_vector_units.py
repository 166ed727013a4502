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
    (lambda: Isqrt(True), "^Width must be an integer in 1..128, not True$"),
    (lambda: RowBuffer(8, 0), "^Depth must be a positive integer, not 0$"),
])
def test_scaffold_parameters_are_validated(make, message):
    with pytest.raises(ParameterError, match=message):
        make()
