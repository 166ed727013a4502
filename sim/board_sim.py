"""The whole board design simulated in Verilator, seen from the host as a serial port.

:class:`SimulatedBoard` builds :class:`lowbit.hw.board.BoardDesign` (the accelerator and its UART
bridge) with Verilator together with ``sim/board_harness.cpp`` (cached like the unit harness,
see :mod:`lowbit.sim.verilator`), and offers the two calls :class:`lowbit.hw.board_host.BoardLink`
makes on a pyserial ``Serial``: ``write(data)`` and ``read_until(expected, size)``. The bytes
cross the simulated ``rx`` and ``tx`` pins bit by bit, so the host code that runs a board runs
this simulation unchanged::

    with SimulatedBoard("int8", rows=2, cols=2) as port:
        board = Board(BoardLink(port))
        result = board.matmul(A, W, bias, mult, shift)

Time is simulated clock cycles. A read gives up after ``timeout_cycles`` cycles in which no
host byte was left to send (a serial port's read timeout), so nothing waits forever. The
simulated UART runs at ``divisor`` cycles per bit (default :data:`SIM_DIVISOR`): the board
builds use the real baud rate (``clock / 115200``), which would only make simulation slower.
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

from lowbit import LowbitError
from lowbit.hw.uart import DEFAULT_MAX_PAYLOAD, DEFAULT_STALL_TIMEOUT, END

__all__ = ["SimulatedBoard", "SIM_DIVISOR", "BOARD_HARNESS_SOURCE"]

SIM_DIVISOR = 4         # clock cycles per UART bit in simulation (the least the bridge allows)
BOARD_HARNESS_SOURCE = Path(__file__).with_name("board_harness.cpp")
_U8P = ctypes.POINTER(ctypes.c_uint8)


class SimulatedBoard:
    """The board design of unit ``unit`` Verilated, as a byte port.

    Parameters
    ----------
    unit : str
        The unit kind.
    divisor : int
        Clock cycles per UART bit.
    max_payload, y_depth, stall_timeout :
        As :class:`lowbit.hw.board.BoardDesign`.
    timeout_cycles : int, optional
        Read timeout in simulated cycles; the default covers the longest reply and a stalled
        request (``stall_timeout`` plus twice the longest frame's bit time).
    **params :
        The unit's parameters.

    Raises :class:`lowbit.LowbitError` for a bad parameter (the message names it) and when the
    Verilator build fails. ``close()`` (or leaving a ``with`` block) frees the model; it is
    also freed when the object is garbage-collected.
    """

    def __init__(self, unit: str, *, divisor: int = SIM_DIVISOR,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, y_depth: int | None = None,
                 stall_timeout: int = DEFAULT_STALL_TIMEOUT, timeout_cycles: int | None = None,
                 **params):
        from lowbit.hw.board import BoardDesign, board_verilog
        from lowbit.sim.verilator import build_library

        options = {"divisor": divisor, "max_payload": max_payload, "y_depth": y_depth,
                   "stall_timeout": stall_timeout}
        try:
            self.design = BoardDesign(unit, **options, **params)
        except (TypeError, ValueError) as e:
            raise LowbitError(str(e)) from None
        self.unit, self.params, self.divisor = unit, dict(params), divisor
        frame_bits = 10 * divisor * (2 * (max_payload + 8) + 2)     # every byte escaped
        self.timeout_cycles = (stall_timeout + 2 * frame_bits if timeout_cycles is None
                               else int(timeout_cycles))
        if self.timeout_cycles < 1:
            raise LowbitError(f"timeout_cycles must be positive, not {timeout_cycles}")
        self.library = build_library("Vboard", "lowbit_board", board_verilog(self.design),
                                     BOARD_HARNESS_SOURCE)
        lib = ctypes.CDLL(str(self.library))
        lib.lbb_create.restype = ctypes.c_void_p
        lib.lbb_create.argtypes = [ctypes.c_int]
        lib.lbb_destroy.argtypes = [ctypes.c_void_p]
        for name in ("lbb_cycles", "lbb_framing_errors"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_uint64
        lib.lbb_write.argtypes = [ctypes.c_void_p, _U8P, ctypes.c_int64, ctypes.c_int]
        lib.lbb_pending.argtypes = [ctypes.c_void_p]
        lib.lbb_pending.restype = ctypes.c_int64
        lib.lbb_read.argtypes = [ctypes.c_void_p, _U8P, ctypes.c_int64, ctypes.c_int,
                                 ctypes.c_uint64]
        lib.lbb_read.restype = ctypes.c_int64
        lib.lbb_run.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        self._lib = lib
        self._h = ctypes.c_void_p(lib.lbb_create(divisor))
        # the model is freed by close(), or when this object goes away
        self.close = weakref.finalize(self, lib.lbb_destroy, self._h)

    # --- the byte port ----------------------------------------------------------------------

    def write(self, data: bytes, *, bad_stop: bool = False) -> int:
        """Queue ``data`` for the design's ``rx`` pin (sent while the clock runs, i.e. during
        the following reads). ``bad_stop`` sends the bytes with a low stop bit (a line fault)."""
        data = bytes(data)
        buf = (ctypes.c_uint8 * max(len(data), 1)).from_buffer_copy(data or b"\0")
        self._lib.lbb_write(self._h, buf, len(data), int(bad_stop))
        return len(data)

    def read_until(self, expected: bytes = bytes([END]), size: int | None = None) -> bytes:
        """Bytes from the design's ``tx`` pin up to and including ``expected`` (one byte), at
        most ``size``; fewer when the read times out (pyserial's ``Serial.read_until``)."""
        if len(expected) != 1:
            raise ValueError("the simulated port reads up to a single terminator byte")
        want = 1 << 20 if size is None else size
        buf = (ctypes.c_uint8 * max(want, 1))()
        got = self._lib.lbb_read(self._h, buf, want, expected[0], self.timeout_cycles)
        return bytes(buf[:got])

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes (fewer on a timeout)."""
        buf = (ctypes.c_uint8 * max(size, 1))()
        got = self._lib.lbb_read(self._h, buf, size, -1, self.timeout_cycles)
        return bytes(buf[:got])

    def run(self, cycles: int) -> None:
        """Let the clock run ``cycles`` cycles (bytes queued go out meanwhile)."""
        self._lib.lbb_run(self._h, cycles)

    @property
    def pending(self) -> int:
        """Host bytes not yet sent completely."""
        return int(self._lib.lbb_pending(self._h))

    @property
    def cycles(self) -> int:
        """Clock cycles simulated since the design left reset."""
        return int(self._lib.lbb_cycles(self._h))

    @property
    def framing_errors(self) -> int:
        """Bytes from the design whose stop bit the host read low (should stay 0)."""
        return int(self._lib.lbb_framing_errors(self._h))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
