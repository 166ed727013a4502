# amaranth: UnusedElaboratable=no
"""The accelerator top level (hw/accel.py) in the Amaranth simulator.

Register read-back of the identification registers, whole matmuls through the top's streams
(the unchanged host driver, equality with the golden kernel), the counters against an
independent monitor of the top's ports, soft reset, the interrupt line, job gating, every error
flag, every constructor message, the register table of docs/hardware.md, and the Verilator
lint of the top's Verilog (one flat module, the documented waivers).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from lowbit.cli import main
from lowbit.hw import describe, lint_verilog, make_unit
from lowbit.hw.accel import (
    MAGIC, REG, REGISTERS, Accelerator, RegisterBusSignature, bus_read, bus_write,
    decode_id, generate_accel_verilog, register_table,
)
from lowbit.hw.driver import Protocol
from lowbit.hw.simulate import simulate
from lowbit.sw import golden

pytestmark = pytest.mark.timeout(60)    # a deadlocked simulation would spin forever

ID_NAMES = ("MAGIC", "VERSION", "SHAPE", "OPERANDS", "MAX_K", "X_CFG_WIDTH", "Y_WIDTH")
COUNTERS = ("CYCLES", "BUSY_CYCLES", "X_BEATS", "CFG_BEATS", "Y_BEATS", "X_STALLS", "Y_STALLS",
            "X_IDLE", "TILES_DONE")


def bits(reg: str, *fields: str) -> int:
    """The mask of ``fields`` of register ``reg`` (``bits("CTRL", "START")``)."""
    return sum(REG[reg].field(f).mask for f in fields)


def run_sim(accel, *testbenches):
    sim = Simulator(accel)
    sim.add_clock(1e-6)
    for tb in testbenches:
        sim.add_testbench(tb)
    sim.run()


class Master:
    """Register master on the bus that knows the index of every edge it acted on.

    Every step takes exactly one edge; started at time 0, the n-th step acts at edge n, and a
    read at edge n returns the value the register had just before that edge.
    """

    def __init__(self, accel):
        self.bus, self.edges = accel.bus, 0
        self.log: list[tuple[int, str, int]] = []     # (edge, register, value read)

    async def read(self, ctx, name):
        value = await bus_read(ctx, self.bus, name)
        self.edges += 1
        self.log.append((self.edges, name, value))
        return value

    async def write(self, ctx, name, value):
        await bus_write(ctx, self.bus, name, value)
        self.edges += 1

    async def idle(self, ctx, cycles=1):
        for _ in range(cycles):
            await ctx.tick()
            self.edges += 1

    async def wait_for(self, ctx, name, mask, limit=5000):
        """Poll ``name`` until ``value & mask`` is non-zero; returns the value."""
        for _ in range(limit):
            value = await self.read(ctx, name)
            if value & mask:
                return value
        raise AssertionError(f"{name} & {mask:#x} stayed 0 for {limit} reads")


class Monitor:
    """Counts what each documented counter counts, edge by edge, from the top's ports alone.

    ``cum[n]`` holds the totals over edges 1..n, so a counter read at edge n must equal
    ``cum[n - 1]``. BUSY follows its documented definition (no job in these runs): x beats of an
    open tile, or a closed x tile or accepted cfg beat whose tile has not left y.
    """

    def __init__(self, accel):
        self.accel = accel
        self.cum = [dict.fromkeys(COUNTERS, 0)]
        self.irq: list[int] = [0]                 # irq level sampled at edge n
        self.tile_done_edges: list[int] = []
        self.stop = False

    async def run(self, ctx):
        a = self.accel
        in_tile, x_tiles, cfg_tiles, y_tiles = False, 0, 0, 0
        while not self.stop:
            _, _, xv, xr, xl, cv, cr, yv, yr, yl, irq = await ctx.tick().sample(
                a.x.valid, a.x.ready, a.x.payload.last, a.cfg.valid, a.cfg.ready, a.y.valid,
                a.y.ready, a.y.payload.last, a.irq)
            busy = in_tile or x_tiles != y_tiles or cfg_tiles != y_tiles
            do_x, do_cfg, do_y = xv and xr, cv and cr, yv and yr
            event = {"CYCLES": 1, "BUSY_CYCLES": busy, "X_BEATS": do_x, "CFG_BEATS": do_cfg,
                     "Y_BEATS": do_y, "X_STALLS": xv and not xr, "Y_STALLS": yv and not yr,
                     "X_IDLE": busy and not xv, "TILES_DONE": do_y and yl}
            self.cum.append({k: v + int(bool(event[k])) for k, v in self.cum[-1].items()})
            self.irq.append(irq)
            if do_x:
                in_tile = not xl
                x_tiles += bool(xl)
            cfg_tiles += bool(do_cfg)
            if do_y and yl:
                y_tiles += 1
                self.tile_done_edges.append(len(self.cum) - 1)

    def check(self, master: Master):
        """Every counter the master read equals the monitor's count before that edge."""
        checked = 0
        for edge, name, value in master.log:
            if name in COUNTERS:
                assert value == self.cum[edge - 1][name], (name, edge, value,
                                                          self.cum[edge - 1][name])
                checked += 1
        return checked


