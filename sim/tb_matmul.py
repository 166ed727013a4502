"""cocotb testbench for the matmul units (docs/hardware.md), run on Verilator.

Structure (as in cocotb's examples/matrix_multiplier):

* **drivers**: :class:`StreamSource` offers ``cfg`` and ``x`` beats (with random gaps),
  :class:`StreamSink` takes ``y`` beats (with random backpressure on ``ready``);
* **monitors**: :class:`StreamMonitor` reports every beat that moved on a stream, inputs and
  output alike;
* **golden model**: :class:`TileModel` is fed the *observed* ``cfg`` and ``x`` beats, decodes
  them with the unit's layouts (:class:`lowbit.hw.packing.PayloadCodec`), turns them back into
  golden operands (the unit description's ``tile_operands``) and computes each tile's expected
  rows with the unit's golden kernel of ``sw/golden.py`` and ``requantize``;
* **checker**: :class:`Scoreboard` compares every observed ``y`` row with the model's, by
  equality; in addition each matmul reassembled from the ``y`` stream must equal the golden
  result computed from the original operands (so the host tiling is checked too).

The configuration comes from the environment (set by tests/test_sim_cocotb.py through
``cocotb_tools.runner``): ``LOWBIT_TB_UNIT`` and ``LOWBIT_TB_PARAMS`` (JSON) name the unit that
was built; ``LOWBIT_TB_SEED``, ``LOWBIT_TB_RANDOM`` (random matmuls), ``LOWBIT_TB_MAX_DIM``
(largest M, N), ``LOWBIT_TB_MAX_K`` (largest K drawn, and the widest K of the corner cases),
``LOWBIT_TB_GAPS`` / ``LOWBIT_TB_STALLS`` (backpressure probabilities) set the run size;
``LOWBIT_TB_CASES`` (comma-separated names) runs only those corner cases.
"""

from __future__ import annotations

import json
import os
import random
from collections import deque

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from lowbit.hw.driver import Protocol
from lowbit.hw.packing import PayloadCodec
from lowbit.sim.operands import corner_cases, random_operands

TIMEOUT_MS = int(os.environ.get("LOWBIT_TB_TIMEOUT_MS", "2000"))   # simulated time per test

# The golden kernels here multiply tiny tiles; torch's thread pool only adds latency to those
# (milliseconds per call on a busy machine, against microseconds with one thread).
torch.set_num_threads(1)


def config() -> dict:
    env = os.environ
    return {
        "unit": env["LOWBIT_TB_UNIT"],
        "params": json.loads(env.get("LOWBIT_TB_PARAMS", "{}")),
        "seed": int(env.get("LOWBIT_TB_SEED", "0")),
        "random": int(env.get("LOWBIT_TB_RANDOM", "4")),
        "max_dim": int(env.get("LOWBIT_TB_MAX_DIM", "9")),
        "max_k": int(env.get("LOWBIT_TB_MAX_K", "64")),
        "gaps": float(env.get("LOWBIT_TB_GAPS", "0.0")),
        "stalls": float(env.get("LOWBIT_TB_STALLS", "0.0")),
        "cases": [c for c in env.get("LOWBIT_TB_CASES", "").split(",") if c],
    }


# ---------------------------------------------------------------------------------------------
# Drivers and monitors


class StreamSource:
    """Offers payloads on ``<name>__payload/valid`` following the stream rules: valid never
    waits for ready, the payload holds until the beat moves; random idle cycles (``gaps``)."""

    def __init__(self, dut, name: str, rng: random.Random, gaps: float):
        self.clk = dut.clk
        self.payload = getattr(dut, f"{name}__payload")
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.rng, self.gaps = rng, gaps
        self.valid.value = 0

    async def send(self, payloads):
        for p in payloads:
            while self.gaps and self.rng.random() < self.gaps:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.payload.value = p
            self.valid.value = 1
            while True:
                await ReadOnly()
                moved = bool(self.ready.value)
                await RisingEdge(self.clk)
                if moved:
                    break
        self.valid.value = 0


class StreamSink:
    """Drives ``<name>__ready``: high, or low with probability ``stalls`` each cycle."""

    def __init__(self, dut, name: str, rng: random.Random, stalls: float):
        self.clk = dut.clk
        self.ready = getattr(dut, f"{name}__ready")
        self.rng, self.stalls = rng, stalls
        self.ready.value = 0

    async def run(self):
        while True:
            self.ready.value = int(not (self.stalls and self.rng.random() < self.stalls))
            await RisingEdge(self.clk)


