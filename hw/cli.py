"""``lowbit hw verilog``: the Verilog of a unit, linted on request (flags and work; the command is
listed in :data:`lowbit.commands.COMMANDS`)."""

from __future__ import annotations

import sys

from lowbit import LowbitError
from lowbit.io import check_output_file, write_text_atomic

from .unit_args import add_unit_flags, unit_params
from .units import ParameterError, describe


def verilog_arguments(v) -> None:
    add_unit_flags(v)
    v.add_argument("--name", help="top module name (default UNIT_matmul: int8_matmul, "
                                  "log_matmul, xnor_matmul)")
    v.add_argument("--top", action="store_true",
                   help="wrap the unit in the accelerator top level (streams, register bus, "
                        "irq; one flat module, default name UNIT_accel)")
    v.add_argument("--lint", action="store_true",
                   help="also run verilator --lint-only -Wall on the result")
    v.add_argument("-o", "--output", required=True, help="output .v file ('-' for stdout)")


def run_verilog(args) -> int:
    from .accel import Accelerator, accel_verilog
    from .verilog import flat_verilog, lint_verilog

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
        source = flat_verilog(desc.build(), name)
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
