"""The host side of the matmul units' stream protocol, one payload integer per beat.

:class:`Protocol` turns a matmul ``(A, W, bias, mult, shift, relu/raw)`` into tiles of payload
integers (one ``cfg`` beat and the ``x`` beats per output tile) and reassembles the ``y``
payload integers into ``Y``, for the Amaranth simulator (:mod:`lowbit.hw.simulate`) and the
cocotb testbenches, which move one beat at a time. The words come from the one packer of
:mod:`lowbit.hw.packing` (the compiled harness and co-simulation use it directly), so every
simulator sees the same beats.

Payload integers are the values of the Verilog ports ``x__payload``, ``cfg__payload`` and
``y__payload`` (bit 0 = LSB of the port).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbit.contract import ceil_div

from .packing import Packer
from .units import UnitDescription, describe

__all__ = ["Protocol", "Tile", "Plan"]


@dataclass
class Tile:
    """One output tile: rows ``m0..m0+rows-1``, columns ``n0..n0+cols-1``."""
    m0: int
    n0: int
    cfg: int                      # the cfg__payload integer
    x: list[int]                  # the x__payload integers, the last has ``last = 1``


@dataclass
class Plan:
    """Every tile of one matmul ``Y [m, n]``, in the order the unit processes them."""
    m: int
    n: int
    rows: int                     # the unit's array rows (y beats per tile)
    tiles: list[Tile] = field(default_factory=list)

    @property
    def x_beats(self) -> int:
        return sum(len(t.x) for t in self.tiles)

    @property
    def y_beats(self) -> int:
        return len(self.tiles) * self.rows


class Protocol:
    """Host model of one unit's tile protocol (docs/hardware.md).

    Parameters
    ----------
    unit : UnitDescription or MatmulUnit
        The unit's description, or a unit (its description is read).
    """

    def __init__(self, unit):
        desc = getattr(unit, "description", unit)
        if not isinstance(desc, UnitDescription):
            raise TypeError(f"unit must be a unit description or a MatmulUnit, not "
                            f"{type(unit).__name__}")
        self.unit = self.description = desc
        self.kind = desc.kind
        self.rows, self.cols = desc.rows, desc.cols
        self.packer = Packer(desc)

    @classmethod
    def for_unit(cls, unit: str, **params) -> "Protocol":
        """Protocol of the unit of kind ``unit`` with ``params`` (no hardware is built)."""
        return cls(describe(unit, **params))

    def plan(self, a, w, bias=None, mult=None, shift=None, *, relu=False, raw=False,
             **extra) -> Plan:
        """Tiles of payload integers for ``Y = requantize(A @ W.T + bias)`` (or raw).

        Parameters
        ----------
        a, w : integer arrays (numpy or torch).
            INT / log: ``A [M, K]`` signed activations, ``W [N, K]`` weights (INT) or log codes.
            XNOR: packed planes as :func:`lowbit.sw.golden.pack_bits` makes them,
            ``A [Pa, M, words]``, ``W [Pw, N, words]`` (32-bit words, LSB first).
        bias : [N] or None (zeros); mult, shift : [N] (may be None when ``raw``).
        relu, raw : bool, per-tile options (see docs/numerics.md).
        **extra : the unit's further operands (XNOR: ``alpha [Pw, N]`` unsigned 16-bit plane
            scales and ``k``, the number of valid bits per packed row); None means absent.

        Every operand is range-checked by running the golden kernel once
        (:meth:`lowbit.hw.packing.Packer.validate`). Tiles run over ``m0`` (outer) and ``n0``
        (inner); edges are zero-padded.
        """
        extra = {k: v for k, v in extra.items() if v is not None}
        job = self.packer.prepare(a, w, bias, mult, shift, relu=relu, raw=raw, **extra)
        x_codec, cfg_codec = self.packer.x, self.packer.cfg
        plan = Plan(m=job.plan.m, n=job.plan.n, rows=self.rows)
        per_tile = job.beats
        origins = iter(job.plan.origins())
        for _, _, cfg, x in self.packer.blocks(job):
            cfgs, beats = cfg_codec.to_ints(cfg), x_codec.to_ints(x)
            for t, c in enumerate(cfgs):
                _, m0, n0 = next(origins)
                plan.tiles.append(Tile(m0=m0, n0=n0, cfg=c,
                                       x=beats[t * per_tile:(t + 1) * per_tile]))
        return plan

    def expected(self, a, w, bias=None, mult=None, shift=None, *, relu=False, raw=False,
                 **extra) -> np.ndarray:
        """The golden result ``Y [M, N]`` (int64) for the same arguments as :meth:`plan`."""
        extra = {k: v for k, v in extra.items() if v is not None}
        mm = self.packer.validate(a, w, bias, mult, shift, relu=relu, raw=raw, **extra)
        return self.description.golden_result(mm)

    # --- outputs --------------------------------------------------------------------------

    def unpack_y(self, payloads) -> tuple[np.ndarray, np.ndarray]:
        """``y__payload`` integers -> ``(data [beats, cols] int64, last [beats] bool)``."""
        y = self.packer.y
        words = y.from_ints(payloads)
        return y.get(words, "data"), y.get(words, "last").astype(bool)

    def assemble(self, plan: Plan, y_payloads) -> np.ndarray:
        """Reassemble ``y`` payloads (arrival order) into ``Y [M, N]`` (int64).

        Raises ValueError if the beat count or the ``last`` flags disagree with the plan.
        """
        want = len(plan.tiles) * self.rows
        if len(y_payloads) != want:
            raise ValueError(f"expected {want} y beats ({len(plan.tiles)} tiles x {self.rows} "
                             f"rows), got {len(y_payloads)}")
        values = self.packer.y_values(self.packer.y.from_ints(y_payloads))
        y = np.zeros((ceil_div(plan.m, self.rows) * self.rows,
                      ceil_div(plan.n, self.cols) * self.cols), np.int64)
        for t, tile in enumerate(plan.tiles):
            y[tile.m0:tile.m0 + self.rows, tile.n0:tile.n0 + self.cols] = \
                values[t * self.rows:(t + 1) * self.rows]
        return y[:plan.m, :plan.n]

    def ideal_cycles(self, plan: Plan) -> int:
        """Cycles of a perfectly busy array: one ``x`` beat per cycle (``M*K*N/(rows*cols)``
        for INT/log when M, N are multiples of the array)."""
        return plan.x_beats
