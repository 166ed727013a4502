"""The host side of the sequencer (:mod:`lowbit.hw.sequencer`): a compiler from a sequence of
integer operations to a command list and a scratchpad image, the golden result of every
operation beside it, and a runner in the Amaranth simulator that loads both through the host
ports, starts the program and reads every result back.

Operations (the ones the integer-only decode runs, docs/numerics.md): ``matmul`` (INT8, raw
``A @ W.T + bias`` in int32; operands and result may be strided :class:`View`\\ s of larger
tensors), ``requant`` (and ``requant16``), ``softmax``, ``residual``, ``layernorm``, ``argmax``.
A vector operation's per-lane fields are ``[rows, length]`` arrays (one row each) or
``[length]`` arrays (one row for every row: a layer's constants), its ``cfg`` scalars plain
integers; field names are the unit's beat fields (docs/hardware.md, "Vector units").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import unsigned
from amaranth.lib import data as data_layout

from .sequencer import (DYN_FIELDS, INDEX_REGS, OPCODES, SCALARS, SLOTS, Sequencer,
                        unit_descriptions)

__all__ = ["Region", "View", "At", "Program", "ScratchpadFull", "SeqRun", "run_program"]


class ScratchpadFull(ValueError):
    """A program's tensors do not fit its scratchpad."""


@dataclass(frozen=True)
class Region:
    """A tensor in the scratchpad: ``shape`` elements row-major from word ``addr``."""
    name: str
    addr: int
    shape: tuple

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def view(self, offset: int, shape, row_stride: int, col_stride: int = 1) -> "View":
        """Elements ``[i, j]`` at ``offset + i * row_stride + j * col_stride`` of this
        region (one attention head: ``view(h * dh, (L, dh), D)``; V as V^T:
        ``view(h * dh, (dh, L), 1, D)``)."""
        return View(self, offset, tuple(shape), row_stride, col_stride)


@dataclass(frozen=True)
class View:
    """A strided 2-D window of a :class:`Region` (matmul operands and results)."""
    region: Region
    offset: int
    shape: tuple
    row_stride: int
    col_stride: int

    @property
    def addr(self) -> int:
        return self.region.addr + self.offset

    def _index(self) -> np.ndarray:
        r, c = self.shape
        idx = self.offset + np.arange(r)[:, None] * self.row_stride \
            + np.arange(c)[None, :] * self.col_stride
        if idx.size and (idx.min() < 0 or idx.max() >= self.region.size):
            raise ValueError(f"view {self} leaves region {self.region.name!r}")
        return idx

    def gather(self, golden: dict) -> np.ndarray:
        return golden[self.region.name].reshape(-1)[self._index()]

    def scatter(self, golden: dict, values: np.ndarray) -> None:
        flat = golden[self.region.name].reshape(-1)
        flat[self._index()] = values


@dataclass(frozen=True)
class At:
    """``shape`` words of a :class:`Region`, contiguous, from ``offset + (index << shift)``
    where ``index`` is index register ``reg - 1`` at run time (``reg`` 0: no register): a
    token's embedding row, a decode step's position row or key/value cache row. ``hold``: a
    vector operand of one word read for every element of the row (the row's own scale)."""
    region: Region
    shape: tuple
    offset: int = 0
    reg: int = 0
    shift: int = 0
    hold: bool = False

    @property
    def addr(self) -> int:
        return self.region.addr + self.offset

    def _span(self, index) -> slice:
        start = self.offset + ((int(index[self.reg - 1]) << self.shift) if self.reg else 0)
        n = int(np.prod(self.shape))
        if start < 0 or start + n > self.region.size:
            raise ValueError(f"{self} leaves region {self.region.name!r} at index "
                             f"{list(index)}")
        return slice(start, start + n)

    def gather(self, golden: dict, index) -> np.ndarray:
        return golden[self.region.name].reshape(-1)[self._span(index)].reshape(self.shape)

    def scatter(self, golden: dict, index, values) -> None:
        golden[self.region.name].reshape(-1)[self._span(index)] = np.reshape(values, -1)


