"""A UART bridge to the accelerator: its register bus and streams behind two serial pins.

:class:`UARTBridge` receives request frames on ``rx``, executes them on the accelerator's
register bus and its ``cfg``/``x`` input streams and ``y`` output stream, and answers each one
with a reply frame on ``tx``. The frame format (docs/hardware.md, "UART bridge"):

* **Line.** 8 data bits, no parity, 1 stop bit, LSB first; one bit lasts ``divisor`` clock
  cycles (``divisor = clock / baud``).
* **Framing.** SLIP (RFC 1055): a frame is its bytes between two ``END`` (0xC0) bytes; inside,
  0xC0 is sent as ``ESC ESC_END`` (0xDB 0xDC) and 0xDB as ``ESC ESC_ESC`` (0xDB 0xDD). Empty
  frames are ignored, so a sender may start every frame with ``END`` to flush line noise.
* **Request.** ``command, seq, payload..., crc_hi, crc_lo``: the CRC is CRC-16/CCITT-FALSE
  (polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR; Python's
  ``binascii.crc_hqx(data, 0xFFFF)``) of ``command, seq, payload``, most significant byte first
  (so the CRC over the whole frame is 0).
* **Reply.** ``command, seq, status, data..., crc_hi, crc_lo``: ``command`` and ``seq`` echo
  the request's (0 where the frame was too short to hold them), ``status`` is a
  :class:`Status`. The CRC is the same as the request's.

Every request gets exactly one reply; a request that fails any check (:class:`Status` other than
``OK`` and ``STALLED``) is not executed at all, so the host may send it again. Frames the bridge
receives while it is busy with a request are dropped and reported (``OVERRUN``), so the host
sends one request and waits for its reply.

The host side is :mod:`lowbit.hw.board_host` (it uses :func:`encode_frame`, :func:`decode_frame`
and the constants here); :mod:`lowbit.hw.board` puts the bridge and the accelerator on a board.
"""

from __future__ import annotations

import binascii
import enum
import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .accel import ADDR_WIDTH, DATA_WIDTH, RegisterBusSignature

__all__ = ["END", "ESC", "ESC_END", "ESC_ESC", "PROTOCOL_VERSION", "Command", "Status",
           "INFO_FIELDS", "DEFAULT_MAX_PAYLOAD", "DEFAULT_STALL_TIMEOUT", "MIN_DIVISOR",
           "crc16", "slip_encode", "encode_frame", "decode_frame", "FrameError",
           "UARTRx", "UARTTx", "SlipEncoder", "UARTBridge"]

END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
PROTOCOL_VERSION = 1
DEFAULT_MAX_PAYLOAD = 256       # request payload bytes: a 260-byte frame buffer, one block RAM
DEFAULT_STALL_TIMEOUT = 1 << 16     # cycles a stream may refuse a beat before STALLED
MIN_DIVISOR = 4                 # clock cycles per bit: the receiver samples mid-bit
_DETAIL_BYTES = 2               # data of an error reply


class Command(enum.IntEnum):
    """Request commands; the payload and the reply's data of each are in docs/hardware.md."""
    INFO = 0x01         # payload none; data: INFO_FIELDS
    READ_REG = 0x02     # payload: word address (1 byte); data: the register (4 bytes, LE)
    WRITE_REG = 0x03    # payload: word address (1 byte), value (4 bytes, LE); data none
    WRITE_CFG = 0x04    # payload: n >= 1 cfg beats of cfg_bytes each (LE); data none
    WRITE_X = 0x05      # payload: n >= 1 x beats of x_bytes each (LE); data none
    READ_Y = 0x06       # payload: most beats wanted (2 bytes, LE); data: k y beats (LE)


