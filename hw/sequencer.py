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
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .units import describe

__all__ = ["WORD_BITS", "OPCODES", "UNIT_PARAMS", "SLOTS", "SCALARS", "command_layout",
           "Sequencer"]

WORD_BITS = 64          # one signed element per scratchpad word (widest operand: 48 bits)
SLOTS = 6               # operand read ports (residual per channel: data, b, 4 scalars)
SCALARS = 2             # cfg scalars besides length (layernorm: shift, eps)
SCALAR_BITS = 48

#: Opcode of each command kind; 0 stops the program.
OPCODES = {"halt": 0, "matmul": 1, "requant": 2, "softmax": 3, "residual": 4, "layernorm": 5,
           "argmax": 6, "requant16": 7}

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
}


def command_layout(addr_bits: int) -> data.StructLayout:
    """One command word (fields from bit 0 upward)."""
    return data.StructLayout({
        "op": unsigned(3),                          # OPCODES
        "rows": unsigned(16),                       # rows (matmul: M)
        "length": unsigned(16),                     # row length (matmul: N)
        "k": unsigned(16),                          # matmul: K
        "dst": unsigned(addr_bits),
        "src": data.ArrayLayout(unsigned(addr_bits), SLOTS),
        "stride": unsigned(SLOTS),                  # bit s: slot s advances by length per row
        "scalar": data.ArrayLayout(unsigned(SCALAR_BITS), SCALARS),
        # MATMUL strides (words): A rows, W rows, W along K, Y rows (views of larger tensors:
        # one attention head's columns, V read as V^T).
        "lda": unsigned(addr_bits), "ldw": unsigned(addr_bits), "kw": unsigned(addr_bits),
        "ldd": unsigned(addr_bits),
    })


def unit_descriptions(max_len: int) -> dict:
    """``{opcode name: description}`` of the units a :class:`Sequencer` holds."""
    out = {"matmul": describe("int8", **UNIT_PARAMS["matmul"])}
    for name in ("requant", "softmax", "residual", "layernorm", "argmax", "requant16"):
        kind = name.removesuffix("16")
        out[name] = describe(kind, lanes=1, max_len=max_len, **UNIT_PARAMS[name])
    return out


class Sequencer(wiring.Component):
    """Scratchpad, program memory, units and the sequencer that runs the program.

    Parameters
    ----------
    depth : int
        Scratchpad words (``WORD_BITS`` signed bits each).
    program_depth : int
        Command words.
    max_len : int
        The longest vector row (every vector unit's ``max_len``).

    Ports
    -----
    mem_we, mem_waddr, mem_wdata : host write port of the scratchpad (while not busy)
    mem_raddr -> mem_rdata : host read port (asynchronous)
    prog_we, prog_waddr, prog_wdata : host write port of the program memory
    start : a one-cycle pulse starts the program at command 0
    busy, done : running; finished (HALT reached), until the next ``start``
    cycles : clock cycles from ``start`` to ``done``
    pc : the command running (its index in the program)
    """

    def __init__(self, *, depth: int = 4096, program_depth: int = 64, max_len: int = 512):
        for name, value in (("Depth", depth), ("Program depth", program_depth),
                            ("Max_len", max_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ValueError(f"{name} must be an integer of at least 2, not {value!r}")
        self.depth, self.program_depth, self.max_len = depth, program_depth, max_len
        self.addr_bits = (depth - 1).bit_length()
        self.cmd_layout = command_layout(self.addr_bits)
        self.descriptions = unit_descriptions(max_len)
        super().__init__({
            "mem_we": In(1), "mem_waddr": In(self.addr_bits), "mem_wdata": In(signed(WORD_BITS)),
            "mem_raddr": In(self.addr_bits), "mem_rdata": Out(signed(WORD_BITS)),
            "prog_we": In(1), "prog_waddr": In(range(program_depth)),
            "prog_wdata": In(self.cmd_layout),
            "start": In(1), "busy": Out(1), "done": Out(1), "cycles": Out(32),
            "pc": Out(range(program_depth)),
        })

    def elaborate(self, platform):
        m = Module()
        ab = self.addr_bits
        m.submodules.scratch = scratch = Memory(shape=signed(WORD_BITS), depth=self.depth,
                                                init=[])
        m.submodules.program = program = Memory(shape=self.cmd_layout,
                                                depth=self.program_depth, init=[])
        units = {name: d.build() for name, d in self.descriptions.items()}
        for name, unit in units.items():
            m.submodules[name] = unit

        # Host ports.
        host_r = scratch.read_port(domain="comb")
        m.d.comb += [host_r.addr.eq(self.mem_raddr), self.mem_rdata.eq(host_r.data)]
        pw = program.write_port()
        m.d.comb += [pw.addr.eq(self.prog_waddr), pw.data.eq(self.prog_wdata),
                     pw.en.eq(self.prog_we & ~self.busy)]
        wport = scratch.write_port()
        slots = [scratch.read_port(domain="comb") for _ in range(SLOTS)]

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
        for s, port in enumerate(slots):
            if s == 1:
                m.d.comb += port.addr.eq(Mux(is_mm, wptr, base[s] + idx))
            else:
                m.d.comb += port.addr.eq(base[s] + (idx if s == 0 else Mux(is_mm, 0, idx)))

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
                m.d.comb += unit.x.payload[n][0].eq(slots[s].data)
            m.d.comb += unit.x.payload.last.eq(last)

        # The collector: every y beat is one element, written to dst + out_count.
        m.d.comb += [wport.addr.eq(self.mem_waddr), wport.data.eq(self.mem_wdata),
                     wport.en.eq(self.mem_we & ~self.busy)]
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
        IDLE, FETCH, CFG, X, WAIT = range(1, 6)
        state = Signal(range(1, 6), init=IDLE)
        with m.If(state == IDLE):
            with m.If(self.start):
                m.d.sync += [pc.eq(0), running_cycles.eq(0), self.busy.eq(1),
                             self.done.eq(0)]
                m.d.sync += state.eq(FETCH)
        with m.Elif(state == FETCH):
            m.d.sync += [cmd.eq(pr.data), row.eq(0), col.eq(0), idx.eq(0),
                         out_count.eq(0)]
            m.d.sync += [base[s].eq(pr.data.src[s]) for s in range(SLOTS)]
            m.d.sync += [wptr.eq(pr.data.src[1]), out_base.eq(pr.data.dst), out_col.eq(0)]
            with m.If(~pr.data.op.any()):   # HALT (opcode 0)
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                m.d.sync += state.eq(IDLE)
            with m.Else():
                m.d.sync += state.eq(CFG)
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

