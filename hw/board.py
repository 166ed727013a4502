"""A design to load onto a board: the accelerator behind a UART bridge on the USB serial pins.

:class:`BoardDesign` puts one :class:`~lowbit.hw.accel.Accelerator` and a
:class:`~lowbit.hw.uart.UARTBridge` together: the bridge drives the accelerator's register bus
and its ``cfg`` / ``x`` streams and takes its ``y`` stream. On a board (``platform`` given) the
bridge's pins are the board's ``uart`` resource from amaranth-boards (the FTDI USB serial port
of the ULX3S and of the iCEBreaker); without a platform ``rx`` and ``tx`` are the design's two
ports, which is how :mod:`lowbit.sim.board_sim` simulates the whole board design in Verilator.

``lowbit fpga --board B --design uart`` builds it (:mod:`lowbit.hw.fpga`); the host talks to it
with :mod:`lowbit.hw.board_host`.
"""

from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import io, wiring

from .accel import Accelerator
from .uart import DEFAULT_MAX_PAYLOAD, DEFAULT_STALL_TIMEOUT, MIN_DIVISOR, UARTBridge

__all__ = ["BoardDesign", "DEFAULT_BAUD", "BAUD_TOLERANCE", "divisor_for", "board_verilog"]

DEFAULT_BAUD = 115_200
BAUD_TOLERANCE = 0.02       # a UART receiver sampling mid-bit tolerates a few % over a frame


def divisor_for(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``, rounded.

    Raises ValueError when the rounded divisor misses the rate by more than
    :data:`BAUD_TOLERANCE` or is below :data:`~lowbit.hw.uart.MIN_DIVISOR`.
    """
    if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
        raise ValueError(f"Baud rate must be a positive integer, not {baud!r}")
    divisor = round(clock_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"Baud rate {baud} is too fast for a {clock_hz / 1e6:g} MHz clock "
                         f"(at most {int(clock_hz // MIN_DIVISOR)})")
    error = abs(clock_hz / divisor - baud) / baud
    if error > BAUD_TOLERANCE:
        raise ValueError(f"Baud rate {baud} is {100 * error:.1f}% off at a {clock_hz / 1e6:g} "
                         f"MHz clock (divisor {divisor}); at most "
                         f"{100 * BAUD_TOLERANCE:g}% is allowed")
    return divisor


class BoardDesign(Elaboratable):
    """The accelerator and its UART bridge, ready for a board or for simulation.

    Parameters
    ----------
    unit : str
        The unit kind (``"int8"``, ``"log"``, ``"xnor"``, ...).
    divisor : int
        Clock cycles per UART bit (:func:`divisor_for`: 217 for 115200 baud at the ULX3S'
        25 MHz, 104 at the iCEBreaker's 12 MHz; simulation uses a few cycles).
    max_payload, stall_timeout : int
        As :class:`~lowbit.hw.uart.UARTBridge`.
    y_depth : int, optional
        ``y`` beats the bridge buffers; default four tiles (``4 * rows``).
    **params
        The unit's parameters (docs/hardware.md), validated by the accelerator.

    Attributes
    ----------
    accel : Accelerator
    bridge : UARTBridge
    description : UnitDescription
        The unit's description (what the host's packer needs).
    rx, tx : Signal
        The serial pins (idle high). With a platform they are wired to its ``uart`` resource.
    """

    def __init__(self, unit: str = "int8", *, divisor: int,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, y_depth: int | None = None,
                 stall_timeout: int = DEFAULT_STALL_TIMEOUT, **params):
        # Everything is checked before anything is built: a component whose constructor
        # fails half way would otherwise be reported as created and never used.
        d = Accelerator.describe(unit, **params)
        bridge = dict(x_bits=d.x_layout.size, cfg_bits=d.cfg_layout.size,
                      y_bits=d.y_layout.size, divisor=divisor, max_payload=max_payload,
                      y_depth=4 * d.rows if y_depth is None else y_depth,
                      stall_timeout=stall_timeout)
        UARTBridge.check(**bridge)
        self.accel = Accelerator(unit=unit, **params)
        self.description = self.accel.description
        self.bridge = UARTBridge(**bridge)
        self.rx = Signal(init=1)
        self.tx = Signal(init=1)

    @classmethod
    def for_platform(cls, platform, unit: str = "int8", *, baud: int = DEFAULT_BAUD,
                     **kwargs) -> "BoardDesign":
        """The design for ``platform`` (an amaranth-boards platform instance) at ``baud``:
        the divisor comes from the platform's default clock."""
        return cls(unit, divisor=divisor_for(platform.default_clk_frequency, baud), **kwargs)

    @property
    def params(self) -> dict:
        """The unit's parameters (all of them, defaults included)."""
        return self.description.params

    @property
    def rows(self) -> int:
        return self.description.rows

    @property
    def cols(self) -> int:
        return self.description.cols

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = accel = self.accel
        m.submodules.bridge = bridge = self.bridge
        wiring.connect(m, bridge.bus, accel.bus)
        # The bridge's streams are plain bit vectors of the accelerator's payload widths.
        for name in ("x", "cfg"):
            src, dst = getattr(bridge, name), getattr(accel, name)
            m.d.comb += [dst.payload.eq(src.payload), dst.valid.eq(src.valid),
                         src.ready.eq(dst.ready)]
        m.d.comb += [bridge.y.payload.eq(accel.y.payload), bridge.y.valid.eq(accel.y.valid),
                     accel.y.ready.eq(bridge.y.ready)]
        m.d.comb += [bridge.rx.eq(self.rx), self.tx.eq(bridge.tx)]
        if platform is not None:
            uart = platform.request("uart", 0, dir="-")
            m.submodules.rx_buffer = rx = io.Buffer("i", uart.rx)
            m.submodules.tx_buffer = tx = io.Buffer("o", uart.tx)
            m.d.comb += [self.rx.eq(rx.i), tx.o.eq(self.tx)]
        return m


def board_verilog(design: BoardDesign, name: str = "lowbit_board") -> str:
    """Verilog of ``design`` without a platform: ports ``clk``, ``rst``, ``rx``, ``tx``."""
    from amaranth.back import verilog

    return verilog.convert(design, name=name, ports=[design.rx, design.tx], emit_src=False)
