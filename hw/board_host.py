"""The host's side of the UART bridge: frames over a byte port, and matmuls on a board.

:class:`BoardLink` sends request frames and reads their replies (the protocol of
:mod:`lowbit.hw.uart`, docs/hardware.md "UART bridge") over any byte port with ``write(data)``
and ``read_until(expected, size)``: a pyserial ``Serial`` (:func:`open_serial`) for a real
board, :class:`lowbit.sim.board_sim.SimulatedBoard` for the board design in Verilator.
:class:`Board` finds out which unit the board carries from its identification registers and
runs matmuls on it with the one packer (:class:`lowbit.hw.packing.Packer`), so the beats are
those every simulator sees::

    board = Board(BoardLink(open_serial("/dev/ttyUSB0")))
    result = board.matmul(A, W, bias, mult, shift)
    assert (result.y == board.expected(A, W, bias, mult, shift)).all()

A request the board rejects as damaged in transit (BAD_CRC, FRAMING, OVERRUN: nothing was
executed) is sent again, up to ``retries`` times, and reported through ``log``. A reply that
does not come within the port's timeout raises :class:`BoardTimeout`; nothing waits forever.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lowbit import LowbitError

from .accel import REG, decode_id
from .packing import Packer
from .uart import (END, ESC, ESC_END, ESC_ESC, INFO_FIELDS, PROTOCOL_VERSION, Command,
                   FrameError, Status, decode_frame, encode_frame)
from .units import describe

__all__ = ["BoardError", "BoardTimeout", "BoardRejected", "BoardLink", "Board", "BoardResult",
           "FaultyPort", "open_serial", "RETRIED"]

# Statuses of a request that was damaged on the way and not executed: sending it again is safe.
RETRIED = frozenset({Status.BAD_CRC, Status.FRAMING, Status.OVERRUN})
_STALE_REPLIES = 8          # replies to earlier requests skipped before giving up
_EMPTY_POLLS = 64           # READ_Y answers without a beat before the board is declared stuck
_ID_REGISTERS = ("MAGIC", "VERSION", "SHAPE", "OPERANDS", "MAX_K", "X_CFG_WIDTH", "Y_WIDTH")


class BoardError(LowbitError):
    """The board answered wrongly, or the accelerator flagged an error."""


class BoardTimeout(BoardError):
    """No (complete) reply within the port's timeout."""


class BoardRejected(BoardError):
    """The board replied with an error status.

    Attributes: ``status`` (:class:`~lowbit.hw.uart.Status`), ``command``, ``seq`` and
    ``detail`` (the error reply's data: bytes received, or beats taken for STALLED)."""

    def __init__(self, message: str, status: Status, command: int, seq: int, detail: int):
        super().__init__(message)
        self.status, self.command, self.seq, self.detail = status, command, seq, detail


