"""The package's import graph: no cycles (imports inside function bodies included), library
modules never import the CLI dispatcher, and the RTL side loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lowbit

ROOT = Path(lowbit.__file__).resolve().parents[1]
PACKAGES = {"lowbit": ROOT / "lowbit", "lowbit.hw": ROOT / "hw", "lowbit.sw": ROOT / "sw",
            "lowbit.sw.quant": ROOT / "sw" / "quant", "lowbit.sim": ROOT / "sim"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.glob("*.py"):
            name = pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"
            mods[name] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every lowbit module ``name`` imports, anywhere in its body (relative imports resolved)."""
    is_pkg = path.stem == "__init__"
    base = name if is_pkg else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                mod = f"{parent}.{node.module}" if node.module else parent
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            # the most specific known module the target names (a package's __init__ counts)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m == "lowbit" or (n.startswith(m + ".") and graph.get(m) is not None
                                 and m != n and m in PACKAGES):
                continue    # a module's own package __init__ is loaded first anyway
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_function_body_imports():
    graph = _graph()
    assert "lowbit.sw.golden" in graph["lowbit.sw.quant.kernels"] or \
        any("lowbit.sw" in m for m in graph["lowbit.sw.quant.kernels"])
    # a cycle planted in a copy of the graph is found
    planted = {k: set(v) for k, v in graph.items()}
    planted["lowbit.contract"].add("lowbit.sw.golden")
    assert _cycle(planted) is not None


def test_no_import_cycles():
    assert _cycle(_graph()) is None


def test_library_modules_never_import_the_cli_dispatcher():
    """Only ``python -m lowbit`` imports the dispatcher, and only the dispatcher the command
    table; the table and the dispatcher import no area of the toolkit (handlers are named by
    string and imported when a command is built or run)."""
    graph = _graph()
    users = sorted(n for n, deps in graph.items() if "lowbit.cli" in deps
                   and n not in ("lowbit.__main__",))
    assert users == []
    assert sorted(n for n, deps in graph.items() if "lowbit.commands" in deps) == ["lowbit.cli"]
    assert graph["lowbit.commands"] <= {"lowbit"}
    assert graph["lowbit.cli"] <= {"lowbit", "lowbit.commands"}


def test_the_rtl_side_loads_no_torch():
    code = "import lowbit.hw, lowbit.contract, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
