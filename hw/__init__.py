"""lowbit.hw: the Amaranth matmul units (INT, log-shift, XNOR-popcount) and their Verilog.

* :mod:`lowbit.hw.units` -- one description per unit kind (layouts, widths, golden kernel, ID
  registers, CLI flags) and the registry of kinds (:func:`describe`, :func:`register_unit`);
* :mod:`lowbit.hw.matmul` -- the scaffold and the three units (:class:`IntMatmul`,
  :class:`LogMatmul`, :class:`XnorMatmul`, :func:`make_unit`);
* :mod:`lowbit.hw.packing` -- the one packer, tile planner and payload decoder;
* :mod:`lowbit.hw.driver` -- the host side of the stream protocol (:class:`Protocol`);
* :mod:`lowbit.hw.simulate` -- running a protocol plan in the Amaranth simulator;
* :mod:`lowbit.hw.verilog` -- :func:`generate_verilog` and :func:`lint_verilog`;
* :mod:`lowbit.hw.accel` -- :class:`Accelerator`: a unit behind a register bus, with an irq;
* :mod:`lowbit.hw.vector` -- the vector units' scaffold (layouts, row buffer, divider, integer
  square root); :mod:`lowbit.hw.vec_softmax`, :mod:`lowbit.hw.vec_argmax`, ... the units.

docs/hardware.md specifies the interface; docs/architecture.md says how the parts fit.
"""

from .units import UnitDescription, describe, register_unit, unit_kinds
from .matmul import IntMatmul, LogMatmul, MatmulUnit, XnorMatmul, make_unit
from .verilog import LINT_WAIVERS, generate_verilog, lint_verilog
from .accel import Accelerator, generate_accel_verilog
# The vector unit kinds register their descriptions on import (docs/architecture.md).
from . import vec_argmax, vec_elementwise, vec_embedding, vec_layernorm, vec_softmax  # noqa: F401

__all__ = ["UnitDescription", "describe", "register_unit", "unit_kinds", "IntMatmul",
           "LogMatmul", "XnorMatmul", "MatmulUnit", "make_unit", "generate_verilog",
           "lint_verilog", "LINT_WAIVERS", "Accelerator", "generate_accel_verilog"]
