"""``lowbit bench fpga``: the hardware cost table of the three matmul units.

Builds every unit at several array sizes on each board (:mod:`lowbit.hw.fpga`), a sweep over
bit widths, and estimates the largest array of each unit that fits each board. Results are kept
in ``bench/fpga.json`` (one record per build, written after each build so an interrupted run
resumes with ``--reuse``); the tables go between the markers of docs/fpga.md and the plot of
cost per MAC against bits to docs/fpga_cost.png. :func:`hardware_table` renders the same tables
from ``bench/fpga.json`` for ``lowbit report`` without building anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from lowbit import LowbitError

from .fpga import BOARDS, FpgaDoesNotFit, FpgaResult, format_table, table_row

__all__ = ["Config", "default_configs", "run_bench", "fit_array_model", "fit_largest",
           "hardware_table", "report_section",
           "render_markdown", "plot_cost", "update_docs", "register_bench"]

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO / "bench" / "fpga.json"
DOCS_PATH = REPO / "docs" / "fpga.md"
PLOT_PATH = REPO / "docs" / "fpga_cost.png"
BEGIN, END = "<!-- fpga-table:begin (lowbit bench fpga) -->", "<!-- fpga-table:end -->"

UNITS = ("int8", "log", "xnor")
# Default precision of each unit in the size sweep: INT8, the paper's 4-bit log codes, BMT's
# 1-bit weights and activations with 32 lanes of K per beat.
BASE_PARAMS = {"int8": {}, "log": {"bits": 4}, "xnor": {"lanes": 32}}
# Array sizes (rows, cols). Three shapes pin down the linear model of fit_array_model: the
# per-PE cost from rows at fixed cols, the per-column drain/requantization from cols.
SIZES = {"icebreaker": ((1, 1), (2, 1), (2, 2)), "ulx3s-85f": ((1, 2), (4, 2), (4, 4))}
# The units are compared with their PE arrays in LUT logic and the per-column requantization
# multipliers in DSP blocks (`lowbit fpga --dsp requant`); INT8 is also built with every
# multiplier in DSPs (`--dsp auto`).
MODE = "requant"
SWEEP_BOARD, SWEEP_SIZES = "ulx3s-85f", ((1, 2), (4, 2))
# (bits, params) per unit for the cost-per-MAC plot: INT a = w = b bits; log b-bit weight
# codes (int8 activations); XNOR p activation and p weight planes. Parameters equal to the
# base precision are left out, so those points are the very builds of the size sweep.
SWEEP = {
    "int8": [(b, {"a_bits": b, "w_bits": b} if b != 8 else {}) for b in (4, 8)],
    "log": [(b, {"bits": b}) for b in (1, 2, 4)],
    "xnor": [(p, {"a_planes": p, "w_planes": p, "lanes": 32} if p != 1 else {"lanes": 32})
             for p in (1, 2)],
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One build: board, unit, array size, unit parameters and DSP mode."""
    board: str
    unit: str
    rows: int
    cols: int
    params: tuple = ()          # sorted (name, value) pairs, hashable
    dsp: str = MODE

    @property
    def key(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.board}|{self.unit}|{self.rows}x{self.cols}|{extra}|dsp={self.dsp}"

    def unit_params(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, **dict(self.params)}


def _config(board, unit, size, params, dsp=MODE) -> Config:
    return Config(board, unit, size[0], size[1], tuple(sorted(params.items())), dsp)


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
        here = [_config(board, unit, n, BASE_PARAMS[unit]) for unit in UNITS
                for n in SIZES[board]]
        here += [_config(board, "int8", n, {}, "auto") for n in SIZES[board]]
        configs += sorted(here, key=lambda c: c.rows * c.cols)   # small builds first
    if sweep and SWEEP_BOARD in boards:
        for unit, points in SWEEP.items():
            for _bits, params in points:
                for size in SWEEP_SIZES:
                    c = _config(SWEEP_BOARD, unit, size, params)
                    if c not in configs:
                        configs.append(c)
    return configs


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
                            timeout=timeout)
        record.update(fits=True, result=result.to_dict())
    except FpgaDoesNotFit as e:
        record.update(fits=False, error=str(e),
                      overflow={k: list(v) for k, v in e.overflow.items()})
    except LowbitError as e:
        record.update(fits=None, error=str(e))
    record["seconds"] = round(time.monotonic() - start, 1)
    return record


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def load_results(path: Path = RESULTS_PATH) -> dict:
    """``{"records": {key: record}}`` from ``path`` (empty if it does not exist)."""
    if not Path(path).exists():
        return {"records": {}}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "records" not in data:
        raise LowbitError(f"{path} is not an FPGA results file (no 'records')")
    return data


