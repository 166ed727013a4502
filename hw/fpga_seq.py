"""The sequencer top as an FPGA design (``lowbit fpga --design sequencer``).

:class:`~lowbit.hw.sequencer.SequencerCore` -- program memory, the R x C INT8 matmul array, the
vector units and the sequencer -- is built as it runs the shipped integer-only model in
``lowbit cosim --engine sequencer``: a 2^24-word scratchpad behind its read and write ports
(the external memory, e.g. the ULX3S's SDRAM, that the simulation models), vector rows of up
to 1024 elements and output-score rows of 8000 (the vocabulary) -- but 256 program words, not
the simulation's 1024: the program memory is read in the cycle it is addressed, so it is
distributed RAM (473-bit command words), and 1024 words of it need 107 % of the ECP5-85F's
logic cells; 256 hold one sentence's programs (an encoder pass of 101 commands, a decoder
step of 129), loaded by the host before each.
The scratchpad ports go to :class:`~lowbit.hw.fpga.WordScanWrapper`, as a unit's
ports do, so the count is the core's logic without a memory controller.
"""

from __future__ import annotations

from .sequencer import SequencerCore, check_array

# What `lowbit cosim --engine sequencer` builds for the shipped integer-only model
# (sim/seq_compile.py: the scratchpad, the compiler's max_len, the vocabulary), with the program
# memory of one sentence's programs (see above).
SEQUENCER_FPGA = {"depth": 1 << 24, "program_depth": 256, "max_len": 1024, "score_len": 8000}


def sequencer_params(unit: str, params: dict) -> dict:
    """The parameters of the sequencer design whose matmul array is ``params``' ``rows x
    cols`` (the rest: :data:`SEQUENCER_FPGA`); ``ValueError`` for anything else than an INT8
    array the sequencer takes (its units' other parameters are the sequencer's own)."""
    if unit != "int8":
        raise ValueError(f"--design sequencer holds an INT8 array; --unit must be int8, "
                         f"not {unit}")
    fixed = {**SEQUENCER_FPGA, "out_bits": 8}
    other = {k for k, v in params.items() if k not in ("rows", "cols") and fixed.get(k) != v}
    if other:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(other))
        raise ValueError(f"--design sequencer takes --rows and --cols only, not {names}")
    rows, cols = params.get("rows", 1), params.get("cols", 1)
    check_array(rows, cols, names=("--rows", "--cols"))
    return {"rows": rows, "cols": cols, **SEQUENCER_FPGA}


def sequencer_core(unit: str, params: dict) -> tuple[SequencerCore, dict]:
    """The sequencer core of :func:`sequencer_params` and those parameters."""
    p = sequencer_params(unit, params)
    core = SequencerCore(**{k: p[k] for k in SEQUENCER_FPGA}, mm_rows=p["rows"],
                         mm_cols=p["cols"])
    return core, p