class Status(enum.IntEnum):
    """The reply's status byte. Every status but OK and STALLED means: not executed."""
    OK = 0
    BAD_CRC = 1         # the frame's CRC did not match
    BAD_COMMAND = 2     # unknown command
    BAD_LENGTH = 3      # shorter than 4 bytes, or a payload length the command does not take
    OVERRUN = 4         # longer than the frame buffer, or bytes of it dropped while busy
    FRAMING = 5         # a byte with a low stop bit, or an escape sequence SLIP does not have
    STALLED = 6         # a stream refused a beat for stall_timeout cycles; data: beats taken
    BAD_ADDRESS = 7     # register word address beyond the bus (>= 2**ADDR_WIDTH)


# INFO's reply data: (name, bytes), little-endian, in this order.
INFO_FIELDS = (("version", 1), ("max_payload", 2), ("y_depth", 2), ("x_bytes", 2),
               ("cfg_bytes", 2), ("y_bytes", 2))


# ---------------------------------------------------------------------------------------------
# Frames in software (the host's half of the protocol)


class FrameError(ValueError):
    """A received frame that is not a valid reply (too short, bad escape or bad CRC)."""


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``)."""
    return binascii.crc_hqx(bytes(data), 0xFFFF)


def slip_encode(body: bytes) -> bytes:
    """``END`` + ``body`` with END/ESC escaped + ``END``."""
    out = bytearray([END])
    for b in body:
        out += bytes([ESC, ESC_END]) if b == END else bytes([ESC, ESC_ESC]) if b == ESC \
            else bytes([b])
    out.append(END)
    return bytes(out)


def encode_frame(command: int, seq: int, payload: bytes = b"") -> bytes:
    """The bytes on the wire of one request: SLIP-framed ``command, seq, payload, CRC``."""
    body = bytes([command, seq]) + bytes(payload)
    return slip_encode(body + crc16(body).to_bytes(2, "big"))


def decode_frame(wire: bytes) -> tuple[int, int, int, bytes]:
    """``(command, seq, status, data)`` of one reply frame given without its ``END`` bytes.

    Raises :class:`FrameError` for an escape SLIP does not have, fewer than 5 bytes, or a CRC
    that does not match.
    """
    body, it = bytearray(), iter(wire)
    for b in it:
        if b == ESC:
            nxt = next(it, None)
            if nxt not in (ESC_END, ESC_ESC):
                raise FrameError(f"bad escape sequence 0xdb {nxt!r} in a reply")
            body.append(END if nxt == ESC_END else ESC)
        elif b == END:
            raise FrameError("END inside a frame")
        else:
            body.append(b)
    if len(body) < 5:
        raise FrameError(f"reply of {len(body)} bytes, shorter than its 5-byte minimum")
    if crc16(body) != 0:
        raise FrameError(f"reply of {len(body)} bytes failed its CRC")
    return body[0], body[1], body[2], bytes(body[3:-2])


# ---------------------------------------------------------------------------------------------
# RTL


def _check_int(label: str, value, lo: int, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{label} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"at least {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{label} must be {bound}, not {value}")


def _crc16_step(crc: int, byte: int) -> int:
    """CRC-16/CCITT-FALSE register after one more byte (MSB first), in integers."""
    crc ^= byte << 8
    for _ in range(8):
        crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def _crc16_next(crc, byte):
    """:func:`_crc16_step` as logic: the CRC is linear over GF(2), so each bit of the next
    register is the XOR of the register and byte bits whose unit vectors set it."""
    inputs = Cat(crc, byte)                                     # bits 0..15 crc, 16..23 byte
    columns = [_crc16_step(1 << i, 0) if i < 16 else _crc16_step(0, 1 << (i - 16))
               for i in range(24)]
    return Cat(*[Cat(*[inputs[i] for i in range(24) if columns[i] >> j & 1]).xor()
                 for j in range(16)])


class UARTRx(wiring.Component):
    """UART receiver: 8N1, LSB first, ``divisor`` clock cycles per bit.

    ``rx`` passes two flip-flops (metastability); a start bit is confirmed low at its middle,
    every data bit and the stop bit are sampled at theirs. ``valid`` is high for one cycle with
    the byte on ``data``; a stop bit read low instead gives one cycle of ``error`` (the byte is
    dropped) and the receiver waits for the line to return high (a break is one error).
    A byte cannot be refused: whoever listens takes it in that cycle.
    """

    def __init__(self, divisor: int):
        _check_int("Divisor", divisor, MIN_DIVISOR)
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(8), "valid": Out(1),
                          "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        sync = Signal(2, init=0b11)
        m.d.sync += sync.eq(Cat(self.rx, sync[0]))
        line = sync[1]
        timer = Signal(range(d))
        bit = Signal(range(8))
        shreg = Signal(8)
        m.d.sync += [self.valid.eq(0), self.error.eq(0)]
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(d - 1), bit.eq(0)]
                    with m.If(line):        # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), timer.eq(d - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.sync += [self.data.eq(shreg), self.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """UART transmitter: 8N1, LSB first, ``divisor`` clock cycles per bit.

    Takes one byte from ``data`` whenever idle and shifts it out on ``tx`` (a flip-flop; high
    when idle): start bit, 8 data bits, stop bit, each ``divisor`` cycles.
    """

    def __init__(self, divisor: int):
        _check_int("Divisor", divisor, MIN_DIVISOR)
        self.divisor = divisor
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        shreg = Signal(10, init=(1 << 10) - 1)
        left = Signal(range(11))
        timer = Signal(range(d))
        m.d.comb += [self.tx.eq(shreg[0]), self.data.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(self.data.valid):
                m.d.sync += [shreg.eq(Cat(Const(0, 1), self.data.payload, Const(1, 1))),
                             left.eq(10), timer.eq(d - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), left.eq(left - 1),
                         timer.eq(d - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class SlipEncoder(wiring.Component):
    """SLIP escaping between a frame sender and :class:`UARTTx`.

    ``i`` beats carry ``data`` and ``raw``: a raw byte (a frame's ``END`` delimiter) goes out
    as it is; any other 0xC0 or 0xDB goes out as its two-byte escape sequence (``i`` waits).
    """

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"data": 8, "raw": 1}))),
            "o": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        pending = Signal()
        second = Signal(8)
        byte = self.i.payload.data
        special = ~self.i.payload.raw & ((byte == END) | (byte == ESC))
        with m.If(pending):
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(second)]
            with m.If(self.o.ready):
                m.d.sync += pending.eq(0)
        with m.Else():
            m.d.comb += [self.o.valid.eq(self.i.valid),
                         self.o.payload.eq(Mux(special, ESC, byte)),
                         self.i.ready.eq(self.o.ready)]
            with m.If(self.i.valid & self.o.ready & special):
                m.d.sync += [pending.eq(1), second.eq(Mux(byte == END, ESC_END, ESC_ESC))]
        return m


class UARTBridge(wiring.Component):
    """Request/reply frames on two UART pins, executed on a register bus and three streams.

    The bridge stores a request frame in a buffer of ``max_payload + 4`` bytes as it arrives
    (SLIP decoding, CRC and length bookkeeping on the fly), checks it when its closing ``END``
    arrives, executes it and sends the reply; then it receives the next frame. ``y`` beats are
    taken into a FIFO of ``y_depth`` beats whenever they come, and READ_Y returns them.

    Parameters
    ----------
    x_bits, cfg_bits, y_bits : int
        Payload widths of the ``x``, ``cfg`` and ``y`` streams. A beat travels as
        ``ceil(bits / 8)`` bytes, least significant first.
    divisor : int
        Clock cycles per bit on both pins (``clock / baud``), at least :data:`MIN_DIVISOR`.
    max_payload : int
        Largest request payload in bytes (WRITE_CFG / WRITE_X carry as many whole beats as
        fit); also bounds READ_Y's data. At least 5 and the widest beat.
    y_depth : int
        ``y`` beats the bridge holds for READ_Y.
    stall_timeout : int
        Cycles WRITE_CFG / WRITE_X wait for a stream to accept a beat before they give up and
        reply STALLED (the offered beat is then withdrawn, which the accelerator flags as
        X_WITHDRAWN / CFG_WITHDRAWN). The units take every beat within a few cycles unless
        their ``y`` backs up, i.e. unless the host leaves more than ``y_depth`` beats unread.

    Attributes
    ----------
    rx : In(1)
        Serial input (idle high).
    tx : Out(1)
        Serial output (idle high), from a flip-flop.
    bus : Out(RegisterBusSignature())
        The accelerator's register bus, as its initiator.
    x, cfg : Out(stream.Signature(bits)); y : In(stream.Signature(bits))
        To and from the accelerator's streams (plain bit vectors).
    x_bytes, cfg_bytes, y_bytes : int
        Bytes per beat on the wire.
    info : dict
        What INFO replies (:data:`INFO_FIELDS`).
    """

    def __init__(self, *, x_bits: int, cfg_bits: int, y_bits: int, divisor: int,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, y_depth: int = 16,
                 stall_timeout: int = DEFAULT_STALL_TIMEOUT):
        self.x_bytes, self.cfg_bytes, self.y_bytes = self.check(
            x_bits=x_bits, cfg_bits=cfg_bits, y_bits=y_bits, divisor=divisor,
            max_payload=max_payload, y_depth=y_depth, stall_timeout=stall_timeout)
        self.x_bits, self.cfg_bits, self.y_bits = x_bits, cfg_bits, y_bits
        self.divisor, self.max_payload = divisor, max_payload
        self.y_depth, self.stall_timeout = y_depth, stall_timeout
        self.info = {"version": PROTOCOL_VERSION, "max_payload": max_payload,
                     "y_depth": y_depth, "x_bytes": self.x_bytes, "cfg_bytes": self.cfg_bytes,
                     "y_bytes": self.y_bytes}
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "bus": Out(RegisterBusSignature()),
            "x": Out(stream.Signature(x_bits)),
            "cfg": Out(stream.Signature(cfg_bits)),
            "y": In(stream.Signature(y_bits)),
        })

    @staticmethod
    def check(*, x_bits, cfg_bits, y_bits, divisor, max_payload, y_depth,
              stall_timeout) -> tuple[int, int, int]:
        """Check the constructor's parameters as it does (TypeError, ValueError) without
        building anything; returns the bytes per ``x``, ``cfg`` and ``y`` beat."""
        for label, value in (("X bits", x_bits), ("Cfg bits", cfg_bits), ("Y bits", y_bits)):
            _check_int(label, value, 1)
        _check_int("Divisor", divisor, MIN_DIVISOR)
        sizes = tuple(math.ceil(b / 8) for b in (x_bits, cfg_bits, y_bits))
        _check_int("Max payload", max_payload, max(5, *sizes), 0xFFFF - 4)
        _check_int("Y depth", y_depth, 1, 0xFFFF)
        _check_int("Stall timeout", stall_timeout, 1)
        return sizes

    @property
    def info_bytes(self) -> bytes:
        """INFO's reply data."""
        return b"".join(self.info[name].to_bytes(n, "little") for name, n in INFO_FIELDS)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.submodules.slip = enc = SlipEncoder()
        wiring.connect(m, enc.o, utx.data)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        m.submodules.y_fifo = yf = fifo.SyncFIFOBuffered(width=self.y_bits, depth=self.y_depth)
        m.d.comb += [yf.w_data.eq(self.y.payload), yf.w_en.eq(self.y.valid),
                     self.y.ready.eq(yf.w_rdy)]

        depth = self.max_payload + 4                # command, seq, payload, CRC
        m.submodules.buffer = buf = memory.Memory(shape=8, depth=depth, init=[])
        wr, rd = buf.write_port(), buf.read_port()

        # --- receiving: SLIP decoding into the buffer ---------------------------------------
        count = Signal(range(depth + 1))        # bytes stored
        esc = Signal()                          # the last byte was ESC
        overflow = Signal()                     # more bytes than the buffer holds
        framing = Signal()                      # a low stop bit or a bad escape
        lost = Signal()                         # bytes of this frame arrived while busy
        crc = Signal(16, init=0xFFFF)
        cmd, seq = Signal(8), Signal(8)
        args = Signal(40)                       # payload bytes 0..4 (register address, value)
        # (bytes stored - 2) modulo the beat sizes: whether the payload is whole beats
        mod_x = Signal(range(self.x_bytes))
        mod_cfg = Signal(range(self.cfg_bytes))

        receiving = Signal()
        frame_done = Signal()
        store, value = Signal(), Signal(8)
        with m.If(receiving):
            with m.If(urx.error):
                m.d.sync += framing.eq(1)
            with m.If(urx.valid):
                with m.If(urx.data == END):
                    m.d.sync += esc.eq(0)
                    with m.If(esc):
                        m.d.sync += framing.eq(1)
                    m.d.comb += frame_done.eq((count != 0) | framing | esc | lost)
                with m.Elif(esc):
                    m.d.sync += esc.eq(0)
                    with m.If((urx.data == ESC_END) | (urx.data == ESC_ESC)):
                        m.d.comb += [store.eq(1),
                                     value.eq(Mux(urx.data == ESC_END, END, ESC))]
                    with m.Else():
                        m.d.sync += framing.eq(1)
                with m.Elif(urx.data == ESC):
                    m.d.sync += esc.eq(1)
                with m.Else():
                    m.d.comb += [store.eq(1), value.eq(urx.data)]
        with m.Elif(urx.valid | urx.error):
            # Busy: the byte is dropped. An END means the next frame starts clean.
            m.d.sync += lost.eq(~(urx.valid & (urx.data == END)))

        with m.If(store):
            with m.If(count < depth):
                m.d.comb += [wr.addr.eq(count), wr.data.eq(value), wr.en.eq(1)]
                m.d.sync += [count.eq(count + 1), crc.eq(_crc16_next(crc, value))]
                with m.If(count == 0):
                    m.d.sync += cmd.eq(value)
                with m.If(count == 1):
                    m.d.sync += seq.eq(value)
                with m.If((count >= 2) & (count < 7)):
                    m.d.sync += args.word_select((count - 2)[:3], 8).eq(value)
                with m.If(count >= 2):
                    m.d.sync += [
                        mod_x.eq(Mux(mod_x == self.x_bytes - 1, 0, mod_x + 1)),
                        mod_cfg.eq(Mux(mod_cfg == self.cfg_bytes - 1, 0, mod_cfg + 1)),
                    ]
            with m.Else():
                m.d.sync += overflow.eq(1)

        # --- checking ------------------------------------------------------------------------
        whole_x = (count > 4) & (mod_x == 2 % self.x_bytes)
        whole_cfg = (count > 4) & (mod_cfg == 2 % self.cfg_bytes)
        addr_ok = args[ADDR_WIDTH:8] == 0
        verdict = Signal(8)
        with m.If(overflow | lost):
            m.d.comb += verdict.eq(Status.OVERRUN)
        with m.Elif(framing):
            m.d.comb += verdict.eq(Status.FRAMING)
        with m.Elif(count < 4):
            m.d.comb += verdict.eq(Status.BAD_LENGTH)
        with m.Elif(crc != 0):
            m.d.comb += verdict.eq(Status.BAD_CRC)
        with m.Else():
            def length(ok, also=None):
                bad = Mux(ok, Status.OK, Status.BAD_LENGTH)
                if also is not None:
                    bad = Mux(ok & ~also, Status.BAD_ADDRESS, bad)
                m.d.comb += verdict.eq(bad)
            with m.Switch(cmd):
                with m.Case(int(Command.INFO)):
                    length(count == 4)
                with m.Case(int(Command.READ_REG)):
                    length(count == 5, addr_ok)
                with m.Case(int(Command.WRITE_REG)):
                    length(count == 9, addr_ok)
                with m.Case(int(Command.WRITE_CFG)):
                    length(whole_cfg)
                with m.Case(int(Command.WRITE_X)):
                    length(whole_x)
                with m.Case(int(Command.READ_Y)):
                    length(count == 6)
                with m.Default():
                    m.d.comb += verdict.eq(Status.BAD_COMMAND)

        # --- the reply's data: chunks of bytes shifted out of `rsh` --------------------------
        info = self.info_bytes
        rsh = Signal(8 * max(4, len(info), self.y_bytes))
        status = Signal(8)
        chunk_bytes = Signal(range(max(len(info), self.y_bytes) + 1))
        max_y = self.max_payload // self.y_bytes
        chunks = Signal(range(max(max_y, 1) + 1))
        from_y = Signal()
        index = Signal(range(max(len(info), self.x_bytes, self.cfg_bytes, self.y_bytes, 3) + 1))

        def reply(code, chunk=0, n=0, source=None, y=False):
            m.d.sync += [status.eq(code), chunk_bytes.eq(chunk), chunks.eq(n), from_y.eq(y),
                         index.eq(0)]
            if source is not None:
                m.d.sync += rsh.eq(source)

        # --- executing ----------------------------------------------------------------------
        beat = Signal(8 * max(self.x_bytes, self.cfg_bytes))
        to_x = Signal()
        rd_ptr = Signal(range(depth + 1))
        beats = Signal(range(self.max_payload + 1))
        stall = Signal(range(self.stall_timeout))
        beat_bytes = Mux(to_x, self.x_bytes, self.cfg_bytes)
        m.d.comb += [rd.addr.eq(rd_ptr), self.x.payload.eq(beat), self.cfg.payload.eq(beat)]

        # --- sending: header, data, CRC through the SLIP encoder ---------------------------
        send, send_byte, send_raw = Signal(), Signal(8), Signal()
        covered = Signal()                      # the byte sent counts towards the CRC
        tx_crc = Signal(16)
        m.d.comb += [enc.i.valid.eq(send), enc.i.payload.data.eq(send_byte),
                     enc.i.payload.raw.eq(send_raw)]
        sent = send & enc.i.ready
        with m.If(sent & covered):
            m.d.sync += tx_crc.eq(_crc16_next(tx_crc, send_byte))

        with m.FSM():
            with m.State("RECEIVE"):
                m.d.comb += receiving.eq(1)
                with m.If(frame_done):
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += lost.eq(0)
                with m.If(verdict != Status.OK):
                    reply(verdict, _DETAIL_BYTES, 1, count)
                    m.next = "SOF"
                with m.Else():
                    with m.Switch(cmd):
                        with m.Case(int(Command.INFO)):
                            reply(Status.OK, len(info), 1,
                                  Const(int.from_bytes(info, "little"), 8 * len(info)))
                            m.next = "SOF"
                        with m.Case(int(Command.READ_REG)):
                            m.next = "BUS_READ"
                        with m.Case(int(Command.WRITE_REG)):
                            m.next = "BUS_WRITE"
                        with m.Case(int(Command.WRITE_CFG), int(Command.WRITE_X)):
                            m.d.sync += [to_x.eq(cmd == Command.WRITE_X), rd_ptr.eq(2),
                                         index.eq(0), beats.eq(0), stall.eq(0)]
                            m.next = "FEED_ADDR"
                        with m.Case(int(Command.READ_Y)):
                            want = args[:16]
                            n = Mux(want < yf.level, want, yf.level)
                            n = Mux(n < max_y, n, max_y)
                            reply(Status.OK, self.y_bytes, n, y=True)
                            m.next = "SOF"

            with m.State("BUS_READ"):
                m.d.comb += [self.bus.addr.eq(args[:ADDR_WIDTH]), self.bus.r_stb.eq(1)]
                m.next = "BUS_LATCH"
            with m.State("BUS_LATCH"):
                reply(Status.OK, DATA_WIDTH // 8, 1, self.bus.r_data)
                m.next = "SOF"
            with m.State("BUS_WRITE"):
                m.d.comb += [self.bus.addr.eq(args[:ADDR_WIDTH]), self.bus.w_stb.eq(1),
                             self.bus.w_data.eq(args[8:40])]
                reply(Status.OK)
                m.next = "SOF"

            # WRITE_CFG / WRITE_X: two cycles per byte (synchronous buffer read), then offer
            # the beat until it is taken or stall_timeout runs out.
            with m.State("FEED_ADDR"):
                m.next = "FEED_LOAD"
            with m.State("FEED_LOAD"):
                m.d.sync += [beat.word_select(index, 8).eq(rd.data), rd_ptr.eq(rd_ptr + 1),
                             index.eq(index + 1)]
                with m.If(index == beat_bytes - 1):
                    m.next = "FEED_PUSH"
                with m.Else():
                    m.next = "FEED_ADDR"
            with m.State("FEED_PUSH"):
                ready = Mux(to_x, self.x.ready, self.cfg.ready)
                m.d.comb += [self.x.valid.eq(to_x), self.cfg.valid.eq(~to_x)]
                with m.If(ready):
                    m.d.sync += [beats.eq(beats + 1), stall.eq(0), index.eq(0)]
                    with m.If(rd_ptr == count - 2):
                        reply(Status.OK)
                        m.next = "SOF"
                    with m.Else():
                        m.next = "FEED_ADDR"
                with m.Elif(stall == self.stall_timeout - 1):
                    reply(Status.STALLED, _DETAIL_BYTES, 1, beats)
                    m.next = "SOF"
                with m.Else():
                    m.d.sync += stall.eq(stall + 1)

            # The reply: END, command, seq, status, data, CRC (MSB first), END.
            with m.State("SOF"):
                m.d.comb += [send.eq(1), send_byte.eq(END), send_raw.eq(1)]
                with m.If(sent):
                    m.d.sync += [tx_crc.eq(0xFFFF), index.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [send.eq(1), covered.eq(1),
                             send_byte.eq(Mux(index == 0, cmd, Mux(index == 1, seq, status)))]
                with m.If(sent):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == 2):
                        m.next = "CHUNK"
            with m.State("CHUNK"):
                m.d.sync += index.eq(0)
                with m.If(chunks == 0):
                    m.next = "CRC_HI"
                with m.Else():
                    with m.If(from_y):
                        m.d.comb += yf.r_en.eq(1)
                        m.d.sync += rsh.eq(yf.r_data)
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [send.eq(1), covered.eq(1), send_byte.eq(rsh[:8])]
                with m.If(sent):
                    m.d.sync += [rsh.eq(rsh >> 8), index.eq(index + 1)]
                    with m.If(index == chunk_bytes - 1):
                        m.d.sync += chunks.eq(chunks - 1)
                        m.next = "CHUNK"
            with m.State("CRC_HI"):
                m.d.comb += [send.eq(1), send_byte.eq(tx_crc[8:])]
                with m.If(sent):
                    m.next = "CRC_LO"
            with m.State("CRC_LO"):
                m.d.comb += [send.eq(1), send_byte.eq(tx_crc[:8])]
                with m.If(sent):
                    m.next = "EOF"
            with m.State("EOF"):
                m.d.comb += [send.eq(1), send_byte.eq(END), send_raw.eq(1)]
                with m.If(sent):
                    # ready for the next frame
                    m.d.sync += [count.eq(0), crc.eq(0xFFFF), esc.eq(0), overflow.eq(0),
                                 framing.eq(0), cmd.eq(0), seq.eq(0), mod_x.eq(0),
                                 mod_cfg.eq(0)]
                    m.next = "RECEIVE"
        return m