class StreamMonitor:
    """Calls ``callback(payload int)`` for every beat that moves on the stream ``name``."""

    def __init__(self, dut, name: str, callback):
        self.clk = dut.clk
        self.payload = getattr(dut, f"{name}__payload")
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.callback = callback

    async def run(self):
        while True:
            await ReadOnly()
            if self.valid.value == 1 and self.ready.value == 1:
                self.callback(self.payload.value.to_unsigned())
            await RisingEdge(self.clk)


# ---------------------------------------------------------------------------------------------
# Golden model fed by observed beats, and the checker


class TileModel:
    """Expected ``y`` rows computed from the ``cfg`` and ``x`` beats seen on the interface.

    Tiles pair up in order: the n-th observed ``cfg`` beat configures the n-th tile of ``x``
    beats (a tile ends with ``last``). For each finished tile the model decodes the beats,
    turns them back into golden operands with the unit description's ``tile_operands`` (INT,
    log: the tile's ``A [rows, K]`` and ``W [cols, K]``; XNOR: one plane pair per beat, since
    the beats name their activation plane but the protocol leaves their order free) and
    evaluates the golden kernel and the requantization.
    """

    def __init__(self, hw):
        self.hw = hw
        self.x_codec = PayloadCodec(hw.x_layout)
        self.cfg_codec = PayloadCodec(hw.cfg_layout)
        self.cfgs: deque = deque()
        self.beats: list = []               # x payloads of the tile in progress
        self.finished: deque = deque()      # x payloads of finished tiles still without cfg
        self.expected: deque = deque()      # (tile index, row, [cols] values)
        self.tiles = 0
        self._last = 1 << self.x_codec.fields["last"].offset

    def on_cfg(self, payload: int):
        self.cfgs.append(self.cfg_codec.decode(self.cfg_codec.from_ints([payload])))
        self._flush()

    def on_x(self, payload: int):
        self.beats.append(payload)
        if payload & self._last:
            self.finished.append(self.beats)
            self.beats = []
            self._flush()

    def _flush(self):
        while self.finished and self.cfgs:
            self._tile(self.finished.popleft(), self.cfgs.popleft())

    def _tile(self, payloads, cfg):
        hw = self.hw
        beats = self.x_codec.decode(self.x_codec.from_ints(payloads))
        t = sum(hw.golden_accumulator(ops) << shift for ops, shift in hw.tile_operands(beats))
        t = t + cfg["bias"][0]
        if not cfg["raw"][0]:
            t = hw.golden_output(t, cfg["mult"][0], cfg["shift"][0], bool(cfg["relu"][0]))
        for r in range(hw.rows):
            self.expected.append((self.tiles, r, t[r].tolist()))
        self.tiles += 1


class Scoreboard:
    """Compares each observed ``y`` row with the model's next expected row (equality)."""

    def __init__(self, hw, model: TileModel, log):
        self.hw, self.model, self.log = hw, model, log
        self.y_codec = PayloadCodec(hw.y_layout)
        self.rows_seen: list[int] = []
        self.matched = 0
        self.errors: list[str] = []

    def on_y(self, payload: int):
        self.rows_seen.append(payload)
        beat = {k: v[0] for k, v in self.y_codec.decode(self.y_codec.from_ints([payload])).items()}
        got = beat["data"].tolist()
        if not self.model.expected:
            self.errors.append(f"unexpected y beat {got} (no tile finished)")
            return
        tile, row, want = self.model.expected.popleft()
        if bool(beat["last"]) != (row == self.hw.rows - 1):
            self.errors.append(f"tile {tile} row {row}: last={beat['last']}")
        for c, (g, w) in enumerate(zip(got, want)):
            if g == w:
                self.matched += 1
            else:
                self.errors.append(f"tile {tile} row {row} col {c}: RTL {g}, golden {w}")
        if self.errors and len(self.errors) <= 5:
            for e in self.errors[-1:]:
                self.log.error(e)


