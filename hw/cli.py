"""``lowbit hw ...``: hardware commands (Verilog generation and lint of the matmul units)."""

from __future__ import annotations

import sys

from lowbit import LowbitError
from lowbit.io import check_output_file, write_text_atomic

from .matmul import make_unit
from .unit_args import add_unit_flags, flag_message, unit_params

def register(subparsers) -> None:
    hw = subparsers.add_parser("hw", help="hardware: Verilog of the matmul units")
    sub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND")
    sub.required = True
    v = sub.add_parser("verilog", help="write a matmul unit as Verilog",
                       description="Write the Verilog of one matmul unit (docs/hardware.md).")
    add_unit_flags(v)
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
            raise LowbitError(flag_message(str(e))) from None
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
