"""Drive a Verilated vector unit from Python: rows in, results out, compared with the golden op.

:class:`VerilatedVector` compiles a vector unit (softmax, argmax, ...; :mod:`lowbit.hw.vector`)
with Verilator and ``sim/harness.cpp`` (cached, :mod:`lowbit.sim.verilator`), loads it with
ctypes and streams rows through it::

    unit = VerilatedVector("softmax", lanes=4, max_len=64)
    ops = unit.hw.random_rows(rng, 8, 50)       # {"z": [8, 50], "keep": [8, 50]}
    res = unit.run(ops)                         # res.y [8, 50], res.cycles
    assert (res.y == unit.expected(ops)).all()

The beats are the description's (:meth:`~lowbit.hw.vector.VectorDescription.pack`): one ``cfg``
beat per row, ``ceil(length / lanes)`` ``x`` beats per row; the results are read back with
:meth:`~lowbit.hw.vector.VectorDescription.unpack`, which checks every ``last`` flag. This is
the path of ``lowbit verify --unit softmax ...``; sim/tb_vector.py is the cocotb testbench of
the same units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lowbit import LowbitError
from lowbit.hw.units import describe

from .harness import VerilatedStreams

__all__ = ["VerilatedVector", "VectorResult"]


@dataclass
class VectorResult:
    """What one batch of rows through the RTL returned: ``y`` (int64, ``[rows, length]``, or
    ``[rows]`` for one result per row), ``cycles`` from the first beat offered to the last
    result taken, and the wall-clock ``seconds`` of the simulation."""
    y: np.ndarray
    cycles: int
    seconds: float


class VerilatedVector(VerilatedStreams):
    """One vector unit compiled with Verilator and driven by the C++ harness.

    Parameters
    ----------
    unit : str
        A registered vector unit kind (``"softmax"``, ``"argmax"``, ...).
    **params : the unit's parameters (``lanes``, ``max_len``, ...), and the test-only ``fault``
        (:data:`lowbit.hw.faults.FAULTS`).

    Attributes
    ----------
    description (also ``hw``) : the unit's :class:`~lowbit.hw.vector.VectorDescription`.

    Raises :class:`lowbit.LowbitError` for an unknown unit, one that is not a vector unit or a
    bad parameter (one line), and when the Verilator build fails. The build is cached.
    """

    def __init__(self, unit: str, **params):
        from lowbit.sim.verilator import build_harness

        unit_params = {k: v for k, v in params.items() if k != "fault"}
        try:
            self.description = self.hw = describe(unit, **unit_params)
        except (TypeError, ValueError) as e:
            raise LowbitError(str(e)) from None
        if self.hw.family != "vector":
            raise LowbitError(f"{unit} is not a vector unit (VerilatedUnit runs it)")
        # the full parameter set: the same unit shares one cached build however it was named
        self.kind, self.params = unit, {**self.hw.params, **params}
        self._load(build_harness(unit, **self.params),
                   {name: codec.nwords for name, codec in self.hw.codecs.items()})

    def run(self, ops: dict, *, gaps: float = 0.0, stalls: float = 0.0,
            seed: int = 0) -> VectorResult:
        """Every row of ``ops`` (the description's operands, one row length) through the RTL.

        ``gaps`` / ``stalls`` / ``seed``: random idle input and refused output cycles
        (:meth:`~lowbit.sim.harness.VerilatedStreams.run_beats`). Raises RuntimeError if the
        unit hangs, ValueError if a ``last`` flag is out of place.
        """
        cfg, x, n_y = self.hw.pack(ops)
        rows = len(cfg)
        length = len(self.hw.x_fields(ops)["data"][0])
        slack = 1.0 / ((1 - gaps) * (1 - stalls))
        budget = int(slack * 4 * rows * self.hw.cycles_per_row(length)) + 10_000
        start = time.perf_counter()
        words, cycles = self.run_beats(cfg, x, n_y, gaps=gaps, stalls=stalls, seed=seed,
                                       max_cycles=budget)
        return VectorResult(y=self.hw.unpack(words, rows, length), cycles=cycles,
                            seconds=time.perf_counter() - start)

    def expected(self, ops: dict) -> np.ndarray:
        """The golden operation's result for the same rows."""
        return self.hw.golden_rows(ops)
