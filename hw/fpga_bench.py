"""``lowbit bench fpga``: the hardware cost table of the three matmul units.

Builds every unit at several array sizes on each board (:mod:`lowbit.hw.fpga`), a sweep over
bit widths, and finds the largest array of each unit that fits each board (estimated from a
linear cost model, confirmed by builds where that is cheap). Results are kept in
``bench/fpga.json`` (one record per build, written atomically after each build, so a rerun
builds only what is missing); the tables go between the markers of docs/fpga.md and the plot of
cost per MAC against bits to docs/img/fpga_cost_per_mac.png. :func:`hardware_table` renders the
same tables from ``bench/fpga.json`` for ``lowbit report`` without building anything.

Cost per MAC is reported two ways (docs/fpga.md): the whole unit's LUTs per MAC at each size
built (dominated by the fixed per-column requantization and control in small arrays) and the
marginal cost, the fitted per-PE slope divided by the MACs one PE does per cycle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from lowbit import LowbitError
from lowbit.io import check_build_dir, check_output_file, write_bytes_atomic, write_text_atomic

from .fpga import BOARDS, FpgaDoesNotFit, FpgaResult, format_table
from .units import XnorDescription, describe, unit_class, unit_kinds

__all__ = ["Config", "default_configs", "fallback_configs", "run_bench", "fit_array_model",
           "fit_largest", "model_basis", "hardware_table", "report_section", "unit_cost",
           "cost_rows", "comparisons", "plot_points", "dsp_lut_equivalent", "render_markdown",
           "plot_cost", "update_docs", "bench_fpga_arguments", "run_bench_fpga"]

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO / "bench" / "fpga.json"
DOCS_PATH = REPO / "docs" / "fpga.md"
PLOT_PATH = REPO / "docs" / "img" / "fpga_cost_per_mac.png"
BEGIN, END = "<!-- fpga-table:begin (lowbit bench fpga) -->", "<!-- fpga-table:end -->"

# The units are compared with this one (the same board, cost per MAC).
REFERENCE = "int8"
# An XNOR MAC is 1-bit; an INT8-equivalent MAC is this many of them (8 x 8 planes).
INT8_EQ_BINARY_MACS = XnorDescription.int8_eq_macs


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


# ---------------------------------------------------------------------------------------------
# Analysis


def _records_of(records: dict, board: str, unit: str, params: dict, dsp: str = MODE):
    """``(fitting results, sizes that did not fit)`` of one unit at one precision."""
    want = tuple(sorted(params.items()))
    fits, failed = [], []
    for record in records.values():
        cfg = record["config"]
        if (cfg["board"], cfg["unit"], cfg["dsp"]) != (board, unit, dsp) \
                or tuple(map(tuple, cfg["params"])) != want or _design(record) != "scan" \
                or cfg.get("freq") != TARGET_MHZ.get(board):
            continue
        if record.get("fits"):
            fits.append(FpgaResult.from_dict(record["result"]))
        elif record.get("fits") is False:
            failed.append((cfg["rows"], cfg["cols"]))
    fits.sort(key=lambda r: (r.params["rows"] * r.params["cols"], r.params["cols"]))
    return fits, sorted(failed)


RESOURCES = {"LUT": "unit_lut", "FF": "unit_ff", "DSP": "dsp", "BRAM": "bram"}


def model_basis(results: list[FpgaResult]) -> list[FpgaResult]:
    """The builds the cost model is fitted to: those at the bench's own shapes (:data:`SIZES`,
    and :data:`SWEEP_SIZES` on the sweep board), so that the per-PE slope stays the measured
    difference between two of them; other builds (the largest-array verification) then check
    the model instead of moving it. All builds if fewer than two shapes are at those sizes."""
    if not results:
        return []
    board = results[0].board
    shapes = set(SIZES.get(board, ())) | set(ALT_SIZES.get(board, ())) \
        | (set(SWEEP_SIZES) if board == SWEEP_BOARD else set())
    basis = [r for r in results if (r.params["rows"], r.params["cols"]) in shapes]
    if len({(r.params["rows"], r.params["cols"]) for r in basis}) < 2:
        return list(results)
    return basis


def fit_array_model(results: list[FpgaResult]) -> dict | None:
    """Fit ``cost = fixed + per_row * rows + per_col * cols + per_pe * rows * cols`` to each
    resource.

    ``per_pe`` is one processing element (its product logic, accumulator and output-bank
    register), ``per_row`` one array row's input registers, ``per_col`` one column's input
    registers, drain, bias and requantization, ``fixed`` the control. Least squares over the
    builds (exact for four independent shapes); the unit's own LUTs and FFs are used (the
    wrapper's share taken off). With three shapes (or four that do not separate rows) there is
    no ``per_row`` (0: a row's cost is counted in ``per_pe``), with two no ``fixed`` either.
    A resource whose ``per_row`` comes out negative (a row's cost is smaller than the builds'
    noise) is fitted again without it, so its row cost counts in ``per_pe`` as with three
    shapes. Other negative terms are kept: :func:`negative_terms` names them, and such a model
    is not a cost (the tables mark it unreliable). Needs builds of at least two shapes that
    differ in rows at equal cols; returns None otherwise.

    Returns ``{resource: {"fixed", "per_row", "per_col", "per_pe"}}`` for LUT, FF, DSP, BRAM.
    """
    import numpy as np
    shapes = {(r.params["rows"], r.params["cols"]) for r in results}
    if len(shapes) < 2:
        return None
    full = np.array([[1.0, r.params["rows"], r.params["cols"],
                      r.params["rows"] * r.params["cols"]] for r in results])
    terms = [0, 1, 2, 3]
    if len(shapes) < 4 or np.linalg.matrix_rank(full) < 4:
        terms = [0, 2, 3] if len(shapes) >= 3 else [2, 3]   # two shapes: no fixed term
    if np.linalg.matrix_rank(full[:, terms]) < len(terms):
        return None

    def solve(y, terms):
        coef = np.zeros(4)
        coef[terms] = np.linalg.lstsq(full[:, terms], y, rcond=None)[0]
        return coef

    model = {}
    for name, field in RESOURCES.items():
        y = np.array([float(getattr(r, field)) for r in results])
        coef = solve(y, terms)
        if 1 in terms and round(float(coef[1]), 9) < 0:
            coef = solve(y, [t for t in terms if t != 1])
        # Rounded so that an exact zero (a resource a PE does not use) prints as 0, not -7e-16.
        model[name] = {k: round(float(v), 9) + 0.0
                       for k, v in zip(("fixed", "per_row", "per_col", "per_pe"), coef)}
    return model


def negative_terms(model: dict) -> list[str]:
    """The growing terms (per PE, row, column) of ``model`` that came out negative, as
    ``"LUT per_pe -16"``: a unit cannot get cheaper with more PEs, so such a fit says only
    that its builds' noise exceeds the term; its costs are not to be used."""
    return [f"{name} {term} {model[name][term]:.3g}" for name in RESOURCES
            for term in ("per_row", "per_col", "per_pe") if model[name].get(term, 0.0) < 0]


def predict(model: dict, resource: str, rows: int, cols: int) -> float:
    m = model[resource]
    return (m["fixed"] + m.get("per_row", 0.0) * rows + m["per_col"] * cols
            + m["per_pe"] * rows * cols)


# nextpnr needs slack to place and route: a LUT count predicted above this share of the device
# is not counted as fitting.
LUT_FILL = 0.9


def fit_largest(results: list[FpgaResult], failed=(), also_built=()) -> dict | None:
    """Estimate the largest square ``n x n`` array of a unit that fits the board.

    Uses :func:`fit_array_model`; the wrapper's cost is added back (it is part of the build).
    ``n`` is the largest size whose every predicted resource stays within the device (LUTs
    within :data:`LUT_FILL`), capped below any square that was built and did not fit, and at
    64 (the units' largest array). A square that was built and fits is never undercut.

    Returns ``{"n", "limit", "model", "basis"}`` or None when the model cannot be fitted;
    ``n`` is None (and ``limit`` says why) when the model has negative terms
    (:func:`negative_terms`).
    """
    model = fit_array_model(results)
    if model is None:
        return None
    basis = [f"{r.params['rows']}x{r.params['cols']}" for r in results]
    if negative_terms(model):
        return {"n": None, "limit": "unreliable fit: " + ", ".join(negative_terms(model)),
                "model": model, "basis": basis}
    r0 = results[0]
    caps = {"LUT": LUT_FILL * r0.lut_available - r0.wrapper_lut,
            "FF": r0.ff_available - r0.wrapper_ff,
            "DSP": r0.dsp_available, "BRAM": r0.bram_available}
    sizes = {}
    for name, cap in caps.items():
        n = 0
        while n < 64 and predict(model, name, n + 1, n + 1) <= cap:
            n += 1
        sizes[name] = n
    limit = min(sizes, key=lambda k: sizes[k])
    n = sizes[limit]
    bad_squares = [rows for rows, cols in failed if rows == cols]
    if bad_squares and n >= min(bad_squares):
        n, limit = min(bad_squares) - 1, f"build of {min(bad_squares)}x{min(bad_squares)} failed"
    good_squares = [r.params["rows"] for r in list(results) + list(also_built)
                    if r.params["rows"] == r.params["cols"]]
    if good_squares and n < max(good_squares):
        n = max(good_squares)
    if n >= 64:
        limit = "array size (64)"
    return {"n": n, "limit": limit, "model": model, "basis": basis}


def macs_per_pe(result: FpgaResult, per_bit_mac: bool = False) -> float:
    """MACs one PE does per cycle: 1 (INT, log) or ``lanes`` 1-bit MACs (XNOR); with
    ``per_bit_mac`` XNOR counts p-bit MACs, ``lanes / (a_planes * w_planes)``."""
    d = describe(result.unit, **result.params)
    return float(d.precision_macs_per_pe if per_bit_mac else d.macs_per_pe)


def largest_table(records: dict) -> list[dict]:
    """One row per (board, unit, DSP mode) of the base precision: the largest array."""
    rows = []
    for board in BOARDS:
        for unit in bench_units():
            for dsp in ("off", "requant", "auto"):
                built, failed = _records_of(records, board, unit, base_params(unit), dsp)
                if not built and not failed:
                    continue
                fit = fit_largest(model_basis(built), failed, built) if built else None
                state = None
                if fit is not None and fit["n"] is not None:
                    def built_fits(n):
                        key = _config(board, unit, (n, n), base_params(unit), dsp).key
                        return records.get(key, {}).get("fits")
                    state = built_fits(fit["n"])
                    if state and (fit["n"] == 64 or built_fits(fit["n"] + 1) is False):
                        state = "verified"
                        above = _config(board, unit, (fit["n"] + 1,) * 2, base_params(unit),
                                        dsp).key
                        over = records.get(above, {}).get("overflow")
                        if over:    # what the next size up ran out of, from nextpnr
                            fit = dict(fit, limit=", ".join(
                                f"{bel} {used}/{avail} at {fit['n'] + 1}x{fit['n'] + 1}"
                                for bel, (used, avail) in over.items()))
                rows.append({"board": board, "unit": unit, "dsp": dsp, "fit": fit,
                             "built": built, "failed": failed, "verified": state})
    return rows


def dsp_lut_equivalent(result: FpgaResult) -> float:
    """LUTs one DSP block stands for on ``result``'s device: its share of the device's area,
    ``lut_available / dsp_available`` (iCE40UP5K 5280/8 = 660, ECP5-85F 83640/156 = 536)."""
    return result.lut_available / result.dsp_available


def precision_bits(unit: str, params: dict) -> int:
    """Bits per weight of a build: INT ``w_bits``, log ``bits`` (the code), XNOR ``w_planes``."""
    return describe(unit, **params).precision_bits


def unit_cost(results: list[FpgaResult]) -> dict | None:
    """Cost per MAC of one unit at one precision on one board, from builds at several sizes.

    Parameters
    ----------
    results : list of FpgaResult
        Builds of the same board, unit, parameters and DSP mode at different array shapes.

    Returns
    -------
    dict or None (fewer than two usable shapes) with

    * ``whole``: ``[(shape, LUTs per MAC of the whole unit)]`` per build, smallest first; the
      per-column drain and the control are shared by fewer MACs in small arrays, so this falls
      with the size;
    * ``per_pe``: the fitted per-PE slope of LUT, FF and DSP (:func:`fit_array_model`): what one
      more PE costs, the cost of large arrays;
    * ``macs_per_pe``: native MACs per PE per cycle (1; XNOR ``lanes`` 1-bit MACs) and
      ``bit_macs_per_pe``: MACs at the unit's precision (XNOR ``lanes / (a_planes*w_planes)``);
    * ``lut_per_mac``: marginal LUTs per native MAC, ``per_pe LUT / macs_per_pe``;
    * ``lut_eq_per_mac``: the same with the DSP slope counted as LUTs
      (:func:`dsp_lut_equivalent`), per MAC at the unit's precision;
    * ``int8_eq_lut_per_mac``: XNOR only, LUTs per INT8-equivalent MAC (64 binary MACs);
    * ``basis``: the shapes the model was fitted to (:func:`model_basis`) and ``checks``:
      ``[(shape, predicted unit LUTs, built unit LUTs)]`` for every other build;
    * ``unreliable``: the model's negative terms (:func:`negative_terms`; empty when it is a
      cost): the per-PE figures above are then not costs and the tables do not print them;
    * ``fmax``: ``[(shape, achieved MHz)]`` per build and ``target_mhz``, nextpnr's target.
    """
    basis = model_basis(results)
    model = fit_array_model(basis)
    if model is None:
        return None
    r0 = results[0]
    per_pe = {k: model[k]["per_pe"] for k in ("LUT", "FF", "DSP")}
    checks = [(_shape(r), predict(model, "LUT", r.params["rows"], r.params["cols"]), r.unit_lut)
              for r in results if r not in basis]
    macs = macs_per_pe(r0)
    bit_macs = macs_per_pe(r0, per_bit_mac=True)
    lut_eq = per_pe["LUT"] + per_pe["DSP"] * dsp_lut_equivalent(r0)
    d = describe(r0.unit, **r0.params)
    out = {"board": r0.board, "unit": r0.unit, "dsp": r0.dsp_mode, "params": dict(r0.params),
           "bits": d.precision_bits, "precision": d.precision_text(),
           "whole": [(_shape(r), r.lut_per_mac) for r in results],
           "per_pe": per_pe, "macs_per_pe": macs, "bit_macs_per_pe": bit_macs,
           "lut_per_mac": per_pe["LUT"] / macs, "lut_eq_per_mac": lut_eq / bit_macs,
           "int8_eq_lut_per_mac": None, "fmax_mhz": min(r.fmax_mhz for r in results),
           "basis": [_shape(r) for r in basis], "checks": checks,
           "unreliable": negative_terms(model),
           "fmax": [(_shape(r), r.fmax_mhz) for r in results], "target_mhz": r0.target_mhz}
    if d.int8_eq_macs:
        out["int8_eq_lut_per_mac"] = per_pe["LUT"] / macs * d.int8_eq_macs
    return out


def _groups(records: dict) -> dict:
    """``{(board, unit, params key, dsp): [FpgaResult, ...]}`` of every build that fits."""
    groups: dict = {}
    for record in records.values():
        if not record.get("fits") or _design(record) != "scan":
            continue
        cfg = record["config"]
        key = (cfg["board"], cfg["unit"], tuple(map(tuple, cfg["params"])), cfg["dsp"],
               cfg.get("freq"))
        groups.setdefault(key, []).append(FpgaResult.from_dict(record["result"]))
    for results in groups.values():
        results.sort(key=lambda r: (r.params["rows"] * r.params["cols"], r.params["cols"]))
    return groups


def cost_rows(records: dict) -> list[dict]:
    """:func:`unit_cost` of every (board, unit, precision, DSP mode) built at >= 2 shapes,
    in board, unit, bits order."""
    rows = [c for c in (unit_cost(rs) for rs in _groups(records).values()) if c is not None]
    rows.sort(key=lambda c: (list(BOARDS).index(c["board"]), unit_kinds().index(c["unit"]),
                             c["dsp"] != MODE, c["bits"]))
    return rows


def comparisons(records: dict) -> list[dict]:
    """How many times cheaper per MAC log-shift (4-bit codes) and XNOR are than INT8.

    Same board, base precisions (:func:`base_params`), PE arrays in LUT logic. One dict per
    (board, unit, measure) with ``int8``, ``value`` (LUTs per MAC) and ``ratio = int8 / value``
    (> 1: the unit is cheaper). Measures: ``marginal`` (per-PE slope per MAC; for XNOR per
    1-bit MAC, and ``marginal int8-eq`` per INT8-equivalent MAC of 64 binary MACs) and
    ``whole RxC`` (the whole unit, wrapper taken off, at the largest shape built for both).
    """
    out = []
    for board in BOARDS:
        base = {u: _records_of(records, board, u, base_params(u))[0] for u in bench_units()}
        if not base[REFERENCE]:
            continue
        ref_cost = unit_cost(base[REFERENCE])
        for unit in (u for u in bench_units() if u != REFERENCE):
            cost = unit_cost(base[unit]) if base[unit] else None
            if ref_cost and cost and not (ref_cost["unreliable"] or cost["unreliable"]):
                ref = ref_cost["lut_per_mac"]
                out.append({"board": board, "unit": unit, "measure": "marginal",
                            "int8": ref, "value": cost["lut_per_mac"],
                            "ratio": ref / cost["lut_per_mac"]})
                if cost["int8_eq_lut_per_mac"] is not None:
                    out.append({"board": board, "unit": unit, "measure": "marginal int8-eq",
                                "int8": ref, "value": cost["int8_eq_lut_per_mac"],
                                "ratio": ref / cost["int8_eq_lut_per_mac"]})
            # The whole unit at the largest shape built for both (the fixed part shared most).
            ref_at = {_shape(r): r.lut_per_mac for r in base[REFERENCE]}
            common = [r for r in base[unit] if _shape(r) in ref_at]
            if common:
                r = common[-1]
                out.append({"board": board, "unit": unit, "measure": f"whole {_shape(r)}",
                            "int8": ref_at[_shape(r)], "value": r.lut_per_mac,
                            "ratio": ref_at[_shape(r)] / r.lut_per_mac})
    return out


def bare_comparisons(records: dict) -> list[dict]:
    """Each unit's per-PE cost against its bare registered PE (same board, DSP mode, run).

    One dict per (board, unit, DSP mode) of the base precision that has both: ``per_pe`` (the
    unit's fitted per-PE LUT and DSP slope), ``bare`` (the bare PE's unit LUTs, DSPs and
    Fmax), ``lut_ratio = per-PE LUTs / bare LUTs`` (1: at the limit) and, for XNOR, LUTs per
    1-bit MAC of both.
    """
    def own(params):
        return {k: v for k, v in params.items() if k not in ("rows", "cols")}

    out = []
    for c in cost_rows(records):
        if own(c["params"]) != own(describe(c["unit"], **base_params(c["unit"])).params) \
                or c["unreliable"]:
            continue
        key = _config(c["board"], c["unit"], (1, 1), base_params(c["unit"]), c["dsp"],
                      "bare").key
        record = records.get(key, {})
        if not record.get("fits"):
            continue
        bare = FpgaResult.from_dict(record["result"])
        macs = c["macs_per_pe"]
        out.append({"board": c["board"], "unit": c["unit"], "dsp": c["dsp"],
                    "precision": c["precision"], "per_pe": c["per_pe"],
                    "bare": {"lut": bare.unit_lut, "dsp": bare.dsp, "fmax_mhz": bare.fmax_mhz},
                    "lut_ratio": c["per_pe"]["LUT"] / max(bare.unit_lut, 1),
                    "lut_per_mac": c["per_pe"]["LUT"] / macs,
                    "bare_lut_per_mac": bare.unit_lut / macs, "fmax_mhz": c["fmax_mhz"]})
    return out


def plot_points(records: dict) -> dict:
    """``{board: {series: [(bits per weight, LUT-equivalents per MAC)]}}`` for the plot.

    One series per unit with its PE array in LUT logic (``requant``), one point per precision
    built at two shapes or more; INT8 with its multipliers in DSP blocks (``auto``) is its own
    series. The cost is :func:`unit_cost`'s ``lut_eq_per_mac``: the marginal per-PE LUTs plus
    DSPs weighted by their share of the device, per MAC at the unit's precision.
    """
    out: dict = {}
    for c in cost_rows(records):
        if c["unreliable"]:
            continue
        series = unit_class(c["unit"]).series
        if c["dsp"] == "auto":
            series = "INT8, multipliers in DSPs"
        elif c["dsp"] != MODE:
            continue
        out.setdefault(c["board"], {}).setdefault(series, []).append(
            (c["bits"], c["lut_eq_per_mac"]))
    for series in out.values():
        for pts in series.values():
            pts.sort()
    return out


# ---------------------------------------------------------------------------------------------
# Rendering


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return format_table(rows, columns=header, row=lambda r: r)


def _sort_key(r: FpgaResult):
    extra = {k: v for k, v in r.params.items() if k not in ("rows", "cols")}
    return (list(BOARDS).index(r.board), unit_kinds().index(r.unit), r.dsp_mode,
            json.dumps(extra, sort_keys=True), r.design != "bare",
            r.params["rows"] * r.params["cols"], r.params["cols"])


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def _comparison_table(records: dict) -> str | None:
    rows = []
    for c in comparisons(records):
        cls = unit_class(c["unit"])
        label = f"{c['unit']}{cls.fpga_base.get(cls.bits_param, '')} vs {REFERENCE}"
        if c["measure"] == "marginal":
            what = f"marginal: per-PE slope, per {cls.mac_name}"
        elif c["measure"] == "marginal int8-eq":
            what = f"marginal, per INT8-equivalent MAC ({cls.int8_eq_macs} {cls.mac_name}s)"
        else:
            what = f"whole unit at {c['measure'].split()[1]}, per {cls.mac_name}"
        rows.append([c["board"], label, what, f"{c['int8']:.1f}",
                     f"{c['value']:.2f}", _ratio_text(c["ratio"])])
    if not rows:
        return None
    return _md_table(["board", "comparison", "LUTs per MAC", "INT8", "unit",
                      "INT8 / unit"], rows)


def _cost_table(records: dict) -> str | None:
    rows = []
    for c in cost_rows(records):
        pe = c["per_pe"]
        macs = unit_class(c["unit"]).macs_text(c["macs_per_pe"])
        per_mac = f"{c['lut_per_mac']:.2f}"
        if c["int8_eq_lut_per_mac"] is not None:
            per_mac += f" ({c['int8_eq_lut_per_mac']:.0f} per int8-eq)"
        whole = ", ".join(f"{s}: {v:.0f}" for s, v in c["whole"])
        if c["unreliable"]:
            rows.append([c["board"], c["precision"], c["dsp"], whole,
                         "unreliable fit (" + ", ".join(c["unreliable"]) + ")", macs, "-", "-",
                         f"{c['fmax_mhz']:.1f}"])
            continue
        rows.append([c["board"], c["precision"], c["dsp"], whole,
                     f"{pe['LUT']:.0f} / {pe['FF']:.0f} / {pe['DSP']:.2g}", macs, per_mac,
                     f"{c['lut_eq_per_mac']:.1f}", f"{c['fmax_mhz']:.1f}"])
    if not rows:
        return None
    return _md_table(["board", "unit", "DSP mode", "LUT/MAC whole unit, by array",
                      "per PE: LUT / FF / DSP", "MACs/cycle per PE", "marginal LUT/MAC",
                      "LUT-eq per MAC", "Fmax MHz (worst)"], rows)


def _fmax_table(records: dict) -> str | None:
    """Achieved Fmax of every build of the size sweep against nextpnr's target."""
    rows = []
    for c in cost_rows(records):
        if c["params"] != dict(describe(c["unit"], **base_params(c["unit"])).params,
                               rows=c["params"]["rows"], cols=c["params"]["cols"]):
            continue
        target = c["target_mhz"]
        shape, largest = max(c["fmax"], key=lambda f: _area(f[0]))
        verdict = "-" if target is None else ("met" if largest >= target else "not met")
        rows.append([c["board"], c["precision"], c["dsp"],
                     "board clock" if target is None else f"{target:g}",
                     ", ".join(f"{s}: {v:.1f}" for s, v in c["fmax"]),
                     f"{largest:.1f} at {shape} ({verdict})"])
    if not rows:
        return None
    return _md_table(["board", "unit", "DSP mode", "target MHz", "Fmax MHz by array",
                      "largest array"], rows)


def _area(shape: str) -> int:
    rows, cols = shape.split("x")
    return int(rows) * int(cols)


def _bare_table(records: dict) -> str | None:
    rows = []
    for b in bare_comparisons(records):
        cls = unit_class(b["unit"])
        rows.append([b["board"], b["precision"], b["dsp"],
                     f"{b['per_pe']['LUT']:.0f} + {b['per_pe']['DSP']:.2g} DSP",
                     f"{b['bare']['lut']} + {b['bare']['dsp']} DSP",
                     f"{b['lut_ratio']:.2f}",
                     f"{b['lut_per_mac']:.2f} / {b['bare_lut_per_mac']:.2f} per {cls.mac_name}",
                     f"{b['fmax_mhz']:.1f} / {b['bare']['fmax_mhz']:.1f}"])
    if not rows:
        return None
    return _md_table(["board", "unit", "DSP mode", "unit per PE: LUT", "bare PE: LUT",
                      "unit / bare", "LUT per MAC: unit / bare", "Fmax MHz: unit / bare"], rows)


def _largest_rows(records: dict) -> list[list[str]]:
    rows = []
    for row in largest_table(records):
        fit = row["fit"]
        if fit is None:
            rows.append([row["board"], row["unit"], row["dsp"], "-", "-",
                         "too few builds fit" if row["failed"] else "-",
                         f"fits: {[_shape(r) for r in row['built']]}; does not fit: "
                         f"{[f'{a}x{b}' for a, b in row['failed']]}"])
            continue
        n, model = fit["n"], fit["model"]
        if n is None:
            rows.append([row["board"], row["unit"], row["dsp"], "-", "-", fit["limit"],
                         f"no estimate; from {', '.join(fit['basis'])}"])
            continue
        state = {"verified": f"verified: {n}x{n} fits, "
                             + ("the largest allowed" if n == 64 else f"{n + 1}x{n + 1} does not"),
                 True: f"{n}x{n} built and fits; larger estimated",
                 False: "estimate; its build failed", None: "estimate"}[row["verified"]]
        macs = n * n * macs_per_pe(row["built"][0])
        rows.append([row["board"], row["unit"], row["dsp"], f"{n}x{n}",
                     unit_class(row["unit"]).macs_text(macs), fit["limit"],
                     f"{state}; per PE {model['LUT']['per_pe']:.0f} LUT "
                     f"{model['FF']['per_pe']:.0f} FF {model['DSP']['per_pe']:.1f} DSP, "
                     f"per row {model['LUT'].get('per_row', 0):.0f} LUT, "
                     f"per column {model['LUT']['per_col']:.0f} LUT "
                     f"{model['DSP']['per_col']:.1f} DSP; from {', '.join(fit['basis'])}"])
    return rows


def render_markdown(data: dict, plot_link: str | None = None) -> str:
    """The generated part of docs/fpga.md (and the hardware section of docs/results.md).

    ``plot_link``: the plot's address as seen from the Markdown file (default: the plot
    :data:`PLOT_PATH` seen from docs/fpga.md's folder).
    """
    if plot_link is None:
        plot_link = Path(os.path.relpath(PLOT_PATH, DOCS_PATH.parent)).as_posix()
    records = data["records"]
    built = sorted((FpgaResult.from_dict(r["result"]) for r in records.values()
                    if r.get("fits")), key=_sort_key)
    parts = ["Generated by `lowbit bench fpga` from bench/fpga.json"
             + (f" ({data['updated']})" if data.get("updated") else "") + ".", ""]
    compare = _comparison_table(records)
    if compare:
        parts += ["### Log-shift and XNOR against INT8 (same board, PE arrays in LUT logic)", "",
                  "LUTs are the unit's own (the wrapper's XOR tree taken off). *Marginal* is "
                  "the fitted per-PE slope (what one more PE costs, the cost of a large array) "
                  "divided by the MACs one PE does per cycle; *whole unit* divides all of the "
                  "unit's LUTs, per-column requantization and control included, by the MACs per "
                  "cycle of that array. INT8 / unit above 1: the unit is that many times "
                  "cheaper per MAC. An XNOR MAC is 1-bit; an INT8-equivalent MAC is "
                  f"{INT8_EQ_BINARY_MACS} of them (8 activation x 8 weight planes).", "",
                  compare, ""]
    costs = _cost_table(records)
    if costs:
        parts += ["### Cost per MAC of each unit", "",
                  "*LUT/MAC whole unit*: at each array built. *Per PE*: the slope of "
                  "`fixed + per_row*rows + per_col*cols + per_pe*rows*cols` fitted to the builds "
                  "(exact for four shapes). *LUT-eq per MAC*: per-PE LUTs plus per-PE DSP blocks counted "
                  "at their share of the device (LUTs / DSPs: iCE40UP5K 660, ECP5-85F 536), "
                  "per MAC at the unit's precision (XNOR with p x p planes: lanes / p^2 MACs "
                  "per PE per cycle). DSP mode requant: PE array in LUT logic; auto: INT8's "
                  "multipliers in DSP blocks.", "",
                  costs, "", f"![LUT-equivalents per MAC against bits]({plot_link})", ""]
    fmax = _fmax_table(records)
    if fmax:
        parts += ["### Clock: achieved Fmax against the target", "",
                  "nextpnr places and routes every build for the board's target "
                  "(`lowbit fpga --freq`) and reports the clock it achieves (one placer "
                  "seed). The largest array of the size sweep is the one the target is "
                  "meant for.", "", fmax, ""]
    bare = _bare_table(records)
    if bare:
        parts += ["### Against a bare registered PE (the same tools, the same run)", "",
                  "*Bare PE*: one processing element of the unit's kind alone "
                  "(`lowbit fpga --design bare`: registered inputs, registered product, a "
                  "24-bit accumulator; no output bank, drain or protocol), its unit LUTs in the "
                  "same wrapper. *Unit per PE*: the unit's fitted per-PE slope (its PE also "
                  "has the output-bank register and an accumulator as wide as the contract's "
                  "`max_k` needs). Unit / bare at 1: the unit's PE costs what the bare "
                  "arithmetic costs. Fmax: the unit's worst build against the bare PE's.", "",
                  bare, ""]
    checks = [[c["board"], c["precision"], c["dsp"], shape, f"{pred:.0f}", str(lut),
               f"{100 * (lut - pred) / pred:+.1f}%", ", ".join(c["basis"])]
              for c in cost_rows(records) for shape, pred, lut in c["checks"]]
    if checks:
        parts += ["### Model check: larger builds against the fitted model", "",
                  "Unit LUTs of builds that the model was not fitted to (the largest-array "
                  "builds) against the prediction `fixed + per_row*rows + per_col*cols + "
                  "per_pe*rows*cols`.", "",
                  _md_table(["board", "unit", "DSP mode", "array", "predicted LUT", "built LUT",
                             "error", "model fitted to"], checks), ""]
    largest = _largest_rows(records)
    if largest:
        parts += ["### Largest square array per board", "",
                  "Estimated from the linear model fitted to the builds (LUTs within "
                  f"{LUT_FILL:.0%} of the device), unless marked as verified by builds.", "",
                  _md_table(["board", "unit", "DSP", "largest", "MACs/cycle", "limited by",
                             "how"], largest), ""]
    parts += ["### All builds", "",
              "LUT = logic cells (ECP5 TRELLIS_COMB, iCE40 ICESTORM_LC) of the whole design and "
              "the device share; FF = flip-flops (iCE40: from the netlist); LUT/MAC = the "
              "unit's LUTs (the wrapper's XOR tree taken off) per MAC per cycle, XNOR MACs are "
              "1-bit; Fmax = nextpnr's achieved clock. DSP mode requant: PE array in LUT logic, "
              "requantization multipliers in DSPs; auto: every multiplier may use DSPs.", "",
              format_table(built), ""]
    for title, state in (("Builds that do not fit", False), ("Builds that failed", None)):
        bad = sorted((r for r in records.values() if r.get("fits") is state),
                     key=lambda r: r["key"])
        if bad:
            parts += [f"{title}:", ""] + [f"- `{r['key']}`: {r['error']}" for r in bad] + [""]
    return "\n".join(parts).rstrip() + "\n"


def _shape(r: FpgaResult) -> str:
    return f"{r.params['rows']}x{r.params['cols']}"


def plot_cost(data: dict, path: Path = PLOT_PATH) -> Path | None:
    """PNG of LUT-equivalents per MAC (log scale) against bits per weight, one panel per board.

    The cost is :func:`plot_points`' (marginal per-PE LUTs plus DSPs at their device share).
    Written atomically (a temporary file renamed over ``path``). Returns None without data.
    """
    points = plot_points(data["records"])
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    boards = [b for b in BOARDS if b in points]
    fig, axes = plt.subplots(1, len(boards), figsize=(5.2 * len(boards), 4), squeeze=False)
    style = {"INT8, multipliers in DSPs": dict(marker="s", linestyle="none", color="C3")}
    for ax, board in zip(axes[0], boards):
        for series, pts in points[board].items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    **style.get(series, dict(marker="o")), label=series)
            for x, y in pts:
                ax.annotate(f"{y:.0f}" if y >= 10 else f"{y:.1f}", (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(1, 9))
        ax.set_xlabel("bits per weight (XNOR: planes)")
        ax.set_ylabel("LUT-equivalents per MAC (marginal, per PE)")
        ax.set_title(f"{board} ({BOARDS[board].device})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Cost per MAC: LUTs + DSPs x (device LUTs / DSPs)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=110)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, png.getvalue())
    return path


def update_docs(markdown: str, path: Path = DOCS_PATH) -> None:
    """Replace the generated section of docs/fpga.md (between the markers) with ``markdown``."""
    text = Path(path).read_text() if Path(path).exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip() + "\n\n## Measured results\n\n", "\n"
    write_text_atomic(path, f"{head}{BEGIN}\n{markdown}{END}{tail}")


def hardware_table(results_path: Path = RESULTS_PATH, plot_link: str | None = None) -> str:
    """The hardware section for ``lowbit report`` (docs/results.md), from bench/fpga.json.

    Builds nothing: regenerate the numbers with ``lowbit bench fpga``. Returns Markdown
    starting with a ``## Hardware cost (FPGA)`` heading; the plot is linked as ``plot_link``
    (default: docs/img/fpga_cost_per_mac.png seen from docs/).
    """
    data = load_results(results_path)
    if not data["records"]:
        return "## Hardware cost (FPGA)\n\nNo FPGA results yet: run `lowbit bench fpga`.\n"
    text = render_markdown(data, plot_link)
    return ("## Hardware cost (FPGA)\n\nThe full tables, the method and the tool flow are in "
            "[fpga.md](fpga.md).\n\n" + text)


def report_section(docs_dir) -> str:
    """``hardware_table()`` with the plot linked relative to ``docs_dir`` (for lowbit report)."""
    link = os.path.relpath(PLOT_PATH, Path(docs_dir).resolve())
    return hardware_table(RESULTS_PATH, plot_link=Path(link).as_posix())


# ---------------------------------------------------------------------------------------------
# Largest array: verification builds


def verify_largest(data: dict, *, results_path: Path, build_root: str,
                   timeout: float | None, boards, jobs: int = 1,
                   ray_address: str | None = None) -> dict:
    """Confirm each estimated largest square array by building it and its neighbour.

    From the estimate ``n``: if ``n x n`` fits, build ``n+1`` (and upward while those fit);
    if it does not, step down until a size fits. Every build is recorded, so the table then
    shows the largest size that fits next to the smallest that does not. The units are
    verified ``jobs`` at a time (each unit's builds in order); the results file is rewritten
    after every build.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    records = data["records"]
    lock = threading.Lock()     # records and the file are shared by the worker threads

    def fits(row, n) -> bool:
        config = _config(row["board"], row["unit"], (n, n), base_params(row["unit"]),
                         row["dsp"])
        with lock:
            known = records.get(config.key, {}).get("fits")
        if known is None:
            print(f"verifying {config.key} ...", file=sys.stderr, flush=True)
            record = submit(config, build_root, timeout).result()
            with lock:
                records[config.key] = record
                _write_json_atomic(Path(results_path), data)
            state = {True: "fits", False: "does not fit", None: "failed"}[record["fits"]]
            print(f"  {config.key}: {state} ({record['seconds']:.0f} s)", file=sys.stderr,
                  flush=True)
            known = record["fits"]
        return bool(known)

    def verify(row) -> None:
        n = row["fit"]["n"]
        if fits(row, n):
            while n < 64 and fits(row, n + 1):
                n += 1
        else:
            while n > 1 and not fits(row, n - 1):
                n -= 1

    rows = [row for row in largest_table(records) if row["board"] in boards
            and row["fit"] is not None and row["fit"]["n"] is not None]
    with build_pool(jobs, ray_address, inline=True) as submit, \
            ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(verify, row) for row in rows]:
            future.result()
    return data


# ---------------------------------------------------------------------------------------------
# CLI


def bench_fpga_arguments(p) -> None:
    """Add the flags of ``lowbit bench fpga`` to its parser (the command is listed in
    :data:`lowbit.commands.COMMANDS`)."""
    p.add_argument("--boards", nargs="+", default=list(BOARDS), metavar="BOARD",
                   help=f"boards to build for (default: {' '.join(BOARDS)})")
    p.add_argument("--quick", action="store_true",
                   help="the iCEBreaker builds only, no bit-width sweep and no verification "
                        "builds (about 15 CPU-minutes from scratch)")
    p.add_argument("--no-sweep", action="store_true", help="skip the bit-width sweep")
    p.add_argument("--verify-on", nargs="*", default=["icebreaker"], metavar="BOARD",
                   help="boards on which each estimated largest array is confirmed by building "
                        "it and the next size up (default: icebreaker; the ULX3S-85F's largest "
                        "arrays take tens of minutes per build; give no board to skip)")
    p.add_argument("--jobs", type=int, default=1, help="builds in parallel (default 1)")
    p.add_argument("--rebuild", action="store_true",
                   help="rebuild configurations already in the results file")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds allowed per tool run (default 3600)")
    p.add_argument("--results", default=str(RESULTS_PATH), help="results JSON")
    p.add_argument("--docs", default=str(DOCS_PATH), help="Markdown file to update")
    p.add_argument("--plot", default=str(PLOT_PATH), help="PNG plot of cost per MAC")
    p.add_argument("--build-root", default="build/fpga-bench", help="build folders")
    p.add_argument("--render-only", action="store_true",
                   help="build nothing: re-render the docs from the results file")
    p.add_argument("--ray", metavar="ADDRESS", nargs="?", const="", default=None,
                   help="run the builds as Ray tasks: on the cluster at ADDRESS, or without one "
                        "on a local Ray instance with --jobs CPUs (docs/regress.md); this "
                        "process alone writes the results file")


def _lock(results: Path):
    """An exclusive lock next to ``results``: two runs would each rewrite the whole file and
    lose the other's records. Returns the open lock file (closing it releases the lock)."""
    import fcntl
    import hashlib
    # In the temporary folder (not next to the results, which are tracked by git), named after
    # the results file's absolute path.
    tag = hashlib.sha1(str(results.resolve()).encode()).hexdigest()[:16]
    f = open(Path(tempfile.gettempdir()) / f"lowbit-bench-fpga-{tag}.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise LowbitError(f"another `lowbit bench fpga` is writing {results}; wait for it "
                          "to finish") from None
    return f


def run_bench_fpga(args) -> int:
    """``lowbit bench fpga``: build the configurations the results file lacks (all with
    ``--rebuild``, none with ``--render-only``), then print the tables and write them into the
    docs with the plot."""
    for board in list(args.boards) + list(args.verify_on):
        if board not in BOARDS:
            raise LowbitError(f"unknown board {board!r} (choose from {', '.join(BOARDS)})")
    if args.jobs < 1:
        raise LowbitError(f"--jobs must be a positive integer, not {args.jobs}")
    if not args.timeout > 0:
        raise LowbitError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    for flag in ("--results", "--docs", "--plot"):
        check_output_file(getattr(args, flag[2:]), flag, create_folders=True)
    check_build_dir(args.build_root, "--build-root")
    boards, verify_on = tuple(args.boards), tuple(args.verify_on)
    if args.quick:
        boards, verify_on = ("icebreaker",), ()
    results = Path(args.results)
    lock = None if args.render_only else _lock(results)
    if args.render_only:
        data = load_results(results)
        if not data["records"]:
            raise LowbitError(f"no FPGA results in {results}: run `lowbit bench fpga` first")
    else:
        configs = default_configs(boards, sweep=not (args.no_sweep or args.quick))
        data = run_bench(configs, results_path=results, build_root=args.build_root,
                         jobs=args.jobs, reuse=not args.rebuild, timeout=args.timeout,
                         ray_address=args.ray)
        while True:     # replace shapes a tool failed at (ALT_SIZES), as long as any are left
            more = fallback_configs(configs, data["records"])
            if not more:
                break
            print(f"{len(more)} build(s) failed in a tool; trying other shapes: "
                  + ", ".join(c.key for c in more), file=sys.stderr, flush=True)
            configs = configs + more
            data = run_bench(more, results_path=results, build_root=args.build_root,
                             jobs=args.jobs, reuse=True, timeout=args.timeout,
                             ray_address=args.ray)
        verify_on = tuple(b for b in verify_on if b in boards)
        if verify_on:
            data = verify_largest(data, results_path=results, build_root=args.build_root,
                                  timeout=args.timeout, boards=verify_on, jobs=args.jobs,
                                  ray_address=args.ray)
    if lock is not None:
        lock.close()
    markdown = render_markdown(
        data, Path(os.path.relpath(Path(args.plot).resolve(),
                                   Path(args.docs).resolve().parent)).as_posix())
    plot = plot_cost(data, Path(args.plot))
    update_docs(markdown, Path(args.docs))
    print(markdown)
    print(f"wrote {args.docs}" + (f", {plot}" if plot else "") + f" (results: {results})")
    return 0
