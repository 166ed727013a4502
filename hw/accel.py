"""Accelerator top level: one matmul unit behind a register file a SoC can attach.

:class:`Accelerator` wraps one of the three matmul units (:mod:`lowbit.hw.matmul`, parameters
passed through) with

* the unit's three streams ``x``, ``cfg`` and ``y`` (same payloads, so
  :class:`lowbit.hw.driver.Protocol` of the wrapped unit drives it unchanged);
* a 32-bit control/status register file on a small memory-mapped bus
  (:class:`RegisterBusSignature`: ``addr``, ``r_stb``, ``r_data``, ``w_stb``, ``w_data``, read
  data one cycle after ``r_stb``, in the style of an amaranth-soc CSR bus): identification
  registers from which software discovers the unit kind, array size and bit widths; control
  (start a job, soft reset, clear counters, job gating, interrupt enables); status (busy, tiles
  done, sticky error flags); performance counters (cycles, busy cycles, beats in and out, stall
  and idle cycles);
* an interrupt line ``irq`` raised on tile completion, job completion or an error.

The register map is data (:data:`REGISTERS`): the RTL, the host helpers
(:func:`decode_id`), the tests and the table in docs/hardware.md (:func:`register_table`) all
read it, so they cannot drift apart. docs/hardware.md ("Accelerator top level") specifies the
behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .units import (MAX_K, ParameterTypeError, ParameterValueError, UnitDescription, describe,
                    kind_of_code, unit_kinds)

__all__ = ["Accelerator", "RegisterBusSignature", "Register", "Field", "REGISTERS", "REG",
           "ADDR_WIDTH", "DATA_WIDTH", "MAGIC", "VERSION", "decode_id", "register_table",
           "generate_accel_verilog", "accel_verilog", "bus_read", "bus_write", "JobGate"]

ADDR_WIDTH = 6          # word addresses: a 64-word (256-byte) window
DATA_WIDTH = 32
MAGIC = 0x4C42_4954     # "LBIT" in ASCII, most significant byte first
VERSION = (1, 0)        # register map version (major, minor)
COUNTER_WIDTH = 32      # performance counters wrap modulo 2^32
_OCCUPANCY_BITS = 8     # tiles in flight are counted modulo 256 (at most a few are in flight)


# ---------------------------------------------------------------------------------------------
# The register map, as data


@dataclass(frozen=True)
class Field:
    """A bit field ``[lsb + width - 1 : lsb]`` of a register."""
    name: str
    lsb: int
    width: int
    doc: str

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    def get(self, value: int) -> int:
        return (value >> self.lsb) & ((1 << self.width) - 1)

    @property
    def bits(self) -> str:
        return str(self.lsb) if self.width == 1 else f"{self.lsb + self.width - 1}:{self.lsb}"


@dataclass(frozen=True)
class Register:
    """One 32-bit register: word address ``addr`` (byte offset ``4 * addr``).

    ``access``: ``RO`` read only; ``RW`` read/write; ``W1C`` read, write 1 to clear a bit;
    ``CTRL`` is RW except the action bits marked W1 (write 1 to act, read as 0).
    ``reset`` is the value after ``rst`` (None: a constant set by the unit's parameters).
    """
    name: str
    addr: int
    access: str
    reset: int | None
    doc: str
    fields: tuple[Field, ...] = ()

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


def _counter(name, addr, doc):
    return Register(name, addr, "RO", 0, doc + " Wraps modulo 2^32; cleared by CLEAR_COUNTERS "
                    "and SOFT_RESET.")


REGISTERS: tuple[Register, ...] = (
    # --- identification (constants) ------------------------------------------------------
    Register("MAGIC", 0x00, "RO", None, "0x4C424954 (\"LBIT\"): a lowbit accelerator is here."),
    Register("VERSION", 0x01, "RO", None, "Register map version and the unit kind.", (
        Field("MINOR", 0, 8, "register map minor version (0)"),
        Field("MAJOR", 8, 8, "register map major version (1)"),
        Field("KIND", 16, 8, "unit: 1 = int8, 2 = log, 3 = xnor"),
    )),
    Register("SHAPE", 0x02, "RO", None, "Array size and widths.", (
        Field("ROWS", 0, 8, "PE array rows (M per tile, y beats per tile)"),
        Field("COLS", 8, 8, "PE array columns (N per tile)"),
        Field("OUT_BITS", 16, 8, "requantized output width"),
        Field("ACC_WIDTH", 24, 8, "accumulator width"),
    )),
    Register("OPERANDS", 0x03, "RO", None, "Operand formats of the unit kind.", (
        Field("A", 0, 8, "int8, log: a_bits; xnor: a_planes"),
        Field("W", 8, 8, "int8: w_bits; log: bits (code width); xnor: w_planes"),
        Field("LANES", 16, 9, "xnor: lanes (bits of K per beat); 0 otherwise"),
        Field("ZERO_CODE", 25, 1, "log: 1 when the zero code is on; 0 otherwise"),
    )),
    Register("MAX_K", 0x04, "RO", None, "Largest K per tile the accumulator is sized for."),
    Register("X_CFG_WIDTH", 0x05, "RO", None, "Stream payload widths in bits.", (
        Field("X", 0, 16, "x__payload width"),
        Field("CFG", 16, 16, "cfg__payload width"),
    )),
    Register("Y_WIDTH", 0x06, "RO", None, "Output payload widths in bits.", (
        Field("Y", 0, 16, "y__payload width"),
        Field("LANE", 16, 8, "width of one output lane (y_width)"),
    )),
    # --- control and status ----------------------------------------------------------------
    Register("CTRL", 0x08, "CTRL", 0, "Control.", (
        Field("START", 0, 1, "W1: start a job of JOB_TILES tiles (ignored, and START_BUSY "
                             "set, while a job is active)"),
        Field("SOFT_RESET", 1, 1, "W1: reset the unit, the job, status, errors, pending "
                                  "interrupts and counters (one cycle; CTRL and JOB_TILES "
                                  "keep their values)"),
        Field("CLEAR_COUNTERS", 2, 1, "W1: zero the performance counters and TILES_DONE"),
        Field("JOB_GATE", 3, 1, "RW: 1 = x and cfg accept beats only during a job, for "
                                "exactly JOB_TILES tiles; 0 = always open"),
        Field("IRQ_EN", 8, 3, "RW: interrupt enables, bit for bit as IRQ_PENDING"),
    )),
    Register("STATUS", 0x09, "RO", 0, "Status.", (
        Field("BUSY", 0, 1, "a job is active or a tile is in flight (a cfg or x beat "
                            "accepted whose tile has not left y)"),
        Field("JOB_ACTIVE", 1, 1, "a job started by START has not finished"),
        Field("IRQ", 2, 1, "level of the irq line"),
        Field("IN_TILE", 3, 1, "x beats of an unfinished tile have been accepted"),
        Field("X_OPEN", 4, 1, "x accepts beats (not gated off by JOB_GATE)"),
    )),
    Register("IRQ_PENDING", 0x0A, "W1C", 0, "Interrupt causes (sticky). "
             "irq = OR of (IRQ_PENDING & CTRL.IRQ_EN).", (
        Field("TILE_DONE", 0, 1, "a tile's last y row was accepted"),
        Field("JOB_DONE", 1, 1, "a job finished"),
        Field("ERROR", 2, 1, "an error flag was set"),
    )),
    Register("ERRORS", 0x0B, "W1C", 0, "Error flags (sticky).", (
        Field("K_OVERFLOW", 0, 1, "a tile carried more K than the accumulator is sized for "
                                  "(INT/log: more than MAX_K beats; xnor: sum of "
                                  "count << plane above MAX_K * (2^a_planes - 1) * w_planes)"),
        Field("BAD_BEAT", 1, 1, "an x beat the golden kernel rejects: xnor count 0 or above "
                                "lanes, plane >= a_planes, wplane >= w_planes; log exponent "
                                "index beyond the code's depth"),
        Field("X_WITHDRAWN", 2, 1, "x.valid fell before x.ready (stream protocol error)"),
        Field("CFG_WITHDRAWN", 3, 1, "cfg.valid fell before cfg.ready (stream protocol error)"),
        Field("START_BUSY", 4, 1, "START written while a job was active"),
    )),
    Register("JOB_TILES", 0x0C, "RW", 0, "Tiles in the next job (written before START)."),
    Register("JOB_DONE_TILES", 0x0D, "RO", 0, "Tiles of the current (or last) job whose last "
             "y row has been accepted."),
    Register("TILES_DONE", 0x0E, "RO", 0, "Tiles whose last y row has been accepted. Wraps "
             "modulo 2^32; cleared by CLEAR_COUNTERS and SOFT_RESET."),
    # --- performance counters ------------------------------------------------------------------
    _counter("CYCLES", 0x10, "Clock cycles."),
    _counter("BUSY_CYCLES", 0x11, "Cycles with STATUS.BUSY set."),
    _counter("X_BEATS", 0x12, "x beats accepted."),
    _counter("CFG_BEATS", 0x13, "cfg beats accepted."),
    _counter("Y_BEATS", 0x14, "y beats accepted by the sink."),
    _counter("X_STALLS", 0x15, "Cycles with x.valid high and x.ready low (the unit, or the "
             "job gate, held the source back)."),
    _counter("Y_STALLS", 0x16, "Cycles with y.valid high and y.ready low (the sink held the "
             "unit back)."),
    _counter("X_IDLE", 0x17, "Busy cycles with x.valid low (the unit waited for data or "
             "drained)."),
)
REG = {r.name: r for r in REGISTERS}


def _pack(reg: str, **values) -> int:
    word = 0
    for name, v in values.items():
        f = REG[reg].field(name)
        assert 0 <= v < (1 << f.width), (reg, name, v)
        word |= v << f.lsb
    return word


def _id_values(unit: UnitDescription) -> dict[str, int]:
    """The constant identification registers of the unit described by ``unit``."""
    return {
        "MAGIC": MAGIC,
        "VERSION": _pack("VERSION", MINOR=VERSION[1], MAJOR=VERSION[0], KIND=unit.kind_code),
        "SHAPE": _pack("SHAPE", ROWS=unit.rows, COLS=unit.cols, OUT_BITS=unit.out_bits,
                       ACC_WIDTH=unit.acc_width),
        "OPERANDS": _pack("OPERANDS", **unit.id_operands()),
        "MAX_K": unit.max_k,
        "X_CFG_WIDTH": _pack("X_CFG_WIDTH", X=unit.x_layout.size, CFG=unit.cfg_layout.size),
        "Y_WIDTH": _pack("Y_WIDTH", Y=unit.y_layout.size, LANE=unit.y_width),
    }


def decode_id(values: dict[str, int]) -> dict:
    """What software learns from the identification registers.

    Parameters
    ----------
    values : dict
        Register name -> the 32-bit value read (``MAGIC``, ``VERSION``, ``SHAPE``,
        ``OPERANDS``, ``MAX_K``, ``X_CFG_WIDTH``, ``Y_WIDTH``).

    Returns
    -------
    dict with ``unit`` (``"int8"``, ``"log"``, ``"xnor"``), ``version`` ``(major, minor)``,
    ``params`` (the constructor keywords: ``make_unit(unit, **params)`` rebuilds the same
    unit), ``acc_width``, ``y_width`` and the payload widths ``x_width``, ``cfg_width``,
    ``y_width_total``.

    Raises ValueError when MAGIC or the kind code is not a lowbit accelerator's.
    """
    if values["MAGIC"] != MAGIC:
        raise ValueError(f"MAGIC reads {values['MAGIC']:#010x}, not {MAGIC:#010x}: "
                         f"no lowbit accelerator at this address")
    ver, shape, ops = REG["VERSION"], REG["SHAPE"], REG["OPERANDS"]
    code = ver.field("KIND").get(values["VERSION"])
    unit = kind_of_code(code)
    if unit is None:
        raise ValueError(f"unknown unit kind code {code}")
    s, o = values["SHAPE"], values["OPERANDS"]
    params = {"rows": shape.field("ROWS").get(s), "cols": shape.field("COLS").get(s),
              **describe(unit).params_from_id({f.name: f.get(o) for f in ops.fields}),
              "max_k": values["MAX_K"], "out_bits": shape.field("OUT_BITS").get(s)}
    xc, yw = REG["X_CFG_WIDTH"], REG["Y_WIDTH"]
    return {
        "unit": unit,
        "version": (ver.field("MAJOR").get(values["VERSION"]),
                    ver.field("MINOR").get(values["VERSION"])),
        "params": params,
        "acc_width": shape.field("ACC_WIDTH").get(s),
        "y_width": yw.field("LANE").get(values["Y_WIDTH"]),
        "x_width": xc.field("X").get(values["X_CFG_WIDTH"]),
        "cfg_width": xc.field("CFG").get(values["X_CFG_WIDTH"]),
        "y_width_total": yw.field("Y").get(values["Y_WIDTH"]),
    }


def register_table() -> str:
    """The register map as a Markdown table (docs/hardware.md holds exactly this text)."""
    lines = ["| word | byte | name | access | reset | fields (bits: meaning) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in REGISTERS:
        reset = "parameters" if r.reset is None else f"`{r.reset:#x}`"
        if r.name == "MAGIC":
            reset = f"`{MAGIC:#010x}`"
        fields = "; ".join(f"`[{f.bits}]` **{f.name}**: {f.doc}" for f in r.fields)
        text = r.doc + (" " + fields if fields else "")
        lines.append(f"| `{r.addr:#04x}` | `{4 * r.addr:#04x}` | **{r.name}** | {r.access} | "
                     f"{reset} | {text} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The bus


class RegisterBusSignature(wiring.Signature):
    """A plain memory-mapped register bus, from the initiator's (the SoC's) side.

    Members: ``addr`` (word address, ``addr_width`` bits), ``r_stb`` (read strobe),
    ``r_data`` (read data, ``data_width`` bits), ``w_stb`` (write strobe), ``w_data``.

    Contract: a read of ``addr`` with ``r_stb`` high at a rising edge returns the register's
    value at that edge on ``r_data`` during the following cycle; ``r_data`` is 0 in every other
    cycle (so several targets' ``r_data`` may be ORed). A write with ``w_stb`` high takes effect
    at that edge. Reads have no side effects. Unmapped addresses read 0 and ignore writes. A
    32-bit byte-addressed bridge (AXI4-Lite, Wishbone) connects ``addr`` to its address bits
    ``[addr_width + 1 : 2]``.
    """

    def __init__(self, addr_width: int = ADDR_WIDTH, data_width: int = DATA_WIDTH):
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "addr": Out(addr_width),
            "r_stb": Out(1),
            "r_data": In(data_width),
            "w_stb": Out(1),
            "w_data": Out(data_width),
        })

    def __eq__(self, other):
        return (isinstance(other, RegisterBusSignature) and self.addr_width == other.addr_width
                and self.data_width == other.data_width)

    def __repr__(self):
        return f"RegisterBusSignature({self.addr_width}, {self.data_width})"


# ---------------------------------------------------------------------------------------------
# The accelerator


class Accelerator(wiring.Component):
    """One matmul unit with streams, a register file and an interrupt line.

    Parameters
    ----------
    unit : str
        A registered unit kind: ``"int8"``, ``"log"``, ``"xnor"``, ...
    **params
        The unit's keyword parameters (docs/hardware.md), validated by its description
        (:func:`lowbit.hw.units.describe`) with its messages. ``max_k`` must also fit the
        32-bit MAX_K register.
    src_loc_at : int
        Amaranth's convention (stack frames to skip when reporting where it was created).

    Attributes
    ----------
    description : UnitDescription
        The wrapped unit's description; ``Protocol(accel.description)`` plans its streams.
    kind : str
        The unit kind.
    x, cfg : In(stream.Signature(...)), y : Out(stream.Signature(...))
        The unit's streams with its payload layouts (docs/hardware.md).
    bus : In(RegisterBusSignature())
        Control/status registers (:data:`REGISTERS`).
    irq : Out(1)
        ``OR(IRQ_PENDING & CTRL.IRQ_EN)``, driven from registers (no path from any input).
    id_values : dict
        The constant identification registers.
    k_budget : int
        Largest per-tile sum of beat costs without K_OVERFLOW (INT/log: beats, ``max_k``;
        xnor: ``count << plane``, ``max_k * (2^a_planes - 1) * w_planes``).
    """

    def __init__(self, *, unit: str = "int8", src_loc_at: int = 0, **params):
        d = self.description = self.describe(unit, **params)
        self.kind = unit
        self.id_values = _id_values(d)
        self.k_budget = d.k_budget
        super().__init__({
            "x": In(stream.Signature(d.x_layout)),
            "cfg": In(stream.Signature(d.cfg_layout)),
            "y": Out(stream.Signature(d.y_layout)),
            "bus": In(RegisterBusSignature()),
            "irq": Out(1),
        })

    @staticmethod
    def describe(unit: str, **params) -> UnitDescription:
        """The description of the unit an ``Accelerator(unit=unit, **params)`` wraps, checked
        as the constructor checks it (:class:`~lowbit.hw.units.ParameterError`), without
        building anything."""
        kinds = unit_kinds("matmul")
        if not isinstance(unit, str) or unit not in kinds:
            error = ParameterValueError if isinstance(unit, str) else ParameterTypeError
            raise error("unit", "Unit", f"must be one of {', '.join(kinds)}, not {unit!r}")
        d = describe(unit, **params)
        if d.max_k >= 1 << DATA_WIDTH:
            raise ParameterValueError("max_k", MAX_K.label, f"must be below 2**32 to fit the "
                                      f"MAX_K register, not {d.max_k}")
        return d

    # ---------------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        u = self.description.build()    # a submodule: built where it is elaborated
        s = SimpleNamespace(soft_rst=Signal(name="soft_rst"))  # one cycle, registered from the CTRL write
        m.submodules.matmul = ResetInserter({"sync": s.soft_rst})(u)
        self._control(m, s)
        # The streams pass through the job gate: ports -> gate -> unit -> gate -> ports.
        s.gate = gate = JobGate(self.description)
        m.submodules.gate = ResetInserter({"sync": s.soft_rst})(gate)
        m.d.comb += [gate.closed.eq(s.soft_rst), gate.enable.eq(s.job_gate),
                     gate.job_tiles.eq(s.job_tiles), gate.start.eq(s.start)]
        wiring.connect(m, wiring.flipped(self.x), gate.x_in)
        wiring.connect(m, wiring.flipped(self.cfg), gate.cfg_in)
        wiring.connect(m, gate.y_out, wiring.flipped(self.y))
        wiring.connect(m, gate.x_out, u.x)
        wiring.connect(m, gate.cfg_out, u.cfg)
        wiring.connect(m, u.y, gate.y_in)
        s.do_x = self.x.valid & self.x.ready
        s.do_cfg = self.cfg.valid & self.cfg.ready
        s.do_y = self.y.valid & self.y.ready
        s.tile_done = s.do_y & self.y.payload.last
        self._errors(m, u, s)
        self._counters(m, s)
        # Soft reset: everything but CTRL's settings and JOB_TILES (the unit and the gate by
        # their reset inserters). Last in the sync domain, so it wins over the updates above.
        with m.If(s.soft_rst):
            m.d.sync += [x.eq(0) for x in (
                s.k_used, s.x_waiting, s.cfg_waiting, s.errors, s.pending,
                *s.counters.values())]
        self._read_side(m, s)
        return m

    def _control(self, m, s) -> None:
        """The control registers: CTRL's settings and actions, JOB_TILES."""
        bus = self.bus
        s.w = w = bus.w_data
        s.written = lambda name: bus.w_stb & (bus.addr == REG[name].addr)

        def bit(reg, name):
            f = REG[reg].field(name)
            return w[f.lsb:f.lsb + f.width]

        s.job_gate, s.irq_en = Signal(name="job_gate"), Signal(3, name="irq_en")
        s.job_tiles = Signal(COUNTER_WIDTH, name="job_tiles")
        ctrl_write = s.written("CTRL")
        s.start = ctrl_write & bit("CTRL", "START")
        s.clear_counters = ctrl_write & bit("CTRL", "CLEAR_COUNTERS")
        m.d.sync += s.soft_rst.eq(ctrl_write & bit("CTRL", "SOFT_RESET"))
        with m.If(ctrl_write):
            m.d.sync += [s.job_gate.eq(bit("CTRL", "JOB_GATE")),
                         s.irq_en.eq(bit("CTRL", "IRQ_EN"))]
        with m.If(s.written("JOB_TILES")):
            m.d.sync += s.job_tiles.eq(w)

    def _errors(self, m, u, s) -> None:
        """Error detection, the sticky ERRORS and IRQ_PENDING flags (W1C) and the irq line."""
        # K budget per tile, saturating at budget + 1 so it cannot wrap back below the limit.
        budget, do_x = self.k_budget, s.do_x
        s.k_used = Signal(range(budget + 2), name="k_used")
        k_total = Signal(range(budget + (1 << 16) + 2))
        m.d.comb += k_total.eq(s.k_used + u.pe.beat_cost(self.x.payload))
        k_over = k_total > budget
        with m.If(do_x):
            m.d.sync += s.k_used.eq(Mux(self.x.payload.last, 0,
                                        Mux(k_over, budget + 1, k_total)))
        # Stream rule: once valid is high it stays high until ready (amaranth.lib.stream).
        s.x_waiting, s.cfg_waiting = Signal(name="x_waiting"), Signal(name="cfg_waiting")
        m.d.sync += [s.x_waiting.eq(self.x.valid & ~self.x.ready),
                     s.cfg_waiting.eq(self.cfg.valid & ~self.cfg.ready)]
        error_events = Signal(len(REG["ERRORS"].fields))
        m.d.comb += error_events.eq(Cat(
            do_x & k_over,
            do_x & u.pe.bad_beat(self.x.payload, u.rows, u.cols),
            s.x_waiting & ~self.x.valid,
            s.cfg_waiting & ~self.cfg.valid,
            s.start & s.gate.job_active,
        ))
        # Sticky flags: events set, W1C writes clear.
        s.errors = Signal(len(error_events), name="errors")
        s.pending = Signal(3, name="pending")
        pending_events = Cat(s.tile_done, s.gate.finishing, error_events.any())
        m.d.sync += [
            s.errors.eq((s.errors & ~Mux(s.written("ERRORS"), s.w, 0)) | error_events),
            s.pending.eq((s.pending & ~Mux(s.written("IRQ_PENDING"), s.w, 0)) | pending_events),
        ]
        m.d.comb += self.irq.eq((s.pending & s.irq_en).any())

    def _counters(self, m, s) -> None:
        """The performance counters (and TILES_DONE), cleared by CLEAR_COUNTERS."""
        counted = {
            "CYCLES": Const(1), "BUSY_CYCLES": s.gate.busy, "X_BEATS": s.do_x,
            "CFG_BEATS": s.do_cfg, "Y_BEATS": s.do_y, "X_STALLS": self.x.valid & ~self.x.ready,
            "Y_STALLS": self.y.valid & ~self.y.ready, "X_IDLE": s.gate.busy & ~self.x.valid,
            "TILES_DONE": s.tile_done,
        }
        s.counters = {}
        for name, event in counted.items():
            c = s.counters[name] = Signal(COUNTER_WIDTH, name=name.lower())
            m.d.sync += c.eq(Mux(s.clear_counters, 0, c + event))

    def _read_side(self, m, s) -> None:
        """Register reads: ``r_data`` one cycle after ``r_stb``, 0 otherwise."""
        bus = self.bus
        values = {name: Const(v, DATA_WIDTH) for name, v in self.id_values.items()}
        values.update({
            "CTRL": Cat(Const(0, 3), s.job_gate, Const(0, 4), s.irq_en),
            "STATUS": Cat(s.gate.busy, s.gate.job_active, self.irq, s.gate.in_tile,
                          s.gate.x_open),
            "IRQ_PENDING": s.pending,
            "ERRORS": s.errors,
            "JOB_TILES": s.job_tiles,
            "JOB_DONE_TILES": s.gate.job_done,
            **s.counters,
        })
        assert set(values) == set(REG), set(REG) ^ set(values)
        with m.If(bus.r_stb):
            with m.Switch(bus.addr):
                for name, value in values.items():
                    with m.Case(REG[name].addr):
                        m.d.sync += bus.r_data.eq(value)
                with m.Default():
                    m.d.sync += bus.r_data.eq(0)
        with m.Else():
            m.d.sync += bus.r_data.eq(0)


class JobGate(wiring.Component):
    """The unit's three streams on their way through the accelerator top, gated by the job.

    ``x_in``/``cfg_in`` (from the top's ports) pass to ``x_out``/``cfg_out`` (to the unit), and
    ``y_in`` (from the unit) to ``y_out``, payloads unchanged. With ``enable`` (CTRL.JOB_GATE)
    low the gate is open; with it high, ``x`` and ``cfg`` pass only during a job (``start``
    begins one unless one is active) and only until ``job_tiles`` tiles have gone in on each;
    the job ends when that many tiles have come out on ``y``. ``closed`` (the soft reset)
    closes all three. Outputs: ``job_active``, ``job_done`` (tiles out during the job),
    ``finishing`` (the job's last tile leaves now), ``in_tile`` (x is inside a tile), ``busy``
    (work in flight: tile counts modulo 2^8) and ``x_open``.
    """

    def __init__(self, description: UnitDescription):
        d = description
        super().__init__({
            "x_in": In(stream.Signature(d.x_layout)), "x_out": Out(stream.Signature(d.x_layout)),
            "cfg_in": In(stream.Signature(d.cfg_layout)),
            "cfg_out": Out(stream.Signature(d.cfg_layout)),
            "y_in": In(stream.Signature(d.y_layout)), "y_out": Out(stream.Signature(d.y_layout)),
            "closed": In(1), "enable": In(1), "job_tiles": In(COUNTER_WIDTH), "start": In(1),
            "job_active": Out(1), "job_done": Out(COUNTER_WIDTH), "finishing": Out(1),
            "in_tile": Out(1), "busy": Out(1), "x_open": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        x, cfg, y = self.x_in, self.cfg_in, self.y_out
        job_x = Signal(COUNTER_WIDTH, name="job_x")   # tiles closed on x during the job
        job_cfg = Signal(COUNTER_WIDTH, name="job_cfg")   # cfg beats accepted during the job
        job_y, active, job_tiles = self.job_done, self.job_active, self.job_tiles
        closed, enable = self.closed, self.enable
        cfg_open = Signal(name="cfg_open")
        m.d.comb += [
            self.x_open.eq(~closed & (~enable | (active & (job_x < job_tiles)))),
            cfg_open.eq(~closed & (~enable | (active & (job_cfg < job_tiles)))),
            self.x_out.payload.eq(x.payload),
            self.x_out.valid.eq(x.valid & self.x_open),
            x.ready.eq(self.x_out.ready & self.x_open),
            self.cfg_out.payload.eq(cfg.payload),
            self.cfg_out.valid.eq(cfg.valid & cfg_open),
            cfg.ready.eq(self.cfg_out.ready & cfg_open),
            y.payload.eq(self.y_in.payload),
            y.valid.eq(self.y_in.valid & ~closed),
            self.y_in.ready.eq(y.ready & ~closed),
        ]
        do_x, do_cfg = x.valid & x.ready, cfg.valid & cfg.ready
        x_tile_closed = do_x & x.payload.last
        tile_done = y.valid & y.ready & y.payload.last

        x_tiles, cfg_tiles, y_tiles = (Signal(_OCCUPANCY_BITS, name=n)
                                       for n in ("x_tiles", "cfg_tiles", "y_tiles"))
        with m.If(do_x):
            m.d.sync += self.in_tile.eq(~x.payload.last)
        m.d.sync += [x_tiles.eq(x_tiles + x_tile_closed), cfg_tiles.eq(cfg_tiles + do_cfg),
                     y_tiles.eq(y_tiles + tile_done)]
        m.d.comb += self.busy.eq(active | self.in_tile | (x_tiles != y_tiles)
                                 | (cfg_tiles != y_tiles))

        job_y_next = job_y + tile_done
        m.d.comb += self.finishing.eq(active & (job_y_next >= job_tiles))
        with m.If(self.start & ~active):
            m.d.sync += [active.eq(1), job_x.eq(0), job_cfg.eq(0), job_y.eq(0)]
        with m.Elif(active):
            m.d.sync += [job_x.eq(job_x + x_tile_closed), job_cfg.eq(job_cfg + do_cfg),
                         job_y.eq(job_y_next)]
            with m.If(self.finishing):
                m.d.sync += active.eq(0)
        return m


# ---------------------------------------------------------------------------------------------
# Verilog and simulation helpers


def generate_accel_verilog(unit: str, *, name: str | None = None, **params) -> str:
    """Verilog of ``Accelerator(unit=unit, **params)``; module ``name`` (default
    ``int8_accel`` / ``log_accel`` / ``xnor_accel``). Ports: ``clk``, ``rst``, the unit's
    three streams, ``bus__addr``, ``bus__r_stb``, ``bus__r_data``, ``bus__w_stb``,
    ``bus__w_data`` and ``irq``."""
    if name is None:
        name = describe(unit, **params).accel_name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"module name must be a Verilog identifier, not {name!r}")
    return accel_verilog(Accelerator(unit=unit, **params, src_loc_at=1), name)


def accel_verilog(top: Accelerator, name: str) -> str:
    """Verilog of ``top`` as ONE flat module ``name`` (:func:`lowbit.hw.verilog.flat_verilog`:
    a SoC integrator gets a single self-contained module that passes the documented lint)."""
    from .verilog import flat_verilog

    return flat_verilog(top, name)


async def bus_write(ctx, bus, name: str, value: int) -> None:
    """Amaranth-simulator testbench step: write ``value`` to register ``name`` (one cycle)."""
    ctx.set(bus.addr, REG[name].addr)
    ctx.set(bus.w_data, value)
    ctx.set(bus.w_stb, 1)
    await ctx.tick()
    ctx.set(bus.w_stb, 0)


async def bus_read(ctx, bus, name: str) -> int:
    """Amaranth-simulator testbench step: read register ``name`` (one cycle).

    Returns the register's value at the edge that sampled ``r_stb`` (``r_data`` after it)."""
    ctx.set(bus.addr, REG[name].addr)
    ctx.set(bus.r_stb, 1)
    await ctx.tick()
    ctx.set(bus.r_stb, 0)
    return ctx.get(bus.r_data)
