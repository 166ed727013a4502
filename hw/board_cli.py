"""``lowbit board``: matmuls on a board through its UART bridge, or on the whole board design
simulated in Verilator, checked against the golden kernel.

``lowbit board matmul --port DEV --m M --k K --n N`` talks to a board loaded with
``lowbit fpga --design uart`` (pyserial); the board says which unit it carries.
``lowbit board sim --unit U [unit flags] --m M --k K --n N`` runs the same host code against the
board design Verilated, bytes over its simulated UART pins. Both print ``bit-exact: N/N`` last
and exit with status 1 on a mismatch (docs/hardware.md, "UART bridge").
"""

from __future__ import annotations

import json
import sys
import time

from lowbit import LowbitError
from lowbit.argtypes import int_range, nonneg_int, positive_float, positive_int
from lowbit.contract import ceil_div

from .board import DEFAULT_BAUD
from .uart import DEFAULT_MAX_PAYLOAD, MIN_DIVISOR
from .unit_args import add_unit_flags, unit_params

__all__ = ["board_matmul_arguments", "board_sim_arguments", "run_board_matmul", "run_board_sim",
           "MAX_BOARD_ELEMENTS"]

# Largest operand (elements of A, W or Y): at 115200 baud a UART moves about 11 kB/s, and a
# million int8 elements already take minutes; the bound also keeps host memory small.
MAX_BOARD_ELEMENTS = 1 << 20
_SIM_DIVISOR = 4    # lowbit.sim.board_sim.SIM_DIVISOR (not imported here: it loads the sim)


def board_matmul_arguments(m) -> None:
    m.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 or COM3")
    m.add_argument("--baud", type=positive_int, default=DEFAULT_BAUD,
                   help=f"baud rate the design was built for (default {DEFAULT_BAUD})")
    m.add_argument("--timeout", type=positive_float, default=2.0,
                   help="seconds to wait for each reply (default 2)")
    _matmul_flags(m)


def board_sim_arguments(s) -> None:
    add_unit_flags(s, "matmul")
    _matmul_flags(s)
    s.add_argument("--divisor", type=int_range(MIN_DIVISOR, 1 << 16), default=_SIM_DIVISOR,
                   help=f"clock cycles per UART bit (default {_SIM_DIVISOR}; a board at "
                        f"115200 baud has 217 at 25 MHz)")
    s.add_argument("--max-payload", type=int_range(5, 0xFFFF - 4), default=DEFAULT_MAX_PAYLOAD,
                   help=f"largest request payload in bytes (default {DEFAULT_MAX_PAYLOAD})")
    s.add_argument("--timeout-cycles", type=positive_int, default=None,
                   help="simulated cycles to wait for each reply (default: enough for the "
                        "longest reply)")


def _matmul_flags(p) -> None:
    p.add_argument("--m", type=positive_int, required=True, help="rows of A (tokens)")
    p.add_argument("--k", type=positive_int, required=True, help="reduction length, 1..max_k")
    p.add_argument("--n", type=positive_int, required=True, help="rows of W (output channels)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random operands")
    p.add_argument("--relu", action="store_true", help="requantize with ReLU")
    p.add_argument("--raw", action="store_true", help="compare raw accumulators (acc + bias)")
    p.add_argument("--corrupt", type=positive_int, action="append", default=[],
                   metavar="REQUEST",
                   help="flip one bit of the REQUEST-th request frame on its way (repeatable): "
                        "the board must reject it and the host send it again")
    p.add_argument("--retries", type=nonneg_int, default=2,
                   help="resends of a request the board rejected as damaged (default 2)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")


def _check(args) -> None:
    if args.relu and args.raw:
        raise LowbitError("--relu and --raw exclude each other (raw output is not requantized)")
    for what, elements in (("A (--m x --k)", args.m * args.k), ("W (--n x --k)", args.n * args.k),
                           ("Y (--m x --n)", args.m * args.n)):
        if elements > MAX_BOARD_ELEMENTS:
            raise LowbitError(f"{what} would hold {elements:,} elements; at most "
                              f"{MAX_BOARD_ELEMENTS:,} (2**20) go over a UART")
    if args.json:
        from lowbit.io import check_output_file

        check_output_file(args.json, "--json")


def _check_k(k: int, hw, whose: str, hint: str = "") -> None:
    if k > hw.max_k:
        raise LowbitError(f"--k {k} exceeds {whose} max_k {hw.max_k}{hint}")


