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

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .units import describe

__all__ = ["WORD_BITS", "OPCODES", "UNIT_PARAMS", "SLOTS", "SCALARS", "INDEX_REGS",
           "command_layout", "SequencerCore", "Sequencer"]

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


def unit_descriptions(max_len: int, score_len: int | None = None) -> dict:
    """``{opcode name: description}`` of the units a :class:`Sequencer` holds (the output
    scores' requantize and argmax take rows of ``score_len``, default ``max_len``)."""
    out = {"matmul": describe("int8", **UNIT_PARAMS["matmul"])}
    for name in VECTOR_OPS:
        kind = name.removesuffix("16").removesuffix("32")
        n = max_len if name not in SCORE_OPS or score_len is None else score_len
        out[name] = describe(kind, lanes=1, max_len=n, **UNIT_PARAMS[name])
    return out


def _configure(top, depth, program_depth, max_len, score_len) -> dict:
    """Check and keep the parameters of a sequencer top; returns the ports both tops share
    (program write port, control, status)."""
    sizes = {"Depth": depth, "Program depth": program_depth, "Max_len": max_len,
             "Score_len": score_len}
    for name, value in sizes.items():
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ValueError(f"{name} must be an integer of at least 2, not {value!r}")
    top.depth, top.program_depth, top.max_len = depth, program_depth, max_len
    top.score_len = score_len
    top.addr_bits = (depth - 1).bit_length()
    top.cmd_layout = command_layout(top.addr_bits)
    top.descriptions = unit_descriptions(max_len, score_len)
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

    Ports
    -----
    rd_addr_S -> rd_data_S : the scratchpad's asynchronous read port of operand slot S
    wr_en, wr_addr, wr_data : its write port (the units' results; INDEX's increment)
    prog_we, prog_waddr, prog_wdata : host write port of the program memory
    start : a one-cycle pulse starts the program at command 0
    busy, done : running; finished (HALT reached), until the next ``start``
    cycles : clock cycles from ``start`` to ``done``
    pc : the command running (its index in the program)
    """

    def __init__(self, *, depth: int = 4096, program_depth: int = 64, max_len: int = 512,
                 score_len: int | None = None):
        ports = _configure(self, depth, program_depth, max_len, score_len)
        for s in range(SLOTS):
            ports[f"rd_addr_{s}"] = Out(self.addr_bits)
            ports[f"rd_data_{s}"] = In(signed(WORD_BITS))
        super().__init__({**ports, "wr_en": Out(1), "wr_addr": Out(self.addr_bits),
                          "wr_data": Out(signed(WORD_BITS))})

    def elaborate(self, platform):
        m = Module()
        ab = self.addr_bits
        m.submodules.program = program = Memory(shape=self.cmd_layout,
                                                depth=self.program_depth, init=[])
        units = {name: d.build() for name, d in self.descriptions.items()}
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
        wport = _Slot(self.wr_addr, self.wr_data)
        wport.en = self.wr_en
        index = [Signal(INDEX_BITS, name=f"index_{r}") for r in range(INDEX_REGS)]

        pc = self.pc
        pr = program.read_port(domain="comb")
        m.d.comb += pr.addr.eq(pc)
        cmd = Signal(self.cmd_layout)
        running_cycles = Signal(32)
        m.d.comb += self.cycles.eq(running_cycles)
        with m.If(self.busy):
            m.d.sync += running_cycles.eq(running_cycles + 1)

        # Feeder state: row (matmul: output element), element within the row, row bases.
        row = Signal(32)          # rows done (matmul: elements done)
        col = Signal(16)          # matmul: n of the current element
        idx = Signal(16)          # element within the row (matmul: k)
        base = [Signal(ab, name=f"base_{s}") for s in range(SLOTS)]
        wptr = Signal(ab)         # matmul: W[n, k]'s address, base_1 + k * kw
        out_count = Signal(32)
        out_base, out_col = Signal(ab), Signal(16)   # matmul: Y row address, n of the next y
        expected = Signal(32)
        is_mm = cmd.op == OPCODES["matmul"]
        row_len = Signal(16)
        m.d.comb += row_len.eq(Mux(is_mm, cmd.k, cmd.length))
        total_rows = Signal(32)
        m.d.comb += total_rows.eq(Mux(is_mm, cmd.rows * cmd.length, cmd.rows))

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

        # The units' streams.
        cfg_valid, x_valid = Signal(), Signal()
        last = Signal()
        m.d.comb += last.eq(idx == row_len - 1)
        cfg_ready, x_ready = Signal(), Signal()
        y_valid, y_data = Signal(), Signal(signed(WORD_BITS))
        for name, unit in units.items():
            sel = cmd.op == OPCODES[name]
            m.d.comb += [unit.cfg.valid.eq(cfg_valid & sel), unit.x.valid.eq(x_valid & sel),
                         unit.y.ready.eq(sel)]
            with m.If(sel):
                m.d.comb += [cfg_ready.eq(unit.cfg.ready), x_ready.eq(unit.x.ready),
                             y_valid.eq(unit.y.valid)]
                ydata = unit.y.payload.data
                if isinstance(self.descriptions[name].y_layout.members["data"],
                              data.ArrayLayout):
                    ydata = ydata[0]
                m.d.comb += y_data.eq(ydata)
            if name == "matmul":
                m.d.comb += [unit.cfg.payload.bias[0].eq(slots[2].data),
                             unit.cfg.payload.raw.eq(1),
                             unit.x.payload.a[0].eq(slots[0].data),
                             unit.x.payload.w[0].eq(slots[1].data),
                             unit.x.payload.last.eq(last)]
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

        # The collector: every y beat is one element, written to dst + out_count.
        with m.If(self.busy & y_valid):
            m.d.comb += [wport.addr.eq(Mux(is_mm, out_base + out_col, cmd.dst + out_count)),
                         wport.data.eq(y_data), wport.en.eq(1)]
            m.d.sync += out_count.eq(out_count + 1)
            with m.If(out_col == cmd.length - 1):
                m.d.sync += [out_col.eq(0), out_base.eq(out_base + cmd.ldd)]
            with m.Else():
                m.d.sync += out_col.eq(out_col + 1)

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
            m.d.sync += [wptr.eq(src[1]), out_base.eq(dst), out_col.eq(0)]
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
                        # Next output element: W row and bias advance; at the end of a
                        # row of Y, back to W row 0 and the next A row.
                        with m.If(col == cmd.length - 1):
                            m.d.sync += [col.eq(0), base[1].eq(cmd.src[1]),
                                         wptr.eq(cmd.src[1]), base[2].eq(cmd.src[2]),
                                         base[0].eq(base[0] + cmd.lda)]
                        with m.Else():
                            m.d.sync += [col.eq(col + 1), base[1].eq(base[1] + cmd.ldw),
                                         wptr.eq(base[1] + cmd.ldw), base[2].eq(base[2] + 1)]
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
                                         total_rows * Mux(is_mm, 1, cmd.length)))
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
                 score_len: int | None = None):
        ports = _configure(self, depth, program_depth, max_len, score_len)
        super().__init__({
            **ports, "mem_we": In(1), "mem_waddr": In(self.addr_bits),
            "mem_wdata": In(signed(WORD_BITS)), "mem_raddr": In(self.addr_bits),
            "mem_rdata": Out(signed(WORD_BITS))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = SequencerCore(
            depth=self.depth, program_depth=self.program_depth, max_len=self.max_len,
            score_len=self.score_len)
        m.submodules.scratch = scratch = Memory(shape=signed(WORD_BITS), depth=self.depth,
                                                init=[])
        host_r = scratch.read_port(domain="comb")
        m.d.comb += [host_r.addr.eq(self.mem_raddr), self.mem_rdata.eq(host_r.data)]
        for s in range(SLOTS):
            port = scratch.read_port(domain="comb")
            m.d.comb += [port.addr.eq(getattr(core, f"rd_addr_{s}")),
                         getattr(core, f"rd_data_{s}").eq(port.data)]
        wport = scratch.write_port()
        with m.If(core.busy):
            m.d.comb += [wport.addr.eq(core.wr_addr), wport.data.eq(core.wr_data),
                         wport.en.eq(core.wr_en)]
        with m.Else():
            m.d.comb += [wport.addr.eq(self.mem_waddr), wport.data.eq(self.mem_wdata),
                         wport.en.eq(self.mem_we)]
        m.d.comb += [core.prog_we.eq(self.prog_we), core.prog_waddr.eq(self.prog_waddr),
                     core.prog_wdata.eq(self.prog_wdata), core.start.eq(self.start),
                     self.busy.eq(core.busy), self.done.eq(core.done),
                     self.cycles.eq(core.cycles), self.pc.eq(core.pc)]
        return m
