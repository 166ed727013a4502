"""lowbit.hw: the Amaranth matmul units (INT, log-shift, XNOR-popcount) and their Verilog.

* :mod:`lowbit.hw.matmul` -- the scaffold and the three units (:class:`IntMatmul`,
  :class:`LogMatmul`, :class:`XnorMatmul`, :func:`make_unit`);
* :mod:`lowbit.hw.driver` -- the host side of the stream protocol (:class:`Protocol`);
* :mod:`lowbit.hw.simulate` -- running a protocol plan in the Amaranth simulator;
* :mod:`lowbit.hw.verilog` -- :func:`generate_verilog` and :func:`lint_verilog`;
* :mod:`lowbit.hw.accel` -- :class:`Accelerator`: a unit behind a register bus, with an irq.

docs/hardware.md specifies the interface.
"""

from .matmul import IntMatmul, LogMatmul, MatmulUnit, UNITS, XnorMatmul, make_unit
from .verilog import LINT_WAIVERS, MODULE_NAMES, generate_verilog, lint_verilog
from .accel import Accelerator, generate_accel_verilog

__all__ = ["IntMatmul", "LogMatmul", "XnorMatmul", "MatmulUnit", "UNITS", "make_unit",
           "generate_verilog", "lint_verilog", "LINT_WAIVERS", "MODULE_NAMES", "Accelerator",
           "generate_accel_verilog"]