# ---------------------------------------------------------------------------------------------
# Operands for the three units


def rand_signed(rng, nbits, *shape):
    return rng.integers(-(1 << (nbits - 1)), 1 << (nbits - 1), shape)


def packed(signs):
    return golden.pack_bits(torch.as_tensor(np.asarray(signs, np.int64))).numpy()


def matmul_case(unit: str, rng, m=3, n=3, k=6):
    """``(accel params, plan args, plan kwargs)`` of a random matmul with requantization."""
    bias = rng.integers(-500, 500, n)
    mult = rng.integers(1 << 15, 1 << 16, n)
    if unit == "int8":
        params = dict(rows=2, cols=2)
        args = (rand_signed(rng, 8, m, k), rand_signed(rng, 8, n, k))
        shift = np.full(n, 21)
        kwargs = {}
    elif unit == "log":
        params = dict(rows=2, cols=2, bits=4)
        args = (rand_signed(rng, 8, m, k), rng.integers(0, 16, (n, k)))
        shift = np.full(n, 24)
        kwargs = {}
    else:
        params = dict(rows=2, cols=2, a_planes=2, w_planes=2, lanes=4)
        args = (packed(rng.choice([-1, 1], (2, m, k))), packed(rng.choice([-1, 1], (2, n, k))))
        shift = np.full(n, 30)
        kwargs = dict(alpha=rng.integers(0, 1 << 16, (2, n)), k=k)
    return params, (*args, bias, mult, shift), kwargs


# ---------------------------------------------------------------------------------------------
# Identification registers: software discovers the hardware


@pytest.mark.parametrize("unit, params", [
    ("int8", {}),
    ("int8", dict(rows=3, cols=5, a_bits=4, w_bits=6, max_k=1000, out_bits=32)),
    ("log", dict(bits=5, rows=1, cols=64)),
    ("log", dict(bits=3, zero_code=True, a_bits=2, max_k=1)),
    ("xnor", {}),
    ("xnor", dict(a_planes=8, w_planes=3, lanes=256, rows=4, cols=1, max_k=(1 << 16) + 3)),
    ("int8", dict(rows=64, cols=1, a_bits=2)),
])
def test_id_registers_read_back(unit, params):
    accel = Accelerator(unit=unit, **params)
    master, values = Master(accel), {}

    async def tb(ctx):
        for name in ID_NAMES:
            values[name] = await master.read(ctx, name)

    run_sim(accel, tb)
    assert values == accel.id_values
    assert values["MAGIC"] == MAGIC == 0x4C424954
    found = decode_id(values)
    u = accel.description
    assert found["unit"] == unit and found["version"] == (1, 0)
    assert found["params"] == u.params                 # rebuilds the same unit
    assert (found["acc_width"], found["y_width"]) == (u.acc_width, u.y_width)
    assert (found["x_width"], found["cfg_width"], found["y_width_total"]) == (
        u.x_layout.size, u.cfg_layout.size, u.y_layout.size)
    again = make_unit(found["unit"], **found["params"])
    assert again.x_layout == u.x_layout and again.y_layout == u.y_layout


def test_id_register_fields_by_hand():
    # The documented bit positions, spelled out once for one unit.
    v = Accelerator(unit="log", rows=3, cols=7, bits=5, a_bits=6, zero_code=True,
                    max_k=4096, out_bits=12).id_values
    assert v["VERSION"] == (2 << 16) | (1 << 8) | 0
    acc_width = golden.log_acc_width(5, 6, 4096, True)
    assert v["SHAPE"] == (acc_width << 24) | (12 << 16) | (7 << 8) | 3
    assert v["OPERANDS"] == (1 << 25) | (5 << 8) | 6
    assert v["MAX_K"] == 4096
    x = Accelerator(unit="xnor", lanes=256, a_planes=3, w_planes=4).id_values
    assert x["VERSION"] >> 16 == 3 and x["OPERANDS"] == (256 << 16) | (4 << 8) | 3


