"""``lowbit bench units``: cycles, utilisation and simulation speed of the matmul units.

For one matmul per unit (the same operands everywhere, from
:func:`lowbit.sim.operands.random_operands`), three simulators run the same RTL:

* the Amaranth simulator (:func:`lowbit.hw.simulate.simulate`, Python testbench processes);
* cocotb on Verilator (the testbench of sim/tb_matmul.py: drivers, monitors, golden model and
  scoreboard, a Python coroutine step per clock edge);
* the compiled harness (:class:`lowbit.sim.harness.VerilatedUnit`: whole blocks of beats per
  call into C++).

Each result is checked against the golden kernel (equality) before its speed is reported. The
table gives the RTL's cycles against the ideal ``M*K*N/(rows*cols)`` (XNOR: binary MACs over
``rows*cols*lanes``), the utilisation, and cycles per second of each simulator.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit import LowbitError

HARNESS_MIN_SECONDS = 1.0   # repeat the harness run until this much time is measured


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _amaranth(protocol, kw, want):
    from lowbit.hw.simulate import simulate

    plan = protocol.plan(**kw)
    res = simulate(protocol.description.build(), plan)
    y = protocol.assemble(plan, res.y)
    if not np.array_equal(y, want):
        raise LowbitError(f"Amaranth simulation of {protocol.kind} differs from the golden model")
    return res.cycles, res.seconds


def _cocotb(unit, params, m, k, n, seed):
    from lowbit.sim.verilator import run_cocotb

    with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as tmp:
        out = Path(tmp) / "bench.json"
        run_cocotb(unit, params, test_dir=Path(tmp), module="lowbit.sim.tb_bench",
                   expect_tests=1,
                   env={"LOWBIT_TB_BENCH": f"{m},{k},{n}", "LOWBIT_TB_BENCH_OUT": str(out),
                        "LOWBIT_TB_SEED": seed, "LOWBIT_TB_TIMEOUT_MS": 100_000})
        res = json.loads(out.read_text())
    if res["matched"] != res["total"]:
        raise LowbitError(f"cocotb run of {unit} matched {res['matched']}/{res['total']}")
    return res["cycles"], res["seconds"]


def _harness(unit, params, kw, want):
    from lowbit.sim.harness import VerilatedUnit

    with VerilatedUnit(unit, **params) as rtl:
        first = rtl.matmul(**kw)
        if not np.array_equal(first.y, want):
            raise LowbitError(f"harness run of {unit} differs from the golden model")
        cycles, seconds, runs = 0, 0.0, 0
        while seconds < HARNESS_MIN_SECONDS:
            res = rtl.matmul(**kw)
            cycles += res.cycles
            seconds += res.seconds
            runs += 1
    return first, cycles / seconds


def bench_units(units, *, m, k, n, k_xnor=None, rows=4, cols=4, seed=0,
                skip=frozenset()) -> list[dict]:
    """Run the benchmark, print the table (stdout) and return its rows.

    ``k`` is the K of the units that take one element of K per beat (int8, log); ``k_xnor``
    the K (in bits) of the units that take several (xnor; default ``k`` times the lanes: as
    many beats per tile as the others).
    """
    import torch

    from lowbit.hw.driver import Protocol
    from lowbit.sim.operands import random_operands
    from lowbit.sim.verilator import build_cocotb, build_harness

    torch.set_num_threads(1)        # tiny golden products in the testbenches
    table = []
    for unit in units:
        params = {"rows": rows, "cols": cols}
        try:
            protocol = Protocol.for_unit(unit, **params)
        except (TypeError, ValueError) as e:
            raise LowbitError(str(e)) from None
        hw = protocol.description
        kk = k if hw.k_per_beat == 1 else (k * hw.k_per_beat if k_xnor is None else k_xnor)
        if kk > hw.max_k:
            raise LowbitError(f"K {kk} exceeds the {unit} unit's max_k {hw.max_k}")
        kw = random_operands(hw, np.random.default_rng(seed), m, kk, n, relu=False, raw=False)
        want = protocol.expected(**kw)
        _say(f"{unit}: building (cached) ...")
        build_harness(unit, **params)
        if "cocotb" not in skip:
            build_cocotb(unit, **params)
        _say(f"{unit}: compiled harness ...")
        first, harness_speed = _harness(unit, params, kw, want)
        row = {"unit": unit, "array": f"{rows}x{cols}", "shape": f"{m}x{kk}x{n}",
               "ideal": first.ideal_cycles, "cycles": first.cycles,
               "utilisation": first.utilisation, "harness": harness_speed,
               "cocotb": None, "amaranth": None}
        if "cocotb" not in skip:
            _say(f"{unit}: cocotb + Verilator ...")
            cycles, seconds = _cocotb(unit, params, m, kk, n, seed)
            row["cocotb"] = cycles / seconds
        if "amaranth" not in skip:
            _say(f"{unit}: Amaranth simulator ...")
            start = time.perf_counter()
            cycles, seconds = _amaranth(Protocol.for_unit(unit, **params), kw, want)
            row["amaranth"] = cycles / seconds
            _say(f"  {cycles} cycles in {time.perf_counter() - start:.1f} s")
        table.append(row)
    _print_table(table)
    return table


def _rate(v):
    return "-" if v is None else f"{v:,.0f}"


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:,.0f}x"


def _print_table(table) -> None:
    head = ("unit", "array", "M x K x N", "ideal cycles", "RTL cycles", "utilisation",
            "Amaranth cyc/s", "cocotb+Verilator cyc/s", "harness cyc/s", "harness/cocotb",
            "harness/Amaranth")
    lines = [head]
    for r in table:
        lines.append((r["unit"], r["array"], r["shape"], f"{r['ideal']:,.0f}",
                      f"{r['cycles']:,}", f"{100 * r['utilisation']:.1f}%", _rate(r["amaranth"]),
                      _rate(r["cocotb"]), _rate(r["harness"]), _ratio(r["harness"], r["cocotb"]),
                      _ratio(r["harness"], r["amaranth"])))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for line in lines[1:]:
        print("| " + " | ".join(str(c).rjust(w) for c, w in zip(line, widths)) + " |")


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (through :func:`lowbit.io.write_text_atomic`)."""
    from lowbit.io import write_text_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(Path(path), json.dumps(obj, indent=2) + "\n")
