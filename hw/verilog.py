"""Verilog out of the matmul units, and a Verilator lint of it.

:func:`generate_verilog` is what ``lowbit hw verilog`` and the cocotb testbenches call.
:func:`lint_verilog` runs ``verilator --lint-only -Wall`` with the waivers of docs/hardware.md.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from lowbit import LowbitError
from lowbit.toolenv import verilator_env

from .units import describe

__all__ = ["LINT_WAIVERS", "generate_verilog", "flat_verilog", "lint_verilog"]

# Why each warning is waived (docs/hardware.md): Amaranth's netlist relies on Verilog's implicit
# zero/sign extension of narrower operands (WIDTHEXPAND); it keeps unused slices of payload
# vectors as named wires (UNUSEDSIGNAL); it initialises regs in their declarations and again at
# the top of always @* blocks (PROCASSINIT). Nothing else is waived.
LINT_WAIVERS = ("-Wno-WIDTHEXPAND", "-Wno-UNUSEDSIGNAL", "-Wno-PROCASSINIT")


def generate_verilog(unit: str, *, name: str | None = None, **params) -> str:
    """Verilog source of the unit of kind ``unit`` (``int8``, ``log``, ``xnor``, ...) built from
    ``params``.

    ``name`` is the top module name (default the description's ``module_name``:
    ``int8_matmul``, ``log_matmul``, ``xnor_matmul``). Ports: ``clk``, ``rst``, ``x__payload/valid/ready``,
    ``cfg__payload/valid/ready``, ``y__payload/valid/ready`` (docs/hardware.md).
    Bad parameters raise TypeError/ValueError with the unit's validation message.
    """
    desc = describe(unit, **params)
    if name is None:
        name = desc.module_name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"module name must be a Verilog identifier, not {name!r}")
    return flat_verilog(desc.build(), name)


def flat_verilog(top, name: str) -> str:
    """Verilog of ``top`` as ONE flat module ``name``: every unit's file and the accelerator top.

    Every unit is made of submodules (the matmul scaffold's accumulation, cfg buffer and drain;
    the vector units' divider and row buffer), and Amaranth writes each submodule as its own
    Verilog module (``\\name.matmul``); a SoC integrator gets a single self-contained module
    instead, and the file passes the documented lint (``-Wall`` with :data:`LINT_WAIVERS`) without Verilator's one-module-per-file rule
    (DECLFILENAME). Same steps as ``amaranth.back.verilog.convert`` (and the same Yosys it
    finds), plus ``flatten``.
    """
    from amaranth._toolchain.yosys import find_yosys
    from amaranth.back import rtlil

    text = rtlil.convert(top, name=name, emit_src=False)
    yosys = find_yosys(lambda version: version >= (0, 40))
    script = [f"read_rtlil <<rtlil\n{text}\nrtlil", f"hierarchy -top {name}", "flatten",
              "proc -nomux -norom", "memory_collect", "write_verilog -norename"]
    return yosys.run(["-q", "-"], "\n".join(script), ignore_warnings=True)


def lint_verilog(source: str, top: str, *, timeout: float = 300) -> str:
    """Run ``verilator --lint-only -Wall`` (plus :data:`LINT_WAIVERS`) on ``source``.

    Returns Verilator's output (empty when clean); raises :class:`lowbit.LowbitError` with the
    warnings when the lint fails.
    """
    with tempfile.TemporaryDirectory(prefix="lowbit-lint-") as tmp:
        path = os.path.join(tmp, f"{top}.v")
        with open(path, "w") as f:
            f.write(source)
        cmd = ["verilator", "--lint-only", "-Wall", *LINT_WAIVERS, "--top-module", top, path]
        proc = subprocess.run(cmd, env=verilator_env(), capture_output=True, text=True,
                              timeout=timeout)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise LowbitError(f"verilator lint of {top} failed:\n{out}")
    return out