def test_decode_id_rejects_other_hardware():
    values = dict(Accelerator(unit="int8").id_values)
    with pytest.raises(ValueError, match="no lowbit accelerator at this address"):
        decode_id({**values, "MAGIC": 0})
    with pytest.raises(ValueError, match="unknown unit kind code 9"):
        decode_id({**values, "VERSION": 9 << 16})


def test_bus_contract_zero_when_idle_unmapped_and_read_only():
    accel = Accelerator(unit="int8", rows=1, cols=1)
    seen = []

    async def tb(ctx):
        bus = accel.bus
        assert ctx.get(bus.r_data) == 0
        await bus_write(ctx, bus, "MAGIC", 0x1234)            # read only: ignored
        await bus_write(ctx, bus, "STATUS", 0xFFFFFFFF)
        seen.append(await bus_read(ctx, bus, "MAGIC"))
        await ctx.tick()                                       # no strobe: r_data back to 0
        seen.append(ctx.get(bus.r_data))
        ctx.set(bus.addr, 0x3F)                               # unmapped
        ctx.set(bus.r_stb, 1)
        await ctx.tick()
        ctx.set(bus.r_stb, 0)
        seen.append(ctx.get(bus.r_data))
        await bus_write(ctx, bus, "JOB_TILES", 0xDEADBEEF)
        await bus_write(ctx, bus, "CTRL", 0xFFFFFFF8)            # no action bits
        seen.append(await bus_read(ctx, bus, "JOB_TILES"))
        seen.append(await bus_read(ctx, bus, "CTRL"))
        seen.append(await bus_read(ctx, bus, "STATUS"))

    run_sim(accel, tb)
    assert seen == [MAGIC, 0, 0, 0xDEADBEEF,
                    bits("CTRL", "JOB_GATE", "IRQ_EN"),   # only the RW fields read back
                    0]                                    # gated, no job: x closed, not busy
    assert isinstance(accel.signature.members["bus"].signature, RegisterBusSignature)


# ---------------------------------------------------------------------------------------------
# Whole matmuls through the top's streams, counters against the monitor


@pytest.mark.parametrize("unit", ["int8", "log", "xnor"])
@pytest.mark.parametrize("x_valid, y_ready", [(1.0, 1.0), (0.6, 0.5)])
def test_matmul_through_the_top_and_counters(unit, x_valid, y_ready):
    rng = np.random.default_rng(["int8", "log", "xnor"].index(unit) * 10 + int(x_valid * 10))
    params, args, kwargs = matmul_case(unit, rng)
    accel = Accelerator(unit=unit, **params)
    proto = Protocol(accel.description)                 # the unchanged host driver
    plan = proto.plan(*args, **kwargs)
    tiles = len(plan.tiles)
    monitor, master, final = Monitor(accel), Master(accel), {}

    async def registers(ctx):
        await master.wait_for(ctx, "IRQ_PENDING", bits("IRQ_PENDING", "TILE_DONE"))
        while await master.read(ctx, "TILES_DONE") < tiles:
            await master.read(ctx, "STATUS")
        for reg in REGISTERS:
            final[reg.name] = await master.read(ctx, reg.name)
        monitor.stop = True

    result = simulate(accel, plan, x_valid=x_valid, y_ready=y_ready, seed=3,
                      testbenches=[monitor.run, registers])
    got = proto.assemble(plan, result.y)
    assert np.array_equal(got, proto.expected(*args, **kwargs))
    assert monitor.check(master) >= len(COUNTERS)
    assert final["X_BEATS"] == plan.x_beats and final["Y_BEATS"] == plan.y_beats
    assert final["CFG_BEATS"] == final["TILES_DONE"] == tiles
    assert final["STATUS"] == bits("STATUS", "X_OPEN")           # idle again
    assert final["ERRORS"] == 0 and final["IRQ_PENDING"] == bits("IRQ_PENDING", "TILE_DONE")
    assert 0 < final["BUSY_CYCLES"] < final["CYCLES"]
    if x_valid == 1.0 and y_ready == 1.0:
        assert final["Y_STALLS"] == 0
    else:
        assert final["Y_STALLS"] > 0 and final["X_IDLE"] > 0
    # utilisation as software computes it from the counters
    assert final["X_BEATS"] <= final["BUSY_CYCLES"]