def run_bench(configs: list[Config], *, results_path: Path = RESULTS_PATH,
              build_root: str = "build/fpga-bench", jobs: int = 1, reuse: bool = True,
              timeout: float | None = None) -> dict:
    """Build ``configs`` (``jobs`` at a time), saving each record as it finishes.

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
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) \
                as pool:
            futures = {pool.submit(_build_one, c, build_root, timeout): c for c in todo}
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
                or tuple(map(tuple, cfg["params"])) != want:
            continue
        if record.get("fits"):
            fits.append(FpgaResult.from_dict(record["result"]))
        elif record.get("fits") is False:
            failed.append((cfg["rows"], cfg["cols"]))
    fits.sort(key=lambda r: (r.params["rows"] * r.params["cols"], r.params["cols"]))
    return fits, sorted(failed)


RESOURCES = {"LUT": "unit_lut", "FF": "unit_ff", "DSP": "dsp", "BRAM": "bram"}


def fit_array_model(results: list[FpgaResult]) -> dict | None:
    """Fit ``cost = fixed + per_col * cols + per_pe * rows * cols`` to each resource.

    ``per_pe`` is one processing element (its product logic, accumulator and output-bank
    register), ``per_col`` one column's drain, bias and requantization, ``fixed`` the control.
    Least squares over the builds (exact for three independent shapes); the unit's own LUTs and
    FFs are used (the wrapper's share taken off). Needs builds of at least two shapes that
    differ in rows at equal cols (or three shapes in all); returns None otherwise.

    Returns ``{resource: {"fixed", "per_col", "per_pe"}}`` for LUT, FF, DSP, BRAM.
    """
    import numpy as np
    shapes = {(r.params["rows"], r.params["cols"]) for r in results}
    if len(shapes) < 2:
        return None
    x = np.array([[1.0, r.params["cols"], r.params["rows"] * r.params["cols"]]
                  for r in results])
    if len(shapes) == 2:        # two shapes: no fixed term (a column's drain absorbs it)
        x = x[:, 1:]
    if np.linalg.matrix_rank(x) < x.shape[1]:
        return None
    model = {}
    for name, field in RESOURCES.items():
        y = np.array([float(getattr(r, field)) for r in results])
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        if len(coef) == 2:
            coef = np.concatenate([[0.0], coef])
        model[name] = {"fixed": float(coef[0]), "per_col": float(coef[1]),
                       "per_pe": float(coef[2])}
    return model


def predict(model: dict, resource: str, rows: int, cols: int) -> float:
    m = model[resource]
    return m["fixed"] + m["per_col"] * cols + m["per_pe"] * rows * cols


# nextpnr needs slack to place and route: a LUT count predicted above this share of the device
# is not counted as fitting.
LUT_FILL = 0.9


def fit_largest(results: list[FpgaResult], failed=()) -> dict | None:
    """Estimate the largest square ``n x n`` array of a unit that fits the board.

    Uses :func:`fit_array_model`; the wrapper's cost is added back (it is part of the build).
    ``n`` is the largest size whose every predicted resource stays within the device (LUTs
    within :data:`LUT_FILL`), capped below any square that was built and did not fit, and at
    64 (the units' largest array). A square that was built and fits is never undercut.

    Returns ``{"n", "limit", "model", "basis"}`` or None when the model cannot be fitted.
    """
    model = fit_array_model(results)
    if model is None:
        return None
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
    good_squares = [r.params["rows"] for r in results if r.params["rows"] == r.params["cols"]]
    if good_squares and n < max(good_squares):
        n = max(good_squares)
    if n >= 64:
        limit = "array size (64)"
    return {"n": n, "limit": limit, "model": model,
            "basis": [f"{r.params['rows']}x{r.params['cols']}" for r in results]}


def macs_per_pe(result: FpgaResult, per_bit_mac: bool = False) -> float:
    """MACs one PE does per cycle: 1 (INT, log) or ``lanes`` 1-bit MACs (XNOR); with
    ``per_bit_mac`` XNOR counts p-bit MACs, ``lanes / (a_planes * w_planes)``."""
    p = result.params
    if result.unit != "xnor":
        return 1.0
    return p["lanes"] / (p["a_planes"] * p["w_planes"] if per_bit_mac else 1)


def largest_table(records: dict) -> list[dict]:
    """One row per (board, unit, DSP mode) of the base precision: the largest array."""
    rows = []
    for board in BOARDS:
        for unit in UNITS:
            for dsp in ("off", "requant", "auto"):
                built, failed = _records_of(records, board, unit, BASE_PARAMS[unit], dsp)
                if not built and not failed:
                    continue
                fit = fit_largest(built, failed) if built else None
                state = None
                if fit is not None:
                    def built_fits(n):
                        key = _config(board, unit, (n, n), BASE_PARAMS[unit], dsp).key
                        return records.get(key, {}).get("fits")
                    state = built_fits(fit["n"])
                    if state and (fit["n"] == 64 or built_fits(fit["n"] + 1) is False):
                        state = "verified"
                        above = _config(board, unit, (fit["n"] + 1,) * 2, BASE_PARAMS[unit],
                                        dsp).key
                        over = records.get(above, {}).get("overflow")
                        if over:    # what the next size up ran out of, from nextpnr
                            fit = dict(fit, limit=", ".join(
                                f"{bel} {used}/{avail} at {fit['n'] + 1}x{fit['n'] + 1}"
                                for bel, (used, avail) in over.items()))
                rows.append({"board": board, "unit": unit, "dsp": dsp, "fit": fit,
                             "built": built, "failed": failed, "verified": state})
    return rows


def sweep_points(records: dict) -> dict:
    """``{unit: [(bits, LUTs per PE, LUTs per b-bit MAC)]}`` from the bit-width sweep.

    The per-PE LUTs are the slope of :func:`fit_array_model` over the sweep's shapes. A b-bit
    MAC is one multiply-accumulate at the unit's precision: INT and log one per PE per cycle;
    XNOR with ``p`` activation and ``p`` weight planes needs ``p*p`` beats for one p-bit
    product, so ``lanes / p^2`` per PE per cycle.
    """
    out = {}
    for unit, points in SWEEP.items():
        for bits, params in points:
            built, _ = _records_of(records, SWEEP_BOARD, unit, params)
            built = [r for r in built if (r.params["rows"], r.params["cols"]) in SWEEP_SIZES]
            model = fit_array_model(built)
            if model is None:
                continue
            per_pe = model["LUT"]["per_pe"]
            out.setdefault(unit, []).append(
                (bits, per_pe, per_pe / macs_per_pe(built[0], per_bit_mac=True)))
    return out


# ---------------------------------------------------------------------------------------------
# Rendering


def _ratio_rows(records: dict) -> list[list[str]]:
    """Rows comparing log and XNOR with INT8 on the same board, PE arrays in LUT logic.

    Two measures: the whole unit's LUTs per MAC at each array size built for all units (the
    per-column drain and requantization included), and the array's own cost per MAC, the
    fitted per-PE slope divided by the MACs of one PE.
    """
    rows = []
    for board in BOARDS:
        base = {u: _records_of(records, board, u, BASE_PARAMS[u])[0] for u in UNITS}
        shapes = [(r.params["rows"], r.params["cols"]) for r in base["int8"]]
        for shape in shapes:
            at = {u: [r for r in base[u] if (r.params["rows"], r.params["cols"]) == shape]
                  for u in UNITS}
            ref = at["int8"][0].lut_per_mac
            for unit in ("log", "xnor"):
                if at[unit]:
                    r = at[unit][0]
                    what = "1-bit MAC" if unit == "xnor" else "MAC"
                    rows.append([board, f"whole unit {shape[0]}x{shape[1]}", unit,
                                 f"{ref:.1f}", f"{r.lut_per_mac:.2f} per {what}",
                                 f"{ref / r.lut_per_mac:.1f}x"])
        models = {u: fit_array_model(base[u]) for u in UNITS}
        if models["int8"] is None:
            continue
        ref = models["int8"]["LUT"]["per_pe"]
        for unit in ("log", "xnor"):
            if models[unit] is None:
                continue
            per_mac = models[unit]["LUT"]["per_pe"] / macs_per_pe(base[unit][0])
            what = "1-bit MAC" if unit == "xnor" else "MAC"
            rows.append([board, "array only (per-PE slope)", unit, f"{ref:.1f}",
                         f"{per_mac:.2f} per {what}", f"{ref / per_mac:.1f}x"])
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return format_table(rows, columns=header, row=lambda r: r)


def _sort_key(r: FpgaResult):
    extra = {k: v for k, v in r.params.items() if k not in ("rows", "cols")}
    return (list(BOARDS).index(r.board), UNITS.index(r.unit), r.dsp_mode,
            json.dumps(extra, sort_keys=True), r.params["rows"] * r.params["cols"],
            r.params["cols"])


def render_markdown(data: dict) -> str:
    """The generated part of docs/fpga.md (and the hardware section of docs/results.md)."""
    records = data["records"]
    built = sorted((FpgaResult.from_dict(r["result"]) for r in records.values()
                    if r.get("fits")), key=_sort_key)
    parts = ["Generated by `lowbit bench fpga` from bench/fpga.json"
             + (f" ({data['updated']})" if data.get("updated") else "") + ".", ""]
    parts += ["### All builds", "",
              "LUT = logic cells (ECP5 TRELLIS_COMB, iCE40 ICESTORM_LC) of the whole design and "
              "the device share; FF = flip-flops (iCE40: from the netlist); LUT/MAC = the "
              "unit's LUTs (the wrapper's XOR tree taken off) per MAC per cycle, XNOR MACs are "
              "1-bit; Fmax = nextpnr's achieved clock. DSP mode requant: PE array in LUT logic, "
              "requantization multipliers in DSPs; auto: every multiplier may use DSPs.", "",
              format_table(built), ""]
    not_fit = sorted((r for r in records.values() if r.get("fits") is False),
                     key=lambda r: r["key"])
    failed = sorted((r for r in records.values() if r.get("fits") is None),
                    key=lambda r: r["key"])
    if not_fit:
        parts += ["Builds that do not fit:", ""]
        parts += [f"- `{r['key']}`: {r['error']}" for r in not_fit] + [""]
    if failed:
        parts += ["Builds that failed:", ""]
        parts += [f"- `{r['key']}`: {r['error']}" for r in failed] + [""]
    ratios = _ratio_rows(records)
    if ratios:
        parts += ["### Cost per MAC against INT8 (same board, PE arrays in LUT logic)", "",
                  _md_table(["board", "measure", "unit", "INT8 LUT/MAC", "unit LUT/MAC",
                             "INT8 / unit"], ratios), ""]
    largest = largest_table(records)
    if largest:
        rows = []
        for row in largest:
            fit = row["fit"]
            if fit is None:
                rows.append([row["board"], row["unit"], row["dsp"], "-", "-",
                             "too few builds fit" if row["failed"] else "-",
                             f"fits: {[_shape(r) for r in row['built']]}; does not fit: "
                             f"{[f'{a}x{b}' for a, b in row['failed']]}"])
                continue
            n, model = fit["n"], fit["model"]
            state = {"verified": f"verified: {n}x{n} fits, "
                                 + ("the largest allowed" if n == 64
                                    else f"{n + 1}x{n + 1} does not"),
                     True: f"{n}x{n} built and fits; larger estimated",
                     False: "estimate; its build failed", None: "estimate"}[row["verified"]]
            macs = n * n * macs_per_pe(row["built"][0])
            rows.append([row["board"], row["unit"], row["dsp"], f"{n}x{n}", f"{macs:.0f}",
                         fit["limit"],
                         f"{state}; per PE {model['LUT']['per_pe']:.0f} LUT "
                         f"{model['FF']['per_pe']:.0f} FF {model['DSP']['per_pe']:.1f} DSP, "
                         f"per column {model['LUT']['per_col']:.0f} LUT "
                         f"{model['DSP']['per_col']:.1f} DSP; from {', '.join(fit['basis'])}"])
        parts += ["### Largest square array per board", "",
                  "Estimated from the linear model `fixed + per_col*cols + per_pe*rows*cols` "
                  f"fitted to the builds (LUTs within {LUT_FILL:.0%} of the device), unless "
                  "marked as verified.", "",
                  _md_table(["board", "unit", "DSP", "largest", "MACs/cycle", "limited by",
                             "how"], rows), ""]
    points = sweep_points(records)
    if points:
        rows = [[u, str(b), f"{pe:.1f}", f"{mac:.2f}"]
                for u, pts in points.items() for b, pe, mac in pts]
        parts += [f"### Cost per MAC against bits ({SWEEP_BOARD}, PE arrays in LUT logic)", "",
                  "Array cost only: the per-PE LUT slope between the "
                  f"{' and '.join(f'{a}x{b}' for a, b in SWEEP_SIZES)} builds. INT: a = w = "
                  "bits; log: bits of the weight code, int8 activations; XNOR: bits = "
                  "activation planes = weight planes (a p-bit MAC takes p*p plane pairs).", "",
                  _md_table(["unit", "bits", "LUT per PE", "LUT per MAC"], rows), "",
                  f"![LUT per MAC against bits]({PLOT_PATH.name})", ""]
    return "\n".join(parts).rstrip() + "\n"


def _shape(r: FpgaResult) -> str:
    return f"{r.params['rows']}x{r.params['cols']}"


def plot_cost(data: dict, path: Path = PLOT_PATH) -> Path | None:
    """PNG of the array's LUTs per MAC (log scale) against bits, one line per unit."""
    points = sweep_points(data["records"])
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"int8": "INT (a = w bits)", "log": "log-shift (weight code bits, int8 act.)",
              "xnor": "XNOR-popcount (a = w planes)"}
    for unit, pts in points.items():
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=labels[unit])
    ax.set_yscale("log")
    ax.set_xlabel("bits")
    ax.set_ylabel("LUTs per MAC (array, per-PE slope)")
    ax.set_title(f"{SWEEP_BOARD}, PE array in LUT logic")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def update_docs(markdown: str, path: Path = DOCS_PATH) -> None:
    """Replace the generated section of docs/fpga.md (between the markers) with ``markdown``."""
    text = Path(path).read_text() if Path(path).exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip() + "\n\n## Measured results\n\n", "\n"
    new = f"{head}{BEGIN}\n{markdown}{END}{tail}"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=Path(path).parent)
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def hardware_table(results_path: Path = RESULTS_PATH, plot_link: str = PLOT_PATH.name) -> str:
    """The hardware section for ``lowbit report`` (docs/results.md), from bench/fpga.json.

    Builds nothing: regenerate the numbers with ``lowbit bench fpga``. Returns Markdown
    starting with a ``## Hardware cost (FPGA)`` heading; the plot is linked as ``plot_link``
    (default: docs/fpga_cost.png seen from docs/).
    """
    data = load_results(results_path)
    if not data["records"]:
        return "## Hardware cost (FPGA)\n\nNo FPGA results yet: run `lowbit bench fpga`.\n"
    text = render_markdown(data).replace(f"]({PLOT_PATH.name})", f"]({plot_link})")
    return ("## Hardware cost (FPGA)\n\nThe full tables, the method and the tool flow are in "
            "[fpga.md](fpga.md).\n\n" + text)


