"""Payload words for every unit: one codec, one tile planner, one packer (docs/hardware.md).

The host side of the stream protocol, written once for every unit kind and vectorised with
numpy (no Python integer per beat):

* :class:`PayloadCodec` reads and writes the fields of one payload layout in arrays of 32-bit
  words (``[..., ceil(size / 32)]``, bit 0 = the port's LSB): the packer of every stream and the
  decoder of every output;
* :class:`TilePlan` orders the output tiles of a batch of matmuls (batch element, then tile row
  ``m0`` outer, tile column ``n0`` inner) and reassembles ``Y`` from the ``y`` rows;
* :class:`Packer` turns validated operands into the ``cfg`` and ``x`` words of every tile, from
  the unit's description (:mod:`lowbit.hw.units`).

Every beat of a tile is the OR of an activation part (it depends on the tile row and the beat)
and a weight part (tile column and beat): the two occupy disjoint fields of the payload. The
packer builds each part once per tile row / column and the stream is one broadcast OR; with
``weight_cache`` the weight part of constant weights is built once per weight tensor.

This module needs numpy only: importing it loads neither torch nor an Amaranth component.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

from lowbit.contract import MULT_BITS, SHIFT_MAX, ceil_div

__all__ = ["Chunks", "FieldSpec", "field_spec", "PayloadCodec", "TilePlan", "Operands",
           "Matmul", "Job", "Packer", "as_int64", "bit_windows", "pack_bits", "CHUNK_BEATS"]

CHUNK_BEATS = 1 << 20       # x beats per block handed to a simulator (bounds host memory)
_U64 = np.uint64


# ---------------------------------------------------------------------------------------------
# One codec for every payload layout


class Chunks:
    """Field values given as 32-bit pieces, least significant piece first: ``array [...,
    pieces]`` (uint32). For fields whose elements are wider than 64 bits (XNOR lanes), or that
    come straight from packed 32-bit words."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = np.asarray(array, dtype=np.uint32)


@dataclass(frozen=True)
class FieldSpec:
    """Where a field sits in a payload: ``count`` elements of ``width`` bits from ``offset``;
    ``array`` for an ArrayLayout field (one element per array row or column)."""
    name: str
    offset: int
    width: int
    count: int
    signed: bool
    array: bool


def field_spec(layout: data.StructLayout, name: str) -> FieldSpec:
    """The :class:`FieldSpec` of field ``name`` of ``layout`` (a shape or an ArrayLayout)."""
    f = layout[name]
    shape, array = f.shape, isinstance(f.shape, data.ArrayLayout)
    elem = shape.elem_shape if array else shape
    elem = elem.as_shape() if isinstance(elem, data.Layout) else Shape.cast(elem)
    return FieldSpec(name, f.offset, elem.width, shape.length if array else 1, elem.signed,
                     array)


def _put_value(words: np.ndarray, offset: int, width: int, values) -> None:
    """OR ``values`` (two's complement, up to 64 bits; broadcast to ``words.shape[:-1]``) into
    bits ``offset .. offset + width - 1``."""
    v = np.broadcast_to(np.asarray(values).astype(np.int64), words.shape[:-1]).view(_U64)
    if width < 64:
        v = v & _U64((1 << width) - 1)
    w0, sh = divmod(offset, 32)
    # Only words that hold part of the field are touched, so every shift below is < 64.
    for j in range(ceil_div(sh + width, 32)):
        part = (v << _U64(sh)) if j == 0 else (v >> _U64(32 * j - sh))
        words[..., w0 + j] |= (part & _U64(0xFFFFFFFF)).astype(np.uint32)


def _get_value(words: np.ndarray, offset: int, width: int, signed: bool) -> np.ndarray:
    """Bits ``offset .. offset + width - 1`` (up to 64) of every word row -> int64."""
    w0, sh = divmod(offset, 32)
    v = np.zeros(words.shape[:-1], dtype=_U64)
    for j in range(ceil_div(sh + width, 32)):
        part = words[..., w0 + j].astype(_U64)
        v |= (part >> _U64(sh)) if j == 0 else (part << _U64(32 * j - sh))
    if width < 64:
        v &= _U64((1 << width) - 1)
    out = v.view(np.int64)
    if signed and width < 64:
        out = np.where(out >= (1 << (width - 1)), out - (1 << width), out)
    return out


