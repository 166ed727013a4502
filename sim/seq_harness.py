"""The sequencer (:mod:`lowbit.hw.sequencer`) Verilated: a compiled program runs at Verilator's
speed, with a scratchpad as large as a whole model.

:class:`VerilatedSequencer` builds :class:`~lowbit.hw.sequencer.SequencerCore` with Verilator
together with ``sim/seq_harness.cpp`` (cached like every Verilated build,
:func:`lowbit.sim.verilator.build_library`). The scratchpad is a memory model in C++ behind
the core's read and write ports (the Amaranth simulation's on-chip Memory answers the same
ports the same way: asynchronous reads, writes at the clock edge); the host writes and reads it
directly, as a DMA into an external memory would, and loads the program through the core's
program write port::

    seq = VerilatedSequencer(depth=program.depth, program_depth=256, max_len=program.max_len)
    run = seq.run(program)            # a lowbit.hw.seq_program.SeqRun, like run_program's
    seq.memory[addr]                  # the scratchpad, a numpy view (int64)

:meth:`VerilatedSequencer.run` loads the program's inputs and commands, pulses ``start``,
waits for ``done`` and reads every region back; :meth:`VerilatedSequencer.load`,
:meth:`~VerilatedSequencer.start` and :meth:`~VerilatedSequencer.read` do the steps one by one
(a decode loop keeps its weights and key/value cache in place between programs).
"""

from __future__ import annotations

import ctypes
import time
import weakref
from pathlib import Path

import numpy as np
from amaranth.lib import data

from lowbit import LowbitError
from lowbit.hw.sequencer import SLOTS

__all__ = ["VerilatedSequencer", "pack_commands", "dpi_wrapper", "SEQ_HARNESS_SOURCE"]

SEQ_HARNESS_SOURCE = Path(__file__).with_name("seq_harness.cpp")


def _pack(layout, value) -> int:
    """The bits of ``value`` (a dict, list or int as :meth:`Layout.const` takes it) in
    ``layout``: each field's value, wrapped to its width, at its offset."""
    if isinstance(layout, data.StructLayout):
        return sum(_pack(f.shape, value[name]) << f.offset for name, f in layout)
    if isinstance(layout, data.ArrayLayout):
        width = data.Layout.cast(layout.elem_shape).size \
            if isinstance(layout.elem_shape, data.Layout) else layout.elem_shape.width
        return sum(_pack(layout.elem_shape, v) << (i * width) for i, v in enumerate(value))
    return int(value) & ((1 << layout.width) - 1)


def pack_commands(layout, words: list) -> np.ndarray:
    """Commands (dicts of :func:`~lowbit.hw.sequencer.command_layout`'s fields, every field
    present) as 32-bit words, ``[len(words), ceil(bits / 32)]``, least significant first."""
    n32 = (layout.size + 31) // 32
    out = np.zeros((len(words), n32), np.uint32)
    for i, w in enumerate(words):
        bits = _pack(layout, w)
        for j in range(n32):
            out[i, j] = (bits >> (32 * j)) & 0xFFFFFFFF
    return out


