# amaranth: UnusedElaboratable=no
"""The UART bridge and the board design (hw/uart.py, hw/board.py, hw/board_host.py,
sim/board_sim.py, ``lowbit board``): frames and CRC against Python's own CRC, the UART in the
Amaranth simulator, and the whole board design Verilated, driven by the host code over its
simulated pins: matmuls of every unit bit-exact against the golden kernel, every error reply,
recovery after each, a stalled stream, a timeout, and pyserial over a pseudo-terminal."""

from __future__ import annotations

import binascii
import os
import select
import threading

import numpy as np
import pytest
from amaranth.sim import Simulator

from lowbit.cli import main
from lowbit.hw.board import BoardDesign, divisor_for
from lowbit.hw.board_host import (Board, BoardLink, BoardRejected, BoardTimeout, FaultyPort,
                                  open_serial)
from lowbit.hw.uart import (END, ESC, ESC_END, ESC_ESC, Command, FrameError, Status,
                            UARTBridge, UARTRx, UARTTx, _crc16_step, crc16, decode_frame,
                            encode_frame, slip_encode)
from lowbit.hw.units import describe

UNITS = {"int8": {"rows": 2, "cols": 2}, "log": {"rows": 2, "cols": 2, "bits": 4},
         "xnor": {"rows": 2, "cols": 2, "a_planes": 2, "w_planes": 1}}


# --- frames in software -----------------------------------------------------------------------


def test_crc_is_ccitt_false_and_the_rtl_step_agrees():
    assert crc16(b"123456789") == 0x29B1             # the catalogue check value
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 17, 300):
        data = rng.integers(0, 256, n).astype(np.uint8).tobytes()
        reg = 0xFFFF
        for b in data:
            reg = _crc16_step(reg, b)                  # what the RTL's XOR network computes
        assert reg == crc16(data) == binascii.crc_hqx(data, 0xFFFF)
        # the CRC appended MSB first leaves a zero register: the RTL's check
        assert crc16(data + crc16(data).to_bytes(2, "big")) == 0


def test_frames_escape_and_decode():
    payload = bytes([END, ESC, ESC_END, ESC_ESC, 0, 255])
    wire = encode_frame(Command.WRITE_X, END, payload)
    assert wire[0] == wire[-1] == END and END not in wire[1:-1]
    body = bytes([Command.WRITE_X, END]) + payload
    assert wire == slip_encode(body + crc16(body).to_bytes(2, "big"))
    # a reply has a status byte after the seq
    reply = slip_encode(b"\x05\xc0\x00" + payload + crc16(b"\x05\xc0\x00" + payload)
                        .to_bytes(2, "big"))
    assert decode_frame(reply[1:-1]) == (5, END, 0, payload)
    with pytest.raises(FrameError, match="CRC"):
        decode_frame(reply[1:-3] + bytes([reply[-3] ^ 1, reply[-2]]))
    with pytest.raises(FrameError, match="escape"):
        decode_frame(bytes([1, ESC, 0, 0, 0, 0]))
    with pytest.raises(FrameError, match="shorter"):
        decode_frame(bytes([1, 2, 3]))


def test_divisors_of_the_boards():
    assert divisor_for(25e6, 115_200) == 217
    assert divisor_for(12e6, 115_200) == 104
    with pytest.raises(ValueError, match="too fast"):
        divisor_for(12e6, 6_000_000)
    with pytest.raises(ValueError, match="7.7% off"):
        divisor_for(12e6, 2_600_000)            # divisor 5 gives 2.4 Mbaud
    with pytest.raises(ValueError, match="positive integer"):
        divisor_for(12e6, 0)