@dataclass
class Program:
    """Commands and scratchpad image under construction.

    Parameters
    ----------
    depth, max_len : the :class:`~lowbit.hw.sequencer.Sequencer`'s.
    """
    depth: int = 4096
    max_len: int = 512
    score_len: int | None = None
    inputs: list = field(default_factory=list)     # regions the host writes (put)
    initial: dict = field(default_factory=dict)    # their values before any command ran
    index: list = field(default_factory=lambda: [0] * INDEX_REGS)   # index registers (golden)
    commands: list = field(default_factory=list)
    golden: dict = field(default_factory=dict)     # region name -> expected int64 array
    regions: dict = field(default_factory=dict)
    top: int = 0

    def __post_init__(self):
        self.descriptions = unit_descriptions(self.max_len, self.score_len)

    def alloc(self, name: str, shape) -> Region:
        shape = tuple(int(s) for s in np.atleast_1d(shape))
        if name in self.regions:
            raise ValueError(f"region {name!r} exists already")
        r = Region(name, self.top, shape)
        if self.top + r.size > self.depth:
            raise ScratchpadFull(f"scratchpad of {self.depth} words is full at {name!r} "
                                 f"({self.top} + {r.size} words)")
        self.top += r.size
        self.regions[name] = r
        return r

    def put(self, name: str, array) -> Region:
        """Place an input tensor (its own golden value)."""
        a = np.array(array, dtype=np.int64)
        r = self.alloc(name, a.shape)
        self.inputs.append(r)
        self.golden[name] = a
        self.initial[name] = a.copy()
        return r

    def image_chunks(self):
        """``(address, int64 words)`` of every input tensor, as the host writes them."""
        for r in self.inputs:
            yield r.addr, self.initial[r.name].reshape(-1)

    def take_commands(self) -> list:
        """The commands compiled so far (one program); the next ones start a new list."""
        out, self.commands = self.commands, []
        return out

    def load_index(self, reg: int, word, inc: int = 0) -> None:
        """INDEX: register ``reg`` (1 or 2) takes the word at ``word`` (a one-word Region or
        :class:`At`), and the word becomes itself plus ``inc`` (a step counter)."""
        if reg not in range(1, INDEX_REGS + 1) or not 0 <= inc < 1 << 47:
            raise ValueError(f"index register must be 1..{INDEX_REGS} and the increment "
                             f"0..2**47-1, not {reg} and {inc}")
        at = word if isinstance(word, At) else At(word, (1,))
        value = int(at.gather(self.golden, self.index)[0])
        at.scatter(self.golden, self.index, value + inc)
        self.index[reg - 1] = value
        dyn = [(0, 0)] * DYN_FIELDS
        dyn[1] = (at.reg, at.shift)
        self.commands.append({"op": OPCODES["index"], "k": reg - 1, "src": [at.addr],
                              "scalar": [inc], "dyn": dyn})

    def _operand(self, name: str, value) -> Region:
        return value if isinstance(value, Region) else self.put(name, value)

    def buffer(self, name: str, shape) -> Region:
        """A result tensor that several commands fill through views (golden starts at 0)."""
        r = self.alloc(name, shape)
        self.golden[name] = np.zeros(r.shape, np.int64)
        return r

    def _view(self, name: str, value) -> View:
        if isinstance(value, View):
            return value
        r = self._operand(name, value)
        return r.view(0, r.shape, r.shape[-1] if len(r.shape) > 1 else 1)

    def matmul(self, name: str, a, w, bias, out: View | None = None) -> Region:
        """``Y = A @ W.T + bias`` (A ``[M, K]`` int8, W ``[N, K]`` int8, bias ``[N]`` int32).

        ``a``, ``w`` and ``out`` may be :class:`View`\\ s of larger tensors (A's and Y's
        elements along a row must be adjacent); without ``out`` Y is a new region ``name``.
        """
        a, w = self._view(f"{name}.a", a), self._view(f"{name}.w", w)
        bias = self._operand(f"{name}.bias", bias)
        (mm, k), (n, k2) = a.shape, w.shape
        if k != k2 or bias.shape != (n,):
            raise ValueError(f"matmul {name!r}: shapes {a.shape} x {w.shape} + {bias.shape}")
        if a.col_stride != 1 or (isinstance(out, View) and out.col_stride != 1):
            raise ValueError(f"matmul {name!r}: A and Y rows must be contiguous")
        if out is None:
            out = self.buffer(name, (mm, n)).view(0, (mm, n), n)
        elif out.shape != (mm, n):
            raise ValueError(f"matmul {name!r}: Y view {out.shape}, not {(mm, n)}")
        dyn = [(0, 0)] * DYN_FIELDS
        if isinstance(out, At):     # rows of Y at a place the index registers choose
            dyn[0] = (out.reg, out.shift)
        ga, gw = a.gather(self.golden), w.gather(self.golden)
        gb = self.golden[bias.name]
        d = self.descriptions["matmul"]
        for op, g, shape in (("a", ga, d.x_layout.members["a"].elem_shape),
                             ("w", gw, d.x_layout.members["w"].elem_shape),
                             ("bias", gb, d.cfg_layout.members["bias"].elem_shape)):
            _check_range(f"matmul {name!r} operand {op}", g, shape)
        if k > d.max_k:
            raise ValueError(f"matmul {name!r}: K = {k} exceeds max_k {d.max_k}")
        y = ga @ gw.T + gb
        _check_range(f"matmul {name!r} result", y, d.y_layout.members["data"].elem_shape)
        if isinstance(out, At):
            out.scatter(self.golden, self.index, y)
        else:
            out.scatter(self.golden, y)
        self.commands.append({"op": OPCODES["matmul"], "rows": mm, "length": n, "k": k,
                              "dst": out.addr, "src": [a.addr, w.addr, bias.addr],
                              "stride": 0, "scalar": [], "lda": a.row_stride,
                              "ldw": w.row_stride, "kw": w.col_stride,
                              "ldd": n if isinstance(out, At) else out.row_stride, "dyn": dyn})
        return out.region

    def vector(self, kind: str, name: str, x: dict, cfg: dict | None = None,
               out: At | None = None) -> Region:
        """One vector operation over ``rows`` rows of ``length``: ``x`` {beat field: Region,
        :class:`At` or array}, ``data`` ``[rows, length]`` required; ``cfg`` {scalar field:
        int}. The result is a new region ``name``, or goes to ``out``."""
        d = self.descriptions[kind]
        cfg = dict(cfg or {})
        data = x["data"] if isinstance(x["data"], At) else \
            self._operand(f"{name}.data", x["data"])
        rows, length = data.shape
        x_names = [n for n in d.x_layout.members if n != "last"]
        cfg_names = [n for n in d.cfg_layout.members if n != "length"]
        if set(x) != set(x_names) or set(cfg) != set(cfg_names):
            raise ValueError(f"{kind} takes x fields {x_names} and cfg {cfg_names}, "
                             f"not {sorted(x)} and {sorted(cfg)}")
        src, stride, hold, gx = [], 0, 0, {}
        dyn = [(0, 0)] * DYN_FIELDS
        for s, n in enumerate(x_names):
            v = data if n == "data" else x[n]
            if not isinstance(v, (Region, At)):
                v = np.asarray(v, np.int64)
                if v.ndim == 2 and len(v) > 1 and (v == v[:1]).all():
                    v = v[0]      # the same row for every row: stored once, stride 0
                v = self._operand(f"{name}.{n}", v)
            if isinstance(v, At):
                g = v.gather(self.golden, self.index)
                dyn[1 + s] = (v.reg, v.shift)
            else:
                g = self.golden[v.name]
            if isinstance(v, At) and v.hold:
                if v.shape != (1,):
                    raise ValueError(f"{kind} {name!r}: held field {n} must be one word")
                hold |= 1 << s
                g = np.full(length, g[0])
            elif v.shape == (rows, length):
                stride |= 1 << s
            elif v.shape != (length,):
                raise ValueError(f"{kind} {name!r}: field {n} has shape {v.shape}, "
                                 f"not {(rows, length)} or {(length,)}")
            _check_range(f"{kind} {name!r} field {n}", g, d.x_layout.members[n].elem_shape
                         if isinstance(d.x_layout.members[n], data_layout.ArrayLayout)
                         else d.x_layout.members[n])
            src.append(v.addr)
            gx[n] = np.array(np.broadcast_to(g, (rows, length)))
        gcfg = {n: np.full(rows, int(cfg[n]), np.int64) for n in cfg_names}
        for n in cfg_names:
            _check_range(f"{kind} {name!r} cfg {n}", gcfg[n], d.cfg_layout.members[n])
        want = np.asarray(d.golden_rows(d.operands_from_fields(gcfg, gx)), np.int64)
        if out is None:
            out = self.alloc(name, want.shape)
            self.golden[name] = want
        else:
            if out.shape != want.shape:
                raise ValueError(f"{kind} {name!r}: result {want.shape} into {out.shape}")
            out.scatter(self.golden, self.index, want)
            dyn[0] = (out.reg, out.shift)
        self.commands.append({"op": OPCODES[kind], "rows": rows, "length": length, "k": 0,
                              "dst": out.addr, "src": src, "stride": stride, "hold": hold,
                              "scalar": [int(cfg[n]) for n in cfg_names], "dyn": dyn})
        return out if isinstance(out, Region) else out.region

    def command_words(self, commands: list | None = None) -> list:
        """The commands (default: those compiled so far) with every field present, HALT
        last."""
        out = []
        for c in (self.commands if commands is None else commands) + [{"op": OPCODES["halt"]}]:
            src = list(c.get("src", []))
            out.append({"op": c["op"], "rows": c.get("rows", 0), "length": c.get("length", 0),
                        "k": c.get("k", 0), "dst": c.get("dst", 0),
                        "src": src + [0] * (SLOTS - len(src)), "stride": c.get("stride", 0),
                        "hold": c.get("hold", 0),
                        "scalar": list(c.get("scalar", [])) + [0] * (SCALARS - len(
                            c.get("scalar", []))),
                        **{f: c.get(f, 0) for f in ("lda", "ldw", "kw", "ldd")},
                        "dyn": [{"reg": r, "shift": sh} for r, sh in
                                c.get("dyn", [(0, 0)] * DYN_FIELDS)]})
        return out


