"""The command table (lowbit/commands.py) is the one place commands are registered: every entry
resolves, ``lowbit --help`` lists exactly the table, in its order, and no other module makes a
parser of its own."""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest

import lowbit
from lowbit.cli import build_parser, main
from lowbit.commands import COMMANDS, Command

ROOT = Path(lowbit.__file__).resolve().parents[1]
SOURCES = [ROOT / d for d in ("lowbit", "hw", "sw", "sw/quant", "sim")]


def _walk(commands, path=()):
    for c in commands:
        yield path + (c.name,), c
        yield from _walk(c.commands, path + (c.name,))


def _function(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _subcommands(parser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_entry_names_functions_that_exist():
    for path, c in _walk(COMMANDS):
        assert c.help, path
        assert c.run or c.commands, f"{' '.join(path)} has nothing to run"
        for target in filter(None, (c.arguments, c.run)):
            assert callable(_function(target)), target


def test_the_parsers_are_the_table_in_its_order():
    parser = build_parser()
    assert list(_subcommands(parser)) == [c.name for c in COMMANDS]
    by_name = {c.name: c for c in COMMANDS}
    for name, sub in _subcommands(parser).items():
        assert list(_subcommands(sub)) == [c.name for c in by_name[name].commands]


def test_no_other_module_adds_a_command():
    """``add_parser`` is called by lowbit/cli.py alone; a command added in any other module
    fails here."""
    allowed = {ROOT / "lowbit" / "cli.py"}
    makers = set()
    for folder in SOURCES:
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("add_parser", "add_subparsers")):
                    makers.add(path.resolve())
    assert makers <= allowed, sorted(str(p.relative_to(ROOT)) for p in makers - allowed)


def test_a_handler_is_imported_when_its_command_runs(monkeypatch, capsys):
    """The table's ``run`` is looked up at run time: a handler replaced in its module is the one
    that runs (nothing holds the old function)."""
    import lowbit.sw.cli as sw_cli

    seen = []
    monkeypatch.setattr(sw_cli, "run_models", lambda args: seen.append(args.command) or 3)
    assert main(["models"]) == 3
    assert seen == ["models"]


def test_a_command_group_needs_its_sub_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["hw"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: the following arguments are required: HW_COMMAND")
    assert err.count("\n") == 1
