"""``lowbit bench fpga``'s builds: which configurations, and running them.

Builds every unit at several array sizes on each board (:mod:`lowbit.hw.fpga`) and a sweep over
bit widths. Results are kept in ``bench/fpga.json`` (one record per build, written atomically
after each build, so a rerun builds only what is missing). The cost model fitted to the builds
is :mod:`lowbit.hw.fpga_fit`; the tables, the plot, docs/fpga.md and the command itself (which
also confirms the largest arrays by builds) are :mod:`lowbit.hw.fpga_render`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from lowbit import LowbitError
from lowbit.io import write_text_atomic

from .fpga import BOARDS, FpgaDoesNotFit
from .units import unit_class, unit_kinds

__all__ = ["Config", "default_configs", "fallback_configs", "run_bench"]

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO / "bench" / "fpga.json"

# The units are compared with this one (the same board, cost per MAC).
REFERENCE = "int8"


def bench_units() -> tuple[str, ...]:
    """The unit kinds the bench builds: those whose description has an FPGA base precision
    (``fpga_base``: INT8, the paper's 4-bit log codes, BMT's 1-bit weights and activations
    with 32 lanes of K per beat), in registration order."""
    return tuple(k for k in unit_kinds() if unit_class(k).fpga_base is not None)


def base_params(unit: str) -> dict:
    """The parameters of ``unit`` in the size sweep (its description's ``fpga_base``)."""
    return dict(unit_class(unit).fpga_base)


# Array sizes (rows, cols). Four shapes pin down the linear model of fit_array_model: the
# per-PE cost, the per-row input registers (an array row's activations), the per-column
# drain/requantization, and the fixed control. With three shapes a row's cost would count as
# PE cost (in an n x n array it is n of n^2 PEs' share).
# The shapes are large enough that the PEs, not the fixed control and the per-column drain,
# hold most of each build's LUTs: on the ECP5 a column's drain costs several PEs, so arrays of
# one or two PEs a column would leave the per-PE term to the builds' noise (several per cent of
# synthesis and packing), which the solve of four terms amplifies.
SIZES = {"icebreaker": ((1, 1), (2, 1), (1, 2), (2, 2)),
         "ulx3s-85f": ((2, 2), (4, 2), (2, 4), (4, 4))}
# The clock target nextpnr places and routes for on each board (`lowbit fpga --freq`); every
# build of the bench, bare PEs included, is asked for it and reports its achieved Fmax.
TARGET_MHZ = {"icebreaker": 40.0, "ulx3s-85f": 120.0}
# The units are compared with their PE arrays in LUT logic and the per-column requantization
# multipliers in DSP blocks (`lowbit fpga --dsp requant`); INT8 is also built with every
# multiplier in DSPs (`--dsp auto`).
MODE = "requant"
# A bench shape whose build fails inside a tool (not for lack of room) is replaced by the first
# of these the unit has not failed at, so that the model still has three shapes. Yosys 0.70's
# ABC9 reintegration asserted (`GetSize(conn.first) == GetSize(conn.second)`) on an earlier log
# unit at 2x4 on the ECP5; 3x3 (or 5x3) with any three of the ECP5 shapes still separates
# the four terms.
ALT_SIZES = {"icebreaker": ((3, 1), (1, 3)), "ulx3s-85f": ((3, 3), (5, 3))}
SWEEP_BOARD, SWEEP_SIZES = "ulx3s-85f", ((2, 2), (4, 2))
# The bit sweep of the cost-per-MAC plot is each description's ``fpga_sweep``: (bits, params)
# with INT a = w = b bits; log b-bit weight codes (int8 activations); XNOR p activation and p
# weight planes. Parameters equal to the base precision are left out, so those points are the
# very builds of the size sweep.


@dataclasses.dataclass(frozen=True)
class Config:
    """One build: board, unit, array size, unit parameters and DSP mode."""
    board: str
    unit: str
    rows: int
    cols: int
    params: tuple = ()          # sorted (name, value) pairs, hashable
    dsp: str = MODE
    design: str = "scan"        # "bare": the unit kind's bare registered PE (lowbit.hw.fpga_bare)
    freq: float | None = None   # nextpnr's clock target in MHz (None: the board's oscillator)

    @property
    def key(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params)
        design = "" if self.design == "scan" else f"|design={self.design}"
        freq = "" if self.freq is None else f"|freq={self.freq:g}"
        return (f"{self.board}|{self.unit}|{self.rows}x{self.cols}|{extra}|dsp={self.dsp}"
                f"{design}{freq}")

    def unit_params(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, **dict(self.params)}


def _config(board, unit, size, params, dsp=MODE, design="scan") -> Config:
    return Config(board, unit, size[0], size[1], tuple(sorted(params.items())), dsp, design,
                  TARGET_MHZ.get(board))


def _design(record: dict) -> str:
    return record.get("config", {}).get("design", "scan")


def default_configs(boards=tuple(BOARDS), sweep: bool = True) -> list[Config]:
    """Every build of the table.

    The units are compared with their PE arrays in LUT logic (``dsp=requant``: only the
    per-column requantization multipliers use DSP blocks), so the array's fabric cost is
    measured on equal terms. INT8 is also built with every multiplier in DSPs (``auto``), the
    way a designer would use either board. Smaller boards first, the bit sweep last.
    """
    configs = []
    for board in SIZES:
        if board not in boards:
            continue
        here = [_config(board, unit, n, base_params(unit)) for unit in bench_units()
                for n in SIZES[board]]
        here += [_config(board, REFERENCE, n, base_params(REFERENCE), "auto")
                 for n in SIZES[board]]
        # The limit each unit is measured against: its bare registered PE, same tools and run.
        here += [_config(board, unit, (1, 1), base_params(unit), MODE, "bare")
                 for unit in bench_units()]
        here.append(_config(board, REFERENCE, (1, 1), base_params(REFERENCE), "auto", "bare"))
        configs += sorted(here, key=lambda c: c.rows * c.cols)   # small builds first
    if sweep and SWEEP_BOARD in boards:
        for unit in bench_units():
            for _bits, params in unit_class(unit).fpga_sweep:
                for size in SWEEP_SIZES:
                    c = _config(SWEEP_BOARD, unit, size, params)
                    if c not in configs:
                        configs.append(c)
    return configs


def fallback_configs(configs: list[Config], records: dict) -> list[Config]:
    """Replacements for the builds of ``configs`` that failed inside a tool.

    For each config whose record says the build failed (``fits`` None: a tool error, not a
    design too large), the first shape of :data:`ALT_SIZES` for its board that the same unit,
    parameters and DSP mode has not failed at. None if that unit already has a build at one of
    them that fits. The caller builds these and calls again until nothing is left.
    """
    out = []
    for c in configs:
        if records.get(c.key, {}).get("fits", False) is not None or c.design != "scan":
            continue
        for shape in ALT_SIZES.get(c.board, ()):
            alt = dataclasses.replace(c, rows=shape[0], cols=shape[1])
            state = records.get(alt.key, {}).get("fits", "new")
            if state is True:
                break
            if state == "new":
                if alt not in out:
                    out.append(alt)
                break
    return out


def _build_one(config: Config, build_root: str, timeout: float | None) -> dict:
    """Build one config (in a worker process); a record for bench/fpga.json."""
    from .fpga import build_unit
    build_dir = os.path.join(build_root, config.key.replace("|", "_").replace(",", "_")
                             .replace("=", ""))
    start = time.monotonic()
    record = {"key": config.key, "config": dataclasses.asdict(config)}
    try:
        result = build_unit(config.board, config.unit, config.unit_params(),
                            build_dir=build_dir, dsp=config.dsp, progress=lambda line: None,
                            timeout=timeout, design=config.design, freq=config.freq)
        record.update(fits=True, result=result.to_dict())
        record["result"]["build_dir"] = _portable(record["result"]["build_dir"])
    except FpgaDoesNotFit as e:
        record.update(fits=False, error=_portable(str(e)),
                      overflow={k: list(v) for k, v in e.overflow.items()})
    except LowbitError as e:
        record.update(fits=None, error=_portable(str(e)))
    record["seconds"] = round(time.monotonic() - start, 1)
    return record


def _portable(text: str) -> str:
    """``text`` with the checkout's absolute path taken off (the records are committed, so
    paths in them are relative to the repository)."""
    return text.replace(f"{REPO}{os.sep}", "")


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def load_results(path: Path = RESULTS_PATH) -> dict:
    """``{"records": {key: record}}`` from ``path`` (empty if it does not exist)."""
    if not Path(path).exists():
        return {"records": {}}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "records" not in data:
        raise LowbitError(f"{path} is not an FPGA results file (no 'records')")
    return data


@contextlib.contextmanager
def build_pool(jobs: int, ray_address: str | None = None, inline: bool = False):
    """Yields ``submit(config, build_root, timeout) -> Future`` of :func:`_build_one` records:
    ``jobs`` local processes (``inline``: in the calling thread, whose tools run as
    subprocesses anyway), or Ray tasks (``ray_address``: a cluster's address, or "" for a local
    instance with ``jobs`` CPUs) retried when their worker dies. Either way the caller, alone,
    writes the results."""
    if ray_address is None and inline:
        from concurrent.futures import Future

        def run(*args):
            future = Future()
            future.set_result(_build_one(*args))
            return future

        yield run
        return
    if ray_address is None:
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) \
                as pool:
            yield lambda *args: pool.submit(_build_one, *args)
        return
    from lowbit.ray_session import ray_session

    with ray_session(ray_address, max(1, jobs)) as ray:
        task = ray.remote(num_cpus=1, max_retries=2)(_build_one)
        yield lambda *args: task.remote(*args).future()