def _check_range(what: str, values: np.ndarray, shape) -> None:
    """The unit's field takes only ``shape``'s values: anything else would be truncated."""
    shape = unsigned(shape) if isinstance(shape, int) else shape
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed \
        else (0, (1 << shape.width) - 1)
    if values.size and (values.min() < lo or values.max() > hi):
        raise ValueError(f"{what} must lie in {lo}..{hi}, not {values.min()}..{values.max()}")


@dataclass
class SeqRun:
    results: dict      # region name -> int64 array read back from the scratchpad
    cycles: int        # the sequencer's count from start to done
    command_cycles: list   # cycles of each command, fetch to the next fetch (HALT excluded)
    seconds: float


def run_program(program: Program, *, program_depth: int = 64, timeout: int = 2_000_000,
                mm_rows: int = 1, mm_cols: int = 1) -> SeqRun:
    """Load ``program`` through the host ports of a :class:`Sequencer` (matmul array
    ``mm_rows x mm_cols``) in the Amaranth simulator, run it and read every region back."""
    from amaranth.sim import Simulator

    words = program.command_words()
    if len(words) > program_depth:
        raise ValueError(f"{len(words)} commands do not fit {program_depth} program words")
    dut = Sequencer(depth=program.depth, program_depth=program_depth,
                    max_len=program.max_len, score_len=program.score_len, mm_rows=mm_rows,
                    mm_cols=mm_cols)
    got: dict = {}
    count: dict = {}

    async def host(ctx):
        for start, values in program.image_chunks():
            for i, value in enumerate(values):
                ctx.set(dut.mem_waddr, start + i)
                ctx.set(dut.mem_wdata, int(value))
                ctx.set(dut.mem_we, 1)
                await ctx.tick()
        ctx.set(dut.mem_we, 0)
        for i, w in enumerate(words):
            ctx.set(dut.prog_waddr, i)
            ctx.set(dut.prog_wdata, w)
            ctx.set(dut.prog_we, 1)
            await ctx.tick()
        ctx.set(dut.prog_we, 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        marks, pc = [0], 0
        for cycle in range(1, timeout):
            if ctx.get(dut.done):
                break
            await ctx.tick()
            if ctx.get(dut.pc) != pc:
                pc = ctx.get(dut.pc)
                marks.append(cycle)
        else:
            raise RuntimeError(f"the sequencer did not finish in {timeout} cycles")
        count["cycles"] = ctx.get(dut.cycles)
        count["commands"] = list(np.diff(marks))
        for name, r in program.regions.items():
            vals = []
            for i in range(r.size):
                ctx.set(dut.mem_raddr, r.addr + i)
                vals.append(ctx.get(dut.mem_rdata))
            got[name] = np.array(vals, np.int64).reshape(r.shape)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    t0 = time.perf_counter()
    sim.run()
    return SeqRun(got, count["cycles"], count["commands"], time.perf_counter() - t0)
