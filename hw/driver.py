"""The host side of the matmul units' stream protocol, in pure Python/numpy.

One definition of the protocol of docs/hardware.md, shared by the Amaranth-simulator tests and
the cocotb/Verilator testbenches: :class:`Protocol` turns a matmul ``(A, W, bias, mult, shift,
relu/raw)`` into tiles of payload integers (one ``cfg`` beat and the ``x`` beats per output
tile), and reassembles the ``y`` payload integers into ``Y``. Field offsets are read from the
unit's own Amaranth layouts, never copied.

Payload integers are the values of the Verilog ports ``x__payload``, ``cfg__payload`` and
``y__payload`` (bit 0 = LSB of the port).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from amaranth.lib import data

from lowbit.sw import golden

from .matmul import MatmulUnit, make_unit

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


def _field(layout: data.StructLayout, name: str):
    """``(offset, element width, count)`` of a field that is a shape or an ArrayLayout."""
    f = layout[name]
    shape = f.shape
    if isinstance(shape, data.ArrayLayout):
        elem = data.Layout.cast(shape.elem_shape).size if isinstance(
            shape.elem_shape, data.Layout) else shape.elem_shape.width
        return f.offset, elem, shape.length
    return f.offset, shape.width, 1


def _bits(values: np.ndarray, width: int) -> np.ndarray:
    """Two's complement bits of int64 ``values [...]`` -> uint8 ``[..., width]`` (LSB first)."""
    v = np.asarray(values, dtype=np.int64)
    shifts = np.arange(width, dtype=np.int64)
    return ((v[..., None] >> np.minimum(shifts, 63)) & 1).astype(np.uint8)


class _Packer:
    """Builds payload integers for many beats at once from per-field bit arrays."""

    def __init__(self, layout: data.StructLayout, nbeats: int):
        self.layout = layout
        self.bitmat = np.zeros((nbeats, layout.size), dtype=np.uint8)

    def put(self, name: str, values: np.ndarray):
        """``values [nbeats, count]`` (or ``[nbeats]`` for a scalar field) of integers."""
        off, width, count = _field(self.layout, name)
        v = np.asarray(values, dtype=np.int64).reshape(self.bitmat.shape[0], count)
        self.bitmat[:, off:off + width * count] = _bits(v, width).reshape(len(v), -1)

    def put_bits(self, name: str, bits: np.ndarray):
        """``bits [nbeats, count, width]`` of 0/1 (fields wider than 64 bits, e.g. XNOR lanes)."""
        off, width, count = _field(self.layout, name)
        b = np.asarray(bits, dtype=np.uint8).reshape(self.bitmat.shape[0], count * width)
        self.bitmat[:, off:off + width * count] = b

    def ints(self) -> list[int]:
        packed = np.packbits(self.bitmat, axis=1, bitorder="little")
        return [int.from_bytes(row.tobytes(), "little") for row in packed]


