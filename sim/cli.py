"""``lowbit verify`` (one random matmul through the Verilated RTL and the golden kernel) and
``lowbit bench units`` (cycles, utilisation and simulation speed of every unit): their flags and
their work (the commands are listed in :data:`lowbit.commands.COMMANDS`)."""

from __future__ import annotations

import sys
import time

from lowbit import LowbitError


# Largest operand (elements of A, W or Y) `lowbit verify` accepts: 16 Mi int64 values, 128 MiB.
MAX_OPERAND_ELEMENTS = 1 << 24


def verify_arguments(p) -> None:
    from lowbit.hw.unit_args import add_unit_flags

    p.add_argument("--m", type=int, help="rows of A (tokens), >= 1; vector units: rows")
    p.add_argument("--k", type=int, help="reduction length, 1..max_k; vector units: row "
                                         "length, 1..max_len")
    p.add_argument("--n", type=int, help="rows of W (output channels), >= 1; matmul units only")
    p.add_argument("--seed", type=int, default=0, help="seed of the random operands (>= 0)")
    add_unit_flags(p)
    p.add_argument("--relu", action="store_true", help="requantize with ReLU")
    p.add_argument("--raw", action="store_true", help="compare raw accumulators (acc + bias)")
    p.add_argument("--backpressure", type=float, default=0.0,
                   help="probability of an idle input / refused output cycle (0..0.9)")


def bench_units_arguments(p) -> None:
    p.add_argument("--m", type=int, default=32, help="M (default 32)")
    p.add_argument("--k", type=int, default=256, help="K of int8 and log (default 256)")
    p.add_argument("--k-xnor", type=int, default=8192,
                   help="K of xnor in bits (default 8192 = 256 beats of 32 lanes, the same "
                        "beats per tile as int8/log)")
    p.add_argument("--n", type=int, default=32, help="N (default 32)")
    p.add_argument("--rows", type=int, default=4, help="array rows (default 4)")
    p.add_argument("--cols", type=int, default=4, help="array columns (default 4)")
    p.add_argument("--units", default="int8,log,xnor", help="comma-separated units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma-separated simulators to skip: "
                                              "amaranth, cocotb")
    p.add_argument("--json", metavar="FILE",
                   help="also write the table's rows to this JSON file (e.g. bench/units.json)")


# ---------------------------------------------------------------------------------------------


def verify_params(args) -> tuple[str, dict]:
    """``(unit, params)`` from ``lowbit verify`` flags (the unit flags of
    :mod:`lowbit.hw.unit_args`: ``--bits`` is the width the unit takes, as in every command)."""
    from lowbit.hw.unit_args import unit_params
    from lowbit.hw.units import unit_class

    try:
        family = unit_class(args.unit).family
    except ValueError:      # unit_params names the unknown unit, after the operand flags
        family = "matmul"
    if family == "vector":
        for flag, value in (("--n", args.n), ("--relu", args.relu or None),
                            ("--raw", args.raw or None)):
            if value is not None:
                raise LowbitError(f"{flag} applies to the matmul units only, not {args.unit}")
        for flag, value in (("--m", args.m), ("--k", args.k)):
            _check_int(flag, value, 1)
        _check_operand_sizes(args.m, args.k, 1)
    else:
        for flag, value in (("--m", args.m), ("--k", args.k), ("--n", args.n)):
            _check_int(flag, value, 1)
        _check_operand_sizes(args.m, args.k, args.n)
    _check_int("--seed", args.seed, 0)
    bp = args.backpressure
    if isinstance(bp, bool) or not isinstance(bp, (int, float)) or not 0 <= bp <= 0.9:
        raise LowbitError(f"--backpressure must be a number in 0..0.9, not {bp!r}")
    for flag, value in (("--relu", args.relu), ("--raw", args.raw)):
        if not isinstance(value, bool):
            raise LowbitError(f"{flag} is a switch (true or false), not {value!r}")
    if args.relu and args.raw:
        raise LowbitError("--relu and --raw exclude each other (raw output is not requantized)")
    return unit_params(args)