class PayloadCodec:
    """The payload words of one layout: ``words [..., nwords]`` uint32, bit 0 = LSB of word 0.

    :meth:`put` writes a field from integer arrays (or :class:`Chunks`) broadcast over the
    leading axes; :meth:`get` reads it back, sign-extended where the layout declares it signed.
    """

    def __init__(self, layout: data.StructLayout):
        self.layout = layout
        self.nwords = ceil_div(layout.size, 32)
        self.fields = {name: field_spec(layout, name) for name, _ in layout}

    def zeros(self, shape) -> np.ndarray:
        return np.zeros(tuple(shape) + (self.nwords,), dtype=np.uint32)

    def put(self, words: np.ndarray, name: str, values) -> None:
        """OR field ``name``: ``values [..., count]`` (``[...]`` for a plain field) of integers,
        or :class:`Chunks` ``[..., count, pieces]``; the field's bits must still be 0."""
        f = self.fields[name]
        if isinstance(values, Chunks):
            pieces = values.array if f.array else values.array[..., None, :]
            for e in range(f.count):
                for c in range(ceil_div(f.width, 32)):
                    _put_value(words, f.offset + e * f.width + 32 * c,
                               min(32, f.width - 32 * c), pieces[..., e, c])
            return
        v = np.asarray(values)
        if not f.array:
            v = v[..., None]
        for e in range(f.count):
            _put_value(words, f.offset + e * f.width, f.width, v[..., e])

    def get(self, words: np.ndarray, name: str):
        """Field ``name`` of every word row: int64 ``[..., count]`` (``[...]`` for a plain
        field); elements wider than 64 bits as :class:`Chunks` ``[..., count, pieces]``."""
        f = self.fields[name]
        if f.width > 64:
            pieces = [[_get_value(words, f.offset + e * f.width + 32 * c,
                                  min(32, f.width - 32 * c), False)
                       for c in range(ceil_div(f.width, 32))] for e in range(f.count)]
            out = np.moveaxis(np.asarray(pieces, dtype=np.uint32), (0, 1), (-2, -1))
            return Chunks(out if f.array else out[..., 0, :])
        vals = np.stack([_get_value(words, f.offset + e * f.width, f.width, f.signed)
                         for e in range(f.count)], axis=-1)
        return vals if f.array else vals[..., 0]

    def decode(self, words: np.ndarray) -> dict:
        """Every field of every word row (see :meth:`get`)."""
        return {name: self.get(words, name) for name in self.fields}

    def to_ints(self, words: np.ndarray) -> list[int]:
        """Word rows ``[n, nwords]`` -> the payload integers (one per row)."""
        raw = np.ascontiguousarray(words, dtype="<u4")
        return [int.from_bytes(row.tobytes(), "little") for row in raw.reshape(-1, self.nwords)]

    def from_ints(self, payloads) -> np.ndarray:
        """Payload integers -> word rows ``[n, nwords]``."""
        nbytes = 4 * self.nwords
        raw = b"".join(int(p).to_bytes(nbytes, "little") for p in payloads)
        return np.frombuffer(raw, dtype="<u4").reshape(-1, self.nwords).astype(np.uint32)


# ---------------------------------------------------------------------------------------------
# Helpers for packed bit-plane operands


def as_int64(name: str, values) -> np.ndarray:
    """An integer array (numpy, or anything with ``.detach()`` like a torch tensor) as int64.

    Raises TypeError ``"<name> must hold integers, not float64"`` otherwise."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    a = np.asarray(values)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, not {a.dtype}")
    return a.astype(np.int64, copy=False)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """0/1 array ``[..., K]`` -> 32-bit words ``[..., ceil(K/32)]`` (int64), element ``k`` in
    word ``k // 32``, bit ``k % 32``: the packed format of docs/numerics.md."""
    b = np.asarray(bits).astype(bool)
    nwords = ceil_div(b.shape[-1], 32)
    padded = np.zeros(b.shape[:-1] + (32 * nwords,), dtype=bool)
    padded[..., :b.shape[-1]] = b
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return packed.view("<u4").astype(np.int64)


