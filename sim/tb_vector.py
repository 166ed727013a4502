"""cocotb testbench for the vector units (hw/vector.py; docs/hardware.md, "Vector units"), run
on Verilator.

The structure of sim/tb_matmul.py, with its drivers and monitors:

* **drivers**: :class:`~lowbit.sim.tb_matmul.StreamSource` offers ``cfg`` and ``x`` beats (random
  gaps), :class:`~lowbit.sim.tb_matmul.StreamSink` takes ``y`` beats (random backpressure);
* **monitors**: :class:`~lowbit.sim.tb_matmul.StreamMonitor` reports every beat that moved;
* **golden model**: :class:`RowModel` is fed the *observed* ``cfg`` and ``x`` beats, decodes them
  with the unit's layouts, turns each row back into operands (the description's
  ``operands_from_fields``) and computes its expected ``y`` beats with the golden operation;
* **checker**: :class:`RowScoreboard` compares every observed ``y`` beat with the model's, by
  equality (lanes past the row's end excepted), ``last`` included; each batch reassembled from
  the ``y`` stream must also equal the golden result of the original operands.

Configuration from the environment (set by tests/test_vector_units.py through
``lowbit.sim.verilator.run_cocotb``): ``LOWBIT_TB_UNIT``, ``LOWBIT_TB_PARAMS`` (JSON),
``LOWBIT_TB_SEED``, ``LOWBIT_TB_RANDOM`` (random batches), ``LOWBIT_TB_ROWS`` (rows per batch),
``LOWBIT_TB_GAPS`` / ``LOWBIT_TB_STALLS`` (backpressure probabilities).
"""

from __future__ import annotations

import json
import os
from collections import deque

import cocotb
import numpy as np
import torch
from cocotb.triggers import RisingEdge

from lowbit.hw.units import describe
from lowbit.sim.tb_matmul import StreamBench

TIMEOUT_MS = int(os.environ.get("LOWBIT_TB_TIMEOUT_MS", "2000"))   # simulated time per test

torch.set_num_threads(1)    # tiny golden calls: a thread pool only adds latency


def config() -> dict:
    env = os.environ
    return {
        "unit": env["LOWBIT_TB_UNIT"],
        "params": json.loads(env.get("LOWBIT_TB_PARAMS", "{}")),
        "seed": int(env.get("LOWBIT_TB_SEED", "0")),
        "random": int(env.get("LOWBIT_TB_RANDOM", "3")),
        "rows": int(env.get("LOWBIT_TB_ROWS", "3")),
        "gaps": float(env.get("LOWBIT_TB_GAPS", "0.0")),
        "stalls": float(env.get("LOWBIT_TB_STALLS", "0.0")),
    }


class RowModel:
    """Expected ``y`` beats from the ``cfg`` and ``x`` beats seen on the interface: the n-th
    ``cfg`` beat gives the length of the n-th row of ``x`` beats (a row ends with ``last``)."""

    def __init__(self, hw):
        self.hw = hw
        self.codecs = hw.codecs
        self.cfgs: deque = deque()
        self.beats: list = []
        self.finished: deque = deque()
        self.expected: deque = deque()      # (row index, beat, values, last)
        self.rows = 0
        self.listeners: list = []           # called when expected beats were added
        self._last = 1 << self.codecs["x"].fields["last"].offset

    def on_cfg(self, payload: int):
        c = self.codecs["cfg"]
        self.cfgs.append(c.decode(c.from_ints([payload])))
        self._flush()

    def on_x(self, payload: int):
        self.beats.append(payload)
        if payload & self._last:
            self.finished.append(self.beats)
            self.beats = []
            self._flush()

    def _flush(self):
        while self.finished and self.cfgs:
            self._row(self.finished.popleft(), self.cfgs.popleft())

    def _row(self, payloads, cfg):
        hw, c = self.hw, self.codecs["x"]
        length = int(cfg["length"][0])
        fields = c.decode(c.from_ints(payloads))
        x = {k: v.reshape(1, -1)[:, :length] for k, v in fields.items() if k != "last"}
        ops = hw.operands_from_fields({k: v for k, v in cfg.items() if k != "length"}, x)
        want = np.asarray(hw.golden_rows(ops))[0]
        per = hw.y_beats(length)
        for b in range(per):
            if hw.y_per_lane:
                part = want[b * hw.lanes:(b + 1) * hw.lanes]
                self.expected.append((self.rows, b, part.tolist(), b == per - 1))
            else:
                self.expected.append((self.rows, b, [int(want)], True))
        self.rows += 1
        for f in self.listeners:
            f()


