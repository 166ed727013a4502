"""``lowbit hw ...``: hardware commands (Verilog generation and lint of the matmul units)."""

from __future__ import annotations

import sys

from lowbit import LowbitError
from lowbit.io import check_output_file, write_text_atomic

from .matmul import MAX_ARRAY, MAX_LANES, UNITS, check_int, check_size, make_unit

# Unit-specific flags: (attribute, parameter name, units that take it).
_UNIT_FLAGS = {
    "a_bits": ("--a-bits", ("int8", "log")),
    "w_bits": ("--w-bits", ("int8",)),
    "bits": ("--bits", ("log",)),
    "zero_code": ("--zero-code", ("log",)),
    "planes": ("--planes", ("xnor",)),
    "a_planes": ("--a-planes", ("xnor",)),
    "w_planes": ("--w-planes", ("xnor",)),
    "lanes": ("--lanes", ("xnor",)),
}


def register(subparsers) -> None:
    hw = subparsers.add_parser("hw", help="hardware: Verilog of the matmul units")
    sub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND")
    sub.required = True
    v = sub.add_parser("verilog", help="write a matmul unit as Verilog",
                       description="Write the Verilog of one matmul unit (docs/hardware.md).")
    v.add_argument("--unit", required=True, help="int8, log or xnor")
    v.add_argument("--rows", type=int, default=4, help="PE array rows (1..64, default 4)")
    v.add_argument("--cols", type=int, default=4, help="PE array columns (1..64, default 4)")
    v.add_argument("--max-k", type=int, default=None,
                   help="largest K the accumulator is sized for (default 32768)")
    v.add_argument("--out-bits", type=int, default=8, help="requantized output width (2..32)")
    v.add_argument("--a-bits", type=int, help="activation bits (int8, log: 2..8, default 8)")
    v.add_argument("--w-bits", type=int, help="weight bits (int8: 2..8, default 8)")
    v.add_argument("--bits", type=int, help="log code bits (log: 1..8, default 4)")
    v.add_argument("--zero-code", action="store_true", default=None,
                   help="log codes with an exact zero (log, bits >= 2)")
    v.add_argument("--planes", type=int, help="activation and weight planes (xnor: 1..8)")
    v.add_argument("--a-planes", type=int, help="activation planes (xnor: 1..8, default 1)")
    v.add_argument("--w-planes", type=int, help="weight planes (xnor: 1..8, default 1)")
    v.add_argument("--lanes", type=int, help="bits of K per beat (xnor: 1..256, default 32)")
    v.add_argument("--name", help="top module name (default int8_matmul / log_matmul / "
                                  "xnor_matmul)")
    v.add_argument("--top", action="store_true",
                   help="wrap the unit in the accelerator top level (streams, register bus, "
                        "irq; one flat module, default name int8_accel / log_accel / "
                        "xnor_accel)")
    v.add_argument("--lint", action="store_true",
                   help="also run verilator --lint-only -Wall on the result")
    v.add_argument("-o", "--output", required=True, help="output .v file ('-' for stdout)")
    v.set_defaults(func=_verilog)

    from .fpga import register as register_fpga     # `lowbit fpga` (hw/fpga.py)
    register_fpga(subparsers)


def register_bench(subparsers) -> None:
    from .fpga_bench import register_bench as register_fpga_bench  # `lowbit bench fpga`
    register_fpga_bench(subparsers)


def report_section(docs_dir) -> str:
    """The FPGA cost tables for ``lowbit report`` (docs/results.md), from bench/fpga.json."""
    from .fpga_bench import report_section as fpga_report_section
    return fpga_report_section(docs_dir)