def dpi_wrapper(core) -> str:
    """Verilog of ``sequencer_dpi``: ``core`` (module ``sequencer_core``) with its read ports
    answered by the DPI-C function ``lbs_mem_read`` and its write port driving
    ``lbs_mem_write`` at the rising edge (sim/seq_harness.cpp defines both on its memory
    model); its ports are the core's program port, control and status, its inputs reach the
    core one cycle later (through registers)."""
    ab, lanes, cols = core.addr_bits, core.lanes, core.mm_cols
    pbits = (core.program_depth - 1).bit_length()
    cbits = core.cmd_layout.size
    slots = range(SLOTS)
    lines = [
        "module sequencer_dpi(clk, rst, prog_we, prog_waddr, prog_wdata, start, busy, done, "
        "cycles, pc);",
        '  import "DPI-C" function longint lbs_mem_read(input int addr);',
        '  import "DPI-C" function void lbs_mem_write(input int addr, input longint data);',
        "  input clk;", "  input rst;", "  input prog_we;",
        f"  input [{pbits - 1}:0] prog_waddr;", f"  input [{cbits - 1}:0] prog_wdata;",
        "  input start;", "  output busy;", "  output done;", "  output [31:0] cycles;",
        f"  output [{pbits - 1}:0] pc;",
        f"  wire [{cols - 1}:0] wr_en;", f"  wire [{ab - 1}:0] wr_addr;",
        f"  wire [{64 * cols - 1}:0] wr_data;",
    ]
    for s in slots:
        lines += [f"  wire [{ab - 1}:0] rd_addr_{s};", f"  wire [63:0] rd_data_{s};",
                  f"  assign rd_data_{s} = lbs_mem_read(32'(rd_addr_{s}));"]
    ports = [f".rd_addr_{s}(rd_addr_{s}), .rd_data_{s}(rd_data_{s})" for s in slots]
    if lanes:
        lines += [f"  wire [{32 * lanes - 1}:0] rd_addr_lane;",
                  f"  wire [{64 * lanes - 1}:0] rd_data_lane;",
                  "  genvar i;",
                  f"  for (i = 0; i < {lanes}; i = i + 1) begin : lane",
                  "    assign rd_data_lane[64 * i +: 64] = "
                  "lbs_mem_read(rd_addr_lane[32 * i +: 32]);",
                  "  end"]
        ports.append(".rd_addr_lane(rd_addr_lane), .rd_data_lane(rd_data_lane)")
    # The core's inputs through registers: no logic of the core depends on a top-level
    # input, so none of it is re-run when an input changes (the harness pulses start and
    # writes the program one cycle earlier).
    lines += ["  reg rst_q = 1'b1, start_q = 1'b0, prog_we_q = 1'b0;",
              f"  reg [{pbits - 1}:0] prog_waddr_q;", f"  reg [{cbits - 1}:0] prog_wdata_q;",
              "  always @(posedge clk) begin",
              "    rst_q <= rst; start_q <= start; prog_we_q <= prog_we;",
              "    prog_waddr_q <= prog_waddr; prog_wdata_q <= prog_wdata;",
              "  end"]
    lines += [
        "  integer c;",
        "  always @(posedge clk)",
        f"    for (c = 0; c < {cols}; c = c + 1)",
        "      if (wr_en[c]) lbs_mem_write(32'(wr_addr) + c, wr_data[64 * c +: 64]);",
        "  sequencer_core core(.clk(clk), .rst(rst_q), .prog_we(prog_we_q), "
        ".prog_waddr(prog_waddr_q), .prog_wdata(prog_wdata_q), .start(start_q), .busy(busy), "
        ".done(done), .cycles(cycles), .pc(pc), .wr_en(wr_en), .wr_addr(wr_addr), "
        ".wr_data(wr_data),",
        "    " + ", ".join(ports) + ");",
        "endmodule",
    ]
    return "\n" + "\n".join(lines) + "\n"