def report_section(docs_dir) -> str:
    """``hardware_table()`` with the plot linked relative to ``docs_dir`` (for lowbit report)."""
    link = os.path.relpath(PLOT_PATH, Path(docs_dir).resolve())
    return hardware_table(RESULTS_PATH, plot_link=Path(link).as_posix())


# ---------------------------------------------------------------------------------------------
# Largest array: verification builds


def verify_largest(data: dict, *, results_path: Path, build_root: str,
                   timeout: float | None, boards) -> dict:
    """Confirm each estimated largest square array by building it and its neighbour.

    From the estimate ``n``: if ``n x n`` fits, build ``n+1`` (and upward while those fit);
    if it does not, step down until a size fits. Every build is recorded, so the table then
    shows the largest size that fits next to the smallest that does not.
    """
    records = data["records"]

    def fits(row, n) -> bool:
        config = _config(row["board"], row["unit"], (n, n), BASE_PARAMS[row["unit"]],
                         row["dsp"])
        if records.get(config.key, {}).get("fits") is None:
            print(f"verifying {config.key} ...", file=sys.stderr, flush=True)
            records[config.key] = _build_one(config, build_root, timeout)
            _write_json_atomic(Path(results_path), data)
            print(f"  {'fits' if records[config.key]['fits'] else 'does not fit'} "
                  f"({records[config.key]['seconds']:.0f} s)", file=sys.stderr, flush=True)
        return bool(records[config.key].get("fits"))

    for row in largest_table(records):
        if row["board"] not in boards or row["fit"] is None:
            continue
        n = row["fit"]["n"]
        if fits(row, n):
            while n < 64 and fits(row, n + 1):
                n += 1
        else:
            while n > 1 and not fits(row, n - 1):
                n -= 1
    return data