def run_board_matmul(args) -> int:
    from .board_host import Board, BoardLink, FaultyPort, open_serial

    _check(args)
    serial = open_serial(args.port, args.baud, args.timeout)
    try:
        return _run(args, serial, f"{args.port} at {args.baud} baud", BoardLink, Board,
                    FaultyPort)
    finally:
        serial.close()


def run_board_sim(args) -> int:
    from lowbit.sim.board_sim import SimulatedBoard

    from .board_host import Board, BoardLink, FaultyPort
    from .units import describe

    _check(args)
    unit, params = unit_params(args, "matmul")
    _check_k(args.k, describe(unit, **params), "the unit's", " (raise it with --max-k)")
    print(f"unit {unit}: {' '.join(f'{k}={v}' for k, v in params.items())}; board design: "
          f"accelerator + UART bridge, {args.divisor} cycles per bit, "
          f"{args.max_payload}-byte requests", flush=True)
    print("building the Verilated board design (cached after the first build) ...", flush=True)
    start = time.perf_counter()
    with SimulatedBoard(unit, divisor=args.divisor, max_payload=args.max_payload,
                        timeout_cycles=args.timeout_cycles, **params) as port:
        print(f"  ready in {time.perf_counter() - start:.1f} s", flush=True)
        status = _run(args, port, "the simulated UART pins", BoardLink, Board, FaultyPort)
        if port.framing_errors:
            raise LowbitError(f"the design sent {port.framing_errors} bytes with a low stop bit")
    return status


def _run(args, port, where: str, BoardLink, Board, FaultyPort) -> int:
    """The host's part, the same for a board and for the simulation."""
    import numpy as np
    from tqdm import tqdm

    from lowbit.sim.operands import random_operands

    say = lambda line: print(line, flush=True)  # noqa: E731
    faulty = FaultyPort(port, args.corrupt, log=say)
    link = BoardLink(faulty, retries=args.retries, log=say)
    board = Board(link)
    hw, info = board.description, board.info
    say(f"board over {where}: {board.unit} "
        f"{' '.join(f'{k}={v}' for k, v in board.params.items())} (from its identification "
        f"registers); bridge protocol {info['version']}, {info['max_payload']}-byte requests, "
        f"y buffer {info['y_depth']} beats")
    _check_k(args.k, hw, "the board's")
    rng = np.random.default_rng(args.seed)
    kw = random_operands(hw, rng, args.m, args.k, args.n, relu=args.relu, raw=args.raw)
    tiles = ceil_div(args.m, hw.rows) * ceil_div(args.n, hw.cols)
    with tqdm(total=tiles, unit="tile", desc=f"board {args.m}x{args.k}x{args.n}",
              file=sys.stderr, disable=None) as bar:
        result = board.matmul(**kw, progress=bar.update)
    want = board.expected(**kw)
    matched, total = int((result.y == want).sum()), int(want.size)
    say(f"{result.tiles} tiles, {result.x_beats} x beats in {result.requests} requests, "
        f"{result.bytes_out} bytes to the board and {result.bytes_in} from it "
        f"({result.seconds:.2f} s); accelerator: {result.board_cycles} cycles, "
        f"{result.busy_cycles} busy; requests rejected and sent again: {link.rejected} of "
        f"{link.requests}")
    if matched != total:
        bad = np.argwhere(result.y != want)
        for m, n in bad[:5]:
            say(f"MISMATCH Y[{m}, {n}]: board {result.y[m, n]}, golden {want[m, n]}")
        if len(bad) > 5:
            say(f"... and {len(bad) - 5} more mismatches")
    if args.json:
        from lowbit.io import write_text_atomic

        record = {"unit": board.unit, "params": board.params, "m": args.m, "k": args.k,
                  "n": args.n, "seed": args.seed, "relu": args.relu, "raw": args.raw,
                  "matched": matched, "total": total, "tiles": result.tiles,
                  "x_beats": result.x_beats, "requests": result.requests,
                  "rejected": link.rejected, "damaged": len(faulty.damaged),
                  "bytes_out": result.bytes_out, "bytes_in": result.bytes_in,
                  "board_cycles": result.board_cycles, "busy_cycles": result.busy_cycles}
        write_text_atomic(args.json, json.dumps(record, indent=1) + "\n")
    say(f"bit-exact: {matched}/{total}")
    return 0 if matched == total else 1