def bit_windows(words: np.ndarray, k: int, starts: np.ndarray, width: int) -> np.ndarray:
    """Bits ``[s, s + width)`` of packed rows (32-bit words, LSB first; bits >= k read as 0).

    ``words [..., W]``; returns ``[..., len(starts), ceil(width/32)]`` uint32 pieces.
    """
    nchunks = ceil_div(width, 32)
    padded = np.zeros(words.shape[:-1] + (words.shape[-1] + 2,), dtype=_U64)
    padded[..., :words.shape[-1]] = words
    out = np.zeros(words.shape[:-1] + (len(starts), nchunks), dtype=np.uint32)
    for c in range(nchunks):
        pos = starts + 32 * c                                  # first bit of this piece
        w = np.minimum(32, width - 32 * c)
        valid = np.clip(np.minimum(k - pos, w), 0, 32)         # bits of this piece below k
        # Pieces that start past the words hold no valid bits (masked below); clip the index.
        idx = np.minimum(pos // 32, words.shape[-1])
        v = ((padded[..., idx + 1] << _U64(32)) | padded[..., idx]) >> (pos % 32).astype(_U64)
        mask = (np.ones_like(valid, dtype=_U64) << valid.astype(_U64)) - _U64(1)
        out[..., c] = (v & mask).astype(np.uint32)
    return out


# ---------------------------------------------------------------------------------------------
# The tile planner


@dataclass(frozen=True)
class TilePlan:
    """The output tiles of ``batch`` matmuls ``Y [M, N]`` on a ``rows x cols`` array.

    Order: batch element, then tile row (``m0``, outer), then tile column (``n0``, inner); each
    tile's ``rows`` output rows leave the unit one ``y`` beat each. Edges are zero-padded.
    """
    batch: int
    m: int
    n: int
    rows: int
    cols: int

    @property
    def tm(self) -> int:
        return ceil_div(self.m, self.rows)

    @property
    def tn(self) -> int:
        return ceil_div(self.n, self.cols)

    @property
    def tiles(self) -> int:
        return self.batch * self.tm * self.tn

    def origins(self) -> list[tuple[int, int, int]]:
        """``(batch element, m0, n0)`` of every tile, in stream order."""
        return [(b, i * self.rows, j * self.cols) for b in range(self.batch)
                for i in range(self.tm) for j in range(self.tn)]

    def check_beats(self, beats: int) -> None:
        """ValueError unless ``beats`` is the number of ``y`` beats of every tile."""
        want = self.tiles * self.rows
        if beats != want:
            raise ValueError(f"expected {want} y beats ({self.tiles} tiles x {self.rows} rows), "
                             f"got {beats}")

    def assemble(self, values: np.ndarray) -> np.ndarray:
        """``y`` rows in stream order ``[tiles * rows, cols]`` -> ``Y [batch, M, N]``."""
        self.check_beats(len(values))
        y = (values.reshape(self.batch, self.tm, self.tn, self.rows, self.cols)
             .transpose(0, 1, 3, 2, 4).reshape(self.batch, self.tm * self.rows,
                                               self.tn * self.cols))
        return y[:, :self.m, :self.n]


# ---------------------------------------------------------------------------------------------
# The packer


@dataclass
class Operands:
    """The operands of one matmul (or of a batch), in the unit's formats, as numpy arrays.

    ``a`` holds ``batch`` activation operands, ``w`` one weight operand per batch element or one
    shared by all (``wbatch`` 1), or a callable returning them (called only when the packer has
    no packed weight part for them yet). ``extra`` holds the unit's further operands (XNOR:
    ``alpha``, ``k``). ``m``, ``n``, ``k`` are the matmul's sizes (``k`` in the unit's K).
    """
    a: np.ndarray
    w: object
    m: int
    n: int
    k: int
    batch: int = 1
    wbatch: int = 1
    extra: dict = field(default_factory=dict)

    def weights(self) -> np.ndarray:
        return self.w() if callable(self.w) else self.w


@dataclass
class Matmul:
    """A matmul ready to pack: operands and the per-channel settings of every tile."""
    ops: Operands
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    relu: bool = False
    raw: bool = False


@dataclass
class Job:
    """A matmul laid out for the stream: the activation part of the beats of every tile row,
    the weight part of every tile column, and the ``cfg`` words of one tile row."""
    plan: TilePlan
    k: int
    beats: int                  # x beats per tile
    a_part: np.ndarray          # [batch * tm, *activation beat axes, x words]
    w_part: np.ndarray          # [wbatch, tn, *weight beat axes, x words]
    beat_shape: tuple           # the beat axes (their product is ``beats``)
    cfg_row: np.ndarray         # [tn, cfg words]
    macs: int                   # native MACs (XNOR: 1-bit MACs)
    ideal_cycles: float         # cycles of a perfectly busy array

    @property
    def x_beats(self) -> int:
        return self.plan.tiles * self.beats

    @property
    def y_beats(self) -> int:
        return self.plan.tiles * self.plan.rows


def _per_channel(n, bias, mult, shift, raw):
    bias = np.zeros(n, np.int64) if bias is None else as_int64("bias", bias)
    if mult is None or shift is None:
        if not raw:
            raise ValueError("mult and shift are required unless raw=True")
        mult = np.zeros(n, np.int64) if mult is None else mult
        shift = np.zeros(n, np.int64) if shift is None else shift
    mult, shift = as_int64("mult", mult), as_int64("shift", shift)
    for name, v, lo, hi in (("mult", mult, 0, (1 << MULT_BITS) - 1),
                            ("shift", shift, 0, SHIFT_MAX)):
        if v.shape != (n,):
            raise ValueError(f"{name} must be [N] with N={n}, not {v.shape}")
        if v.size and (v.min() < lo or v.max() > hi):
            raise ValueError(f"{name} has values outside {lo}..{hi}")
    if bias.shape != (n,):
        raise ValueError(f"bias must be [N] with N={n}, not {bias.shape}")
    return bias, mult, shift


class Packer:
    """The ``cfg`` and ``x`` words of matmuls on one unit, tile by tile (docs/hardware.md).

    Parameters
    ----------
    description : UnitDescription
        The unit (:mod:`lowbit.hw.units`): array size, payload layouts and how its operands
        become beat fields.
    weight_cache : bool
        Keep the packed weight part of every matmul given a ``w_key`` (constant weights, e.g.
        a model's layers) and reuse it instead of packing the weights again.
    """

    def __init__(self, description, *, weight_cache: bool = False):
        self.description = d = description
        self.x = PayloadCodec(d.x_layout)
        self.cfg = PayloadCodec(d.cfg_layout)
        self.y = PayloadCodec(d.y_layout)
        self._weights: dict | None = {} if weight_cache else None

    # --- validation -----------------------------------------------------------------------

    def validate(self, a, w, bias=None, mult=None, shift=None, *, relu=False, raw=False,
                 **extra) -> Matmul:
        """Check one matmul's operands; returns it ready to pack.

        The unit's description checks the operand shapes and formats (ValueError naming the
        operand); ``bias [N]``, ``mult [N]`` and ``shift [N]`` are checked here (``mult`` and
        ``shift`` may be None when ``raw``); every operand's range is checked by running the
        golden kernel once.
        """
        d = self.description
        ops = d.check_operands(a, w, extra)
        bias, mult, shift = _per_channel(ops.n, bias, mult, shift, raw)
        d.golden_accumulator(ops, bias)
        return Matmul(ops, bias, mult, shift, bool(relu), bool(raw))

    # --- packing --------------------------------------------------------------------------

    def prepare(self, *args, w_key=None, **kwargs) -> Job:
        """:meth:`validate` then :meth:`job`."""
        return self.job(self.validate(*args, **kwargs), w_key=w_key)

    def job(self, mm: Matmul, *, w_key=None) -> Job:
        """Lay out ``mm``: the activation part of every tile row, the weight part of every
        tile column (reused from the cache when ``w_key`` was packed before) and the ``cfg``
        words. ``w_key``: ``(key, owner)``; the cache holds ``owner`` (e.g. the weight tensor)
        with the entry, so the object the key describes stays alive as long as the entry."""
        d, ops = self.description, mm.ops
        plan = TilePlan(ops.batch, ops.m, ops.n, d.rows, d.cols)
        beat_shape = tuple(d.beat_shape(ops))
        a_fields = d.activation_fields(ops)
        a_part = self._part(a_fields, ops.batch, plan.tm, d.rows, beat_shape)
        if self._weights is not None and w_key is not None and w_key[0] in self._weights:
            w_part = self._weights[w_key[0]][0]
        else:
            w_part = self._part(d.weight_fields(ops), ops.wbatch, plan.tn, d.cols, beat_shape)
            w_part = w_part.reshape((ops.wbatch, plan.tn) + w_part.shape[1:])
            if self._weights is not None and w_key is not None:
                self._weights[w_key[0]] = (w_part, w_key[1])
        macs = d.macs(ops)
        return Job(plan=plan, k=ops.k, beats=int(np.prod(beat_shape)),
                   a_part=a_part, w_part=w_part,
                   beat_shape=beat_shape, cfg_row=self._cfg_row(mm, plan.tn), macs=macs,
                   ideal_cycles=macs / (d.rows * d.cols * d.macs_per_pe))

    def _part(self, fields: dict, batch: int, tiles: int, size: int, beat_shape) -> np.ndarray:
        """Words of one side of the beats: ``[batch * tiles, *beat axes, x words]``.

        ``fields`` maps field names to values: an array field (one element per array row /
        column) as ``[batch, rows or cols of the operand, *beat axes]`` (Chunks: ``+ [pieces]``),
        a plain field as ``[*beat axes]``; beat axes may be 1 where the values do not vary.
        """
        nb = len(beat_shape)
        shapes = [np.shape(v.array if isinstance(v, Chunks) else v) for v in fields.values()]
        part_shape = np.broadcast_shapes(*[s[2:2 + nb] if self.x.fields[n].array else s[:nb]
                                           for n, s in zip(fields, shapes)])
        words = self.x.zeros((batch * tiles,) + tuple(part_shape))
        for name, values in fields.items():
            if not self.x.fields[name].array:
                self.x.put(words, name, values)
                continue
            chunks = isinstance(values, Chunks)
            v = values.array if chunks else np.asarray(values)
            pad = [(0, 0)] * v.ndim
            pad[1] = (0, tiles * size - v.shape[1])
            v = np.pad(v, pad)                                    # zero rows / columns
            v = v.reshape((batch * tiles, size) + v.shape[2:])
            v = np.moveaxis(v, 1, 1 + nb)                         # element axis after beats
            v = np.broadcast_to(v, (batch * tiles,) + tuple(part_shape) + v.shape[1 + nb:])
            self.x.put(words, name, Chunks(v) if chunks else v)
        return words

    def _cfg_row(self, mm: Matmul, tn: int) -> np.ndarray:
        cols = self.description.cols
        words = self.cfg.zeros((tn,))

        def per_tile(v):
            padded = np.zeros(tn * cols, np.int64)
            padded[:len(v)] = v
            return padded.reshape(tn, cols)
        self.cfg.put(words, "bias", per_tile(mm.bias))
        self.cfg.put(words, "mult", per_tile(mm.mult))
        self.cfg.put(words, "shift", per_tile(mm.shift))
        self.cfg.put(words, "relu", int(mm.relu))
        self.cfg.put(words, "raw", int(mm.raw))
        return words

    def blocks(self, job: Job, chunk_beats: int = CHUNK_BEATS):
        """Yield ``(u0, u1, cfg words, x words)`` for tile rows ``u0 .. u1 - 1`` (counted over
        the batch; every tile column of each), about ``chunk_beats`` x beats per block."""
        plan, xw = job.plan, self.x.nwords
        units = plan.batch * plan.tm
        step = max(1, chunk_beats // max(1, plan.tn * job.beats))
        last = self.x.zeros(())
        self.x.put(last, "last", 1)
        full = job.beat_shape + (xw,)
        wbatch = job.w_part.shape[0]
        for u0 in range(0, units, step):
            u1 = min(units, u0 + step)
            # the weight part of each tile row's batch element: [u or 1, tn, *beats, xw]
            w = job.w_part[:1] if wbatch == 1 else \
                job.w_part[(np.arange(u0, u1) // plan.tm) % wbatch]
            x = job.a_part[u0:u1, None] | w
            shape = (u1 - u0, plan.tn) + full
            if x.shape != shape:        # a beat axis neither part varies over
                x = np.broadcast_to(x, shape).copy()
            x = x.reshape(-1, job.beats, xw)
            x[:, -1] |= last                                          # closes each tile
            yield u0, u1, np.tile(job.cfg_row, (u1 - u0, 1)), x.reshape(-1, xw)

    # --- outputs --------------------------------------------------------------------------

    def y_values(self, words: np.ndarray) -> np.ndarray:
        """``y`` words -> ``data [beats, cols]`` (int64); ValueError unless ``last`` marks the
        final row of each tile and nothing else."""
        rows = self.description.rows
        last = self.y.get(words, "last")
        want = np.zeros(len(words), np.int64)
        want[rows - 1::rows] = 1
        if not np.array_equal(last, want):
            raise ValueError("y 'last' flags do not mark the final row of each tile")
        return self.y.get(words, "data")

    def assemble(self, job: Job, y_words: np.ndarray) -> np.ndarray:
        """The ``y`` words of every tile of ``job`` (stream order) -> ``Y [batch, M, N]``."""
        job.plan.check_beats(len(y_words))
        return job.plan.assemble(self.y_values(y_words))