class RowScoreboard:
    """Compares each observed ``y`` beat with the model's next expected beat (equality).

    A streaming unit may send a row's first ``y`` beats before its last ``x`` beat (which the
    model needs): such beats wait in ``pending`` until the model has the row.
    """

    def __init__(self, hw, model: RowModel, log):
        self.hw, self.model, self.log = hw, model, log
        self.codec = hw.codecs["y"]
        self.seen: list[int] = []
        self.pending: deque = deque()
        self.matched = 0
        self.errors: list[str] = []
        model.listeners.append(self._match)

    def on_y(self, payload: int):
        self.seen.append(payload)
        self.pending.append(payload)
        self._match()

    def _match(self):
        while self.pending and self.model.expected:
            self._compare(self.pending.popleft(), *self.model.expected.popleft())

    def finish(self):
        """Every observed beat must have been matched by now."""
        if self.pending:
            self.errors.append(f"{len(self.pending)} y beats without a row")

    def _compare(self, payload, row, b, want, last):
        beat = self.codec.decode(self.codec.from_ints([payload]))
        got = np.atleast_1d(beat["data"][0]).tolist()
        if bool(beat["last"][0]) != last:
            self.errors.append(f"row {row} beat {b}: last={beat['last'][0]}")
        for i, w in enumerate(want):
            if got[i] == w:
                self.matched += 1
            else:
                self.errors.append(f"row {row} beat {b} lane {i}: RTL {got[i]}, golden {w}")
        if self.errors and len(self.errors) <= 5:
            self.log.error(self.errors[-1])


class VectorTB(StreamBench):
    """One vector unit under test: clock, reset, drivers, monitors, model and checker."""

    def __init__(self, dut, cfg: dict):
        self.hw = describe(cfg["unit"], **cfg["params"])
        model = RowModel(self.hw)
        self._wire(dut, cfg, model, RowScoreboard(self.hw, model, dut._log))

    async def rows(self, name: str, ops: dict) -> int:
        """Run a batch of rows; returns the number of matched elements (raises on a mismatch)."""
        hw = self.hw
        cfg, x, n_y = hw.pack(ops)
        length = np.shape(hw.x_fields(ops)["data"])[1]
        first = len(self.board.seen)
        cfg_task = cocotb.start_soon(self.cfg_src.send(hw.codecs["cfg"].to_ints(cfg)))
        await self.x_src.send(hw.codecs["x"].to_ints(x))
        await cfg_task
        while len(self.board.seen) - first < n_y:
            await RisingEdge(self.dut.clk)
        words = hw.codecs["y"].from_ints(self.board.seen[first:first + n_y])
        y = hw.unpack(words, len(cfg), length)
        want = hw.golden_rows(ops)
        self.board.finish()
        assert not self.board.errors, f"{name}: {self.board.errors[:5]}"
        bad = int((y != want).sum())
        assert bad == 0, f"{name}: {bad} of {want.size} elements differ from the golden op"
        self.dut._log.info("%s: %d rows of %d, bit-exact %d/%d", name, len(cfg), length,
                           want.size, want.size)
        return want.size


@cocotb.test(timeout_time=TIMEOUT_MS, timeout_unit="ms")
async def random_rows(dut):
    """``LOWBIT_TB_RANDOM`` batches of ``LOWBIT_TB_ROWS`` random rows of random lengths."""
    tb = VectorTB(dut, config())
    await tb.start()
    for i in range(tb.cfg["random"]):
        length = int(tb.rng.integers(1, tb.hw.max_len + 1))
        await tb.rows(f"random {i} (length {length})",
                      tb.hw.random_rows(tb.rng, tb.cfg["rows"], length))
    dut._log.info("random: %d elements matched", tb.board.matched)


@cocotb.test(timeout_time=TIMEOUT_MS, timeout_unit="ms")
async def corner_case_rows(dut):
    """The unit's corner cases (its description's ``corner_cases``)."""
    cfg = config()
    tb = VectorTB(dut, {**cfg, "seed": cfg["seed"] + 1})
    await tb.start()
    for name, ops in tb.hw.corner_cases(tb.rng):
        await tb.rows(name, ops)
    dut._log.info("corners: %d elements matched", tb.board.matched)