def test_clear_counters():
    accel = Accelerator(unit="int8", rows=1, cols=1)
    master, seen = Master(accel), []

    async def tb(ctx):
        await master.idle(ctx, 10)
        seen.append(await master.read(ctx, "CYCLES"))             # edges 1..10 counted
        await master.write(ctx, "CTRL", bits("CTRL", "CLEAR_COUNTERS"))
        seen.append(await master.read(ctx, "CYCLES"))             # zeroed at the write edge
        seen.append(await master.read(ctx, "CYCLES"))
        seen.append(await master.read(ctx, "CTRL"))               # an action: reads as 0

    run_sim(accel, tb)
    assert seen == [10, 0, 1, 0]


# ---------------------------------------------------------------------------------------------
# Sequential host helpers (cfg then x for each tile, a documented legal order)


async def send(ctx, stream, payload):
    ctx.set(stream.payload.as_value(), payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def send_tiles(ctx, accel, tiles):
    for tile in tiles:
        await send(ctx, accel.cfg, tile.cfg)
        for payload in tile.x:
            await send(ctx, accel.x, payload)


def collector(accel, want: int, out: list, stall_limit: int = 2000):
    """Testbench taking ``want`` y beats into ``out``; fails fast on a deadlock."""
    async def collect(ctx):
        ctx.set(accel.y.ready, 1)
        idle = 0
        while len(out) < want:
            _, _, valid, payload = await ctx.tick().sample(accel.y.valid,
                                                           accel.y.payload.as_value())
            if valid:
                out.append(int(payload))
                idle = 0
            else:
                idle += 1
                assert idle < stall_limit, f"no y beat for {stall_limit} cycles (deadlock?)"
    return collect


# ---------------------------------------------------------------------------------------------
# Soft reset


@pytest.mark.parametrize("soft_reset", [True, False])
def test_soft_reset_discards_a_half_sent_tile(soft_reset):
    rng = np.random.default_rng(5)
    params, args, kwargs = matmul_case("int8", rng, m=2, n=2, k=8)
    accel = Accelerator(unit="int8", **params)
    proto = Protocol(accel.description)
    junk = proto.plan(*matmul_case("int8", rng, m=2, n=2, k=8)[1])
    plan = proto.plan(*args, **kwargs)
    y, seen = [], {}

    async def host(ctx):
        master = Master(accel)
        await master.write(ctx, "JOB_TILES", 7)
        await master.write(ctx, "CTRL", bits("CTRL", "IRQ_EN"))
        if soft_reset:          # (without the reset, this cfg beat would wait forever)
            await send(ctx, accel.cfg, junk.tiles[0].cfg)
            seen["cfg_only"] = await master.read(ctx, "STATUS")   # a cfg beat alone is work
        for payload in junk.tiles[0].x[:5]:              # half a tile, no `last`
            await send(ctx, accel.x, payload)
        seen["before"] = await master.read(ctx, "STATUS")
        if soft_reset:
            await master.write(ctx, "CTRL", bits("CTRL", "SOFT_RESET", "IRQ_EN"))
            seen["during"] = await master.read(ctx, "STATUS")     # the reset cycle itself
            for name in ("STATUS", "X_BEATS", "CFG_BEATS", "CYCLES", "ERRORS", "IRQ_PENDING",
                         "CTRL", "JOB_TILES"):
                seen[name] = await master.read(ctx, name)
        await send_tiles(ctx, accel, plan.tiles)

    run_sim(accel, host, collector(accel, plan.y_beats, y))
    same = np.array_equal(proto.assemble(plan, y), proto.expected(*args, **kwargs))
    if soft_reset:
        assert same
        assert seen["cfg_only"] == bits("STATUS", "BUSY", "X_OPEN")
        assert seen["before"] == bits("STATUS", "BUSY", "IN_TILE", "X_OPEN")
        assert seen["during"] == bits("STATUS", "BUSY", "IN_TILE")   # streams closed
        assert seen["STATUS"] == bits("STATUS", "X_OPEN")
        assert seen["X_BEATS"] == seen["CFG_BEATS"] == seen["ERRORS"] == 0
        assert seen["IRQ_PENDING"] == 0 and seen["CYCLES"] <= 8
        assert seen["CTRL"] == bits("CTRL", "IRQ_EN") and seen["JOB_TILES"] == 7  # kept
    else:
        assert not same     # the control: without the reset the half tile corrupts the result


# ---------------------------------------------------------------------------------------------
# Interrupts


def test_irq_rises_the_cycle_after_the_last_row_and_clears_on_w1c():
    rng = np.random.default_rng(9)
    params, args, kwargs = matmul_case("log", rng, m=2, n=2, k=5)
    accel = Accelerator(unit="log", **params)
    proto = Protocol(accel.description)
    plan = proto.plan(*args, **kwargs)
    monitor, master, seen = Monitor(accel), Master(accel), {}

    async def registers(ctx):
        await master.write(ctx, "CTRL", bits("CTRL", "IRQ_EN"))
        await master.wait_for(ctx, "STATUS", bits("STATUS", "IRQ"))
        seen["pending"] = await master.read(ctx, "IRQ_PENDING")
        await master.write(ctx, "IRQ_PENDING", bits("IRQ_PENDING", "TILE_DONE"))
        seen["clear_edge"] = master.edges
        await master.idle(ctx, 2)
        monitor.stop = True

    result = simulate(accel, plan, testbenches=[monitor.run, registers])
    assert np.array_equal(proto.assemble(plan, result.y), proto.expected(*args, **kwargs))
    (done,) = monitor.tile_done_edges
    assert monitor.irq[:done + 1] == [0] * (done + 1)     # low up to the completing edge
    assert monitor.irq[done + 1] == 1                     # high right after it
    c = seen["clear_edge"]
    assert monitor.irq[c] == 1 and monitor.irq[c + 1:] == [0] * len(monitor.irq[c + 1:])
    assert seen["pending"] == bits("IRQ_PENDING", "TILE_DONE")


def test_irq_stays_low_while_disabled_and_follows_the_enable():
    accel = Accelerator(unit="int8", rows=1, cols=1)
    proto = Protocol(accel.description)
    plan = proto.plan(np.array([[3]]), np.array([[-4]]), raw=True)
    levels, seen = [], {}

    async def registers(ctx):
        master = Master(accel)
        await master.wait_for(ctx, "IRQ_PENDING", bits("IRQ_PENDING", "TILE_DONE"))
        levels.append(ctx.get(accel.irq))
        await master.write(ctx, "CTRL", bits("CTRL", "IRQ_EN") & ~bits("IRQ_PENDING",
                                                                       "TILE_DONE") << 8)
        levels.append(ctx.get(accel.irq))                 # other causes enabled: still low
        await master.write(ctx, "CTRL", bits("IRQ_PENDING", "TILE_DONE") << 8)
        levels.append(ctx.get(accel.irq))
        await master.write(ctx, "CTRL", 0)
        levels.append(ctx.get(accel.irq))
        seen["pending"] = await master.read(ctx, "IRQ_PENDING")

    result = simulate(accel, plan, testbenches=[registers])
    assert proto.assemble(plan, result.y).tolist() == [[-12]]
    assert levels == [0, 0, 1, 0]
    assert seen["pending"] == bits("IRQ_PENDING", "TILE_DONE")     # disabling does not clear


# ---------------------------------------------------------------------------------------------
# Jobs


def test_job_gate_lets_exactly_job_tiles_through():
    rng = np.random.default_rng(11)
    params, args, kwargs = matmul_case("xnor", rng, m=2, n=6, k=9)   # 3 tiles of 2x2
    accel = Accelerator(unit="xnor", **params)
    proto = Protocol(accel.description)
    plan = proto.plan(*args, **kwargs)
    assert len(plan.tiles) == 3
    y, seen, go = [], {}, []

    # cfg and x from two processes (as a DMA engine would): the gate must hold back each.
    async def send_cfg(ctx):
        while not go:
            await ctx.tick()
        for tile in plan.tiles:
            await send(ctx, accel.cfg, tile.cfg)

    async def send_x(ctx):
        while not go:
            await ctx.tick()
        for tile in plan.tiles:
            for payload in tile.x:
                await send(ctx, accel.x, payload)

    async def registers(ctx):
        master = Master(accel)
        await master.write(ctx, "CTRL", bits("CTRL", "JOB_GATE") | bits("IRQ_PENDING",
                                                                         "JOB_DONE") << 8)
        await master.write(ctx, "JOB_TILES", 2)
        go.append(1)
        await master.idle(ctx, 10)
        seen["closed"] = [await master.read(ctx, n) for n in ("STATUS", "CFG_BEATS",
                                                                "X_BEATS", "X_STALLS")]
        await master.write(ctx, "CTRL", bits("CTRL", "JOB_GATE", "START") | bits(
            "IRQ_PENDING", "JOB_DONE") << 8)
        seen["irq_before"] = ctx.get(accel.irq)
        await master.wait_for(ctx, "IRQ_PENDING", bits("IRQ_PENDING", "JOB_DONE"))
        seen["irq_after"] = ctx.get(accel.irq)
        await master.idle(ctx, 20)                 # tile 3 waits at the closed gate
        seen["first"] = {n: await master.read(ctx, n) for n in (
            "STATUS", "JOB_DONE_TILES", "TILES_DONE", "CFG_BEATS", "X_BEATS", "ERRORS")}
        await master.write(ctx, "IRQ_PENDING", 0xFFFFFFFF)
        await master.write(ctx, "JOB_TILES", 1)
        await master.write(ctx, "CTRL", bits("CTRL", "JOB_GATE", "START"))
        await master.wait_for(ctx, "IRQ_PENDING", bits("IRQ_PENDING", "JOB_DONE"))
        seen["second"] = {n: await master.read(ctx, n) for n in (
            "JOB_DONE_TILES", "TILES_DONE", "ERRORS")}

    run_sim(accel, send_cfg, send_x, registers, collector(accel, plan.y_beats, y))
    assert np.array_equal(proto.assemble(plan, y), proto.expected(*args, **kwargs))
    status, cfg_beats, x_beats, x_stalls = seen["closed"]
    assert status == 0 and cfg_beats == x_beats == 0    # not busy, gate closed, nothing taken
    assert x_stalls >= 10                               # x offered since `go`, held back
    assert seen["irq_before"] == 0 and seen["irq_after"] == 1
    # tile 3's cfg beat waits at the closed gate: nothing in flight, x closed, irq pending
    assert seen["first"] == {"STATUS": bits("STATUS", "IRQ"), "JOB_DONE_TILES": 2,
                             "TILES_DONE": 2, "CFG_BEATS": 2,
                             "X_BEATS": len(plan.tiles[0].x) * 2, "ERRORS": 0}
    assert seen["second"] == {"JOB_DONE_TILES": 1, "TILES_DONE": 3, "ERRORS": 0}


def test_empty_job_and_start_while_busy():
    accel = Accelerator(unit="int8", rows=1, cols=1)
    seen = []

    async def tb(ctx):
        master = Master(accel)
        await master.write(ctx, "CTRL", bits("CTRL", "START"))          # JOB_TILES = 0
        await master.idle(ctx)
        seen.append(await master.read(ctx, "IRQ_PENDING"))
        await master.write(ctx, "JOB_TILES", 1)
        await master.write(ctx, "CTRL", bits("CTRL", "START"))
        seen.append(await master.read(ctx, "STATUS"))
        await master.write(ctx, "CTRL", bits("CTRL", "START") | bits("IRQ_PENDING", "ERROR") << 8)
        seen.append(await master.read(ctx, "ERRORS"))
        seen.append(ctx.get(accel.irq))
        await master.write(ctx, "ERRORS", bits("ERRORS", "START_BUSY"))
        seen.append(await master.read(ctx, "ERRORS"))

    run_sim(accel, tb)
    assert seen == [bits("IRQ_PENDING", "JOB_DONE"),
                    bits("STATUS", "BUSY", "JOB_ACTIVE", "X_OPEN"),
                    bits("ERRORS", "START_BUSY"), 1, 0]


# ---------------------------------------------------------------------------------------------
# Error flags


def set_field(accel, payload: int, name: str, value: int) -> int:
    """``payload`` with x field ``name`` replaced by ``value``."""
    f = accel.description.x_layout[name]
    mask = ((1 << f.shape.width) - 1) << f.offset
    return (payload & ~mask) | (value << f.offset)


def errors_after(accel, beats, cfg=None) -> tuple[int, int]:
    """Send ``beats`` on x (after ``cfg``); return (ERRORS, IRQ_PENDING)."""
    out = {}

    async def tb(ctx):
        master = Master(accel)
        ctx.set(accel.y.ready, 1)
        if cfg is not None:
            await send(ctx, accel.cfg, cfg)
        for payload in beats:
            await send(ctx, accel.x, payload)
        out["errors"] = await master.read(ctx, "ERRORS")
        out["pending"] = await master.read(ctx, "IRQ_PENDING")

    run_sim(accel, tb)
    return out["errors"], out["pending"] & bits("IRQ_PENDING", "ERROR")


def test_k_overflow_int8_at_and_beyond_max_k():
    accel_params = dict(rows=1, cols=1, max_k=4)
    accel = Accelerator(unit="int8", **accel_params)
    plan = Protocol(accel.description).plan(np.ones((1, 4), np.int64), np.ones((1, 4), np.int64),
                                       raw=True)
    beats = plan.tiles[0].x
    assert errors_after(accel, beats) == (0, 0)                     # K = max_k: fine
    accel = Accelerator(unit="int8", **accel_params)
    assert errors_after(accel, [beats[0]] + beats) == (bits("ERRORS", "K_OVERFLOW"),
                                                        bits("IRQ_PENDING", "ERROR"))
    accel = Accelerator(unit="int8", **accel_params)
    assert errors_after(accel, beats + beats) == (0, 0)             # the budget is per tile


def test_k_overflow_xnor_budget_is_count_shifted_by_plane():
    params = dict(rows=1, cols=1, a_planes=2, w_planes=1, lanes=4, max_k=8)
    accel = Accelerator(unit="xnor", **params)
    assert accel.k_budget == 8 * 3 * 1
    plan = Protocol(accel.description).plan(packed(np.ones((2, 1, 8))), packed(np.ones((1, 1, 8))),
                                       raw=True, alpha=np.array([[1]]), k=8)
    beats = plan.tiles[0].x                       # costs 4, 8, 4, 8: exactly the budget
    assert len(beats) == 4
    assert errors_after(accel, beats) == (0, 0)
    extra = set_field(accel, set_field(accel, beats[0], "count", 1), "plane", 0)
    accel = Accelerator(unit="xnor", **params)
    assert errors_after(accel, [extra] + beats)[0] == bits("ERRORS", "K_OVERFLOW")


@pytest.mark.parametrize("field, value, bad", [
    ("count", 0, True), ("count", 4, False), ("count", 5, True), ("count", 7, True),
    ("plane", 1, False), ("plane", 2, True), ("plane", 7, True),
])
def test_bad_xnor_beats(field, value, bad):
    accel = Accelerator(unit="xnor", rows=1, cols=1, a_planes=2, lanes=4)
    plan = Protocol(accel.description).plan(packed(np.ones((1, 1, 4))), packed(np.ones((1, 1, 4))),
                                       raw=True, alpha=np.array([[1]]), k=4)
    (beat,) = plan.tiles[0].x
    errors, _ = errors_after(accel, [set_field(accel, beat, field, value)])
    assert errors == (bits("ERRORS", "BAD_BEAT") if bad else 0)


@pytest.mark.parametrize("bits_, zero_code, exponent, bad", [
    (6, False, 15, False), (6, False, 16, True), (6, True, 15, False), (6, True, 16, True),
    (8, False, 127, True), (5, False, 15, False),
])
def test_bad_log_codes(bits_, zero_code, exponent, bad):
    accel = Accelerator(unit="log", rows=1, cols=2, bits=bits_, zero_code=zero_code)
    plan = Protocol(accel.description).plan(np.ones((1, 1), np.int64), np.zeros((2, 1), np.int64),
                                       raw=True)
    (beat,) = plan.tiles[0].x
    off = accel.description.x_layout["w"].offset + bits_        # column 1's code
    beat |= exponent << off
    errors, pending = errors_after(accel, [beat])
    assert errors == (bits("ERRORS", "BAD_BEAT") if bad else 0)
    assert pending == (bits("IRQ_PENDING", "ERROR") if bad else 0)


@pytest.mark.parametrize("stream", ["x", "cfg"])
def test_withdrawn_valid_is_a_protocol_error(stream):
    accel = Accelerator(unit="int8", rows=1, cols=1)
    seen = []

    async def tb(ctx):
        master = Master(accel)
        await master.write(ctx, "CTRL", bits("CTRL", "JOB_GATE"))   # closed: never ready
        port = getattr(accel, stream)
        ctx.set(port.valid, 1)
        await master.idle(ctx, 3)
        seen.append(await master.read(ctx, "X_STALLS"))            # edges 2..4 when x waits
        seen.append(await master.read(ctx, "ERRORS"))              # waiting is fine
        ctx.set(port.valid, 0)                                     # ... withdrawing is not
        await master.idle(ctx)
        seen.append(await master.read(ctx, "ERRORS"))

    run_sim(accel, tb)
    name = "X_WITHDRAWN" if stream == "x" else "CFG_WITHDRAWN"
    assert seen == [3 if stream == "x" else 0, 0, bits("ERRORS", name)]


# ---------------------------------------------------------------------------------------------
# Constructor validation: every message


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(unit="foo"), ValueError, "Unit must be one of int8, log, xnor, not 'foo'"),
    (dict(unit=3), TypeError, "Unit must be one of int8, log, xnor, not 3"),
    (dict(unit="int8", bits=4), TypeError,
     "Unknown parameter 'bits' for the int8 unit (it takes rows, cols, a_bits, w_bits, max_k, "
     "out_bits)"),
    (dict(unit="xnor", a_bits=4), TypeError,
     "Unknown parameter 'a_bits' for the xnor unit (it takes rows, cols, a_planes, w_planes, "
     "lanes, max_k, out_bits)"),
    (dict(unit="int8", a_bits=2, w_bits=2, max_k=1 << 32), ValueError,
     "Max K must be below 2**32 to fit the MAX_K register, not 4294967296"),
    (dict(unit="int8", max_k=0), ValueError, "Max K must be a positive integer, not 0"),
    (dict(unit="log", max_k="8"), TypeError, "Max K must be a positive integer, not '8'"),
    # the unit's own messages pass through
    (dict(unit="int8", rows=0), ValueError, "Rows must be a positive integer, not 0"),
    (dict(unit="log", bits=1, zero_code=True), ValueError, "Zero code needs at least 2 bits, not 1"),
    (dict(unit="xnor", lanes=257), ValueError, "Lanes must be an integer in 1..256, not 257"),
])
def test_constructor_errors(kwargs, exc, message):
    with pytest.raises(exc) as info:
        Accelerator(**kwargs)
    assert str(info.value) == message


