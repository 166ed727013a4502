"""cocotb side of ``lowbit bench units``: one matmul through the testbench, timed.

Runs the matmul given by ``LOWBIT_TB_BENCH`` (``M,K,N``; operands from
:func:`lowbit.sim.operands.random_operands` with ``LOWBIT_TB_SEED``) through the full testbench
of sim/tb_matmul.py (drivers, monitors, golden model, scoreboard) and writes
``{"cycles", "seconds", "matched", "total"}`` as JSON to ``LOWBIT_TB_BENCH_OUT``.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.utils import get_sim_time

from lowbit.io import write_text_atomic
from lowbit.sim.operands import random_operands
from lowbit.sim.tb_matmul import TIMEOUT_MS, MatmulTB, config

CLOCK_NS = 10


@cocotb.test(timeout_time=TIMEOUT_MS, timeout_unit="ms")
async def bench_matmul(dut):
    tb = MatmulTB(dut, config())
    await tb.start()
    m, k, n = (int(v) for v in os.environ["LOWBIT_TB_BENCH"].split(","))
    kw = random_operands(tb.hw, tb.rng, m, k, n, relu=False, raw=False)
    t0, c0 = time.perf_counter(), get_sim_time("ns")
    matched = await tb.matmul(f"bench {m}x{k}x{n}", kw)
    seconds, cycles = time.perf_counter() - t0, (get_sim_time("ns") - c0) // CLOCK_NS
    out = os.environ["LOWBIT_TB_BENCH_OUT"]
    write_text_atomic(out, json.dumps({"cycles": int(cycles), "seconds": seconds,
                                       "matched": matched, "total": m * n}))