def test_bad_bridge_parameters():
    with pytest.raises(ValueError, match="Divisor must be at least 4, not 3"):
        UARTRx(3)
    with pytest.raises(TypeError, match="Divisor must be an integer"):
        UARTTx(4.0)
    with pytest.raises(ValueError, match="Max payload must be in 20..65531, not 8"):
        UARTBridge(x_bits=160, cfg_bits=8, y_bits=8, divisor=4, max_payload=8)
    with pytest.raises(ValueError, match="Y depth must be in 1..65535, not 0"):
        UARTBridge(x_bits=8, cfg_bits=8, y_bits=8, divisor=4, y_depth=0)
    with pytest.raises(ValueError, match="Rows must be"):
        BoardDesign("int8", divisor=4, rows=0)


# --- the UART in the Amaranth simulator -------------------------------------------------------


def test_uart_loopback_and_framing_error():
    """Bytes through UARTTx into UARTRx at an odd divisor; then a byte with a low stop bit
    driven by hand is reported as an error and dropped, and the next byte still arrives."""
    from amaranth.hdl import Module, Signal

    divisor = 5
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    manual, use_manual = Signal(init=1), Signal()
    m.d.comb += rx.rx.eq(tx.tx & (manual | ~use_manual))
    sent = [0x00, 0xFF, 0x55, 0xA3, END, 0x01]
    got, errors = [], []

    async def drive(ctx):
        for b in sent:
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)
        await ctx.tick().repeat(12 * divisor)
        ctx.set(use_manual, 1)                  # 0x5A with its stop bit low, then line idle
        for level in [0] + [(0x5A >> i) & 1 for i in range(8)] + [0] + [1] * 3:
            ctx.set(manual, level)
            await ctx.tick().repeat(divisor)
        ctx.set(use_manual, 0)
        ctx.set(tx.data.payload, 0x42)
        ctx.set(tx.data.valid, 1)
        await ctx.tick().until(tx.data.ready)
        ctx.set(tx.data.valid, 0)
        await ctx.tick().repeat(12 * divisor)

    async def listen(ctx):
        async for _, _, valid, data, error in ctx.tick().sample(rx.valid, rx.data, rx.error):
            if valid:
                got.append(data)
            if error:
                errors.append(len(got))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_process(listen)
    sim.run()
    assert got == sent + [0x42]
    assert errors == [len(sent)]


# --- the board design Verilated ------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_board():
    from lowbit.sim.board_sim import SimulatedBoard

    with SimulatedBoard("int8", **UNITS["int8"]) as port:
        yield port


def _read_reply(port):
    frame = b""
    while not frame.strip(bytes([END])):
        frame = port.read_until(bytes([END]))
        assert frame.endswith(bytes([END])), "the board did not answer"
    return decode_frame(frame[:-1])


def _reply(port, command, seq, payload=b"", *, wire=None):
    """Send one frame (or ``wire`` as given) and return the decoded reply."""
    port.write(encode_frame(command, seq, payload) if wire is None else wire)
    return _read_reply(port)


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_board_sim_cli_is_bit_exact_with_a_damaged_frame(unit, capsys):
    """`lowbit board sim` for every unit: M and N not multiples of the array, two requests
    damaged on the way (one while identifying the board, one during the matmul) are rejected
    with BAD_CRC, sent again, and the result is bit-exact."""
    flags = {"int8": [], "log": ["--bits", "4"], "xnor": ["--a-planes", "2", "--w-planes", "1"]}
    k = {"int8": "19", "log": "23", "xnor": "45"}[unit]
    status = main(["board", "sim", "--unit", unit, "--rows", "2", "--cols", "2", *flags[unit],
                   "--m", "5", "--k", k, "--n", "3", "--seed", "3", "--corrupt", "4",
                   "--corrupt", "14"])
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0, out
    assert out[-1] == "bit-exact: 15/15"
    assert sum("rejected by the board: BAD_CRC" in line and "sent again" in line
               for line in out) == 2
    assert sum(line.startswith("damaged request ") for line in out) == 2
    assert "requests rejected and sent again: 2 of" in out[-2]


