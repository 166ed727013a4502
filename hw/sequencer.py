"""A top level that runs a command list by itself: one INT8 matmul unit, the vector units of
an integer-only decode, a scratchpad and a sequencer (docs/hardware.md, "Sequencer").

The host writes the scratchpad and the program (one command per word) through write ports,
pulses ``start`` and waits for ``done``; the sequencer fetches each command, streams its
operands from the scratchpad into the selected unit and writes the unit's results back to the
scratchpad, one command at a time, until a HALT command. ``cycles`` counts the clock cycles
from ``start`` to ``done``.

Every unit runs with one element per beat (``lanes`` 1, matmul array 1 x 1): the scratchpad
holds one signed element per word and each operand slot has its own read port. The read
ports are asynchronous (``domain="comb"``), which simulates and synthesises as distributed
RAM; a block-RAM scratchpad would need one registered read stage in front of the units.

Two components: :class:`SequencerCore` (program memory, units, the sequencer) drives the
scratchpad through ``SLOTS`` read ports and one write port of its own; :class:`Sequencer` is
the core with an on-chip scratchpad (Amaranth :class:`~amaranth.lib.memory.Memory`) and the
host's ports to it. A whole model (7.6 M weights) does not fit on chip: its simulation runs
the core with the scratchpad as an external memory model (sim/seq_harness.py).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .faults import FAULTS, VECTOR_FAULTS, make_faulty_unit
from .units import describe

__all__ = ["WORD_BITS", "OPCODES", "UNIT_PARAMS", "SLOTS", "SCALARS", "INDEX_REGS",
           "command_layout", "check_array", "SequencerCore", "Sequencer"]

WORD_BITS = 64          # one signed element per scratchpad word (widest operand: 48 bits)
SLOTS = 6               # operand read ports (residual per channel: data, b, 4 scalars)
SCALARS = 2             # cfg scalars besides length (layernorm: shift, eps)
SCALAR_BITS = 48
INDEX_REGS = 2          # index registers (a token id, a decode step) that offset addresses
INDEX_BITS = 32
DYN_FIELDS = SLOTS + 1  # dst and the slots' sources may be offset by an index register

#: Opcode of each command kind; 0 stops the program.
OPCODES = {"halt": 0, "matmul": 1, "requant": 2, "softmax": 3, "residual": 4, "layernorm": 5,
           "argmax": 6, "requant16": 7, "embedding": 8, "index": 9, "requant32": 10}

#: The units' parameters (those of the integer-only co-simulation, sim/cosim_ops.py, with one
#: element per beat); ``max_len`` comes from the sequencer.
UNIT_PARAMS = {
    "matmul": {"rows": 1, "cols": 1},
    "requant": {"in_bits": 47, "out_bits": 8, "per_channel": True},
    "softmax": {"in_bits": 16, "frac_bits": 8, "out_bits": 8},
    "residual": {"a_bits": 8, "b_bits": 47, "out_bits": 16, "per_channel": True},
    "layernorm": {"in_bits": 16, "out_bits": 8},
    "argmax": {"in_bits": 32},
    "requant16": {"in_bits": 47, "out_bits": 16, "per_channel": True},   # attention scores
    "requant32": {"in_bits": 47, "out_bits": 32, "per_channel": True},   # output scores
    "embedding": {"table_bits": 8, "out_bits": 8, "id_bits": 16, "pos_bits": 16},
}
VECTOR_OPS = ("requant", "softmax", "residual", "layernorm", "argmax", "requant16",
              "requant32", "embedding")
#: Units whose rows are a vocabulary long (the output scores): ``score_len`` sizes them.
SCORE_OPS = ("argmax", "requant32")


def command_layout(addr_bits: int) -> data.StructLayout:
    """One command word (fields from bit 0 upward)."""
    return data.StructLayout({
        "op": unsigned(4),                          # OPCODES
        "rows": unsigned(16),                       # rows (matmul: M)
        "length": unsigned(16),                     # row length (matmul: N)
        "k": unsigned(16),                          # matmul: K
        "dst": unsigned(addr_bits),
        "src": data.ArrayLayout(unsigned(addr_bits), SLOTS),
        "stride": unsigned(SLOTS),                  # bit s: slot s advances by length per row
        "hold": unsigned(SLOTS),                    # bit s: slot s reads one word per row
        "scalar": data.ArrayLayout(unsigned(SCALAR_BITS), SCALARS),
        # MATMUL strides (words): A rows, W rows, W along K, Y rows (views of larger tensors:
        # one attention head's columns, V read as V^T).
        "lda": unsigned(addr_bits), "ldw": unsigned(addr_bits), "kw": unsigned(addr_bits),
        "ldd": unsigned(addr_bits),
        # dst (0) and src[s] (1 + s) are offset by ``index[reg - 1] << shift`` (reg 0: none):
        # a token's embedding row, a decode step's position row and key/value cache row.
        "dyn": data.ArrayLayout(data.StructLayout({"reg": unsigned(2), "shift": unsigned(5)}),
                                DYN_FIELDS),
    })


def unit_descriptions(max_len: int, score_len: int | None = None, mm_rows: int = 1,
                      mm_cols: int = 1) -> dict:
    """``{opcode name: description}`` of the units a :class:`Sequencer` holds (the output
    scores' requantize and argmax take rows of ``score_len``, default ``max_len``; the matmul
    array is ``mm_rows x mm_cols``)."""
    out = {"matmul": describe("int8", **{**UNIT_PARAMS["matmul"], "rows": mm_rows,
                                         "cols": mm_cols})}
    for name in VECTOR_OPS:
        kind = name.removesuffix("16").removesuffix("32")
        n = max_len if name not in SCORE_OPS or score_len is None else score_len
        out[name] = describe(kind, lanes=1, max_len=n, **UNIT_PARAMS[name])
    return out


def check_array(mm_rows, mm_cols, names=("Mm_rows", "Mm_cols")) -> None:
    """Raise ValueError unless the matmul array ``mm_rows x mm_cols`` is one a sequencer
    takes (powers of two up to 64); ``names`` name the two values in the message."""
    for name, value in zip(names, (mm_rows, mm_cols)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 \
                or value & (value - 1) or value > 64:
            raise ValueError(f"{name} must be a power of two in 1..64, not {value!r}")


def _configure(top, depth, program_depth, max_len, score_len, fault=None, mm_rows=1,
               mm_cols=1) -> dict:
    """Check and keep the parameters of a sequencer top; returns the ports both tops share
    (program write port, control, status)."""
    check_array(mm_rows, mm_cols)
    top.mm_rows, top.mm_cols = mm_rows, mm_cols
    sizes = {"Depth": depth, "Program depth": program_depth, "Max_len": max_len,
             "Score_len": score_len}
    for name, value in sizes.items():
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ValueError(f"{name} must be an integer of at least 2, not {value!r}")
    top.depth, top.program_depth, top.max_len = depth, program_depth, max_len
    top.score_len = score_len
    if fault is not None:
        if fault not in FAULTS and fault not in VECTOR_FAULTS:
            raise ValueError(f"Fault must be one of {', '.join([*FAULTS, *VECTOR_FAULTS])}, "
                             f"not {fault!r}")
    top.fault = fault
    top.addr_bits = (depth - 1).bit_length()
    top.cmd_layout = command_layout(top.addr_bits)
    top.descriptions = unit_descriptions(max_len, score_len, mm_rows, mm_cols)
    # Read lanes beside the six slot ports, for the matmul array: A rows 1..R-1 (stride
    # lda), W rows 1..C-1 (stride ldw) and bias words 1..C-1 (consecutive).
    top.lanes = (mm_rows - 1) + 2 * (mm_cols - 1)
    return {"prog_we": In(1), "prog_waddr": In(range(program_depth)),
            "prog_wdata": In(top.cmd_layout), "start": In(1), "busy": Out(1), "done": Out(1),
            "cycles": Out(32), "pc": Out(range(program_depth))}


class SequencerCore(wiring.Component):
    """Program memory, units and the sequencer that runs the program on a scratchpad it
    reaches through ports.

    Parameters
    ----------
    depth : int
        Scratchpad words (``WORD_BITS`` signed bits each): sizes the addresses.
    program_depth : int
        Command words.
    max_len : int
        The longest vector row (every vector unit's ``max_len``).
    score_len : int, optional
        The longest row of the output scores' requantize and argmax (a vocabulary); default
        ``max_len``.
    fault : str, optional
        Test only: a fault of :mod:`lowbit.hw.faults` planted in the unit it applies to
        (``drop-lsb``: the matmul unit; ``exp-entry``: softmax).
    mm_rows, mm_cols : int
        The INT8 matmul array, ``R x C`` (powers of two up to 64; default 1 x 1).

    Ports
    -----
    rd_addr_S -> rd_data_S : the scratchpad's asynchronous read port of operand slot S
    rd_addr_lane -> rd_data_lane : ``lanes`` more read ports (32-bit addresses, 64-bit
        words; only when the array is larger than 1 x 1): A rows 1..R-1, W rows 1..C-1, bias
        words 1..C-1 of a matmul tile (slots 0, 1, 2 read row or word 0)
    wr_en, wr_addr, wr_data : its write port of C consecutive words (the units' results; a
        matmul writes a row of its tile at once): word c goes to ``wr_addr + c`` when bit c of
        ``wr_en`` is set
    prog_we, prog_waddr, prog_wdata : host write port of the program memory
    start : a one-cycle pulse starts the program at command 0
    busy, done : running; finished (HALT reached), until the next ``start``
    cycles : clock cycles from ``start`` to ``done``
    pc : the command running (its index in the program)
    """

    def __init__(self, *, depth: int = 4096, program_depth: int = 64, max_len: int = 512,
                 score_len: int | None = None, fault: str | None = None, mm_rows: int = 1,
                 mm_cols: int = 1):
        ports = _configure(self, depth, program_depth, max_len, score_len, fault, mm_rows,
                           mm_cols)
        for s in range(SLOTS):
            ports[f"rd_addr_{s}"] = Out(self.addr_bits)
            ports[f"rd_data_{s}"] = In(signed(WORD_BITS))
        if self.lanes:
            ports["rd_addr_lane"] = Out(data.ArrayLayout(unsigned(32), self.lanes))
            ports["rd_data_lane"] = In(data.ArrayLayout(signed(WORD_BITS), self.lanes))
        super().__init__({**ports, "wr_en": Out(mm_cols), "wr_addr": Out(self.addr_bits),
                          "wr_data": Out(data.ArrayLayout(signed(WORD_BITS), mm_cols))})

    def _build_unit(self, name, d):
        """Unit ``name`` (its description ``d``), with the planted ``fault`` if it is its."""
        kind = "int8" if name == "matmul" else name.removesuffix("16").removesuffix("32")
        if (self.fault in FAULTS and name == "matmul") or (
                self.fault in VECTOR_FAULTS and VECTOR_FAULTS[self.fault][0] == name):
            return make_faulty_unit(kind, self.fault, **d.params)
        return d.build()

    def elaborate(self, platform):
        m = Module()
        ab = self.addr_bits
        m.submodules.program = program = Memory(shape=self.cmd_layout,
                                                depth=self.program_depth, init=[])
        units = {name: self._build_unit(name, d) for name, d in self.descriptions.items()}
        for name, unit in units.items():
            m.submodules[name] = unit

        pw = program.write_port()
        m.d.comb += [pw.addr.eq(self.prog_waddr), pw.data.eq(self.prog_wdata),
                     pw.en.eq(self.prog_we & ~self.busy)]

        class _Slot:        # a read port seen as Memory's: .addr, .data
            def __init__(self, addr, data):
                self.addr, self.data = addr, data

        slots = [_Slot(getattr(self, f"rd_addr_{s}"), getattr(self, f"rd_data_{s}"))
                 for s in range(SLOTS)]
        R, C = self.mm_rows, self.mm_cols
        log_r, log_c = R.bit_length() - 1, C.bit_length() - 1
        lanes = [_Slot(self.rd_addr_lane[i], self.rd_data_lane[i]) for i in range(self.lanes)]
        a_lanes = [slots[0]] + lanes[:R - 1]            # A[m0 + r, k]
        w_lanes = [slots[1]] + lanes[R - 1:R + C - 2]   # W[n0 + c, k]
        b_lanes = [slots[2]] + lanes[R + C - 2:]        # bias[n0 + c]
        wport = _Slot(self.wr_addr, self.wr_data[0])
        wport.en = self.wr_en[0]
        index = [Signal(INDEX_BITS, name=f"index_{r}") for r in range(INDEX_REGS)]

        pc = self.pc
        pr = program.read_port(domain="comb")
        m.d.comb += pr.addr.eq(pc)
        cmd = Signal(self.cmd_layout)
        running_cycles = Signal(32)
        m.d.comb += self.cycles.eq(running_cycles)
        with m.If(self.busy):
            m.d.sync += running_cycles.eq(running_cycles + 1)

        # Feeder state: row (matmul: output tile), element within the row, row bases.
        row = Signal(32)          # rows done (matmul: tiles done)
        col = Signal(16)          # matmul: n0 of the current tile
        tile_m = Signal(16)       # matmul: m0 of the current tile
        idx = Signal(16)          # element within the row (matmul: k)
        base = [Signal(ab, name=f"base_{s}") for s in range(SLOTS)]
        wptr = Signal(ab)         # matmul: W[n0, k]'s address, base_1 + k * kw
        out_count = Signal(32)
        # Collector of matmul results: Y[m0, 0] and Y[m0 + r, 0] addresses, n0, r.
        out_tile, out_base, out_col, out_m = Signal(ab), Signal(ab), Signal(16), Signal(16)
        out_r = Signal(range(max(R, 2)))   # (range(1) would be a zero-width signal)
        expected = Signal(32)
        is_mm = cmd.op == OPCODES["matmul"]
        row_len = Signal(16)
        m.d.comb += row_len.eq(Mux(is_mm, cmd.k, cmd.length))
        total_rows = Signal(32)
        tiles_m = (cmd.rows + (R - 1)) >> log_r
        tiles_n = (cmd.length + (C - 1)) >> log_c
        m.d.comb += total_rows.eq(Mux(is_mm, tiles_m * tiles_n, cmd.rows))

        # Slot addresses: vector slot s reads base[s] + idx; matmul: A (slot 0) at base0 + k,
        # W (slot 1) at base1 + k, bias (slot 2) at base2.
        # A vector slot whose ``hold`` bit is set reads base[s] for every element (a row's own
        # scalar, e.g. the embedding row's multiplier).
        for s, port in enumerate(slots):
            step = Mux(cmd.hold[s], 0, idx)
            if s == 1:
                m.d.comb += port.addr.eq(Mux(is_mm, wptr, base[s] + step))
            elif s == 0:
                m.d.comb += port.addr.eq(base[s] + step)
            else:
                m.d.comb += port.addr.eq(base[s] + Mux(is_mm, 0, step))
        for r, port in enumerate(a_lanes[1:], 1):
            m.d.comb += port.addr.eq((base[0] + r * cmd.lda + idx)[:ab])
        for c, port in enumerate(w_lanes[1:], 1):
            m.d.comb += port.addr.eq((wptr + c * cmd.ldw)[:ab])
        for c, port in enumerate(b_lanes[1:], 1):
            m.d.comb += port.addr.eq((base[2] + c)[:ab])

        # The units' streams.
        cfg_valid, x_valid = Signal(), Signal()
        last = Signal()
        m.d.comb += last.eq(idx == row_len - 1)
        cfg_ready, x_ready = Signal(), Signal()
        y_valid = Signal()
        y_data = [Signal(signed(WORD_BITS), name=f"y_data_{c}") for c in range(C)]
        for name, unit in units.items():
            sel = cmd.op == OPCODES[name]
            m.d.comb += [unit.cfg.valid.eq(cfg_valid & sel), unit.x.valid.eq(x_valid & sel),
                         unit.y.ready.eq(sel)]
            with m.If(sel):
                m.d.comb += [cfg_ready.eq(unit.cfg.ready), x_ready.eq(unit.x.ready),
                             y_valid.eq(unit.y.valid)]
                ydata = unit.y.payload.data
                if name == "matmul":
                    m.d.comb += [y_data[c].eq(ydata[c]) for c in range(C)]
                else:
                    if isinstance(self.descriptions[name].y_layout.members["data"],
                                  data.ArrayLayout):
                        ydata = ydata[0]
                    m.d.comb += y_data[0].eq(ydata)
            if name == "matmul":
                # Lanes past M or N carry zeros (padding of an edge tile).
                a_ok = [tile_m + r < cmd.rows for r in range(R)]
                w_ok = [col + c < cmd.length for c in range(C)]
                m.d.comb += [unit.cfg.payload.bias[c].eq(Mux(w_ok[c], b_lanes[c].data, 0))
                             for c in range(C)]
                m.d.comb += [unit.x.payload.a[r].eq(Mux(a_ok[r], a_lanes[r].data, 0))
                             for r in range(R)]
                m.d.comb += [unit.x.payload.w[c].eq(Mux(w_ok[c], w_lanes[c].data, 0))
                             for c in range(C)]
                m.d.comb += [unit.cfg.payload.raw.eq(1), unit.x.payload.last.eq(last)]
                continue
            d = self.descriptions[name]
            cfg_names = [n for n in d.cfg_layout.members if n != "length"]
            m.d.comb += unit.cfg.payload.length.eq(cmd.length)
            for i, n in enumerate(cfg_names):
                m.d.comb += unit.cfg.payload[n].eq(cmd.scalar[i])
            x_names = [n for n in d.x_layout.members if n != "last"]
            for s, n in enumerate(x_names):
                field = unit.x.payload[n]
                if isinstance(d.x_layout.members[n], data.ArrayLayout):
                    field = field[0]
                m.d.comb += field.eq(slots[s].data)
            m.d.comb += unit.x.payload.last.eq(last)

        # The collector: a vector unit's y beat is one element, written to dst + out_count;
        # a matmul's is row r of a tile, Y[m0 + r, n0 .. n0 + C - 1], written at once (the
        # words past M or N are not written).
        with m.If(self.busy & y_valid):
            m.d.comb += [wport.addr.eq(Mux(is_mm, out_base + out_col, cmd.dst + out_count))]
            m.d.comb += [self.wr_data[c].eq(y_data[c]) for c in range(C)]
            row_ok = out_m < cmd.rows
            m.d.comb += self.wr_en.eq(Mux(is_mm, Cat(*[row_ok & (out_col + c < cmd.length)
                                                         for c in range(C)]), 1))
            m.d.sync += out_count.eq(out_count + 1)
            with m.If(~is_mm):
                pass
            with m.Elif(out_r == R - 1):        # the tile's last row: the next tile
                m.d.sync += out_r.eq(0)
                with m.If(out_col + C >= cmd.length):
                    m.d.sync += [out_col.eq(0), out_m.eq(out_m + 1),
                                 out_tile.eq(out_tile + (cmd.ldd << log_r)),
                                 out_base.eq(out_tile + (cmd.ldd << log_r))]
                with m.Else():
                    m.d.sync += [out_col.eq(out_col + C), out_m.eq(out_m - (R - 1)),
                                 out_base.eq(out_tile)]
            with m.Else():
                m.d.sync += [out_r.eq(out_r + 1), out_m.eq(out_m + 1),
                             out_base.eq(out_base + cmd.ldd)]

        # States as If branches on a register counting from 1: Verilator's -Wall lint passes
        # (m.FSM's case statement is incomplete; a state compared with 0 becomes a 3-bit !).
        IDLE, FETCH, CFG, X, WAIT, INDEX = range(1, 7)
        state = Signal(range(1, 7), init=IDLE)

        # Addresses offset by an index register (the command's ``dyn``), applied at FETCH.
        def offset(dyn):
            reg = Mux(dyn.reg == 1, index[0], Mux(dyn.reg == 2, index[1], 0))
            return (reg << dyn.shift)[:ab]

        word = pr.data
        dst = Signal(ab)
        src = [Signal(ab, name=f"src_{s}") for s in range(SLOTS)]
        m.d.comb += dst.eq(word.dst + offset(word.dyn[0]))
        m.d.comb += [src[s].eq(word.src[s] + offset(word.dyn[1 + s])) for s in range(SLOTS)]
        with m.If(state == IDLE):
            with m.If(self.start):
                m.d.sync += [pc.eq(0), running_cycles.eq(0), self.busy.eq(1),
                             self.done.eq(0)]
                m.d.sync += state.eq(FETCH)
        with m.Elif(state == FETCH):
            m.d.sync += [cmd.eq(word), row.eq(0), col.eq(0), idx.eq(0), out_count.eq(0)]
            m.d.sync += [cmd.dst.eq(dst)] + [cmd.src[s].eq(src[s]) for s in range(SLOTS)]
            m.d.sync += [base[s].eq(src[s]) for s in range(SLOTS)]
            m.d.sync += [wptr.eq(src[1]), out_base.eq(dst), out_tile.eq(dst), out_col.eq(0),
                         out_m.eq(0), out_r.eq(0), tile_m.eq(0)]
            with m.If(~word.op.any()):      # HALT (opcode 0)
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                m.d.sync += state.eq(IDLE)
            with m.Elif(word.op == OPCODES["index"]):
                m.d.sync += state.eq(INDEX)
            with m.Else():
                m.d.sync += state.eq(CFG)
        with m.Elif(state == INDEX):
            # index[k] <- word at src[0]; the word is written back plus scalar[0] (a step
            # counter advances itself).
            with m.If(cmd.k[0]):        # (If/Else: a compare with 0 fails the lint)
                m.d.sync += index[1].eq(slots[0].data)
            with m.Else():
                m.d.sync += index[0].eq(slots[0].data)
            m.d.comb += [wport.addr.eq(cmd.src[0]), wport.data.eq(slots[0].data + cmd.scalar[0]),
                         wport.en.eq(1)]
            m.d.sync += [pc.eq(pc + 1), state.eq(FETCH)]
        with m.Elif(state == CFG):
            m.d.comb += cfg_valid.eq(1)
            with m.If(cfg_ready):
                m.d.sync += state.eq(X)
        with m.Elif(state == X):
            m.d.comb += x_valid.eq(1)
            with m.If(x_ready):
                m.d.sync += [idx.eq(idx + 1), wptr.eq(wptr + cmd.kw)]
                with m.If(last):
                    m.d.sync += [idx.eq(0), row.eq(row + 1)]
                    with m.If(is_mm):
                        # Next output tile: C W rows and bias words on; at the end of a
                        # row of tiles, back to W row 0 and the next R rows of A.
                        with m.If(col + C >= cmd.length):
                            m.d.sync += [col.eq(0), base[1].eq(cmd.src[1]),
                                         wptr.eq(cmd.src[1]), base[2].eq(cmd.src[2]),
                                         base[0].eq(base[0] + (cmd.lda << log_r)),
                                         tile_m.eq(tile_m + R)]
                        with m.Else():
                            m.d.sync += [col.eq(col + C),
                                         base[1].eq(base[1] + (cmd.ldw << log_c)),
                                         wptr.eq(base[1] + (cmd.ldw << log_c)),
                                         base[2].eq(base[2] + C)]
                    with m.Else():
                        for s in range(SLOTS):
                            with m.If(cmd.stride[s]):
                                m.d.sync += base[s].eq(base[s] + cmd.length)
                    with m.If(row + 1 == total_rows):
                        m.d.sync += state.eq(WAIT)
                    with m.Else():
                        m.d.sync += state.eq(CFG)
        with m.Elif(state == WAIT):
            m.d.comb += expected.eq(Mux(cmd.op == OPCODES["argmax"], cmd.rows,
                                         Mux(is_mm, total_rows << log_r,
                                             total_rows * cmd.length)))
            with m.If(out_count == expected):
                m.d.sync += pc.eq(pc + 1)
                m.d.sync += state.eq(FETCH)
        return m


class Sequencer(wiring.Component):
    """:class:`SequencerCore` with an on-chip scratchpad of ``depth`` words and the host's
    ports to it (parameters as the core's).

    Ports
    -----
    mem_we, mem_waddr, mem_wdata : host write port of the scratchpad (while not busy)
    mem_raddr -> mem_rdata : host read port (asynchronous)
    prog_*, start, busy, done, cycles, pc : the core's
    """

    def __init__(self, *, depth: int = 4096, program_depth: int = 64, max_len: int = 512,
                 score_len: int | None = None, fault: str | None = None, mm_rows: int = 1,
                 mm_cols: int = 1):
        ports = _configure(self, depth, program_depth, max_len, score_len, fault, mm_rows,
                           mm_cols)
        super().__init__({
            **ports, "mem_we": In(1), "mem_waddr": In(self.addr_bits),
            "mem_wdata": In(signed(WORD_BITS)), "mem_raddr": In(self.addr_bits),
            "mem_rdata": Out(signed(WORD_BITS))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = SequencerCore(
            depth=self.depth, program_depth=self.program_depth, max_len=self.max_len,
            score_len=self.score_len, fault=self.fault, mm_rows=self.mm_rows,
            mm_cols=self.mm_cols)
        m.submodules.scratch = scratch = Memory(shape=signed(WORD_BITS), depth=self.depth,
                                                init=[])
        host_r = scratch.read_port(domain="comb")
        m.d.comb += [host_r.addr.eq(self.mem_raddr), self.mem_rdata.eq(host_r.data)]
        for s in range(SLOTS):
            port = scratch.read_port(domain="comb")
            m.d.comb += [port.addr.eq(getattr(core, f"rd_addr_{s}")),
                         getattr(core, f"rd_data_{s}").eq(port.data)]
        for i in range(self.lanes):
            port = scratch.read_port(domain="comb")
            m.d.comb += [port.addr.eq(core.rd_addr_lane[i]), core.rd_data_lane[i].eq(port.data)]
        # One write port per word of the core's C-word write (the host's writes use word 0).
        for c in range(self.mm_cols):
            wport = scratch.write_port()
            with m.If(core.busy):
                m.d.comb += [wport.addr.eq(core.wr_addr + c), wport.data.eq(core.wr_data[c]),
                             wport.en.eq(core.wr_en[c])]
            if c == 0:
                with m.Else():
                    m.d.comb += [wport.addr.eq(self.mem_waddr), wport.data.eq(self.mem_wdata),
                                 wport.en.eq(self.mem_we)]
        m.d.comb += [core.prog_we.eq(self.prog_we), core.prog_waddr.eq(self.prog_waddr),
                     core.prog_wdata.eq(self.prog_wdata), core.start.eq(self.start),
                     self.busy.eq(core.busy), self.done.eq(core.done),
                     self.cycles.eq(core.cycles), self.pc.eq(core.pc)]
        return m