def _np(name: str, t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    a = np.asarray(t)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, not {a.dtype}")
    return a.astype(np.int64)


class Protocol:
    """Host model of one unit's tile protocol (docs/hardware.md).

    Parameters
    ----------
    unit : MatmulUnit
        The unit (its parameters and payload layouts are read from it).
    """

    def __init__(self, unit: MatmulUnit):
        if not isinstance(unit, MatmulUnit):
            raise TypeError(f"unit must be a MatmulUnit, not {type(unit).__name__}")
        self.unit = unit
        self.kind = unit.unit
        self.rows, self.cols = unit.rows, unit.cols

    @classmethod
    def for_unit(cls, unit: str, **params) -> "Protocol":
        """Protocol of ``make_unit(unit, **params)`` (a unit used only for its layouts)."""
        top = make_unit(unit, **params)
        top._MustUse__silence = True    # a description, never elaborated: not a forgotten unit
        return cls(top)

    # --- inputs ---------------------------------------------------------------------------

    def _per_channel(self, n, bias, mult, shift, raw):
        bias = np.zeros(n, np.int64) if bias is None else _np("bias", bias)
        if mult is None or shift is None:
            if not raw:
                raise ValueError("mult and shift are required unless raw=True")
            mult = np.zeros(n, np.int64) if mult is None else mult
            shift = np.zeros(n, np.int64) if shift is None else shift
        mult, shift = _np("mult", mult), _np("shift", shift)
        for name, v, lo, hi in (("mult", mult, 0, (1 << golden.MULT_BITS) - 1),
                                ("shift", shift, 0, golden.SHIFT_MAX)):
            if v.shape != (n,):
                raise ValueError(f"{name} must be [N] with N={n}, not {v.shape}")
            if v.size and (v.min() < lo or v.max() > hi):
                raise ValueError(f"{name} has values outside {lo}..{hi}")
        if bias.shape != (n,):
            raise ValueError(f"bias must be [N] with N={n}, not {bias.shape}")
        return bias, mult, shift

    def _golden_acc(self, a, w, bias, alpha=None, k=None) -> torch.Tensor:
        """Exact ``acc + bias`` from the golden kernel (which also checks every range)."""
        u, p = self.unit, self.unit.params
        ta, tw = torch.as_tensor(_np("activations", a)), torch.as_tensor(_np("weights", w))
        tb = torch.as_tensor(bias)
        if self.kind == "int8":
            return golden.int_matmul(ta, tw, tb, a_bits=p["a_bits"], w_bits=p["w_bits"],
                                     max_k=u.max_k)
        if self.kind == "log":
            return golden.log_matmul(ta, tw, tb, bits=p["bits"], a_bits=p["a_bits"],
                                     zero_code=p["zero_code"], max_k=u.max_k)
        return golden.xnor_matmul(ta, tw, torch.as_tensor(_np("alpha", alpha)), k, tb,
                                  max_k=u.max_k)

    def expected(self, a, w, bias=None, mult=None, shift=None, *, relu=False, raw=False,
                 alpha=None, k=None) -> np.ndarray:
        """The golden result ``Y [M, N]`` (int64) for the same arguments as :meth:`plan`."""
        n = self._shape(a, w, alpha, k)[1]
        bias, mult, shift = self._per_channel(n, bias, mult, shift, raw)
        t = self._golden_acc(a, w, bias, alpha, k)
        if raw:
            return t.numpy()
        return golden.requantize(t, torch.as_tensor(mult), torch.as_tensor(shift),
                                 out_bits=self.unit.out_bits, relu=relu).numpy()

    def _shape(self, a, w, alpha, k):
        a, w = np.asarray(a), np.asarray(w)
        if self.kind == "xnor":
            if alpha is None or k is None:
                raise ValueError("the xnor unit needs alpha [Pw, N] and k")
            if a.ndim != 3 or w.ndim != 3:
                raise ValueError(f"xnor activations must be packed planes [Pa, M, words] and "
                                 f"weights [Pw, N, words]; got {a.shape} and {w.shape}")
            if a.shape[0] > self.unit.a_planes or w.shape[0] > self.unit.w_planes:
                raise ValueError(f"{a.shape[0]} activation / {w.shape[0]} weight planes exceed "
                                 f"the unit's {self.unit.a_planes} / {self.unit.w_planes}")
            kk = k
        else:
            if alpha is not None or k is not None:
                raise ValueError(f"alpha and k apply to the xnor unit only, not {self.kind}")
            if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[1]:
                raise ValueError(f"activations must be [M, K] and weights [N, K]; "
                                 f"got {a.shape} and {w.shape}")
            kk = a.shape[1]
        if not isinstance(kk, (int, np.integer)) or not 1 <= kk <= self.unit.max_k:
            raise ValueError(f"K must be in 1..{self.unit.max_k}, not {kk}")
        return a.shape[-2], w.shape[-2], int(kk)

    # --- the plan -------------------------------------------------------------------------

    def plan(self, a, w, bias=None, mult=None, shift=None, *, relu=False, raw=False,
             alpha=None, k=None) -> Plan:
        """Tiles of payload integers for ``Y = requantize(A @ W.T + bias)`` (or raw).

        Parameters
        ----------
        a, w : integer arrays (numpy or torch).
            INT / log: ``A [M, K]`` signed activations, ``W [N, K]`` weights (INT) or log codes.
            XNOR: packed planes as :func:`lowbit.sw.golden.pack_bits` makes them,
            ``A [Pa, M, words]``, ``W [Pw, N, words]`` (32-bit words, LSB first).
        bias : [N] or None (zeros); mult, shift : [N] (may be None when ``raw``).
        relu, raw : bool, per-tile options (see docs/numerics.md).
        alpha : [Pw, N] unsigned 16-bit plane scales (XNOR only).
        k : number of valid bits per packed row (XNOR only).

        Every operand is range-checked by running the golden kernel once.
        Tiles run over ``m0`` (outer) and ``n0`` (inner); edges are zero-padded.
        """
        m, n, kk = self._shape(a, w, alpha, k)
        bias, mult, shift = self._per_channel(n, bias, mult, shift, raw)
        self._golden_acc(a, w, bias, alpha, k)      # validates every operand's range
        u, rows, cols = self.unit, self.rows, self.cols
        mp, np_ = -(-m // rows) * rows, -(-n // cols) * cols
        bias_p = np.zeros(np_, np.int64); bias_p[:n] = bias
        mult_p = np.zeros(np_, np.int64); mult_p[:n] = mult
        shift_p = np.zeros(np_, np.int64); shift_p[:n] = shift

        if self.kind == "xnor":
            a_bits = self._planes_bits(a, kk, mp)          # [Pa, Mp, K] of 0/1
            w_bits = self._planes_bits(w, kk, np_)         # [Pw, Np, K]
            alpha_p = np.zeros((w_bits.shape[0], np_), np.int64)
            alpha_p[:, :n] = _np("alpha", alpha)
        else:
            a_p = np.zeros((mp, kk), np.int64); a_p[:m] = _np("activations", a)
            w_p = np.zeros((np_, kk), np.int64); w_p[:n] = _np("weights", w)

        plan = Plan(m=m, n=n, rows=rows)
        for m0 in range(0, mp, rows):
            for n0 in range(0, np_, cols):
                cfg = _Packer(u.cfg_layout, 1)
                cfg.put("bias", bias_p[None, n0:n0 + cols])
                cfg.put("mult", mult_p[None, n0:n0 + cols])
                cfg.put("shift", shift_p[None, n0:n0 + cols])
                cfg.put("relu", np.array([int(relu)]))
                cfg.put("raw", np.array([int(raw)]))
                if self.kind == "xnor":
                    x = self._xnor_beats(a_bits[:, m0:m0 + rows], w_bits[:, n0:n0 + cols],
                                         alpha_p[:, n0:n0 + cols], kk)
                else:
                    x = _Packer(u.x_layout, kk)
                    x.put("a", a_p[m0:m0 + rows].T)
                    x.put("w", w_p[n0:n0 + cols].T)
                    last = np.zeros(kk, np.int64); last[-1] = 1
                    x.put("last", last)
                plan.tiles.append(Tile(m0=m0, n0=n0, cfg=cfg.ints()[0], x=x.ints()))
        return plan

    def _planes_bits(self, words, k, rows_padded):
        """Packed 32-bit words [P, R, W] -> bits [P, rows_padded, K] (0/1, zero rows padded)."""
        pm = golden.unpack_bits(torch.as_tensor(_np("packed words", words)), k).numpy()
        bits = np.zeros((pm.shape[0], rows_padded, k), np.uint8)
        bits[:, :pm.shape[1]] = (pm > 0)
        return bits

    def _xnor_beats(self, a_bits, w_bits, alpha, k):
        """Beats for one tile: for each K-chunk, weight plane ``i``, activation plane ``j``."""
        lanes = self.unit.lanes
        pa, pw = a_bits.shape[0], w_bits.shape[0]
        chunks = -(-k // lanes)
        kp = chunks * lanes
        a_pad = np.zeros(a_bits.shape[:2] + (kp,), np.uint8); a_pad[..., :k] = a_bits
        w_pad = np.zeros(w_bits.shape[:2] + (kp,), np.uint8); w_pad[..., :k] = w_bits
        # beat index order: (chunk, i, j)
        ch, ii, jj = np.meshgrid(np.arange(chunks), np.arange(pw), np.arange(pa), indexing="ij")
        ch, ii, jj = ch.ravel(), ii.ravel(), jj.ravel()
        nb = len(ch)
        a_lanes = a_pad.reshape(pa, self.rows, chunks, lanes)       # [Pa, rows, chunk, lane]
        w_lanes = w_pad.reshape(pw, self.cols, chunks, lanes)
        x = _Packer(self.unit.x_layout, nb)
        x.put_bits("a", a_lanes[jj, :, ch])                         # [nb, rows, lanes]
        x.put_bits("w", w_lanes[ii, :, ch])
        x.put("alpha", alpha[ii])                                   # [nb, cols]
        x.put("plane", jj)
        x.put("count", np.minimum(lanes, k - ch * lanes))
        last = np.zeros(nb, np.int64); last[-1] = 1
        x.put("last", last)
        return x

    # --- outputs --------------------------------------------------------------------------

    def unpack_y(self, payloads) -> tuple[np.ndarray, np.ndarray]:
        """``y__payload`` integers -> ``(data [beats, cols] int64, last [beats] bool)``."""
        layout = self.unit.y_layout
        nbytes = (layout.size + 7) // 8
        raw = b"".join(int(p).to_bytes(nbytes, "little") for p in payloads)
        bits = np.unpackbits(np.frombuffer(raw, np.uint8).reshape(-1, nbytes), axis=1,
                             bitorder="little")[:, :layout.size].astype(np.int64)
        off, width, count = _field(layout, "data")
        lanes = bits[:, off:off + width * count].reshape(-1, count, width)
        vals = (lanes << np.arange(width, dtype=np.int64)).sum(-1)
        vals = vals - (lanes[..., -1] << width)                     # two's complement
        loff = _field(layout, "last")[0]
        return vals, bits[:, loff].astype(bool)

    def assemble(self, plan: Plan, y_payloads) -> np.ndarray:
        """Reassemble ``y`` payloads (arrival order) into ``Y [M, N]`` (int64).

        Raises ValueError if the beat count or the ``last`` flags disagree with the plan.
        """
        vals, last = self.unpack_y(y_payloads)
        want = len(plan.tiles) * self.rows
        if len(vals) != want:
            raise ValueError(f"expected {want} y beats ({len(plan.tiles)} tiles x {self.rows} "
                             f"rows), got {len(vals)}")
        expect_last = np.zeros(want, bool); expect_last[self.rows - 1::self.rows] = True
        if not np.array_equal(last, expect_last):
            raise ValueError("y 'last' flags do not mark the final row of each tile")
        mp = -(-plan.m // self.rows) * self.rows
        np_ = -(-plan.n // self.cols) * self.cols
        y = np.zeros((mp, np_), np.int64)
        for t, tile in enumerate(plan.tiles):
            y[tile.m0:tile.m0 + self.rows, tile.n0:tile.n0 + self.cols] = \
                vals[t * self.rows:(t + 1) * self.rows]
        return y[:plan.m, :plan.n]

    def ideal_cycles(self, plan: Plan) -> int:
        """Cycles of a perfectly busy array: one ``x`` beat per cycle (``M*K*N/(rows*cols)``
        for INT/log when M, N are multiples of the array)."""
        return plan.x_beats