def test_registers_and_info(int8_board):
    port = int8_board
    link = BoardLink(port)
    info = link.info()
    desc = describe("int8", **UNITS["int8"])
    assert info == {"version": 1, "max_payload": 256, "y_depth": 8,
                    "x_bytes": -(-desc.x_layout.size // 8),
                    "cfg_bytes": -(-desc.cfg_layout.size // 8),
                    "y_bytes": -(-desc.y_layout.size // 8)}
    assert link.read_reg("MAGIC") == 0x4C424954
    link.write_reg("JOB_TILES", 0xDEADBEEF)
    assert link.read_reg("JOB_TILES") == 0xDEADBEEF
    link.write_reg("JOB_TILES", 0)
    assert link.read_reg(0x3F) == 0                     # unmapped: reads 0
    board = Board(link)
    assert board.unit == "int8" and board.params["rows"] == 2 and board.params["cols"] == 2


def test_error_replies_execute_nothing_and_the_link_recovers(int8_board):
    port = int8_board
    link = BoardLink(port)
    x_bytes = link.info()["x_bytes"]
    link.write_reg("JOB_TILES", 7)

    good = encode_frame(Command.WRITE_REG, 50, bytes([0x0C]) + (99).to_bytes(4, "little"))
    bad_crc = good[:4] + bytes([good[4] ^ 0x10]) + good[5:]
    assert _reply(port, 0, 0, wire=bad_crc) == (Command.WRITE_REG, 50, Status.BAD_CRC,
                                                 (9).to_bytes(2, "little"))  # bytes received
    assert _reply(port, 0x7E, 51)[:3] == (0x7E, 51, Status.BAD_COMMAND)
    assert _reply(port, Command.READ_REG, 52, b"\x00\x00")[2] == Status.BAD_LENGTH
    assert _reply(port, Command.INFO, 53, b"\x00")[2] == Status.BAD_LENGTH
    assert _reply(port, Command.READ_Y, 54, b"\x01")[2] == Status.BAD_LENGTH
    assert _reply(port, Command.WRITE_X, 55, bytes(x_bytes + 1))[2] == Status.BAD_LENGTH
    assert _reply(port, Command.WRITE_CFG, 56)[2] == Status.BAD_LENGTH      # no beat at all
    assert _reply(port, Command.READ_REG, 57, b"\x40")[2] == Status.BAD_ADDRESS
    assert _reply(port, Command.WRITE_REG, 58, b"\xff" + bytes(4))[2] == Status.BAD_ADDRESS
    # three bytes: no room for a CRC
    short = slip_encode(b"\x01\x02\x03")
    cmd, seq, status, data = _reply(port, 0, 0, wire=short)
    assert (cmd, seq, status, data) == (1, 2, Status.BAD_LENGTH, b"\x03\x00")
    # longer than the buffer (256 + 4 bytes)
    assert _reply(port, Command.WRITE_X, 59, bytes(x_bytes * 60))[2] == Status.OVERRUN
    # an escape SLIP does not have, and a byte with a low stop bit
    assert _reply(port, 0, 0, wire=bytes([END, 2, 60, ESC, 0x00, END]))[2] == Status.FRAMING
    port.write(bytes([END, Command.INFO]))
    port.write(bytes([61]), bad_stop=True)
    port.run(400)                               # the line idles after the broken byte
    tail = crc16(bytes([Command.INFO, 61])).to_bytes(2, "big")
    assert _reply(port, 0, 0, wire=tail + bytes([END]))[2] == Status.FRAMING
    # a second frame sent while the first one is answered loses its head: not executed
    x_beats = link.read_reg("X_BEATS")
    port.write(encode_frame(Command.INFO, 62))
    assert _reply(port, Command.WRITE_X, 63, bytes(50 * x_bytes))[1:3] == (62, Status.OK)
    assert _read_reply(port)[2] == Status.OVERRUN
    assert link.read_reg("X_BEATS") == x_beats
    # none of it was executed, and the link works
    assert link.read_reg("JOB_TILES") == 7
    link.write_reg("JOB_TILES", 0)
    assert port.framing_errors == 0


def test_a_stalled_stream_is_reported_and_the_board_recovers(int8_board):
    """More tiles than the y buffer holds, y never read: the unit backs up, a write waits
    stall_timeout cycles and replies STALLED with the beats it placed; after a reset the
    board computes a matmul bit-exactly."""
    from lowbit.sim.operands import random_operands

    port = int8_board
    link = BoardLink(port)
    board = Board(link)
    info, rows = board.info, board.description.rows
    rng = np.random.default_rng(5)
    kw = random_operands(board.description, rng, 2 * (info["y_depth"] // rows + 3), 4, 2)
    job = board.packer.prepare(**kw)
    _, _, cfg, x = next(board.packer.blocks(job))
    from lowbit.hw.board_host import _to_bytes

    cycles = port.cycles
    with pytest.raises(BoardRejected) as stalled:
        for t in range(len(cfg)):
            link.request(Command.WRITE_CFG, _to_bytes(cfg[t:t + 1], info["cfg_bytes"]))
            link.request(Command.WRITE_X,
                         _to_bytes(x[t * job.beats:(t + 1) * job.beats], info["x_bytes"]))
    assert stalled.value.status == Status.STALLED
    assert stalled.value.detail < job.beats             # beats placed before the stall
    assert port.cycles - cycles >= 1 << 16              # it waited stall_timeout cycles
    assert "CFG_WITHDRAWN" in board.errors() or "X_WITHDRAWN" in board.errors()
    result = board.matmul(**kw)
    assert (result.y == board.expected(**kw)).all()
    assert board.errors() == []


def test_a_reply_that_never_comes_times_out_and_resync_recovers(int8_board):
    port = int8_board
    link = BoardLink(port)
    saved = port.timeout_cycles
    port.timeout_cycles = 20_000
    try:
        port.write(encode_frame(Command.INFO, 70)[:-1])     # no closing END: no reply
        start = port.cycles
        with pytest.raises(BoardTimeout, match="no reply"):
            link.reply(70)
        waited = port.cycles - start
        assert 20_000 <= waited < 20_000 + 10 * 4 * 20      # the timeout, after the bytes left
        # the END completes the half frame, a whole INFO request: its reply is discarded
        assert link.resync() == 1
    finally:
        port.timeout_cycles = saved
    assert link.info()["version"] == 1


def test_pyserial_over_a_pseudo_terminal(int8_board, capsys):
    """`lowbit board matmul --port` with pyserial on a pty whose other end is the simulated
    board: the code path of a real board, end to end."""
    pytest.importorskip("serial")
    port = int8_board
    master, slave = os.openpty()
    stop = threading.Event()

    def serve():
        saved = port.timeout_cycles
        port.timeout_cycles = 50_000
        try:
            while not stop.is_set():
                if not select.select([master], [], [], 0.02)[0]:
                    continue
                port.write(os.read(master, 4096))
                out = b""
                while True:
                    chunk = port.read_until(bytes([END]))
                    out += chunk
                    if not chunk.endswith(bytes([END])):
                        break
                os.write(master, out)
        finally:
            port.timeout_cycles = saved

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        status = main(["board", "matmul", "--port", os.ttyname(slave), "--timeout", "10",
                       "--m", "3", "--k", "9", "--n", "5", "--seed", "1", "--relu"])
    finally:
        stop.set()
        server.join(5)
        os.close(master)
        os.close(slave)
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0, out
    assert out[-1] == "bit-exact: 15/15"
    assert "int8 rows=2 cols=2" in out[0]


def test_open_serial_errors(monkeypatch):
    from lowbit import LowbitError

    with pytest.raises(LowbitError, match="cannot open serial port /nonexistent/tty"):
        open_serial("/nonexistent/tty")
    monkeypatch.setitem(__import__("sys").modules, "serial", None)
    with pytest.raises(LowbitError, match="needs pyserial"):
        open_serial("/dev/null")


def test_faulty_port_flips_one_ordinary_byte():
    class Sink:
        def __init__(self):
            self.data = []

        def write(self, data):
            self.data.append(data)
            return len(data)

    sink = Sink()
    port = FaultyPort(sink, frames=[2])
    frames = [encode_frame(Command.WRITE_X, i, bytes([END, ESC] * 8 + [7])) for i in (1, 2)]
    for f in frames:
        port.write(f)
    assert sink.data[0] == frames[0]
    diff = [i for i, (a, b) in enumerate(zip(sink.data[1], frames[1])) if a != b]
    assert len(diff) == 1 and len(sink.data[1]) == len(frames[1])
    assert bin(sink.data[1][diff[0]] ^ frames[1][diff[0]]).count("1") == 1
    assert port.damaged == [(2, diff[0], frames[1][diff[0]], sink.data[1][diff[0]])]


@pytest.mark.parametrize("argv, message", [
    (["board", "sim", "--unit", "int8", "--m", "0", "--k", "4", "--n", "4"],
     "argument --m: expected a positive integer"),
    (["board", "sim", "--unit", "int8", "--m", "2", "--k", "4", "--n", "4", "--relu", "--raw"],
     "--relu and --raw exclude each other"),
    (["board", "sim", "--unit", "int8", "--max-k", "8", "--m", "2", "--k", "9", "--n", "4"],
     "--k 9 exceeds the unit's max_k 8"),
    (["board", "sim", "--unit", "int8", "--lanes", "8", "--m", "2", "--k", "4", "--n", "4"],
     "--lanes applies to the xnor unit only, not int8"),
    (["board", "sim", "--unit", "int8", "--divisor", "3", "--m", "2", "--k", "4", "--n", "4"],
     "argument --divisor: expected an integer in 4..65536"),
    (["board", "sim", "--unit", "int8", "--m", "2000", "--k", "2000", "--n", "4"],
     "at most 1,048,576"),
    (["board", "sim", "--unit", "int8", "--m", "2", "--k", "4", "--n", "4", "--json",
      "/nonexistent/out.json"], "cannot write --json"),
    (["board", "matmul", "--port", "/nonexistent/tty", "--m", "2", "--k", "4", "--n", "4"],
     "cannot open serial port"),
    (["fpga", "--board", "icebreaker", "--unit", "int8", "--design", "soc"],
     "--design must be one of scan, uart"),
    (["fpga", "--board", "icebreaker", "--unit", "int8", "--baud", "9600"],
     "--baud applies to --design uart only"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    try:
        status = main(argv)
    except SystemExit as e:         # argparse's own errors
        status = e.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowbit: error:") and message in err[0], err


def test_the_documented_example_frames(int8_board):
    """docs/hardware.md's example bytes are encode_frame's and the simulated board's."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "hardware.md").read_text()
    block = text[text.index("**Example** (an int8 2x2 board"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    frames = [bytes.fromhex(re.search(r"((?:[0-9a-f]{2} )*[0-9a-f]{2})$", line).group(1))
              for line in block.splitlines()]
    requests = [(Command.INFO, 1, b""), (Command.READ_REG, 2, b"\x00"),
                (Command.WRITE_REG, 3, b"\x0c" + (5).to_bytes(4, "little")), (0x7E, 4, b"")]
    assert len(frames) == 2 * len(requests)
    port = int8_board
    for (command, seq, payload), request, reply in zip(requests, frames[::2], frames[1::2]):
        assert encode_frame(command, seq, payload) == request
        port.write(request)
        assert port.read_until(bytes([END])) + port.read_until(bytes([END])) == reply
    BoardLink(port).write_reg("JOB_TILES", 0)
