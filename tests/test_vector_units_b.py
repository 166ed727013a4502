# amaranth: UnusedElaboratable=no
"""LayerNorm, residual add and requantize vector units against their golden operations.

Every case streams rows through the unit (the description's beats, ``pack``/``unpack``) and
compares the results with the golden operation (``golden_ops.layernorm``,
``golden_ops.residual_add``, ``golden.requantize``) by equality: random rows from fixed seeds
and each kind's corner cases (D = 1 and D = max, zero variance, the largest |c|, epsilon and
shift at their bounds, gains and offsets at their widths, saturation both ways, ...), in the
Amaranth simulator with random input gaps and output stalls.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from amaranth.sim import Simulator

from lowbit.hw import vec_elementwise, vec_embedding, vec_layernorm  # noqa: F401 (the kinds)
from lowbit.hw.simulate import simulate
from lowbit.hw.units import describe

# (kind, parameters): small row buffers keep the Amaranth simulator fast
CONFIGS = [
    ("layernorm", dict(lanes=3, max_len=40)),
    ("layernorm", dict(lanes=1, max_len=5, in_bits=2, out_bits=2)),
    ("layernorm", dict(lanes=4, max_len=16, in_bits=12, out_bits=32)),
    ("requant", dict(lanes=3)),
    ("requant", dict(lanes=2, in_bits=47, out_bits=32, per_channel=True)),
    ("requant", dict(lanes=1, in_bits=2, out_bits=2)),
    ("residual", dict(lanes=4)),
    ("residual", dict(lanes=3, per_channel=True)),
    ("residual", dict(lanes=1, a_bits=2, b_bits=47, out_bits=2, per_channel=True)),
    ("embedding", dict(lanes=3, max_len=20)),
    ("embedding", dict(lanes=1, max_len=4, table_bits=17, out_bits=2, id_bits=1, pos_bits=1)),
    ("embedding", dict(lanes=4, max_len=8, table_bits=2, out_bits=31)),
]


def _ints(words) -> list[int]:
    return [sum(int(v) << (32 * i) for i, v in enumerate(w)) for w in np.asarray(words)]


def simulate_rows(desc, ops, **kw):
    """Rows of ``ops`` through ``desc``'s unit in the Amaranth simulator: ``(y, cycles)``."""
    cfg, x, y_beats = desc.pack(ops)
    length = np.shape(desc.x_fields(ops)["data"])[1]
    per = -(-length // desc.lanes)
    xs = _ints(x)
    plan = SimpleNamespace(y_beats=y_beats, tiles=[
        SimpleNamespace(cfg=c, x=xs[r * per:(r + 1) * per]) for r, c in enumerate(_ints(cfg))])
    res = simulate(desc.build(), plan, **kw)
    n = desc.codecs["y"].nwords
    words = np.array([[(v >> (32 * i)) & 0xFFFFFFFF for i in range(n)] for v in res.y],
                     np.uint32)
    return desc.unpack(words, len(cfg), length), res.cycles


def _cases(desc, seed):
    rng = np.random.default_rng(seed)
    length = min(desc.max_len, 2 * desc.lanes + 3)
    return [("random", desc.random_rows(rng, 4, length)),
            ("random_short", desc.random_rows(rng, 2, min(desc.max_len, desc.lanes - 1 or 1))),
            *desc.corner_cases(rng)]


@pytest.mark.parametrize("kind, params", CONFIGS,
                         ids=[f"{k}-{'-'.join(f'{a}{b}' for a, b in p.items())}"
                              for k, p in CONFIGS])
def test_equal_to_golden_in_the_amaranth_simulator(kind, params):
    desc = describe(kind, **params)
    for i, (name, ops) in enumerate(_cases(desc, seed=15)):
        want = desc.golden_rows(ops)
        got, _ = simulate_rows(desc, ops, x_valid=0.7, y_ready=0.6, seed=i)
        assert np.array_equal(got, want), f"{kind} {params} {name}:\n{got}\n!= golden\n{want}"


@pytest.mark.parametrize("kind, params", [CONFIGS[0], CONFIGS[3], CONFIGS[7], CONFIGS[9]])
def test_cycles_per_row(kind, params):
    """Rows with x valid and y ready every cycle take ``cycles_per_row`` cycles each, for every
    length and whatever the data (a zero-variance LayerNorm row too): LayerNorm rows one after
    the other, the elementwise units' rows back to back behind their pipeline latency."""
    desc = describe(kind, **params)
    rng = np.random.default_rng(3)
    key = {"layernorm": "t", "embedding": "table"}.get(kind, "data")
    for length in sorted({1, desc.lanes, desc.lanes + 1, min(desc.max_len, 3 * desc.lanes)}):
        for rows in (1, 3):
            ops = desc.random_rows(rng, rows, length)
            constant = dict(ops, **{key: np.zeros_like(ops[key])})
            for o in (ops, constant):
                _, cycles = simulate_rows(desc, o)
                fill = 0 if kind == "layernorm" else desc.latency + 1
                assert cycles == rows * desc.cycles_per_row(length) + fill, (length, rows)


def test_random_rows_are_not_degenerate():
    """The random operands reach most of the output range, not only its saturation values."""
    for kind, params in (CONFIGS[0], CONFIGS[3], CONFIGS[6]):
        desc = describe(kind, **params)
        want = desc.golden_rows(desc.random_rows(np.random.default_rng(0), 16, 16))
        lo, hi = -(1 << (desc.out_bits - 1)), (1 << (desc.out_bits - 1)) - 1
        inside = want[(want > lo) & (want < hi)]
        assert inside.size > want.size // 2 and np.unique(inside).size > 20, kind


@pytest.mark.parametrize("kind, params, message", [
    ("layernorm", dict(max_len=4097), "Max len must be at most 4096, not 4097"),
    ("layernorm", dict(in_bits=17), "In bits must be an integer in 2..16, not 17"),
    ("layernorm", dict(out_bits=33), "Out bits must be an integer in 2..32, not 33"),
    ("layernorm", dict(lanes=0), "Lanes must be a positive integer, not 0"),
    ("requant", dict(in_bits=48), "In bits must be an integer in 2..47, not 48"),
    ("requant", dict(per_channel=1), "Per channel must be a bool, not 1"),
    ("residual", dict(out_bits=32), "Out bits must be an integer in 2..31, not 32"),
    ("residual", dict(b_bits=1), "B bits must be an integer in 2..47, not 1"),
])
def test_parameter_messages(kind, params, message):
    with pytest.raises((TypeError, ValueError)) as info:
        describe(kind, **params)
    assert str(info.value) == message


def test_embedding_fetches_its_rows_through_the_memory_port():
    """A memory model answers each request on ``req`` with the addressed table and position
    rows (after a random delay, with gaps), so the results are right only if the unit asks
    for the right rows; requests come one per token, in order."""
    desc = describe("embedding", lanes=3, max_len=7, id_bits=6, pos_bits=5)
    rng = np.random.default_rng(21)
    ops = desc.random_rows(rng, 6, 7, vocab=40, n_pos=30)
    unit = desc.build()
    requests, received = [], []
    pick = np.random.default_rng(5)

    async def send_cfg(ctx):
        for ident, position in zip(ops["ids"], ops["position"]):
            ctx.set(unit.cfg.payload.as_value(), desc.cfg_layout.const(
                {"length": 7, "id": int(ident), "position": int(position)}).as_bits())
            ctx.set(unit.cfg.valid, 1)
            await ctx.tick().until(unit.cfg.ready)
        ctx.set(unit.cfg.valid, 0)

    async def memory(ctx):
        for _ in ops["ids"]:
            for _ in range(int(pick.integers(0, 4))):        # slow to take the request
                await ctx.tick()
            ctx.set(unit.req.ready, 1)
            ident, position = await ctx.tick().sample(
                unit.req.payload.id, unit.req.payload.position).until(unit.req.valid)
            ctx.set(unit.req.ready, 0)
            requests.append((int(ident), int(position)))
            for beat in desc.memory_answer(ops, int(ident), int(position)):
                while pick.random() < 0.3:
                    ctx.set(unit.x.valid, 0)
                    await ctx.tick()
                ctx.set(unit.x.payload.as_value(), desc.x_layout.const(beat).as_bits())
                ctx.set(unit.x.valid, 1)
                await ctx.tick().until(unit.x.ready)
            ctx.set(unit.x.valid, 0)

    async def receive(ctx):
        ctx.set(unit.y.ready, 1)
        while len(received) < 6 * 3:
            _, _, valid, payload = await ctx.tick().sample(unit.y.valid,
                                                           unit.y.payload.as_value())
            if valid:
                received.append(list(desc.y_layout.from_bits(int(payload)).data))

    sim = Simulator(unit)
    sim.add_clock(1e-6)
    for bench in (send_cfg, memory, receive):
        sim.add_testbench(bench)
    sim.run()
    assert requests == list(zip(ops["ids"].tolist(), ops["position"].tolist()))
    got = np.array(received).reshape(6, 9)[:, :7]
    assert np.array_equal(got, desc.golden_rows(ops))


# --- Verilator: the compiled harness (the path of `lowbit verify`), cocotb, lint --------------

VERILATED = [CONFIGS[0], CONFIGS[4], CONFIGS[7], CONFIGS[9]]


def _full(kind, params):
    """Every parameter (a build's cache key is the whole parameter set)."""
    return describe(kind, **params).params


@pytest.mark.parametrize("kind, params", VERILATED, ids=[k for k, _ in VERILATED])
def test_equal_to_golden_on_verilator(kind, params):
    """Random rows of several lengths (rows back to back, then with input gaps and output
    stalls) and the corner cases, through the Verilated unit, equal the golden operation; the
    cycle counts without backpressure follow ``cycles_per_row``."""
    from lowbit.sim.vector_harness import VerilatedVector

    rng = np.random.default_rng(1515)
    with VerilatedVector(kind, **_full(kind, params)) as rtl:
        hw = rtl.hw
        for length in sorted({1, hw.lanes, hw.lanes + 1, hw.max_len}):
            ops = hw.random_rows(rng, 6, length)
            res = rtl.run(ops)
            assert np.array_equal(res.y, hw.golden_rows(ops)), (kind, length)
            fill = 0 if kind == "layernorm" else hw.latency + 1
            assert res.cycles == 6 * hw.cycles_per_row(length) + fill, (length, res.cycles)
            ops = hw.random_rows(rng, 4, length)
            res = rtl.run(ops, gaps=0.3, stalls=0.4, seed=length)
            assert np.array_equal(res.y, hw.golden_rows(ops)), (kind, length, "backpressure")
        for i, (name, ops) in enumerate(hw.corner_cases(rng)):
            res = rtl.run(ops, gaps=0.2, stalls=0.2, seed=i)
            assert np.array_equal(res.y, hw.golden_rows(ops)), (kind, name)


@pytest.mark.parametrize("kind", ["layernorm", "residual", "requant", "embedding"])
def test_cocotb_testbench(kind, tmp_path):
    """The cocotb testbench (sim/tb_vector.py: drivers with gaps and backpressure, a model fed
    by the observed beats, a scoreboard comparing every beat by equality) on each kind."""
    from lowbit.sim.verilator import run_cocotb

    params = _full(kind, {"lanes": 3, "max_len": 9})
    tests, failed = run_cocotb(kind, params, test_dir=tmp_path, module="lowbit.sim.tb_vector",
                               env={"LOWBIT_TB_GAPS": 0.2, "LOWBIT_TB_STALLS": 0.3,
                                    "LOWBIT_TB_SEED": 15},
                               expect_tests=2)
    assert (tests, failed) == (2, 0)


@pytest.mark.parametrize("kind, params", CONFIGS, ids=[k for k, _ in CONFIGS])
def test_verilog_is_lint_clean(kind, params):
    """verilator --lint-only -Wall with the documented waivers: no warning."""
    from lowbit.hw.verilog import generate_verilog, lint_verilog

    name = describe(kind, **params).module_name
    lint_verilog(generate_verilog(kind, **params), name)     # raises on any warning
