"""Every ``lowbit`` command, in one table, in the order of ``lowbit --help``.

A :class:`Command` names a command, its one-line help and description, the function that adds
its flags to its parser and the function that runs it, both as ``"module:function"`` strings:
the table imports no area of the toolkit; :mod:`lowbit.cli` builds the parsers from it and looks
a handler up when its command runs. The flags and the work stay beside the code they
concern (``lowbit.sw.cli``, ``lowbit.hw.cli``, ``lowbit.sim.cli``, ...), and no library module
imports this table or the dispatcher.

Adding a command is one entry here plus its two functions: ``NAME_arguments(parser)`` (the
flags, and the description where it is computed) and ``run_NAME(args)`` (the work; returns the
exit status, or None for 0, and raises :class:`lowbit.LowbitError` for bad input).
docs/architecture.md says the same.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Command", "COMMANDS"]


@dataclass(frozen=True)
class Command:
    """One ``lowbit`` command (or a group of sub-commands).

    Attributes
    ----------
    name : str
        The word on the command line.
    help : str or None
        The line ``lowbit --help`` (or the group's ``--help``) shows.
    arguments : str or None
        ``"module:function"``; the function takes the command's ``argparse`` parser and adds
        its flags (and may set its description where that is computed).
    run : str or None
        ``"module:function"``; the function takes the parsed arguments and does the work.
    description : str or None
        The text of the command's own ``--help``.
    commands : tuple of Command
        Sub-commands (``lowbit hw verilog``); one of them is required.
    dest, metavar : str
        Where the chosen sub-command is stored, and how ``--help`` names it.
    """

    name: str
    help: str | None = None
    arguments: str | None = None
    run: str | None = None
    description: str | None = None
    commands: tuple[Command, ...] = ()
    dest: str | None = None
    metavar: str = "COMMAND"


_SW, _QUANT, _HW, _SIM = "lowbit.sw.cli", "lowbit.sw.quant.cli", "lowbit.hw.cli", "lowbit.sim.cli"


def _cmd(name, module, help, description=None, *, stem=None) -> Command:
    """A command whose flags and work are ``module:STEM_arguments`` and ``module:run_STEM``
    (``STEM``: the name with ``-`` as ``_``)."""
    stem = stem or name.replace("-", "_")
    return Command(name, help, f"{module}:{stem}_arguments", f"{module}:run_{stem}", description)


COMMANDS: tuple[Command, ...] = (
    # -- the translation models (lowbit.sw)
    _cmd("train", _SW, "train a translation model on Multi30k-style data",
         "Train an English->German Transformer. Writes a checkpoint directory usable with "
         "--model."),
    _cmd("translate", _SW, "translate stdin to stdout, one sentence per line"),
    _cmd("eval", _SW, "translate a split and print its sacreBLEU score"),
    _cmd("models", _SW, "list the shipped models"),
    _cmd("import-hf", _SW, "convert a Hugging Face MarianMT directory to a lowbit checkpoint"),
    _cmd("export-hf", _SW, "write a model as a Hugging Face MarianMT directory",
         "Write a model as a MarianMT directory for transformers. A packed model is written "
         "with its golden weights, dequantized (its activation quantization has no MarianMT "
         "equivalent)."),
    _cmd("export-ct2", _SW, "write a model as a CTranslate2 model directory",
         "Write a model as a CTranslate2 model (needs the ctranslate2 package). Inputs are "
         "SentencePiece pieces; decoding starts from the model's own start token."),
    _cmd("demo", _SW, "translate a few sentences with the shipped model and score it"),
    Command("data", "download datasets from their public source",
            description="Download datasets from their public source, every file checked "
                        "against a SHA-256 recorded in lowbit.",
            dest="data_command", metavar="ACTION", commands=(
                _cmd("fetch", "lowbit.sw.data_cli",
                     "download Multi30k task 1 English-German (SPLIT.{en,de}.gz)"),
            )),
    # -- quantized models (lowbit.sw.quant)
    _cmd("quantize", _QUANT, "quantize a model and write it as a packed model",
         "Quantize a float or QAT-trained model with a scheme and write a packed model "
         "directory (integer weights at their real bit width, scales, manifest). A model "
         "trained with --qat SCHEME keeps its learned ranges; a float model is calibrated on "
         "training batches (post-training quantization)."),
    _cmd("report", _QUANT, "regenerate docs/results.md from recorded eval results"),
    _cmd("check-devices", _QUANT, "decode a split on CPU and GPU, compare the tokens",
         "Decode a split with a (packed) model on the CPU and on the GPU and compare the "
         "token ids sentence by sentence."),
    _cmd("check-integer", _QUANT,
         "decode under a guard against floating-point tensor operations",
         "Decode sentences of a split on the CPU with every tensor operation checked, from "
         "the token ids to the decoded ids: any floating-point tensor operation stops the "
         "decode and is named (exit status 1)."),
    # -- hardware (lowbit.hw)
    Command("hw", "hardware: Verilog of the matmul units", dest="hw_command",
            metavar="HW_COMMAND", commands=(
                _cmd("verilog", _HW, "write a matmul unit as Verilog",
                     "Write the Verilog of one matmul unit (docs/hardware.md)."),
            )),
    _cmd("fpga", "lowbit.hw.fpga",
         "synthesise and place-and-route a matmul unit on an FPGA board",
         "Build one matmul unit for an FPGA board with the YoWASP (PyPI) builds of Yosys and "
         "nextpnr and report LUT/FF/DSP/BRAM use and Fmax (docs/fpga.md)."),
    Command("board", "run a matmul on an FPGA board over its UART, or on the board design "
                     "simulated in Verilator",
            description="Run one random matmul through the accelerator's UART bridge and "
                        "compare it with the golden kernel (docs/hardware.md, 'UART bridge'). "
                        "The last line is 'bit-exact: MATCHED/TOTAL'; exit status 1 on any "
                        "mismatch, 2 on a bad argument or a board error.",
            dest="board_command", commands=(
                _cmd("matmul", "lowbit.hw.board_cli",
                     "on a board loaded with `lowbit fpga --design uart` (needs pyserial)",
                     "Run a random matmul on a board over its USB serial port. The unit and "
                     "its parameters are read from the board's identification registers.",
                     stem="board_matmul"),
                _cmd("sim", "lowbit.hw.board_cli",
                     "on the whole board design simulated in Verilator",
                     "Build (cached) the board design - the accelerator behind its UART "
                     "bridge - with Verilator and run a random matmul through it from the "
                     "host code that drives a real board, bytes over the simulated UART pins.",
                     stem="board_sim"),
            )),
    # -- simulation and co-simulation (lowbit.sim)
    _cmd("verify", _SIM, "run one random matmul (or rows of a vector operation) through the "
                         "Verilated unit and the golden kernel",
         "Build (cached) the Verilated unit, run one random matmul of the given shape (vector "
         "units: --m random rows of --k elements, then the unit's corner cases) through the "
         "RTL and through the golden kernel, and compare every element. The last line is "
         "'bit-exact: MATCHED/TOTAL'; the exit status is 1 on any mismatch, 2 on a bad "
         "argument."),
    _cmd("cosim", "lowbit.sim.cosim_cli",
         "translate a split with every quantized matmul run on the Verilated RTL",
         "Decode a test split with a packed model while every quantized matmul runs on the "
         "Verilated matmul unit of its scheme (INT, log-shift or XNOR-popcount) and on the "
         "golden kernel; every result is compared with equality, and the final tokens with a "
         "pure golden decode. The last line is 'identical: N/N sentences'; the exit status is "
         "1 on any mismatch (the first mismatching matmul is named with its layer, shapes and "
         "element), 2 on a bad argument."),
    _cmd("regress", "lowbit.regress",
         "run a regression matrix (packages x splits x checks) on Ray",
         "Run every cell of the matrix in CONFIG.toml (golden BLEU, CPU/GPU token identity, "
         "co-simulation) as Ray tasks, on a local Ray instance or the cluster at --ray "
         "ADDRESS. Results go to the config's output JSON and a Markdown table beside it, "
         "rewritten after every cell; a re-run skips finished cells. Exit status 1 if any "
         "cell failed."),
    # -- benchmarks of every area
    Command("bench", "run a benchmark and print its table", dest="bench", metavar="BENCH",
            commands=(
                _cmd("decode", _SW, "decoding speed, greedy vs beam (sentences/s)",
                     stem="bench_decode"),
                _cmd("fpga", "lowbit.hw.fpga_render",
                     "FPGA cost table of the matmul units (docs/fpga.md)",
                     "Build every matmul unit at several sizes on each board (each build once: "
                     "bench/fpga.json keeps the records), find the largest array of each unit "
                     "per board, then print the tables and write them into docs/fpga.md with "
                     "the plot docs/img/fpga_cost_per_mac.png.",
                     stem="bench_fpga"),
                _cmd("units", _SIM,
                     "cycles, utilisation and simulation speed of the three matmul units",
                     "For one mid-size matmul per unit: simulated cycles against the ideal "
                     "M*K*N/(rows*cols), and simulation speed (cycles/s) in the Amaranth "
                     "simulator, cocotb on Verilator, and the compiled Verilator harness.",
                     stem="bench_units"),
                _cmd("cosim", "lowbit.sim.cosim_cli",
                     "co-simulation speed: sentences/s, simulated cycles/s, utilisation",
                     "Co-simulate the first N sentences of a split (bit-exact check included) "
                     "and report sentences/s, simulated cycles/s, array utilisation and the "
                     "projected time for the full 1000-sentence split.",
                     stem="bench_cosim"),
                _cmd("accel", "lowbit.sim.accel_bench",
                     "the integer-only accelerator: cycles per token, where they go, "
                     "sentences/s against the CPU",
                     "Co-simulate an integer-only package (every operation on RTL, checked) "
                     "and report cycles per token and sentence, the share of each operation "
                     "kind, weight traffic at a memory bandwidth, sentences/s at a clock, and "
                     "the CPU decode of the same sentences for the ratio "
                     "(docs/accelerator.md).",
                     stem="bench_accel"),
            )),
)