def test_module_name_must_be_an_identifier():
    with pytest.raises(ValueError, match="module name must be a Verilog identifier, not '9x'"):
        generate_accel_verilog("int8", name="9x")


# ---------------------------------------------------------------------------------------------
# Documentation and Verilog


def test_register_table_in_docs_is_current():
    doc = (Path(__file__).parent.parent / "docs" / "hardware.md").read_text()
    assert register_table() in doc
    addrs = [r.addr for r in REGISTERS]
    assert len(set(addrs)) == len(addrs) and max(addrs) < 1 << 6
    for r in REGISTERS:                              # fields inside 32 bits, not overlapping
        used = 0
        for f in r.fields:
            assert f.mask < 1 << 32 and not used & f.mask
            used |= f.mask


def ports(source: str) -> dict[str, tuple[str, int]]:
    found = {}
    for direction, rng, name in re.findall(r"^\s*(input|output)\s+(\[\d+:0\]\s+)?(\w+);",
                                           source, re.M):
        found[name] = (direction, int(re.match(r"\[(\d+)", rng).group(1)) + 1 if rng else 1)
    return found


@pytest.mark.parametrize("unit, params", [
    ("int8", dict(rows=2, cols=3, a_bits=4)),
    ("log", dict(bits=6, zero_code=True, rows=1, cols=2)),
    ("xnor", dict(rows=2, cols=1, lanes=5, a_planes=3)),
])
def test_top_verilog_lints_clean_as_one_module(unit, params):
    source = generate_accel_verilog(unit, **params)
    name = describe(unit, **params).accel_name
    lint_verilog(source, name)              # -Wall with the documented waivers only
    assert re.findall(r"^module (\S+)\(", source, re.M) == [name]
    u = describe(unit, **params)
    assert ports(source) == {
        "clk": ("input", 1), "rst": ("input", 1),
        "x__payload": ("input", u.x_layout.size), "x__valid": ("input", 1),
        "x__ready": ("output", 1),
        "cfg__payload": ("input", u.cfg_layout.size), "cfg__valid": ("input", 1),
        "cfg__ready": ("output", 1),
        "y__payload": ("output", u.y_layout.size), "y__valid": ("output", 1),
        "y__ready": ("input", 1),
        "bus__addr": ("input", 6), "bus__r_stb": ("input", 1), "bus__r_data": ("output", 32),
        "bus__w_stb": ("input", 1), "bus__w_data": ("input", 32), "irq": ("output", 1),
    }


def test_cli_top(tmp_path, capsys):
    out = tmp_path / "acc.v"
    assert main(["hw", "verilog", "--top", "--unit", "log", "--bits", "3", "--rows", "1",
                 "--cols", "2", "--name", "my_accel", "-o", str(out)]) == 0
    text = out.read_text()
    assert re.findall(r"^module (\S+)\(", text, re.M) == ["my_accel"]
    assert "bus__r_data" in ports(text) and "irq" in ports(text)
    assert "register bus" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["acc.v"]
    assert main(["hw", "verilog", "--top", "--unit", "int8", "--a-bits", "2", "--w-bits", "2",
                 "--max-k", str(1 << 32), "-o", str(out)]) == 2
    assert capsys.readouterr().err == ("lowbit: error: --max-k must be below 2**32 to fit the "
                                       "MAX_K register, not 4294967296\n")