def _check_int(flag: str, value, lo: int) -> None:
    """``value`` must be an int (not a bool) of at least ``lo``, else :class:`LowbitError`
    (``None``: the flag is missing)."""
    if value is None:
        raise LowbitError(f"{flag} is required")
    what = "a positive integer" if lo == 1 else "a non-negative integer"
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise LowbitError(f"{flag} must be {what}, not {value!r}")


def _check_operand_sizes(m: int, k: int, n: int) -> None:
    """Bounded before anything is built: the operands and the result live in host memory."""
    for what, elements in (("A (--m x --k)", m * k), ("W (--n x --k)", n * k),
                           ("Y (--m x --n)", m * n)):
        if elements > MAX_OPERAND_ELEMENTS:
            raise LowbitError(f"{what} would hold {elements:,} elements; at most "
                              f"{MAX_OPERAND_ELEMENTS:,} (2**24) are allowed")


def _describe(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def run_verify(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from lowbit.hw.units import describe
    from lowbit.sim.harness import VerilatedUnit
    from lowbit.sim.operands import random_operands

    unit, params = verify_params(args)
    hw = describe(unit, **params)
    if hw.family == "vector":
        from lowbit.sim.vector_cli import verify_vector

        return verify_vector(args, hw)
    if args.k > hw.max_k:
        raise LowbitError(f"--k {args.k} exceeds the unit's max_k {hw.max_k} "
                          f"(raise it with --max-k)")
    print(f"unit {unit}: {_describe(params)} (accumulator {hw.acc_width} bits, "
          f"max_k {hw.max_k})", flush=True)
    start = time.perf_counter()
    print("building the Verilated unit (cached after the first build) ...", flush=True)
    with VerilatedUnit(unit, **params) as rtl:
        print(f"  ready in {time.perf_counter() - start:.1f} s", flush=True)
        rng = np.random.default_rng(args.seed)
        kw = random_operands(hw, rng, args.m, args.k, args.n, relu=args.relu, raw=args.raw)
        job = rtl.prepare(**kw)
        with tqdm(total=job.x_beats, unit="beat", desc=f"RTL {args.m}x{args.k}x{args.n}",
                  file=sys.stderr, disable=None) as bar:
            start = time.perf_counter()
            y, cycles, _, _ = rtl.run(job, gaps=args.backpressure, stalls=args.backpressure,
                                      seed=args.seed, progress=bar.update)
            seconds = time.perf_counter() - start
        y = y[0]
        want = rtl.expected(**kw)
    matched = int((y == want).sum())
    total = int(want.size)
    print(f"cycles {cycles} (MAC-bound {job.ideal_cycles:.0f}, utilisation "
          f"{100 * job.ideal_cycles / cycles:.1f}%), {cycles / seconds / 1e6:.2f} M cycles/s")
    if matched != total:
        bad = np.argwhere(y != want)
        for m, n in bad[:5]:
            print(f"MISMATCH Y[{m}, {n}]: RTL {y[m, n]}, golden {want[m, n]}")
        if len(bad) > 5:
            print(f"... and {len(bad) - 5} more mismatches")
    print(f"bit-exact: {matched}/{total}", flush=True)
    return 0 if matched == total else 1


def run_bench_units(args) -> int:
    from lowbit.sim.bench import bench_units, write_json

    units = [u.strip() for u in args.units.split(",") if u.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bad = skip - {"amaranth", "cocotb"}
    if bad:
        raise LowbitError(f"--skip takes amaranth and/or cocotb, not {', '.join(sorted(bad))}")
    for flag, value in (("--m", args.m), ("--k", args.k), ("--k-xnor", args.k_xnor),
                        ("--n", args.n)):
        if value < 1:
            raise LowbitError(f"{flag} must be a positive integer, not {value}")
    if args.seed < 0:
        raise LowbitError(f"--seed must be a non-negative integer, not {args.seed}")
    _check_operand_sizes(args.m, max(args.k, args.k_xnor), args.n)
    if args.json:
        from lowbit.io import check_output_file

        check_output_file(args.json, "--json")
    rows = bench_units(units, m=args.m, k=args.k, k_xnor=args.k_xnor, n=args.n,
                       rows=args.rows, cols=args.cols, seed=args.seed, skip=skip)
    if args.json:
        write_json(args.json, {"command": "lowbit bench units " + " ".join(sys.argv[3:]),
                               "rows": rows})
    return 0
