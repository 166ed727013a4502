"""``lowbit hw ...``: hardware commands (Verilog generation and lint of the matmul units)."""

from __future__ import annotations

import sys

from lowbit import LowbitError
from lowbit.io import check_output_file, write_text_atomic

from .unit_args import add_unit_flags, unit_params
from .units import ParameterError, describe


def register(subparsers) -> None:
    hw = subparsers.add_parser("hw", help="hardware: Verilog of the matmul units")
    sub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND")
    sub.required = True
    v = sub.add_parser("verilog", help="write a matmul unit as Verilog",
                       description="Write the Verilog of one matmul unit (docs/hardware.md).")
    add_unit_flags(v)
    v.add_argument("--name", help="top module name (default UNIT_matmul: int8_matmul, "
                                  "log_matmul, xnor_matmul)")
    v.add_argument("--top", action="store_true",
                   help="wrap the unit in the accelerator top level (streams, register bus, "
                        "irq; one flat module, default name UNIT_accel)")
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
    from .accel import Accelerator, accel_verilog
    from .verilog import lint_verilog, unit_source

    unit, params = unit_params(args)
    try:    # the accelerator's own limits (MAX_K register) too
        desc = Accelerator.describe(unit, **params) if args.top else describe(unit, **params)
    except ParameterError as e:
        raise LowbitError(e.named("--" + e.param.replace("_", "-"))) from None
    name = args.name or (desc.accel_name if args.top else desc.module_name)
    if not name.isidentifier():
        raise LowbitError(f"--name must be a Verilog identifier, not {name!r}")
    if args.output != "-":
        check_output_file(args.output, "-o")
    if args.top:
        source = accel_verilog(Accelerator(unit=unit, **params), name)
    else:
        source = unit_source(desc, desc.build(), name)
    if args.lint:
        lint_verilog(source, name)
    summary = (f"{name}: {desc.summary()}"
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