# ---------------------------------------------------------------------------------------------
# CLI


def register_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "fpga", help="FPGA cost table of the matmul units (docs/fpga.md)",
        description="Build every matmul unit at several sizes on each board, write "
                    "bench/fpga.json, the tables of docs/fpga.md and docs/fpga_cost.png.")
    p.add_argument("--boards", nargs="+", default=list(BOARDS), metavar="BOARD",
                   help=f"boards to build for (default: {' '.join(BOARDS)})")
    p.add_argument("--no-sweep", action="store_true", help="skip the bit-width sweep")
    p.add_argument("--jobs", type=int, default=1, help="builds in parallel (default 1)")
    p.add_argument("--rebuild", action="store_true",
                   help="rebuild configurations already in the results file")
    p.add_argument("--verify-largest", action="store_true",
                   help="also build each estimated largest array to confirm that it fits "
                        "(slow on the ULX3S-85F: large arrays take tens of minutes)")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds allowed per tool run (default 3600)")
    p.add_argument("--results", default=str(RESULTS_PATH), help="results JSON")
    p.add_argument("--docs", default=str(DOCS_PATH), help="Markdown file to update")
    p.add_argument("--plot", default=str(PLOT_PATH), help="PNG plot of cost per MAC")
    p.add_argument("--build-root", default="build/fpga-bench", help="build folders")
    p.add_argument("--render-only", action="store_true",
                   help="build nothing: re-render the docs from the results file")
    p.set_defaults(func=_bench_command)


def _bench_command(args) -> int:
    for board in args.boards:
        if board not in BOARDS:
            raise LowbitError(f"unknown board {board!r} (choose from {', '.join(BOARDS)})")
    if args.jobs < 1:
        raise LowbitError(f"--jobs must be a positive integer, not {args.jobs}")
    results = Path(args.results)
    if args.render_only:
        data = load_results(results)
    else:
        configs = default_configs(tuple(args.boards), sweep=not args.no_sweep)
        data = run_bench(configs, results_path=results, build_root=args.build_root,
                         jobs=args.jobs, reuse=not args.rebuild, timeout=args.timeout)
        if args.verify_largest:
            data = verify_largest(data, results_path=results, build_root=args.build_root,
                                  timeout=args.timeout, boards=args.boards)
    markdown = render_markdown(data)
    plot = plot_cost(data, Path(args.plot))
    update_docs(markdown, Path(args.docs))
    print(markdown)
    print(f"wrote {args.docs}" + (f", {plot}" if plot else "") + f" (results: {results})")
    return 0