def _name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command {command:#04x}"


def open_serial(port: str, baud: int = 115_200, timeout: float = 2.0):
    """A pyserial ``Serial`` on ``port`` (8N1, ``timeout`` seconds per read).

    pyserial is optional (``pip install 'lowbit[board]'``); a clear :class:`LowbitError` says
    so when it is missing, and when the port cannot be opened.
    """
    try:
        import serial
    except ImportError:
        raise LowbitError("talking to a board needs pyserial: pip install 'lowbit[board]' "
                          "(or pip install pyserial)") from None
    try:
        return serial.Serial(port, baudrate=baud, bytesize=8, parity="N", stopbits=1,
                             timeout=timeout)
    except (serial.SerialException, ValueError) as e:
        raise LowbitError(f"cannot open serial port {port}: {e}") from None


class FaultyPort:
    """A byte port that damages chosen request frames on their way (one bit flipped).

    ``frames``: 1-based numbers of the ``write`` calls (one per frame) to damage. The flipped
    byte is an ordinary data byte before and after, so the frame keeps its length and only its
    CRC can tell. ``damaged`` lists ``(frame, offset, before, after)``; ``log`` receives a line
    for each.
    """

    def __init__(self, port, frames=(), log: Callable[[str], None] | None = None):
        self.port = port
        self.frames = set(frames)
        self.log = log or (lambda line: None)
        self.written = 0
        self.damaged: list[tuple[int, int, int, int]] = []

    def write(self, data: bytes) -> int:
        self.written += 1
        data = bytes(data)
        if self.written in self.frames:
            data = self._flip(data)
        return self.port.write(data)

    def _flip(self, data: bytes) -> bytes:
        special = (END, ESC, ESC_END, ESC_ESC)
        middle = len(data) // 2
        for i in sorted(range(1, len(data) - 1), key=lambda i: abs(i - middle)):
            if data[i] in special or data[i - 1] == ESC:
                continue
            for bit in range(8):
                after = data[i] ^ (1 << bit)
                if after not in special:
                    self.damaged.append((self.written, i, data[i], after))
                    self.log(f"damaged request {self.written} on its way: byte {i} "
                             f"{data[i]:#04x} -> {after:#04x}")
                    return data[:i] + bytes([after]) + data[i + 1:]
        return data

    def read_until(self, expected=bytes([END]), size=None) -> bytes:
        return self.port.read_until(expected, size)


class BoardLink:
    """Requests and replies over a byte port.

    Parameters
    ----------
    port :
        Anything with ``write(bytes)`` and ``read_until(expected, size)`` that returns fewer
        bytes than asked on a timeout (pyserial ``Serial``, the simulated board).
    retries : int
        How often a request the board rejected as damaged (:data:`RETRIED`) is sent again.
    log : callable, optional
        Receives one line per rejected request.

    Attributes
    ----------
    requests, rejected : int
        Frames sent (retries included), and frames the board rejected.
    bytes_out, bytes_in : int
        Bytes written to and read from the port.
    """

    def __init__(self, port, *, retries: int = 2, log: Callable[[str], None] | None = None):
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        self.port, self.retries = port, retries
        self.log = log or (lambda line: None)
        self.seq = 0
        self.requests = self.rejected = self.bytes_out = self.bytes_in = 0

    # --- frames ---------------------------------------------------------------------------

    def send(self, command: int, payload: bytes = b"") -> int:
        """Send one request; returns its sequence number (0..255, wrapping)."""
        self.seq = (self.seq + 1) & 0xFF
        wire = encode_frame(command, self.seq, payload)
        self.port.write(wire)
        self.requests += 1
        self.bytes_out += len(wire)
        return self.seq

    def read_frame(self) -> bytes:
        """The next non-empty frame from the port (without its END bytes).

        Raises :class:`BoardTimeout` when the port times out before a frame is complete."""
        while True:
            chunk = self.port.read_until(bytes([END]), None)
            self.bytes_in += len(chunk)
            if not chunk.endswith(bytes([END])):
                raise BoardTimeout(f"no reply from the board within the port's timeout "
                                   f"({len(chunk)} bytes of a frame arrived)")
            if len(chunk) > 1:
                return chunk[:-1]

    def reply(self, seq: int) -> tuple[int, int, bytes]:
        """``(command, status, data)`` of the reply to request ``seq``; replies to earlier
        requests (after a timeout) are skipped."""
        for _ in range(_STALE_REPLIES + 1):
            try:
                command, got, status, data = decode_frame(self.read_frame())
            except FrameError as e:
                raise BoardError(f"damaged reply from the board: {e}") from None
            if got == seq:
                return command, status, data
        raise BoardError(f"no reply to request {seq} among {_STALE_REPLIES + 1} replies")

    def request(self, command: int, payload: bytes = b"") -> bytes:
        """Send a request and return its reply's data; raises :class:`BoardRejected` for an
        error status (after ``retries`` resends of a damaged request)."""
        for attempt in range(self.retries + 1):
            seq = self.send(command, payload)
            echoed, status, data = self.reply(seq)
            try:
                status = Status(status)
            except ValueError:
                raise BoardError(f"unknown status {status} in the reply to {_name(command)}") \
                    from None
            if status == Status.OK:
                if echoed != command:
                    raise BoardError(f"the reply to {_name(command)} (seq {seq}) is for "
                                     f"{_name(echoed)}")
                return data
            self.rejected += 1
            detail = int.from_bytes(data, "little")
            what = "beats taken" if status == Status.STALLED else "bytes received"
            text = (f"request {self.requests} ({_name(command)}, seq {seq}) rejected by the "
                    f"board: {status.name} ({detail} {what})")
            if status in RETRIED and attempt < self.retries:
                self.log(text + "; sent again")
                continue
            raise BoardRejected(text, status, command, seq, detail)
        raise AssertionError("unreachable")

    def resync(self) -> int:
        """After a timeout: close any half-sent frame on the board and read until the line
        is quiet (one port timeout). Returns the frames discarded."""
        self.port.write(bytes([END]))
        discarded = 0
        while True:
            try:
                self.read_frame()
            except BoardTimeout:
                return discarded
            discarded += 1

    # --- commands -------------------------------------------------------------------------

    def info(self) -> dict:
        """The bridge's INFO (:data:`~lowbit.hw.uart.INFO_FIELDS`)."""
        data = self.request(Command.INFO)
        want = sum(n for _, n in INFO_FIELDS)
        if len(data) != want:
            raise BoardError(f"INFO returned {len(data)} bytes, not {want}")
        out, pos = {}, 0
        for name, n in INFO_FIELDS:
            out[name] = int.from_bytes(data[pos:pos + n], "little")
            pos += n
        return out

    @staticmethod
    def _addr(register) -> int:
        return REG[register].addr if isinstance(register, str) else int(register)

    def read_reg(self, register) -> int:
        """A register's value (``register``: a name of the map or a word address)."""
        data = self.request(Command.READ_REG, bytes([self._addr(register)]))
        if len(data) != 4:
            raise BoardError(f"READ_REG returned {len(data)} bytes, not 4")
        return int.from_bytes(data, "little")

    def write_reg(self, register, value: int) -> None:
        self.request(Command.WRITE_REG, bytes([self._addr(register)]) +
                     int(value).to_bytes(4, "little"))

    def write_beats(self, command: Command, beats: bytes, beat_bytes: int,
                    max_payload: int) -> None:
        """WRITE_CFG / WRITE_X of ``beats`` (whole beats), as few frames as fit."""
        step = (max_payload // beat_bytes) * beat_bytes
        for i in range(0, len(beats), step):
            self.request(command, beats[i:i + step])

    def read_y(self, n: int, beat_bytes: int, max_payload: int) -> bytes:
        """Exactly ``n`` y beats (polling READ_Y while the unit is still producing them)."""
        out, empty = bytearray(), 0
        while len(out) < n * beat_bytes:
            left = n - len(out) // beat_bytes
            data = self.request(Command.READ_Y, min(left, 0xFFFF).to_bytes(2, "little"))
            if len(data) % beat_bytes or len(data) > left * beat_bytes:
                raise BoardError(f"READ_Y returned {len(data)} bytes for at most {left} beats "
                                 f"of {beat_bytes} bytes")
            if not data:
                empty += 1
                if empty > _EMPTY_POLLS:
                    raise BoardError(f"the board produced {len(out) // beat_bytes} of {n} y "
                                     f"beats and then none in {_EMPTY_POLLS} polls")
            out += data
        return bytes(out)


@dataclass
class BoardResult:
    """One matmul on a board.

    ``y`` is ``Y [M, N]`` (int64) as the board returned it; ``tiles`` and ``x_beats`` are the
    plan's, ``board_cycles`` / ``busy_cycles`` the accelerator's CYCLES / BUSY_CYCLES counters
    over the run (modulo 2^32), ``requests`` / ``rejected`` the frames it took.
    """
    y: np.ndarray
    tiles: int
    x_beats: int
    board_cycles: int
    busy_cycles: int
    requests: int
    rejected: int
    bytes_out: int
    bytes_in: int
    seconds: float
    notes: list = field(default_factory=list)


def _to_bytes(words: np.ndarray, nbytes: int) -> bytes:
    """Payload word rows ``[n, nwords]`` -> ``n`` beats of ``nbytes`` bytes, LSB first."""
    raw = np.ascontiguousarray(words, dtype="<u4").view(np.uint8)
    return raw.reshape(len(words), -1)[:, :nbytes].tobytes()


def _to_words(data: bytes, nbytes: int, nwords: int) -> np.ndarray:
    """Beats of ``nbytes`` bytes -> payload word rows ``[n, nwords]`` (uint32)."""
    raw = np.frombuffer(data, np.uint8).reshape(-1, nbytes)
    padded = np.zeros((len(raw), 4 * nwords), np.uint8)
    padded[:, :nbytes] = raw
    return padded.view("<u4").astype(np.uint32)


class Board:
    """A board with a lowbit accelerator behind its UART bridge.

    Construction reads INFO and the identification registers: the unit and its parameters
    come from the board (:func:`lowbit.hw.accel.decode_id`), not from the caller.

    Attributes
    ----------
    link : BoardLink
    info : dict
        The bridge's INFO.
    unit : str; params : dict
        What the board carries (``describe(unit, **params)`` is its description).
    description : UnitDescription; packer : Packer
    """

    def __init__(self, link: BoardLink):
        self.link = link
        self.info = link.info()
        if self.info["version"] != PROTOCOL_VERSION:
            raise BoardError(f"the board speaks bridge protocol {self.info['version']}, this "
                             f"host {PROTOCOL_VERSION}")
        try:
            ident = decode_id({name: link.read_reg(name) for name in _ID_REGISTERS})
            self.description = describe(ident["unit"], **ident["params"])
        except (ValueError, TypeError) as e:
            raise BoardError(f"the board's identification registers: {e}") from None
        self.unit, self.params = ident["unit"], ident["params"]
        self.packer = Packer(self.description)
        for stream in ("x", "cfg", "y"):
            layout = getattr(self.description, f"{stream}_layout")
            if self.info[f"{stream}_bytes"] != math.ceil(layout.size / 8):
                raise BoardError(f"the bridge moves {self.info[f'{stream}_bytes']}-byte "
                                 f"{stream} beats; the unit's {stream} payload has "
                                 f"{layout.size} bits")

    def reset(self) -> None:
        """Soft-reset the accelerator (counters and flags too) and empty the bridge's y buffer."""
        ctrl = REG["CTRL"]
        self.link.write_reg("CTRL", ctrl.field("SOFT_RESET").mask)
        leftover = self.link.request(Command.READ_Y, (0xFFFF).to_bytes(2, "little"))
        while leftover:
            leftover = self.link.request(Command.READ_Y, (0xFFFF).to_bytes(2, "little"))

    def errors(self) -> list[str]:
        """Names of the accelerator's sticky error flags that are set."""
        value = self.link.read_reg("ERRORS")
        return [f.name for f in REG["ERRORS"].fields if f.get(value)]

    def matmul(self, a, w, bias=None, mult=None, shift=None, *, relu: bool = False,
               raw: bool = False, progress: Callable[[int], None] | None = None,
               **extra) -> BoardResult:
        """``Y = requantize(A @ W.T + bias)`` (or raw ``t``) on the board.

        Arguments as :meth:`lowbit.hw.driver.Protocol.plan` (validated the same way:
        ValueError naming the operand). The accelerator is soft-reset first; tiles go out
        as a ``cfg`` frame and ``x`` frames each, and ``y`` is read back every
        ``y_depth // rows`` tiles, so the bridge's ``y`` buffer never fills. ``progress``
        receives the tiles finished. Raises :class:`BoardError` if the accelerator flags
        an error or counts a different number of tiles.
        """
        extra = {k: v for k, v in extra.items() if v is not None}
        job = self.packer.prepare(a, w, bias, mult, shift, relu=relu, raw=raw, **extra)
        start = time.perf_counter()
        link, info, rows = self.link, self.info, self.description.rows
        counts = (link.requests, link.rejected, link.bytes_out, link.bytes_in)
        self.reset()
        group = max(1, info["y_depth"] // rows)
        x_b, cfg_b, y_b, cap = (info["x_bytes"], info["cfg_bytes"], info["y_bytes"],
                                info["max_payload"])
        ys = []
        for _, _, cfg, x in self.packer.blocks(job):
            beats = job.beats
            for g0 in range(0, len(cfg), group):
                g1 = min(len(cfg), g0 + group)
                for t in range(g0, g1):
                    link.write_beats(Command.WRITE_CFG, _to_bytes(cfg[t:t + 1], cfg_b), cfg_b,
                                     cap)
                    link.write_beats(Command.WRITE_X,
                                     _to_bytes(x[t * beats:(t + 1) * beats], x_b), x_b, cap)
                ys.append(link.read_y((g1 - g0) * rows, y_b, cap))
                if progress is not None:
                    progress(g1 - g0)
        flags = self.errors()
        if flags:
            raise BoardError(f"the accelerator flagged {', '.join(flags)}")
        done = link.read_reg("TILES_DONE")
        if done != job.plan.tiles:
            raise BoardError(f"the accelerator counted {done} tiles, the plan has "
                             f"{job.plan.tiles}")
        cycles, busy = link.read_reg("CYCLES"), link.read_reg("BUSY_CYCLES")
        words = _to_words(b"".join(ys), y_b, self.packer.y.nwords)
        y = self.packer.assemble(job, words)[0]
        return BoardResult(
            y=y, tiles=job.plan.tiles, x_beats=job.x_beats, board_cycles=cycles,
            busy_cycles=busy, requests=link.requests - counts[0],
            rejected=link.rejected - counts[1], bytes_out=link.bytes_out - counts[2],
            bytes_in=link.bytes_in - counts[3], seconds=time.perf_counter() - start)

    def expected(self, a, w, bias=None, mult=None, shift=None, *, relu: bool = False,
                 raw: bool = False, **extra) -> np.ndarray:
        """The golden kernel's ``Y`` for the same arguments as :meth:`matmul`."""
        extra = {k: v for k, v in extra.items() if v is not None}
        mm = self.packer.validate(a, w, bias, mult, shift, relu=relu, raw=raw, **extra)
        return self.description.golden_result(mm)

