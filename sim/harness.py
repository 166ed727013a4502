"""Drive a Verilated matmul unit from Python, one whole matmul per call: the fast RTL path.

:class:`VerilatedUnit` compiles a unit with Verilator together with ``sim/harness.cpp`` (cached,
see :mod:`lowbit.sim.verilator`), loads it with ctypes, and runs matmuls through the RTL::

    unit = VerilatedUnit("int8", rows=4, cols=4)
    res = unit.matmul(A, W, bias, mult, shift)          # A [M, K], W [N, K] int8
    res.y                # Y [M, N] int64, straight from the RTL's y stream
    res.cycles           # clock cycles the RTL took
    unit.close()

The protocol of docs/hardware.md is :class:`lowbit.hw.driver.Protocol` (tile order, payload
layouts, golden reference); this module packs the same beats, but vectorised over every tile of
the matmul at once and straight into 32-bit payload words (no Python integer per beat), and
hands them to C++ in blocks. ``tests/test_sim_harness.py`` checks that the words are exactly the
driver's payloads. This is the path ``lowbit verify``, the unit benchmark and whole-model
co-simulation use; the cocotb testbenches (sim/tb_matmul.py) remain the verification framework.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from lowbit import LowbitError

__all__ = ["VerilatedUnit", "MatmulResult", "MatmulPacker", "BeatPacker"]

_U32P = ctypes.POINTER(ctypes.c_uint32)
_U64P = ctypes.POINTER(ctypes.c_uint64)
CHUNK_BEATS = 1 << 20       # x beats handed to C++ per call (bounds host memory)


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


def _field(layout, name: str):
    """``(offset, element width, count)`` of a struct field (a shape or an ArrayLayout)."""
    from lowbit.hw.driver import _field as driver_field
    return driver_field(layout, name)


class BeatPacker:
    """Payload words for many beats of one layout: ``words [beats, ceil(size/32)]`` uint32.

    Fields are written from integer arrays with word-level numpy operations (no per-beat
    Python), at the offsets read from the Amaranth layout.
    """

    def __init__(self, layout, nbeats: int):
        self.layout = layout
        self.nwords = (layout.size + 31) // 32
        self.words = np.zeros((nbeats, self.nwords), dtype=np.uint32)

    def put_value(self, offset: int, width: int, values: np.ndarray) -> None:
        """Write ``values [beats]`` (two's complement, up to 64 bits) at bit ``offset``."""
        v = np.asarray(values).astype(np.int64).view(np.uint64)
        if width < 64:
            v = v & np.uint64((1 << width) - 1)
        w0, sh = divmod(offset, 32)
        # The field covers bits sh .. sh+width-1 of words w0, w0+1, ...; every shift below is
        # < 64 because only words that hold some of the field are touched.
        for j in range((sh + width + 31) // 32):
            part = (v << np.uint64(sh)) if j == 0 else (v >> np.uint64(32 * j - sh))
            self.words[:, w0 + j] |= (part & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    def put(self, name: str, values) -> None:
        """``values [beats, count]`` (or ``[beats]``) of integers into field ``name``."""
        off, width, count = _field(self.layout, name)
        v = np.asarray(values, dtype=np.int64).reshape(len(self.words), count)
        for e in range(count):
            self.put_value(off + e * width, width, v[:, e])

    def put_lanes(self, name: str, chunks: np.ndarray) -> None:
        """Wide fields as 32-bit chunks: ``chunks [beats, count, ceil(width/32)]`` (LSB chunk
        first), e.g. XNOR lanes taken straight from packed bit-plane words."""
        off, width, count = _field(self.layout, name)
        for e in range(count):
            for c in range((width + 31) // 32):
                w = min(32, width - 32 * c)
                self.put_value(off + e * width + 32 * c, w, chunks[:, e, c])


def read_field(words: np.ndarray, offset: int, width: int, signed: bool) -> np.ndarray:
    """Read a field (up to 64 bits) at bit ``offset`` of every row of ``words`` -> int64."""
    w0, sh = divmod(offset, 32)
    v = np.zeros(len(words), dtype=np.uint64)
    for j in range((sh + width + 31) // 32):
        part = words[:, w0 + j].astype(np.uint64)
        v |= (part >> np.uint64(sh)) if j == 0 else (part << np.uint64(32 * j - sh))
    if width < 64:
        v &= np.uint64((1 << width) - 1)
    out = v.view(np.int64)
    if signed and width < 64:
        out = np.where(out >= (1 << (width - 1)), out - (1 << width), out)
    return out


def _bit_windows(words: np.ndarray, k: int, starts: np.ndarray, width: int) -> np.ndarray:
    """Bits ``[s, s+width)`` of packed rows (32-bit words, LSB first; bits >= k read as 0).

    ``words [..., W]``; returns ``[..., len(starts), ceil(width/32)]`` uint32 chunks.
    """
    nchunks = (width + 31) // 32
    padded = np.zeros(words.shape[:-1] + (words.shape[-1] + 2,), dtype=np.uint64)
    padded[..., :words.shape[-1]] = words
    out = np.zeros(words.shape[:-1] + (len(starts), nchunks), dtype=np.uint32)
    for c in range(nchunks):
        pos = starts + 32 * c                                  # first bit of this chunk
        w = np.minimum(32, width - 32 * c)
        valid = np.clip(np.minimum(k - pos, w), 0, 32)         # bits of this chunk below k
        # Chunks that start past the words hold no valid bits (masked below); clip the index.
        idx = np.minimum(pos // 32, words.shape[-1])
        lo = padded[..., idx]
        hi = padded[..., idx + 1]
        v = ((hi << np.uint64(32)) | lo) >> (pos % 32).astype(np.uint64)
        mask = (np.ones_like(valid, dtype=np.uint64) << valid.astype(np.uint64)) - np.uint64(1)
        out[..., c] = (v & mask).astype(np.uint32)
    return out


class VerilatedUnit:
    """One matmul unit compiled with Verilator and driven by the C++ harness.

    Parameters
    ----------
    unit : {"int8", "log", "xnor"}
    **params : the unit's constructor parameters (rows, cols, max_k, ...; docs/hardware.md).

    Raises :class:`lowbit.LowbitError` for an unknown unit or a bad parameter (one line), and
    when the Verilator build fails (with the build log's tail). The build is cached.
    """

    def __init__(self, unit: str, **params):
        from lowbit.hw.driver import Protocol
        from lowbit.sim.verilator import build_harness

        # ``fault``: a test-only unit with wrong arithmetic (lowbit.hw.faults); the protocol
        # (layouts, tile order) is the normal unit's.
        proto_params = {k: v for k, v in params.items() if k != "fault"}
        try:
            self.protocol = Protocol.for_unit(unit, **proto_params)
        except (TypeError, ValueError) as e:
            raise LowbitError(str(e)) from None
        self.kind, self.params = unit, dict(params)
        self.hw = self.protocol.unit
        self.hw._MustUse__silence = True    # a description of the RTL, never elaborated here
        self.packer = MatmulPacker(self.protocol)
        self.library = build_harness(unit, **params)
        lib = ctypes.CDLL(str(self.library))
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
        for name, layout in (("x", self.hw.x_layout), ("cfg", self.hw.cfg_layout),
                             ("y", self.hw.y_layout)):
            if self._words[name] != (layout.size + 31) // 32:
                raise LowbitError(f"harness/unit mismatch: {name} payload has "
                                  f"{self._words[name]} words, layout needs {layout.size} bits")
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

    @property
    def total_cycles(self) -> int:
        """Clock cycles simulated since the model was created (reset included)."""
        return int(self._lib.lb_cycles(self._h))

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

    # --- whole matmuls ---------------------------------------------------------------------

    def matmul(self, a, w, bias=None, mult=None, shift=None, *, relu: bool = False,
               raw: bool = False, alpha=None, k: int | None = None, gaps: float = 0.0,
               stalls: float = 0.0, seed: int = 0, progress=None) -> MatmulResult:
        """``Y = requantize(A @ W.T + bias, mult, shift)`` (or raw ``t``) through the RTL.

        Arguments are those of :meth:`lowbit.hw.driver.Protocol.plan` (INT/log: ``A [M, K]``,
        ``W [N, K]``; XNOR: packed planes ``A [Pa, M, words]``, ``W [Pw, N, words]``, ``alpha
        [Pw, N]``, ``k``), validated the same way (ValueError naming the operand). ``gaps`` /
        ``stalls`` / ``seed``: random backpressure, see :meth:`run_beats`. ``progress``: an
        optional callable ``progress(x_beats_done)`` called after each block.

        Tiles run in the driver's order (``m0`` outer, ``n0`` inner), in blocks of whole tile
        rows of about :data:`CHUNK_BEATS` beats.
        """
        job = self.packer.prepare(a, w, bias, mult, shift, relu=relu, raw=raw, alpha=alpha, k=k)
        rows, cols = self.hw.rows, self.hw.cols
        y = np.zeros((job.tm * rows, job.tn * cols), dtype=np.int64)
        cycles = 0
        start = time.perf_counter()
        for i0, i1, cfg, x in self.packer.blocks(job):
            yw, c = self.run_beats(cfg, x, (i1 - i0) * job.tn * rows, gaps=gaps, stalls=stalls,
                                   seed=seed + i0)
            cycles += c
            vals = self.packer.y_values(yw)                              # [tiles*rows, cols]
            block = vals.reshape(i1 - i0, job.tn, rows, cols).transpose(0, 2, 1, 3)
            y[i0 * rows:i1 * rows] = block.reshape((i1 - i0) * rows, job.tn * cols)
            if progress is not None:
                progress(len(x))
        return MatmulResult(y=y[:job.m, :job.n], cycles=cycles, ideal_cycles=job.ideal_cycles,
                            x_beats=job.x_beats, tiles=job.tm * job.tn,
                            seconds=time.perf_counter() - start)

    def expected(self, *args, **kw) -> np.ndarray:
        """The golden result for the same arguments as :meth:`matmul` (the driver's)."""
        return self.protocol.expected(*args, **kw)


@dataclass
class _Job:
    """A validated matmul, ready to be cut into blocks of beats."""
    m: int
    n: int
    k: int
    tm: int                 # tile rows (ceil(M / rows))
    tn: int                 # tile columns (ceil(N / cols))
    beats_per_tile: int
    ideal_cycles: float
    cfg_row: np.ndarray     # cfg words of the tiles of one tile row [tn, cfg words]
    ops: dict

    @property
    def x_beats(self) -> int:
        return self.tm * self.tn * self.beats_per_tile


class MatmulPacker:
    """Payload words of a whole matmul for one unit, in the driver's tile order.

    The same beats as :meth:`lowbit.hw.driver.Protocol.plan` (tests check word for word), built
    with array operations over all tiles at once instead of one payload integer per beat.
    """

    def __init__(self, protocol):
        self.protocol = protocol
        self.hw = protocol.unit
        self.kind = protocol.kind

    def prepare(self, a, w, bias=None, mult=None, shift=None, *, relu=False, raw=False,
                alpha=None, k=None) -> _Job:
        """Validate the operands as the driver does and lay them out per tile."""
        p, hw = self.protocol, self.hw
        m, n, kk = p._shape(a, w, alpha, k)
        bias, mult, shift = p._per_channel(n, bias, mult, shift, raw)
        p._golden_acc(a, w, bias, alpha, k)               # range checks, as the driver does
        tm, tn = -(-m // hw.rows), -(-n // hw.cols)
        cfg_row = self._cfg_words(n, tn, bias, mult, shift, relu, raw)
        if self.kind == "xnor":
            ops = self._xnor_operands(a, w, alpha, kk, tm, tn)
            pa, pw = ops["pa"], ops["pw"]
            ideal = m * n * kk * pa * pw / (hw.rows * hw.cols * hw.lanes)
            per_tile = ops["beats"]
        else:
            ops = self._int_operands(a, w, m, n, kk, tm, tn)
            ideal = m * kk * n / (hw.rows * hw.cols)
            per_tile = kk
        return _Job(m=m, n=n, k=kk, tm=tm, tn=tn, beats_per_tile=per_tile, ideal_cycles=ideal,
                    cfg_row=cfg_row, ops=ops)

    def blocks(self, job: _Job, chunk_beats: int = CHUNK_BEATS):
        """Yield ``(i0, i1, cfg words, x words)`` for tile rows ``i0..i1-1`` (all tile columns
        of each), about ``chunk_beats`` x beats per block."""
        per_row = max(1, job.beats_per_tile * job.tn)
        step = max(1, chunk_beats // per_row)
        for i0 in range(0, job.tm, step):
            i1 = min(job.tm, i0 + step)
            if self.kind == "xnor":
                x = self._xnor_beats(job.ops, i0, i1, job.tn, job.k)
            else:
                x = self._int_beats(job.ops, i0, i1, job.tn, job.k)
            yield i0, i1, np.tile(job.cfg_row, (i1 - i0, 1)), x

    # --- packing (vectorised over tiles) ----------------------------------------------------

    def _cfg_words(self, n, tn, bias, mult, shift, relu, raw) -> np.ndarray:
        cols = self.hw.cols
        pad = tn * cols - n

        def per_tile(v):
            return np.concatenate([v, np.zeros(pad, np.int64)]).reshape(tn, cols)
        pk = BeatPacker(self.hw.cfg_layout, tn)
        pk.put("bias", per_tile(bias))
        pk.put("mult", per_tile(mult))
        pk.put("shift", per_tile(shift))
        pk.put("relu", np.full(tn, int(relu)))
        pk.put("raw", np.full(tn, int(raw)))
        return pk.words

    def _int_operands(self, a, w, m, n, kk, tm, tn):
        from lowbit.hw.driver import _np
        rows, cols = self.hw.rows, self.hw.cols
        a_p = np.zeros((tm * rows, kk), np.int64)
        a_p[:m] = _np("activations", a)
        w_p = np.zeros((tn * cols, kk), np.int64)
        w_p[:n] = _np("weights", w)
        # [tile row, K, rows] and [tile col, K, cols]: one beat's operands are contiguous.
        return {"a": a_p.reshape(tm, rows, kk).transpose(0, 2, 1),
                "w": w_p.reshape(tn, cols, kk).transpose(0, 2, 1)}

    def _int_beats(self, ops, i0, i1, tn, kk) -> np.ndarray:
        rows, cols = self.hw.rows, self.hw.cols
        ni = i1 - i0
        nb = ni * tn * kk
        pk = BeatPacker(self.hw.x_layout, nb)
        # Beat (i, j, k): a = A[i*rows + r, k], w = W[j*cols + c, k].
        pk.put("a", np.broadcast_to(ops["a"][i0:i1, None], (ni, tn, kk, rows)).reshape(nb, rows))
        pk.put("w", np.broadcast_to(ops["w"][None], (ni, tn, kk, cols)).reshape(nb, cols))
        last = np.zeros((ni * tn, kk), np.int64)
        last[:, -1] = 1
        pk.put("last", last.reshape(nb))
        return pk.words

    def _xnor_operands(self, a, w, alpha, kk, tm, tn):
        from lowbit.hw.driver import _np
        rows, cols, lanes = self.hw.rows, self.hw.cols, self.hw.lanes
        aw, ww = _np("packed words", a), _np("packed words", w)
        pa, pw = aw.shape[0], ww.shape[0]
        chunks = -(-kk // lanes)
        starts = np.arange(chunks) * lanes
        # Lane windows of every row: [P, rows padded, chunk, 32-bit pieces of a lane field].
        a_win = np.zeros((pa, tm * rows, chunks, (lanes + 31) // 32), np.uint32)
        a_win[:, :aw.shape[1]] = _bit_windows(aw, kk, starts, lanes)
        w_win = np.zeros((pw, tn * cols, chunks, (lanes + 31) // 32), np.uint32)
        w_win[:, :ww.shape[1]] = _bit_windows(ww, kk, starts, lanes)
        alpha_p = np.zeros((pw, tn * cols), np.int64)
        alpha_p[:, :ww.shape[1]] = _np("alpha", alpha)
        return {"a": a_win.reshape(pa, tm, rows, chunks, -1),
                "w": w_win.reshape(pw, tn, cols, chunks, -1),
                "alpha": alpha_p.reshape(pw, tn, cols), "pa": pa, "pw": pw, "chunks": chunks,
                "beats": chunks * pw * pa}

    def _xnor_beats(self, ops, i0, i1, tn, kk) -> np.ndarray:
        rows, cols, lanes = self.hw.rows, self.hw.cols, self.hw.lanes
        pa, pw, chunks = ops["pa"], ops["pw"], ops["chunks"]
        ni = i1 - i0
        # Beat order within a tile: K-chunk, weight plane i, activation plane j (the driver's).
        ti, tj, ch, pi, pj = np.meshgrid(np.arange(i0, i1), np.arange(tn), np.arange(chunks),
                                         np.arange(pw), np.arange(pa), indexing="ij")
        ti, tj, ch, pi, pj = (v.ravel() for v in (ti, tj, ch, pi, pj))
        nb = len(ti)
        pk = BeatPacker(self.hw.x_layout, nb)
        pk.put_lanes("a", ops["a"][pj, ti, :, ch])            # [nb, rows, pieces]
        pk.put_lanes("w", ops["w"][pi, tj, :, ch])            # [nb, cols, pieces]
        pk.put("alpha", ops["alpha"][pi, tj])                 # [nb, cols]
        pk.put("plane", pj)
        pk.put("count", np.minimum(lanes, kk - ch * lanes))
        last = np.zeros(nb, np.int64)
        last[ops["beats"] - 1::ops["beats"]] = 1
        pk.put("last", last)
        assert nb == ni * tn * ops["beats"]
        return pk.words

    def y_values(self, words: np.ndarray) -> np.ndarray:
        """y payload words -> ``data [beats, cols]`` int64; checks the ``last`` flags."""
        layout, rows, cols = self.hw.y_layout, self.hw.rows, self.hw.cols
        off, width, count = _field(layout, "data")
        vals = np.stack([read_field(words, off + c * width, width, True) for c in range(count)],
                        axis=1)
        last = read_field(words, _field(layout, "last")[0], 1, False)
        want = np.zeros(len(words), np.int64)
        want[rows - 1::rows] = 1
        if not np.array_equal(last, want):
            raise RuntimeError("y 'last' flags do not mark the final row of each tile")
        return vals
