"""Drive a Verilated matmul unit from Python, one whole matmul per call: the fast RTL path.

:class:`VerilatedUnit` compiles a unit with Verilator together with ``sim/harness.cpp`` (cached,
see :mod:`lowbit.sim.verilator`), loads it with ctypes, and runs matmuls through the RTL::

    unit = VerilatedUnit("int8", rows=4, cols=4)
    res = unit.matmul(A, W, bias, mult, shift)          # A [M, K], W [N, K] int8
    res.y                # Y [M, N] int64, straight from the RTL's y stream
    res.cycles           # clock cycles the RTL took
    unit.close()

The beats are those of the one packer (:class:`lowbit.hw.packing.Packer`: the tile order,
payload layouts and golden checks of docs/hardware.md, the same beats the driver hands the
Amaranth simulator and cocotb), as 32-bit payload words handed to C++ in blocks. This is the
path ``lowbit verify``, the unit benchmark and whole-model co-simulation use; the cocotb
testbenches (sim/tb_matmul.py) remain the verification framework.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from lowbit import LowbitError
from lowbit.hw.packing import Job, Packer
from lowbit.hw.units import describe

__all__ = ["VerilatedStreams", "VerilatedUnit", "MatmulResult"]

_U32P = ctypes.POINTER(ctypes.c_uint32)
_U64P = ctypes.POINTER(ctypes.c_uint64)


@dataclass
class MatmulResult:
    """What one matmul through the RTL returned.

    ``y`` is the output ``[M, N]`` (int64): requantized values, or ``t = acc + bias`` when run
    with ``raw=True``. ``cycles`` counts clock cycles from the first beat offered to the last
    output beat taken; ``ideal_cycles`` is ``M*K*N / (rows*cols)`` (XNOR: ``M*N*K*Pa*Pw /
    (rows*cols*lanes)``), the cycles of a perfectly busy array, so ``utilisation =
    ideal_cycles / cycles``.
    """
    y: np.ndarray
    cycles: int
    ideal_cycles: float
    x_beats: int
    tiles: int
    seconds: float

    @property
    def utilisation(self) -> float:
        return self.ideal_cycles / self.cycles if self.cycles else 0.0

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.seconds if self.seconds > 0 else float("inf")


class VerilatedStreams:
    """A unit with ``cfg``, ``x`` and ``y`` streams, compiled with Verilator and driven by the C++
    harness (sim/harness.cpp): the parts every unit family shares (loading the library, raw
    beats, lifetime). :class:`VerilatedUnit` (matmul units) and
    :class:`lowbit.sim.vector_harness.VerilatedVector` (vector units) build on it."""

    def _load(self, library, words: dict) -> None:
        """Load the harness ``library``; ``words`` are the payload words per beat the unit's
        layouts need (``{"x": ..., "cfg": ..., "y": ...}``), checked against the build."""
        self.library = library
        lib = ctypes.CDLL(str(library))
        lib.lb_create.restype = ctypes.c_void_p
        lib.lb_destroy.argtypes = [ctypes.c_void_p]
        lib.lb_cycles.argtypes = [ctypes.c_void_p]
        lib.lb_cycles.restype = ctypes.c_uint64
        lib.lb_run.argtypes = [ctypes.c_void_p, _U32P, ctypes.c_int64, _U32P, ctypes.c_int64,
                               _U32P, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32,
                               ctypes.c_uint32, ctypes.c_uint64, _U64P]
        lib.lb_run.restype = ctypes.c_int64
        self._lib = lib
        self._words = {"x": lib.lb_x_words(), "cfg": lib.lb_cfg_words(), "y": lib.lb_y_words()}
        for name in ("x", "cfg", "y"):
            if self._words[name] != words[name]:
                raise LowbitError(f"harness/unit mismatch: {name} payload has "
                                  f"{self._words[name]} words, layout needs {words[name]}")
        self._h = ctypes.c_void_p(lib.lb_create())

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "_h", None):
            self._lib.lb_destroy(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    # --- raw beats --------------------------------------------------------------------------

    def run_beats(self, cfg: np.ndarray, x: np.ndarray, n_y: int, *, gaps: float = 0.0,
                  stalls: float = 0.0, seed: int = 0, max_cycles: int | None = None):
        """Stream payload words through the unit: ``cfg [T, cw]``, ``x [B, xw]`` (uint32).

        Returns ``(y [n_y, yw] uint32, cycles)``. ``gaps`` is the probability that the host
        offers no beat in a cycle (x and cfg), ``stalls`` that it refuses a y beat (random
        backpressure, seeded). Raises RuntimeError if the unit does not deliver ``n_y`` beats
        within ``max_cycles`` (default: generous for the beat count), or leaves beats unread.
        """
        cfg = np.ascontiguousarray(cfg, dtype=np.uint32)
        x = np.ascontiguousarray(x, dtype=np.uint32)
        if cfg.shape[1:] != (self._words["cfg"],) or x.shape[1:] != (self._words["x"],):
            raise ValueError(f"cfg/x words must be [*, {self._words['cfg']}] / "
                             f"[*, {self._words['x']}], not {cfg.shape} / {x.shape}")
        for name, p in (("gaps", gaps), ("stalls", stalls)):
            if not 0 <= p < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), not {p!r}")
        y = np.zeros((n_y, self._words["y"]), dtype=np.uint32)
        if max_cycles is None:
            slack = 1.0 / ((1 - gaps) * (1 - stalls))
            max_cycles = int(slack * 4 * (len(x) + n_y + 8 * len(cfg))) + 10_000
        stats = (ctypes.c_uint64 * 3)()
        got = self._lib.lb_run(self._h, cfg.ctypes.data_as(_U32P), len(cfg),
                               x.ctypes.data_as(_U32P), len(x), y.ctypes.data_as(_U32P), n_y,
                               seed, int(gaps * 1e6), int(stalls * 1e6), max_cycles, stats)
        cycles, took_cfg, took_x = stats[0], stats[1], stats[2]
        if got != n_y or took_cfg != len(cfg) or took_x != len(x):
            raise RuntimeError(f"the unit hung: after {cycles} cycles it took {took_cfg}/"
                               f"{len(cfg)} cfg and {took_x}/{len(x)} x beats and gave "
                               f"{got}/{n_y} y beats")
        return y, int(cycles)


class VerilatedUnit(VerilatedStreams):
    """One matmul unit compiled with Verilator and driven by the C++ harness.

    Parameters
    ----------
    unit : str
        A registered unit kind (``"int8"``, ``"log"``, ``"xnor"``, ...).
    **params : the unit's parameters (rows, cols, max_k, ...; docs/hardware.md).

    Attributes
    ----------
    description (also ``hw``) : the unit's :class:`~lowbit.hw.units.UnitDescription`.
    packer : the :class:`~lowbit.hw.packing.Packer` of its beats.

    Raises :class:`lowbit.LowbitError` for an unknown unit or a bad parameter (one line), and
    when the Verilator build fails (with the build log's tail). The build is cached.
    """

    def __init__(self, unit: str, *, weight_cache: bool = False, **params):
        from lowbit.sim.verilator import build_harness

        # ``fault``: a test-only unit with wrong arithmetic (lowbit.hw.faults); the protocol
        # (layouts, tile order) is the normal unit's.
        unit_params = {k: v for k, v in params.items() if k != "fault"}
        try:
            self.description = self.hw = describe(unit, **unit_params)
        except (TypeError, ValueError) as e:
            raise LowbitError(str(e)) from None
        self.kind, self.params = unit, dict(params)
        self.packer = Packer(self.description, weight_cache=weight_cache)
        self._load(build_harness(unit, **params),
                   {name: getattr(self.packer, name).nwords for name in ("x", "cfg", "y")})

    # --- whole matmuls ---------------------------------------------------------------------

    def prepare(self, a, w, bias=None, mult=None, shift=None, *, relu: bool = False,
                raw: bool = False, **extra) -> Job:
        """A validated matmul, packed (:meth:`lowbit.hw.packing.Packer.prepare`; ValueError
        naming the operand). Arguments as :meth:`lowbit.hw.driver.Protocol.plan`."""
        extra = {k: v for k, v in extra.items() if v is not None}
        return self.packer.prepare(a, w, bias, mult, shift, relu=relu, raw=raw, **extra)

    def run(self, job: Job, *, gaps: float = 0.0, stalls: float = 0.0, seed: int = 0,
            progress=None, hook=None) -> tuple[np.ndarray, int, int, float]:
        """Stream every tile of ``job`` through the unit in blocks of whole tile rows.

        Returns ``(Y [batch, M, N], cycles, harness calls, seconds inside the harness)``.
        ``gaps`` / ``stalls`` / ``seed``: random backpressure, see :meth:`run_beats`.
        ``progress(x_beats_done)`` is called after each block; ``hook(stream, words)`` (a test
        hook) may replace the ``"x"`` words before and the ``"y"`` words after each block.
        """
        ys, cycles, calls, sim = [], 0, 0, 0.0
        for u0, u1, cfg, x in self.packer.blocks(job):
            if hook is not None:
                x = hook("x", x)
            t0 = time.perf_counter()
            yw, c = self.run_beats(cfg, x, len(cfg) * self.hw.rows, gaps=gaps, stalls=stalls,
                                   seed=seed + u0)
            sim += time.perf_counter() - t0
            ys.append(hook("y", yw) if hook is not None else yw)
            cycles += c
            calls += 1
            if progress is not None:
                progress(len(x))
        return self.packer.assemble(job, np.concatenate(ys)), cycles, calls, sim

    def matmul(self, a, w, bias=None, mult=None, shift=None, *, relu: bool = False,
               raw: bool = False, gaps: float = 0.0, stalls: float = 0.0, seed: int = 0,
               progress=None, **extra) -> MatmulResult:
        """``Y = requantize(A @ W.T + bias, mult, shift)`` (or raw ``t``) through the RTL.

        Arguments are those of :meth:`lowbit.hw.driver.Protocol.plan` (INT/log: ``A [M, K]``,
        ``W [N, K]``; XNOR: packed planes ``A [Pa, M, words]``, ``W [Pw, N, words]``, ``alpha
        [Pw, N]``, ``k``), validated the same way (ValueError naming the operand). ``gaps`` /
        ``stalls`` / ``seed`` / ``progress``: see :meth:`run`.
        """
        job = self.prepare(a, w, bias, mult, shift, relu=relu, raw=raw, **extra)
        start = time.perf_counter()
        y, cycles, _, _ = self.run(job, gaps=gaps, stalls=stalls, seed=seed, progress=progress)
        return MatmulResult(y=y[0], cycles=cycles, ideal_cycles=job.ideal_cycles,
                            x_beats=job.x_beats, tiles=job.plan.tiles,
                            seconds=time.perf_counter() - start)

    def expected(self, a, w, bias=None, mult=None, shift=None, *, relu: bool = False,
                 raw: bool = False, **extra) -> np.ndarray:
        """The golden result for the same arguments as :meth:`matmul`."""
        extra = {k: v for k, v in extra.items() if v is not None}
        mm = self.packer.validate(a, w, bias, mult, shift, relu=relu, raw=raw, **extra)
        return self.description.golden_result(mm)
