"""cocotb testbenches of the three matmul units on Verilator (sim/tb_matmul.py).

One pytest function per configuration: it builds the unit (cached) with cocotb's Verilator
runner and runs the testbench's two tests (random matmuls, corner cases) in one simulator
process, with the run size passed through the environment. The verdict is read from the
results file. Small ``max_k`` builds run the widest K allowed quickly; the default INT8 build
runs K = 32768.
"""

from __future__ import annotations

import pytest

from lowbit.sim.verilator import run_cocotb

TESTS = 2   # random_matmuls, corner_case_matmuls


def _run(tmp_path, unit, params, **env):
    settings = {"LOWBIT_TB_SEED": 1, "LOWBIT_TB_RANDOM": 6, "LOWBIT_TB_MAX_DIM": 9}
    settings.update({f"LOWBIT_TB_{k.upper()}": v for k, v in env.items()})
    tests, failed = run_cocotb(unit, params, test_dir=tmp_path, env=settings,
                               expect_tests=TESTS)
    assert (tests, failed) == (TESTS, 0)


@pytest.mark.timeout(600)
def test_cocotb_int8_small_max_k(tmp_path):
    """INT8 2x3 with max_k 40: random shapes, widest K 40, random gaps and backpressure."""
    _run(tmp_path, "int8", dict(rows=2, cols=3, max_k=40), max_k=40, gaps=0.2, stalls=0.3)


@pytest.mark.timeout(600)
def test_cocotb_log_zero_code(tmp_path):
    """4-bit log codes with the zero code, 3x2, max_k 48, every code, widest K."""
    _run(tmp_path, "log", dict(rows=3, cols=2, bits=4, zero_code=True, max_k=48), max_k=48,
         stalls=0.2)


@pytest.mark.timeout(600)
def test_cocotb_xnor_planes(tmp_path):
    """XNOR 2x3, 2 activation x 3 weight planes, 16 lanes, max_k 100: K not a multiple of
    the lanes, all-ones/all-zeros planes, widest K."""
    _run(tmp_path, "xnor", dict(rows=2, cols=3, a_planes=2, w_planes=3, lanes=16, max_k=100),
         max_k=100, gaps=0.2, stalls=0.2)


@pytest.mark.timeout(600)
def test_cocotb_int8_default_widest_k(tmp_path):
    """The default INT8 unit (4x4, max_k 32768): the largest products and bias at K = 32768.
    (The other corner cases at this width run through the compiled harness, 1000x faster.)"""
    _run(tmp_path, "int8", dict(rows=4, cols=4), max_k=32768, random=0, timeout_ms=100,
         cases="widest_k_extremes_raw,round_half_up,k1")


@pytest.mark.parametrize("unit, params", [
    ("int8", dict(rows=2, cols=3, a_bits=5)),
    ("log", dict(rows=3, cols=2, bits=4, zero_code=True)),
    ("xnor", dict(rows=2, cols=3, a_planes=2, w_planes=3, lanes=16)),   # lanes in one word
    ("xnor", dict(rows=1, cols=2, lanes=100, a_planes=3)),              # lanes over 64 bits
])
def test_the_testbench_model_predicts_the_golden_result(unit, params):
    """The scoreboard's model, fed the driver's beats (without a simulator), predicts every y
    row of the golden result: its decoding of observed beats back into golden operands is
    right, so a failing cocotb run means the RTL is wrong."""
    import numpy as np

    from lowbit.hw.driver import Protocol
    from lowbit.sim.operands import random_operands
    from lowbit.sim.tb_matmul import TileModel

    proto = Protocol.for_unit(unit, **params)
    rng = np.random.default_rng(3)
    for m, k, n in [(5, 37, 4), (1, 1, 1)]:
        kw = random_operands(proto.description, rng, m, k, n)
        plan = proto.plan(**kw)
        model = TileModel(proto.description)
        for tile in plan.tiles:
            model.on_cfg(tile.cfg)
            for beat in tile.x:
                model.on_x(beat)
        rows = np.array([row for _, _, row in model.expected])       # [tiles * rows, cols]
        y = proto.packer.y.zeros((len(rows),))                       # as y payloads
        proto.packer.y.put(y, "data", rows)
        proto.packer.y.put(y, "last", np.arange(len(rows)) % proto.rows == proto.rows - 1)
        got = proto.assemble(plan, proto.packer.y.to_ints(y))
        assert np.array_equal(got, proto.expected(**kw))
