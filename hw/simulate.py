"""Run a :class:`~lowbit.hw.driver.Plan` through a unit in the Amaranth simulator.

Three concurrent testbench processes speak the protocol of docs/hardware.md: one sends the
``cfg`` beats, one the ``x`` beats (optionally with random gaps), one takes the ``y`` beats
(optionally with ``ready`` dropped at random, to exercise backpressure). Used by the fast tests
in tests/test_hw_*.py and by the Amaranth side of the benchmarks.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from amaranth.sim import Simulator

from .driver import Plan
from .matmul import MatmulUnit

__all__ = ["SimResult", "simulate"]


@dataclass
class SimResult:
    y: list[int]          # y__payload integers in arrival order
    cycles: int           # clock cycles from reset release to the last y handshake
    seconds: float        # wall time of the simulation

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.seconds if self.seconds > 0 else float("inf")


def simulate(unit: MatmulUnit, plan: Plan, *, x_valid: float = 1.0, y_ready: float = 1.0,
             seed: int = 0, stall_limit: int = 10_000, testbenches=()) -> SimResult:
    """Simulate ``plan`` on ``unit``; returns the ``y`` payloads and the cycle count.

    Parameters
    ----------
    x_valid, y_ready : float in (0, 1]
        Probability that the host offers an ``x`` beat / accepts a ``y`` beat in a cycle
        (1.0: every cycle, the throughput case).
    seed : int
        Seed of the gap/backpressure pattern.
    stall_limit : int
        Raise :class:`RuntimeError` if no ``y`` beat arrives for this many cycles (a deadlock
        would otherwise hang the caller).
    testbenches : iterable of async functions ``f(ctx)``
        Further testbench processes run alongside the three stream processes (e.g. a register
        master on :class:`lowbit.hw.accel.Accelerator`'s bus; ``unit`` may be any component
        with the unit's ``x``, ``cfg`` and ``y`` streams). The simulation ends when all return.
    """
    for name, p in (("x_valid", x_valid), ("y_ready", y_ready)):
        if not 0 < p <= 1:
            raise ValueError(f"{name} must be a probability in (0, 1], not {p!r}")
    rng_x, rng_y = random.Random(seed), random.Random(seed + 1)
    received: list[int] = []
    counter = {"cycles": 0}
    want = plan.y_beats

    async def send_cfg(ctx):
        for tile in plan.tiles:
            ctx.set(unit.cfg.payload.as_value(), tile.cfg)
            ctx.set(unit.cfg.valid, 1)
            await ctx.tick().until(unit.cfg.ready)
        ctx.set(unit.cfg.valid, 0)

    async def send_x(ctx):
        for tile in plan.tiles:
            for payload in tile.x:
                while x_valid < 1 and rng_x.random() >= x_valid:
                    ctx.set(unit.x.valid, 0)
                    await ctx.tick()
                ctx.set(unit.x.payload.as_value(), payload)
                ctx.set(unit.x.valid, 1)
                await ctx.tick().until(unit.x.ready)
        ctx.set(unit.x.valid, 0)

    async def receive_y(ctx):
        idle = 0
        while len(received) < want:
            ready = y_ready >= 1 or rng_y.random() < y_ready
            ctx.set(unit.y.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(unit.y.valid,
                                                           unit.y.payload.as_value())
            counter["cycles"] += 1
            if ready and valid:
                received.append(int(payload))
                idle = 0
            else:
                idle += 1
                if idle > stall_limit:
                    raise RuntimeError(f"no y beat for {stall_limit} cycles after "
                                       f"{len(received)}/{want} beats (deadlock?)")
        ctx.set(unit.y.ready, 0)

    sim = Simulator(unit)
    sim.add_clock(1e-6)
    sim.add_testbench(send_cfg)
    sim.add_testbench(send_x)
    sim.add_testbench(receive_y)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    start = time.perf_counter()
    sim.run()
    return SimResult(y=received, cycles=counter["cycles"], seconds=time.perf_counter() - start)