class VerilatedSequencer:
    """A :class:`~lowbit.hw.sequencer.SequencerCore` in Verilator with a ``depth``-word
    scratchpad (parameters as the core's, ``fault`` included). Raises :class:`lowbit.LowbitError` for a bad
    parameter and when the build fails; ``close()`` frees the model."""

    def __init__(self, *, depth: int, program_depth: int = 64, max_len: int = 512,
                 score_len: int | None = None, fault: str | None = None, mm_rows: int = 1,
                 mm_cols: int = 1):
        from lowbit.hw.sequencer import SequencerCore
        from lowbit.hw.verilog import flat_verilog
        from lowbit.sim.verilator import build_library

        try:
            core = SequencerCore(depth=depth, program_depth=program_depth, max_len=max_len,
                                 score_len=score_len, fault=fault, mm_rows=mm_rows,
                                 mm_cols=mm_cols)
        except ValueError as e:
            raise LowbitError(str(e)) from None
        self.core, self.depth, self.program_depth = core, depth, program_depth
        verilog = flat_verilog(core, "sequencer_core") + dpi_wrapper(core)
        self.library = build_library("Vseq", "sequencer_dpi", verilog, SEQ_HARNESS_SOURCE)
        lib = ctypes.CDLL(str(self.library))
        lib.lbs_create.restype = ctypes.c_void_p
        lib.lbs_create.argtypes = [ctypes.c_uint64]
        lib.lbs_destroy.argtypes = [ctypes.c_void_p]
        lib.lbs_memory.restype = ctypes.POINTER(ctypes.c_int64)
        lib.lbs_memory.argtypes = [ctypes.c_void_p]
        lib.lbs_program.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                    ctypes.c_int64, ctypes.c_int64]
        lib.lbs_run.restype = ctypes.c_int64
        lib.lbs_run.argtypes = [ctypes.c_void_p, ctypes.c_uint64,
                                ctypes.POINTER(ctypes.c_uint64), ctypes.c_int64,
                                ctypes.POINTER(ctypes.c_int64)]
        self._lib = lib
        self._h = ctypes.c_void_p(lib.lbs_create(depth))
        self.close = weakref.finalize(self, lib.lbs_destroy, self._h)
        #: the scratchpad (int64 words), written and read in place
        self.memory = np.ctypeslib.as_array(lib.lbs_memory(self._h), shape=(depth,))

    def load(self, program, commands: list | None = None, *, inputs: bool = True) -> None:
        """Write ``program``'s commands (or ``commands``, one of its programs; HALT last) and,
        with ``inputs``, its input tensors."""
        if program.depth > self.depth:
            raise LowbitError(f"the program needs {program.depth} scratchpad words, the "
                              f"sequencer has {self.depth}")
        words = program.command_words(commands)
        if len(words) > self.program_depth:
            raise LowbitError(f"{len(words)} commands do not fit {self.program_depth} "
                              f"program words")
        if inputs:
            for addr, values in program.image_chunks():
                self.memory[addr:addr + len(values)] = values
        packed = np.ascontiguousarray(pack_commands(self.core.cmd_layout, words))
        self._lib.lbs_program(self._h, packed.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                              packed.shape[0], packed.shape[1])
        self._commands = len(words) - 1

    def start(self, *, timeout: int = 2_000_000_000) -> tuple[int, list]:
        """Run the loaded program: ``(cycles from start to done, cycles of each command)``.
        Raises RuntimeError when it does not finish in ``timeout`` cycles."""
        max_marks = max(self._commands, 1) + 1
        marks = (ctypes.c_uint64 * max_marks)()
        n = ctypes.c_int64()
        cycles = self._lib.lbs_run(self._h, timeout, marks, max_marks, ctypes.byref(n))
        if cycles < 0:
            raise RuntimeError(f"the sequencer did not finish in {timeout} cycles")
        got = [0] + list(marks[:min(n.value, max_marks)])
        return int(cycles), [int(c) for c in np.diff(got)]

    def read(self, region) -> np.ndarray:
        """A region's words (int64, the region's shape)."""
        return self.memory[region.addr:region.addr + region.size].copy().reshape(region.shape)

    def run(self, program, *, timeout: int = 2_000_000_000):
        """Clear the scratchpad, load ``program``, run it and read every region back (a
        :class:`~lowbit.hw.seq_program.SeqRun`)."""
        from lowbit.hw.seq_program import SeqRun

        self.memory[:] = 0          # a fresh scratchpad, as the Amaranth simulation's
        self.load(program)
        t0 = time.perf_counter()
        cycles, per_command = self.start(timeout=timeout)
        seconds = time.perf_counter() - t0
        results = {name: self.read(r) for name, r in program.regions.items()}
        return SeqRun(results, cycles, per_command, seconds)