def unit_params(args) -> tuple[str, dict]:
    """Validate the CLI flags of ``lowbit hw verilog`` into ``(unit, params)``.

    The parameters are checked by building the unit once (cross-parameter rules such as the
    accumulator width live in the constructors).

    Raises :class:`LowbitError` naming the flag, e.g. ``--rows must be a positive integer, not 0``.
    """
    unit = args.unit
    if unit not in UNITS:
        raise LowbitError(f"unknown unit {unit!r} (choose from {', '.join(UNITS)})")
    try:
        params = {"rows": check_size("--rows", args.rows, MAX_ARRAY),
                  "cols": check_size("--cols", args.cols, MAX_ARRAY),
                  "out_bits": check_int("--out-bits", args.out_bits, 2, 32)}
        if args.max_k is not None:
            params["max_k"] = check_int("--max-k", args.max_k, 1)
        for attr, (flag, units) in _UNIT_FLAGS.items():
            value = getattr(args, attr, None)
            if value is None:
                continue
            if unit not in units:
                plural = "s" if len(units) > 1 else ""
                raise LowbitError(f"{flag} applies to the {' and '.join(units)} unit{plural} "
                                  f"only, not {unit}")
            if attr == "zero_code":
                params[attr] = True
            elif attr == "lanes":
                params[attr] = check_int(flag, value, 1, MAX_LANES)
            elif attr == "bits" or attr.endswith("planes"):
                params[attr] = check_int(flag, value, 1, 8)
            else:
                params[attr] = check_int(flag, value, 2, 8)
        planes = params.pop("planes", None)
        if planes is not None:      # --planes sets both; --a-planes / --w-planes win
            params.setdefault("a_planes", planes)
            params.setdefault("w_planes", planes)
        make_unit(unit, **params)._MustUse__silence = True   # cross-parameter checks only
    except (TypeError, ValueError) as e:
        raise LowbitError(_flag_message(str(e))) from None
    return unit, params


def _flag_message(message: str) -> str:
    """Turn a constructor message (``Max K ...``) into one naming the CLI flag."""
    for words, flag in (("Max K", "--max-k"), ("Zero code", "--zero-code"),
                        ("A bits", "--a-bits"), ("W bits", "--w-bits"), ("Bits", "--bits"),
                        ("A planes", "--a-planes"), ("W planes", "--w-planes"),
                        ("Lanes", "--lanes"), ("Rows", "--rows"), ("Cols", "--cols"),
                        ("Out bits", "--out-bits")):
        if message.startswith(words + " "):
            return flag + message[len(words):]
    return message


def _verilog(args) -> int:
    from amaranth.back import verilog as amaranth_verilog

    from .verilog import MODULE_NAMES, lint_verilog

    unit, params = unit_params(args)
    if args.top:
        from .accel import ACCEL_NAMES, Accelerator, accel_verilog
        name = args.name or ACCEL_NAMES[unit]
    else:
        name = args.name or MODULE_NAMES[unit]
    if not name.isidentifier():
        raise LowbitError(f"--name must be a Verilog identifier, not {name!r}")
    if args.output != "-":
        check_output_file(args.output, "-o")
    if args.top:
        try:
            accel = Accelerator(unit=unit, **params)
        except (TypeError, ValueError) as e:     # the accelerator's own limits (MAX_K)
            raise LowbitError(_flag_message(str(e))) from None
        top, source = accel.matmul, accel_verilog(accel, name)
    else:
        top = make_unit(unit, **params)
        source = amaranth_verilog.convert(top, name=name, emit_src=False)
    if args.lint:
        lint_verilog(source, name)
    summary = (f"{name}: {unit} {top.rows}x{top.cols}, accumulator {top.acc_width} bits, "
               f"x__payload {top.x_layout.size} bits, cfg__payload {top.cfg_layout.size} bits, "
               f"y__payload {top.y_layout.size} bits"
               + (", register bus (6-bit word address, 32-bit data), irq"
                  if args.top else "")
               + (", lint clean" if args.lint else ""))
    if args.output == "-":
        sys.stdout.write(source)
        print(summary, file=sys.stderr)
    else:
        write_text_atomic(args.output, source)
        print(f"wrote {args.output} ({summary})")
    return 0
