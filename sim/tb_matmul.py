"""cocotb testbench for the matmul units (docs/hardware.md), run on Verilator.

Structure (as in cocotb's examples/matrix_multiplier):

* **drivers**: :class:`StreamSource` offers ``cfg`` and ``x`` beats (with random gaps),
  :class:`StreamSink` takes ``y`` beats (with random backpressure on ``ready``);
* **monitors**: :class:`StreamMonitor` reports every beat that moved on a stream, inputs and
  output alike;
* **golden model**: :class:`TileModel` is fed the *observed* ``cfg`` and ``x`` beats, decodes
  them with the unit's layouts and computes each tile's expected rows with the golden kernels
  of ``sw/golden.py`` (``int_matmul`` / ``log_matmul`` / ``xnor_matmul`` + ``requantize``);
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
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from lowbit.hw.driver import Protocol
from lowbit.sim.operands import corner_cases, random_operands
from lowbit.sw import golden

TIMEOUT_MS = int(os.environ.get("LOWBIT_TB_TIMEOUT_MS", "2000"))   # simulated time per test

# The golden kernels here multiply tiny tiles; torch's thread pool only adds latency to those
# (milliseconds per call on a busy machine, against microseconds with one thread).
torch.set_num_threads(1)


class FieldDecoder:
    """Decodes payload integers into fields with precomputed shifts (data.Const per beat is
    ten times slower and dominates a cocotb run). ``decode(v)`` returns ``{name: int or
    [ints]}`` with signed fields sign-extended, as the layout declares them."""

    def __init__(self, layout: data.StructLayout):
        self.fields = []
        for name, f in layout:
            shape = f.shape
            if isinstance(shape, data.ArrayLayout):
                elem = shape.elem_shape
                self.fields.append((name, f.offset, elem.width, shape.length, elem.signed))
            else:
                shape = shape if hasattr(shape, "width") else data.Layout.cast(shape)
                self.fields.append((name, f.offset, shape.width, None, shape.signed))

    def decode(self, value: int) -> dict:
        out = {}
        for name, off, width, count, signed in self.fields:
            mask, sign = (1 << width) - 1, 1 << (width - 1)

            def one(v):
                v &= mask
                return v - (1 << width) if signed and v & sign else v
            if count is None:
                out[name] = one(value >> off)
            else:
                out[name] = [one(value >> (off + e * width)) for e in range(count)]
        return out


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
    beats (a tile ends with ``last``). For each finished tile the model decodes the beats and
    evaluates the golden kernel: INT/log on the tile's ``A [rows, K]`` and ``W [cols, K]``;
    XNOR beat by beat (``alpha * 2**plane * dot`` of the beat's ``count`` lanes, with
    :func:`golden.xnor_matmul` on one plane pair), since the beats name their activation
    plane but the protocol leaves their order free.
    """

    def __init__(self, hw):
        self.hw = hw
        self.x_fields = FieldDecoder(hw.x_layout)
        self.cfg_fields = FieldDecoder(hw.cfg_layout)
        self.cfgs: deque = deque()
        self.beats: list = []               # x beats of the tile in progress
        self.finished: deque = deque()      # x beats of finished tiles still without cfg
        self.expected: deque = deque()      # (tile index, row, [cols] values)
        self.tiles = 0

    def on_cfg(self, payload: int):
        self.cfgs.append(self.cfg_fields.decode(payload))
        self._flush()

    def on_x(self, payload: int):
        beat = self.x_fields.decode(payload)
        self.beats.append(beat)
        if beat["last"]:
            self.finished.append(self.beats)
            self.beats = []
            self._flush()

    def _flush(self):
        while self.finished and self.cfgs:
            self._tile(self.finished.popleft(), self.cfgs.popleft())

    def _tile(self, beats, cfg):
        hw, rows, cols = self.hw, self.hw.rows, self.hw.cols
        bias = torch.tensor(cfg["bias"], dtype=torch.int64)
        if hw.unit == "xnor":
            t = torch.zeros(rows, cols, dtype=torch.int64)
            for b in beats:
                n = b["count"]

                def words(v):  # the beat's first n lanes as golden-packed 32-bit words
                    v &= (1 << n) - 1
                    return [(v >> (32 * i)) & 0xFFFFFFFF for i in range(-(-n // 32))]
                a = torch.tensor([[words(v) for v in b["a"]]])
                w = torch.tensor([[words(v) for v in b["w"]]])
                alpha = torch.tensor([b["alpha"]])
                t += golden.xnor_matmul(a, w, alpha, n, max_k=hw.max_k) << b["plane"]
            t += bias
        else:
            a = torch.tensor([b["a"] for b in beats], dtype=torch.int64).T    # [rows, K]
            w = torch.tensor([b["w"] for b in beats], dtype=torch.int64).T    # [cols, K]
            if hw.unit == "int8":
                t = golden.int_matmul(a, w, bias, a_bits=hw.a_bits, w_bits=hw.w_bits,
                                      max_k=hw.max_k)
            else:
                t = golden.log_matmul(a, w, bias, bits=hw.bits, a_bits=hw.a_bits,
                                      zero_code=hw.zero_code, max_k=hw.max_k)
        if not cfg["raw"]:
            t = golden.requantize(t, torch.tensor(cfg["mult"]), torch.tensor(cfg["shift"]),
                                  out_bits=hw.out_bits, relu=bool(cfg["relu"]))
        for r in range(rows):
            self.expected.append((self.tiles, r, t[r].tolist()))
        self.tiles += 1


class Scoreboard:
    """Compares each observed ``y`` row with the model's next expected row (equality)."""

    def __init__(self, hw, model: TileModel, log):
        self.hw, self.model, self.log = hw, model, log
        self.y_fields = FieldDecoder(hw.y_layout)
        self.rows_seen: list[int] = []
        self.matched = 0
        self.errors: list[str] = []

    def on_y(self, payload: int):
        self.rows_seen.append(payload)
        beat = self.y_fields.decode(payload)
        got = beat["data"]
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


class MatmulTB:
    """One unit under test: clock, reset, drivers, monitors, model and checker."""

    def __init__(self, dut, cfg: dict):
        self.dut, self.cfg = dut, cfg
        self.protocol = Protocol.for_unit(cfg["unit"], **cfg["params"])
        self.hw = self.protocol.unit
        self.hw._MustUse__silence = True     # a description of the RTL, never elaborated here
        rng = random.Random(cfg["seed"])
        self.rng = np.random.default_rng(cfg["seed"])
        self.cfg_src = StreamSource(dut, "cfg", random.Random(rng.random()), cfg["gaps"])
        self.x_src = StreamSource(dut, "x", random.Random(rng.random()), cfg["gaps"])
        self.y_sink = StreamSink(dut, "y", random.Random(rng.random()), cfg["stalls"])
        self.model = TileModel(self.hw)
        self.board = Scoreboard(self.hw, self.model, dut._log)
        self.monitors = [StreamMonitor(dut, "cfg", self.model.on_cfg),
                         StreamMonitor(dut, "x", self.model.on_x),
                         StreamMonitor(dut, "y", self.board.on_y)]

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