def run_bench(configs: list[Config], *, results_path: Path = RESULTS_PATH,
              build_root: str = "build/fpga-bench", jobs: int = 1, reuse: bool = True,
              timeout: float | None = None, ray_address: str | None = None) -> dict:
    """Build ``configs`` (``jobs`` at a time, or on Ray: :func:`build_pool`), saving each record
    as it finishes.

    With ``reuse``, configs already in ``results_path`` (built successfully or found not to
    fit) are not rebuilt. Returns the results dict.
    """
    from tqdm import tqdm

    data = load_results(results_path)
    records = data["records"]
    todo = [c for c in configs if not (reuse and c.key in records
                                       and records[c.key].get("fits") is not None)]
    bar = tqdm(total=len(todo), desc="fpga builds", unit="build", file=sys.stderr)
    if todo:
        with build_pool(jobs, ray_address) as submit:
            futures = {submit(c, build_root, timeout): c for c in todo}
            from concurrent.futures import as_completed
            for future in as_completed(futures):
                record = future.result()
                records[record["key"]] = record
                data["updated"] = time.strftime("%Y-%m-%d")
                _write_json_atomic(Path(results_path), data)
                state = {True: "ok", False: "does not fit", None: "failed"}[record["fits"]]
                bar.set_postfix_str(f"{record['key']}: {state} ({record['seconds']:.0f} s)")
                bar.write(f"{record['key']}: {state} in {record['seconds']:.0f} s"
                          + (f" ({record['error']})" if record.get("error") else ""),
                          file=sys.stderr)
                bar.update(1)
    bar.close()
    return data
