"""The ``lowbit`` command line.

Each area of the toolkit registers its own sub-commands: a module listed in ``_COMMAND_MODULES``
defines ``register(subparsers)`` (and optionally ``register_bench(subparsers)`` for
``lowbit bench NAME`` benchmarks) which adds parsers whose ``func(args)`` does the work and
returns an exit status (or None for 0). User errors are raised as :class:`lowbit.LowbitError`
and reported as a single line with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lowbit import LowbitError, __version__

# Modules that contribute sub-commands, in the order they appear in ``lowbit --help``.
_COMMAND_MODULES = [
    "lowbit.sw.cli",
    "lowbit.sw.data_cli",
    "lowbit.sw.quant.cli",
    "lowbit.hw.cli",
    "lowbit.hw.board_cli",
    "lowbit.sim.cli",
    "lowbit.sim.accel_bench",
    "lowbit.regress",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention)
        print(f"lowbit: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lowbit", description="Low-bit NMT hardware/software co-design toolkit.")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    modules = []
    for name in _COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as e:  # an area not built yet
            if e.name == name:
                continue
            raise
    for module in modules:
        module.register(sub)
    # `lowbit bench NAME`: benchmarks from every area, each module may add its own.
    bench = sub.add_parser("bench", help="run a benchmark and print its table")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bench_sub.required = True
    for module in modules:
        if hasattr(module, "register_bench"):
            module.register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except LowbitError as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:     # the reader of stdout went away (`lowbit ... | head`)
        sys.stdout = None
        return 141
    except OSError as e:        # the machine refused (disk full, permissions changed mid-run)
        where = f"{e.filename}: " if e.filename else ""
        print(f"lowbit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("lowbit: error: out of memory (try smaller sizes or batches)", file=sys.stderr)
        return 2
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
