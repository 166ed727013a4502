"""The ``lowbit`` command line.

The commands are the table :data:`lowbit.commands.COMMANDS` (name, help, the function adding
each command's flags and the function running it); this module builds the parsers from it and
dispatches. A handler ``func(args)`` does the work and returns an exit status (or None for 0).
User errors are raised as :class:`lowbit.LowbitError` and reported as a single line with exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lowbit import LowbitError, __version__
from lowbit.commands import COMMANDS, Command


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention)
        print(f"lowbit: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _resolve(target: str):
    """The function named by ``"module:function"``."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class _Handler:
    """A command's ``func``: imports ``"module:function"`` when the command runs."""

    def __init__(self, target: str):
        self.target = target

    def __call__(self, args):
        return _resolve(self.target)(args)


def _add_command(subparsers, command: Command) -> None:
    p = subparsers.add_parser(command.name, help=command.help, description=command.description)
    if command.arguments:
        _resolve(command.arguments)(p)
    if command.run:
        p.set_defaults(func=_Handler(command.run))
    if command.commands:
        sub = p.add_subparsers(dest=command.dest, metavar=command.metavar, parser_class=_Parser)
        sub.required = True
        for inner in command.commands:
            _add_command(sub, inner)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lowbit", description="Low-bit NMT hardware/software co-design toolkit.")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        _add_command(sub, command)
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
