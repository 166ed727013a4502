"""lowbit: hardware/software co-design toolkit for low-bit neural machine translation.

The top-level folders of the repository map to sub-packages:
``hw/`` -> :mod:`lowbit.hw` (Amaranth RTL), ``sw/`` -> :mod:`lowbit.sw` (PyTorch golden
kernels and NMT), ``sim/`` -> :mod:`lowbit.sim` (cocotb / Verilator verification).
"""

__version__ = "0.1.0"


class LowbitError(Exception):
    """An error caused by the user's input (bad argument, missing file, malformed data).

    The CLI prints it as one line, ``lowbit: error: <message>``, and exits with status 2.
    """