class StreamBench:
    """Clock, reset, drivers and monitors around a unit with ``cfg``, ``x`` and ``y`` streams
    (the matmul units here, the vector units in sim/tb_vector.py): the model takes the observed
    ``cfg`` and ``x`` beats (``on_cfg``, ``on_x``), the checker the ``y`` beats (``on_y``)."""

    def _wire(self, dut, cfg: dict, model, board) -> None:
        self.dut, self.cfg = dut, cfg
        rng = random.Random(cfg["seed"])
        self.rng = np.random.default_rng(cfg["seed"])
        self.cfg_src = StreamSource(dut, "cfg", random.Random(rng.random()), cfg["gaps"])
        self.x_src = StreamSource(dut, "x", random.Random(rng.random()), cfg["gaps"])
        self.y_sink = StreamSink(dut, "y", random.Random(rng.random()), cfg["stalls"])
        self.model, self.board = model, board
        self.monitors = [StreamMonitor(dut, "cfg", model.on_cfg),
                         StreamMonitor(dut, "x", model.on_x),
                         StreamMonitor(dut, "y", board.on_y)]

    async def start(self):
        cocotb.start_soon(Clock(self.dut.clk, 10, unit="ns").start())
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)
        cocotb.start_soon(self.y_sink.run())
        for mon in self.monitors:
            cocotb.start_soon(mon.run())


class MatmulTB(StreamBench):
    """One matmul unit under test: clock, reset, drivers, monitors, model and checker."""

    def __init__(self, dut, cfg: dict):
        self.protocol = Protocol.for_unit(cfg["unit"], **cfg["params"])
        self.hw = self.protocol.description
        model = TileModel(self.hw)
        self._wire(dut, cfg, model, Scoreboard(self.hw, model, dut._log))

    async def matmul(self, name: str, kw: dict) -> int:
        """Run one matmul; returns the number of matched elements (raises on any mismatch)."""
        plan = self.protocol.plan(**kw)
        first = len(self.board.rows_seen)
        cfg_task = cocotb.start_soon(self.cfg_src.send([t.cfg for t in plan.tiles]))
        await self.x_src.send([x for t in plan.tiles for x in t.x])
        await cfg_task
        while len(self.board.rows_seen) - first < plan.y_beats:
            await RisingEdge(self.dut.clk)
        y = self.protocol.assemble(plan, self.board.rows_seen[first:])
        want = self.protocol.expected(**kw)
        assert not self.board.errors, f"{name}: {self.board.errors[:5]}"
        mismatches = int((y != want).sum())
        assert mismatches == 0, (f"{name}: {mismatches} of {want.size} elements differ from "
                                 f"the golden matmul")
        self.dut._log.info("%s: M=%d N=%d tiles=%d bit-exact %d/%d", name, plan.m, plan.n,
                           len(plan.tiles), want.size, want.size)
        return want.size


def _shape(rng, cfg):
    k_hi = cfg["max_k"]
    return (int(rng.integers(1, cfg["max_dim"] + 1)), int(rng.integers(1, k_hi + 1)),
            int(rng.integers(1, cfg["max_dim"] + 1)))


@cocotb.test(timeout_time=TIMEOUT_MS, timeout_unit="ms")
async def random_matmuls(dut):
    """``LOWBIT_TB_RANDOM`` random matmuls (random shapes, operands, relu/raw), fixed seed."""
    tb = MatmulTB(dut, config())
    await tb.start()
    for i in range(tb.cfg["random"]):
        m, k, n = _shape(tb.rng, tb.cfg)
        await tb.matmul(f"random {i} ({m}x{k}x{n})", random_operands(tb.hw, tb.rng, m, k, n))
    dut._log.info("random: %d elements matched", tb.board.matched)


@cocotb.test(timeout_time=TIMEOUT_MS, timeout_unit="ms")
async def corner_case_matmuls(dut):
    """The contract's corner cases (sim/operands.py), widest K capped by ``LOWBIT_TB_MAX_K``."""
    cfg = config()
    tb = MatmulTB(dut, {**cfg, "seed": cfg["seed"] + 1})
    await tb.start()
    cases = corner_cases(tb.hw, tb.rng, k_cap=cfg["max_k"])
    unknown = set(cfg["cases"]) - {name for name, _ in cases}
    assert not unknown, f"no corner cases named {sorted(unknown)}"
    for name, kw in cases:
        if not cfg["cases"] or name in cfg["cases"]:
            await tb.matmul(name, kw)
    dut._log.info("corners: %d elements matched", tb.board.matched)
